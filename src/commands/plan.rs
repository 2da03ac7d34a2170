//! `plan` commands.

use crate::cli::*;
use crate::error::Failure;

pub fn run(_ctx: &Context, _args: &PlanArgs) -> Result<u8, Failure> {
    Err(super::not_yet("run"))
}

pub fn show(_ctx: &Context, _args: &ShowArgs) -> Result<u8, Failure> {
    Err(super::not_yet("show"))
}

pub fn inventory(_ctx: &Context, _args: &InventoryArgs) -> Result<u8, Failure> {
    Err(super::not_yet("inventory"))
}
