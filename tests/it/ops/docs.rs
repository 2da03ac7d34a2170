//! The documentation covers every command: a new command without a section in
//! docs/commands.md fails here. (Config keys and error codes are checked by the
//! config tests against docs/configuration.md and docs/errors.md.)

use clap::CommandFactory;
use deploy_code::cli::Cli;

fn paths(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
    for sub in cmd.get_subcommands() {
        let p = format!("{prefix} {}", sub.get_name());
        if sub.has_subcommands() {
            paths(sub, &p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn every_command_is_documented() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/commands.md")).unwrap();
    let mut all = Vec::new();
    paths(&Cli::command(), "deploy-code", &mut all);
    let missing: Vec<_> = all
        .iter()
        .filter(|p| !docs.contains(&format!("## `{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/commands.md lacks a section for {missing:?}"
    );
}

#[test]
fn every_doc_page_is_linked_from_the_index() {
    let index =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/README.md")).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/docs")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") && name != "README.md" {
            assert!(
                index.contains(&format!("({name})")),
                "docs/README.md does not link {name}"
            );
        }
    }
}
