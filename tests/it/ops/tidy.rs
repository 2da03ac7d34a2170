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
    no_lines_where(rule, |file, line| {
        needles.iter().any(|n| holds(line, n)) && !allowed.iter().any(|a| file.starts_with(a))
    });
}

/// Fails with every line of code for which `offends(file, line)` holds.
fn no_lines_where(rule: &str, offends: impl Fn(&str, &str) -> bool) {
    let offenders: Vec<String> = code_lines()
        .into_iter()
        .filter(|(file, _, line)| offends(file, line))
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
fn nothing_below_main_exits_the_process() {
    only_in(
        "only `main` ends the process",
        &["process::exit("],
        &["src/main.rs"],
    );
}

/// Fails with every line that contains one of `needles` in a file under
/// one of `forbidden` (path prefixes).
fn never_in(rule: &str, needles: &[&str], forbidden: &[&str]) {
    no_lines_where(rule, |file, line| {
        forbidden.iter().any(|f| file.starts_with(f)) && needles.iter().any(|n| holds(line, n))
    });
}

#[test]
fn nothing_prints_outside_output() {
    only_in(
        "nothing prints to stdout or stderr outside `Output`",
        &[
            "println!(",
            "print!(",
            "eprintln!(",
            "eprint!(",
            "stdout()",
            "stderr()",
            "io::stdout",
            "io::stderr",
        ],
        &["src/output.rs"],
    );
}

#[test]
fn no_module_below_commands_reads_flags() {
    only_in(
        "only `cli` reads flags: nothing below it names `crate::cli`",
        &["cli::"],
        &["src/cli.rs", "src/main.rs", "src/lib.rs"],
    );
}

#[test]
fn commands_do_not_import_serve() {
    never_in(
        "`commands` does not import `serve` (`cli -> serve -> commands`)",
        &["serve::", "crate::serve"],
        &["src/commands/"],
    );
}

#[test]
fn no_json_macro_in_commands() {
    never_in(
        "JSON output of commands comes from typed views in `render`, not `json!`",
        &["json!("],
        &["src/commands/"],
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
        &["src/backends/", "src/registry.rs"],
    );
}

#[test]
fn only_the_registry_and_the_backends_name_a_kind() {
    only_in(
        "what differs between backend kinds is a fact of `registry.rs` or a method of the backend",
        &[
            "BackendKind::Process",
            "BackendKind::Docker",
            "BackendKind::Swarm",
            "BackendKind::{",
            "BackendKind::*",
        ],
        &["src/backends/", "src/registry.rs"],
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

/// The crate's top-level modules and which of them each one names
/// (`crate::<module>` in a line of code, unit tests left out).
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut graph = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for (file, _, line) in code_lines() {
        let rel = file.trim_start_matches("src/");
        let top = rel
            .split('/')
            .next()
            .unwrap_or(rel)
            .trim_end_matches(".rs")
            .to_owned();
        let edges = graph.entry(top.clone()).or_default();
        for (i, _) in line.match_indices("crate::") {
            let name: String = line[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                edges.insert(name);
            }
        }
    }
    graph
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = module_graph();
    // Depth-first search with colours: a grey module met again closes a cycle.
    fn visit(
        m: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        colour: &mut std::collections::BTreeMap<String, u8>,
        path: &mut Vec<String>,
        cycles: &mut Vec<String>,
    ) {
        colour.insert(m.to_owned(), 1);
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            match colour.get(next).copied().unwrap_or(0) {
                0 => visit(next, graph, colour, path, cycles),
                1 => {
                    let from = path.iter().position(|p| p == next).unwrap_or(0);
                    cycles.push(format!("{} -> {next}", path[from..].join(" -> ")));
                }
                _ => {}
            }
        }
        path.pop();
        colour.insert(m.to_owned(), 2);
    }
    let mut colour = std::collections::BTreeMap::new();
    let mut cycles = Vec::new();
    for m in graph.keys() {
        if !colour.contains_key(m) {
            visit(m, &graph, &mut colour, &mut Vec::new(), &mut cycles);
        }
    }
    let listing: Vec<String> = graph
        .iter()
        .map(|(m, to)| {
            format!(
                "{m} -> {}",
                to.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "the modules name each other in a circle:\n{}\n\nthe graph:\n{}",
        cycles.join("\n"),
        listing.join("\n")
    );
}

#[test]
fn error_codes_follow_from_variants() {
    only_in(
        "an error's code follows from its variant (`error::Coded`), never from a literal in a `#[diagnostic]` attribute",
        &["code(\"deploy_code::", "code(deploy_code::"],
        &[],
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

#[test]
fn no_value_is_compared_with_the_sensitive_mark() {
    // A withheld secret is a typed value (`Text::Sensitive`, a replay's
    // `secret('NAME')`), never recognised by the words that show it.
    no_lines_where(
        "compare `Text::is_sensitive`, not the text `(sensitive)`",
        |_, line| {
            (line.contains("==") || line.contains("!="))
                && ["\"(sensitive)\"", "MARK", "SENSITIVE"]
                    .iter()
                    .any(|m| line.contains(m))
        },
    );
}

#[test]
fn one_runtime_per_invocation() {
    // A command runs on the `Invocation`'s runtime; only the long-lived
    // processes the tool starts (a switch, a monitor) build their own.
    only_in(
        "a command's async work runs on `Invocation::runtime`",
        &[
            "Builder::new_current_thread",
            "Builder::new_multi_thread",
            "Runtime::new",
        ],
        &["src/commands/mod.rs", "src/switch/", "src/monitor/"],
    );
}
