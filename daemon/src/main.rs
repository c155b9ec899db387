use std::process::ExitCode;

fn main() -> ExitCode {
    neural_style::cli::main()
}
