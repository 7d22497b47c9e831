use std::process::ExitCode;

fn main() -> ExitCode {
    actseal::cli::main()
}
