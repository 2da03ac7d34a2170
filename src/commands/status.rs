//! `status` commands.

use crate::cli::*;
use crate::error::Failure;

pub fn status(_ctx: &Context, _args: &StatusArgs) -> Result<u8, Failure> {
    Err(super::not_yet("status"))
}

pub fn health(_ctx: &Context, _args: &HealthArgs) -> Result<u8, Failure> {
    Err(super::not_yet("health"))
}

pub fn logs(_ctx: &Context, _args: &LogsArgs) -> Result<u8, Failure> {
    Err(super::not_yet("logs"))
}
