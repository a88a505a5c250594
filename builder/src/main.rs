//! `keel`: the thin binary over `keel_builder`'s command-line layer.

fn main() {
    std::process::exit(keel_builder::cli::main());
}
