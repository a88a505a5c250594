//! The `keel` command line, built in this package so that its tests can run the CLI as a user
//! does (`env!("CARGO_BIN_EXE_keel-cli")`): the same `keel_builder::cli::main` as `keel`.

fn main() {
    std::process::exit(keel_builder::cli::main());
}
