use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(deploy_code::run(std::env::args_os()))
}
