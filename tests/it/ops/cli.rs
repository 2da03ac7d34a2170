//! The tool explains itself: help with examples on every command, a man page and
//! shell completions generated from the same definitions.

use assert_cmd::cargo::cargo_bin_cmd;
use clap::CommandFactory;
use deploy_code::cli::Cli;

fn all_paths(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    for sub in cmd.get_subcommands() {
        let mut p = prefix.clone();
        p.push(sub.get_name().to_owned());
        if sub.has_subcommands() {
            all_paths(sub, p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn every_command_has_help_with_examples() {
    let cmd = Cli::command();
    let mut paths = Vec::new();
    all_paths(&cmd, Vec::new(), &mut paths);
    assert!(paths.len() > 20, "{paths:?}");
    for path in paths {
        let out = cargo_bin_cmd!("deploy-code")
            .args(&path)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{path:?} --help failed");
        assert!(
            text.contains("Examples:"),
            "`{}` --help has no examples:\n{text}",
            path.join(" ")
        );
    }
}

#[test]
fn man_page_is_generated() {
    let out = cargo_bin_cmd!("deploy-code").arg("man").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(".ie") || text.contains(".TH"),
        "{}",
        &text[..200.min(text.len())]
    );
    assert!(text.contains("deploy\\-code"));
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = cargo_bin_cmd!("deploy-code")
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8(out.stdout).unwrap();
        for sub in ["plan", "apply", "validate", "state"] {
            assert!(text.contains(sub), "{shell} completions lack `{sub}`");
        }
    }
}

/// Every flag that takes a duration reads it in one style: humantime's units
/// (also combined), or a bare number of seconds.
#[test]
fn every_duration_flag_takes_one_style() {
    use clap::Parser;
    use deploy_code::cli::{parse_duration, parse_seconds};
    use std::time::Duration;
    assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("5 parsecs").is_err());
    assert!(parse_duration("").is_err());
    assert_eq!(parse_seconds("2"), Ok(2));
    assert_eq!(parse_seconds("1m"), Ok(60));
    assert_eq!(parse_seconds("1500ms"), Ok(2));
    for args in [
        vec!["deploy-code", "--lock-timeout", "1m30s", "plan"],
        vec!["deploy-code", "status", "--watch", "--interval", "5s"],
        vec!["deploy-code", "status", "--interval", "5"],
        vec!["deploy-code", "destroy", "--timeout", "2m"],
        vec!["deploy-code", "destroy", "--timeout", "10"],
    ] {
        Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
    assert!(Cli::try_parse_from(["deploy-code", "destroy", "--timeout", "2 fortnights"]).is_err());
}

/// `status` and `health` give one document each, with `format_version`, of
/// the same shape in JSON and in YAML.
#[test]
fn status_and_health_documents_are_the_same_in_json_and_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("deploy-code.yaml");
    let doc = |cmd: &str, format: &str| -> serde_json::Value {
        let out = cargo_bin_cmd!("deploy-code")
            .args(["-c", config.to_str().unwrap(), cmd, "--format", format])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "`{cmd} --format {format}`: {text}");
        match format {
            "json" => serde_json::from_str(&text).unwrap(),
            _ => serde_yaml::from_str(&text).unwrap(),
        }
    };
    for cmd in ["status", "health"] {
        let json = doc(cmd, "json");
        assert_eq!(json["format_version"], 1, "{cmd}: {json}");
        assert!(json["services"].is_array(), "{cmd}: {json}");
        assert_eq!(json, doc(cmd, "yaml"), "{cmd}");
    }
}
