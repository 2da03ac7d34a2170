//! `validate`: render, parse and check the configuration; print one line.

use crate::cli::*;
use crate::config;
use crate::error::Failure;

pub fn run(ctx: &Context, _args: &ValidateArgs) -> Result<u8, Failure> {
    let loaded = config::load(&ctx.load_options())?;
    let desired = &loaded.desired;
    let enabled = desired.services.len();
    let disabled = desired.disabled.len();
    let tasks = desired
        .services
        .values()
        .filter(|s| s.workload == crate::model::Workload::Task)
        .count();
    let file = ctx.global.config.display().to_string();
    if ctx.global.format == Format::Json {
        let doc = serde_json::json!({
            "format_version": 1,
            "valid": true,
            "file": file,
            "services": enabled + disabled,
            "enabled": enabled,
            "disabled": disabled,
            "tasks": tasks,
        });
        outln!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON always serializes")
        );
    } else {
        let total = enabled + disabled;
        let noun = if total == 1 { "service" } else { "services" };
        let extra = if disabled > 0 {
            format!(" ({disabled} disabled)")
        } else {
            String::new()
        };
        let check = if ctx.color {
            "\u{1b}[32m✓\u{1b}[0m"
        } else {
            "✓"
        };
        outln!("{check} {file} is valid: {total} {noun}{extra}");
    }
    Ok(crate::error::exit::OK)
}
