fn main() -> std::process::ExitCode {
    walrusfs::cli::main()
}
