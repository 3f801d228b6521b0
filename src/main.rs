use clap::Parser as _;

fn main() -> std::process::ExitCode {
    walrusfs::cli::init_logging();
    let cli = walrusfs::cli::Cli::parse();
    match walrusfs::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
