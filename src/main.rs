/// mimalloc: the request paths allocate small, short-lived buffers on
/// many threads; glibc malloc was about a quarter of their CPU profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    bus_containers::cli::main()
}
