//! The invariants ARCHITECTURE.md states as absences, checked by reading the
//! sources (as rust-analyzer's tidy tests do). Each rule names where a thing
//! may appear; a line of code (comments are skipped) anywhere else fails.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `(file relative to the crate, line number, line)` of every line of code
/// under `src/` (comment lines and unit-test modules left out).
fn code_lines() -> Vec<(String, usize, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let mut out = Vec::new();
    for f in files {
        let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_start();
            if t.starts_with("#[cfg(test)]") {
                break;
            }
            if t.starts_with("//") {
                continue;
            }
            out.push((rel.clone(), i + 1, line.to_owned()));
        }
    }
    out
}

/// Whether `line` holds `needle` as a token of its own (not the tail of a
/// longer name: `print!(` is not in `eprint!(`).
fn holds(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(i, _)| {
        !line[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// Fails with every line that contains one of `needles` outside `allowed`
/// (path prefixes).
fn only_in(rule: &str, needles: &[&str], allowed: &[&str]) {
    let offenders: Vec<String> = code_lines()
        .into_iter()
        .filter(|(file, _, line)| {
            needles.iter().any(|n| holds(line, n)) && !allowed.iter().any(|a| file.starts_with(a))
        })
        .map(|(file, n, line)| format!("{file}:{n}: {}", line.trim()))
        .collect();
    assert!(
        offenders.is_empty(),
        "{rule} (see ARCHITECTURE.md, Invariants):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn plan_does_no_io() {
    let io = [
        "std::fs",
        "fs::",
        "File::",
        "tokio",
        "std::process",
        "std::env",
        "Instant::now",
        "SystemTime",
        "procfs",
    ];
    let offenders: Vec<String> = code_lines()
        .into_iter()
        .filter(|(file, _, line)| {
            file.starts_with("src/plan/") && io.iter().any(|n| line.contains(n))
        })
        .map(|(file, n, line)| format!("{file}:{n}: {}", line.trim()))
        .collect();
    assert!(
        offenders.is_empty(),
        "`plan` does no I/O, reads no clock and no environment:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn only_the_backends_name_bollard() {
    only_in(
        "only `backends/` names bollard",
        &["bollard"],
        &["src/backends/"],
    );
}

#[test]
fn only_procfs_reads_proc() {
    only_in(
        "one reader of `/proc` for the crate",
        &["\"/proc", "/proc/{", "/proc/net"],
        &["src/procfs.rs"],
    );
}

#[test]
fn only_the_one_writer_prints_to_stdout() {
    only_in(
        "nothing prints to stdout outside `commands::print`",
        &["println!(", "print!(", "stdout()"],
        &[
            "src/commands/mod.rs",
            "src/commands/progress.rs",
            "src/cli.rs",
        ],
    );
}

#[test]
fn only_cli_and_progress_write_to_stderr() {
    only_in(
        "messages to stderr come from `cli`, the progress view and the apply command's evidence",
        &["eprintln!(", "eprint!(", "io::stderr()"],
        &[
            "src/cli.rs",
            "src/commands/progress.rs",
            "src/commands/apply.rs",
        ],
    );
}

#[test]
fn nothing_below_main_exits_the_process() {
    only_in(
        "only `main` ends the process",
        &["process::exit("],
        &["src/main.rs"],
    );
}

/// Lines of code under `dir` (a path prefix) that name one of the crate's
/// top-level `modules`: `crate::plan` counts, `crate::planfile` does not.
fn naming_modules(dir: &str, modules: &[&str]) -> Vec<String> {
    code_lines()
        .into_iter()
        .filter(|(file, _, line)| {
            file.starts_with(dir)
                && modules.iter().any(|m| {
                    let needle = format!("crate::{m}");
                    line.match_indices(&needle).any(|(i, _)| {
                        !line[i + needle.len()..]
                            .chars()
                            .next()
                            .is_some_and(|c| c.is_alphanumeric() || c == '_')
                    })
                })
        })
        .map(|(file, n, line)| format!("{file}:{n}: {}", line.trim()))
        .collect()
}

#[test]
fn outside_the_backends_a_handle_is_opaque() {
    only_in(
        "outside `backends/` a handle is described, compared and stored, never opened",
        &[
            "Handle::Process",
            "Handle::Container",
            "Handle::SwarmService",
            "Handle::{",
            "Handle::*",
        ],
        &["src/backends/", "src/instance.rs"],
    );
}

#[test]
fn plan_imports_nothing_from_backends_or_apply() {
    let offenders = naming_modules("src/plan/", &["backends", "apply", "refresh"]);
    assert!(
        offenders.is_empty(),
        "`plan` receives observations and capabilities as data; it names no backend:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn backends_import_nothing_from_apply_or_plan() {
    let offenders = naming_modules("src/backends/", &["apply", "plan", "monitor", "refresh"]);
    assert!(
        offenders.is_empty(),
        "`backends` sits below `apply`, `plan`, `refresh` and `monitor`:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_switch_imports_nothing_from_apply_or_backends() {
    let offenders = naming_modules("src/switch/", &["apply", "backends"]);
    assert!(
        offenders.is_empty(),
        "the traffic switch stands below `apply` and `backends`:\n{}",
        offenders.join("\n")
    );
}

/// Every property name the configuration's JSON Schema knows.
fn schema_keys(schema: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match schema {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                out.extend(props.keys().cloned());
            }
            for v in map.values() {
                schema_keys(v, out);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                schema_keys(v, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_yaml_reader_names_no_schema_key() {
    let mut keys = std::collections::BTreeSet::new();
    schema_keys(&deploy_code::config::schema::json_schema(), &mut keys);
    assert!(keys.contains("services") && keys.contains("health_check"));
    let offenders: Vec<String> = code_lines()
        .into_iter()
        .filter(|(file, _, line)| {
            file == "src/config/yaml.rs" && keys.iter().any(|k| line.contains(&format!("\"{k}\"")))
        })
        .map(|(file, n, line)| format!("{file}:{n}: {}", line.trim()))
        .collect();
    assert!(
        offenders.is_empty(),
        "`config::yaml` reads any YAML; what a key means is the schema's (`config::check`):\n{}",
        offenders.join("\n")
    );
}
