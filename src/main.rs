fn main() -> std::process::ExitCode {
    bus_containers::cli::main()
}
