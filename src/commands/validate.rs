//! `validate` commands.

use crate::cli::*;
use crate::error::Failure;

pub fn run(_ctx: &Context, _args: &ValidateArgs) -> Result<u8, Failure> {
    Err(super::not_yet("run"))
}
