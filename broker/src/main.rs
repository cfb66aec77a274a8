fn main() {
    std::process::exit(broker::cli::main());
}
