fn main() {
    keel_init::run()
}
