//! `apply` commands.

use crate::cli::*;
use crate::error::Failure;

pub fn run(_ctx: &Context, _args: &ApplyArgs) -> Result<u8, Failure> {
    Err(super::not_yet("run"))
}

pub fn destroy(_ctx: &Context, _args: &DestroyArgs) -> Result<u8, Failure> {
    Err(super::not_yet("destroy"))
}

pub fn rollback(_ctx: &Context, _args: &RollbackArgs) -> Result<u8, Failure> {
    Err(super::not_yet("rollback"))
}

pub fn restart(_ctx: &Context, _args: &RestartArgs) -> Result<u8, Failure> {
    Err(super::not_yet("restart"))
}

pub fn cleanup(_ctx: &Context, _args: &CleanupArgs) -> Result<u8, Failure> {
    Err(super::not_yet("cleanup"))
}
