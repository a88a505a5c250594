fn main() {
    keel_init::main()
}
