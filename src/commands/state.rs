//! `state` commands.

use crate::cli::*;
use crate::error::Failure;

pub fn run(_ctx: &Context, _cmd: StateCommand) -> Result<u8, Failure> {
    Err(super::not_yet("state"))
}
