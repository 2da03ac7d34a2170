use std::process::ExitCode;

// Planning thousands of services is allocation-bound; mimalloc takes a third
// off the time of a large `plan` compared with the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    ExitCode::from(deploy_code::run(std::env::args_os()))
}
