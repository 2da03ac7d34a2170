//! `ops` commands.

use crate::cli::*;
use crate::error::Failure;

pub fn metrics(_ctx: &Context, _args: &MetricsArgs) -> Result<u8, Failure> {
    Err(super::not_yet("metrics"))
}

pub fn doctor(_ctx: &Context, _args: &DoctorArgs) -> Result<u8, Failure> {
    Err(super::not_yet("doctor"))
}
