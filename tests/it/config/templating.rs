//! The template context, its precedence, and secrets.

use super::*;

const DOC: &str =
    "variables:\n  replicas: 1\nservices:\n  api:\n    command: x\n    replicas: {{ replicas }}\n";

fn replicas(l: &LoadedConfig) -> u32 {
    l.desired.services["api"].replicas
}

#[test]
fn variables_take_precedence_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let f1 = dir.path().join("a.yaml");
    let f2 = dir.path().join("b.yaml");
    std::fs::write(&f1, "replicas: 2\n").unwrap();
    std::fs::write(&f2, "replicas: 3\n").unwrap();

    assert_eq!(replicas(&load(DOC).unwrap()), 1, "declared default");
    let mut i = inputs(&[]);
    i.var_files = vec![f1.clone(), f2.clone()];
    assert_eq!(
        replicas(&load_with(DOC, &i).unwrap()),
        3,
        "later var file wins"
    );
    i.env.insert("DEPLOY_CODE_VAR_REPLICAS".into(), "4".into());
    assert_eq!(
        replicas(&load_with(DOC, &i).unwrap()),
        4,
        "environment beats var files"
    );
    i.vars = vec![("replicas".into(), "5".into())];
    assert_eq!(
        replicas(&load_with(DOC, &i).unwrap()),
        5,
        "--var beats everything"
    );
}

#[test]
fn a_var_file_error_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vars.yaml");
    // The bad text also appears, valid, on the first line.
    std::fs::write(&f, "replicas: 2\nname: x\nreplicas: [2\n").unwrap();
    let mut i = inputs(&[]);
    i.var_files = vec![f];
    let err = load_with(DOC, &i).unwrap_err();
    assert_eq!(err.codes(), vec!["E016::var_file"]);
    let text = rendered(&err);
    assert!(
        text.contains("(line 3)") || text.contains("(line 4)"),
        "{text}"
    );

    let f = dir.path().join("dup.yaml");
    std::fs::write(&f, "replicas: 2\nname: x\nreplicas: 3\n").unwrap();
    i.var_files = vec![f];
    let text = rendered(&load_with(DOC, &i).unwrap_err());
    assert!(text.contains("(line 3)"), "{text}");
    // The diagnostic shows the var file itself, at the duplicate key.
    assert!(text.contains("dup.yaml:3:"), "{text}");
    assert!(text.contains("3 │ replicas: 3"), "{text}");
    assert!(!text.contains("deploy-code.yaml:"), "{text}");

    let f = dir.path().join("list.yaml");
    std::fs::write(&f, "# variables\n- replicas\n- name\n").unwrap();
    i.var_files = vec![f];
    let text = rendered(&load_with(DOC, &i).unwrap_err());
    assert!(text.contains("list.yaml:2:"), "{text}");
    assert!(text.contains("(line 2)"), "{text}");
}

#[test]
fn var_values_are_yaml_scalars() {
    let mut i = inputs(&[]);
    i.vars = vec![("replicas".into(), "3".into())];
    let doc = "services:\n  api:\n    command: x\n    replicas: {{ replicas + 1 }}\n";
    assert_eq!(replicas(&load_with(doc, &i).unwrap()), 4);
}

#[test]
fn undefined_variables_are_errors() {
    let err = load("services:\n  api:\n    command: {{ nope }}\n").unwrap_err();
    assert_eq!(err.codes(), vec!["E002::undefined_variable"]);
}

#[test]
fn env_function_reads_the_environment_with_a_default() {
    let doc = "services:\n  api:\n    command: \"{{ env('CMD', 'fallback') }}\"\n";
    let l = load_with(doc, &inputs(&[("CMD", "from-env")])).unwrap();
    assert_eq!(
        l.desired.services["api"]
            .command
            .as_ref()
            .unwrap()
            .display(),
        "from-env"
    );
    let l = load(doc).unwrap();
    assert_eq!(
        l.desired.services["api"]
            .command
            .as_ref()
            .unwrap()
            .display(),
        "fallback"
    );
    let err = load("services:\n  api:\n    command: \"{{ env('CMD') }}\"\n").unwrap_err();
    assert_eq!(err.codes(), vec!["E002::unset_variable"]);
}

const CANARY: &str = "canary-7f3a9c-plaintext";

fn assert_no_canary(l: &LoadedConfig) {
    assert!(!l.redacted_render.contains(CANARY), "{}", l.redacted_render);
    let debug = format!("{:?}", l.desired);
    assert!(!debug.contains(CANARY), "{debug}");
    for spec in l.desired.services.values() {
        let json = serde_json::to_string(spec).unwrap();
        assert!(!json.contains(CANARY), "{json}");
    }
}

#[test]
fn secrets_never_appear_in_plaintext() {
    let doc = "services:\n  api:\n    command: x\n    args: [\"--token={{ secret('API_TOKEN') }}\"]\n    env:\n      PASSWORD: \"{{ secret('API_TOKEN') }}\"\n";
    let l = load_with(doc, &inputs(&[("API_TOKEN", CANARY)])).unwrap();
    assert_no_canary(&l);
    assert!(l.redacted_render.contains("(sensitive)"));
    let api = &l.desired.services["api"];
    assert!(api.env["PASSWORD"].is_sensitive());
    assert_eq!(api.env["PASSWORD"].expose(), Some(CANARY));
    assert_eq!(
        api.args[0].expose(),
        Some(format!("--token={CANARY}").as_str())
    );
}

#[test]
fn secrets_come_from_files_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("DB_PASSWORD"), format!("{CANARY}\n")).unwrap();
    let file = dir.path().join("other");
    std::fs::write(&file, CANARY).unwrap();
    let doc = "services:\n  api:\n    command: x\n    env:\n      A: \"{{ secret('DB_PASSWORD') }}\"\n      B: \"{{ secret('OTHER') }}\"\n";
    let dirs = dir.path().display().to_string();
    let files = file.display().to_string();
    let l = load_with(
        doc,
        &inputs(&[("DEPLOY_CODE_SECRETS_DIR", &dirs), ("OTHER_FILE", &files)]),
    )
    .unwrap();
    assert_no_canary(&l);
    let env = &l.desired.services["api"].env;
    assert_eq!(env["A"].expose(), Some(CANARY));
    assert_eq!(env["B"].expose(), Some(CANARY));
}

#[test]
fn a_missing_secret_is_a_diagnostic() {
    let err =
        load("services:\n  api:\n    command: x\n    env:\n      A: \"{{ secret('NOPE') }}\"\n")
            .unwrap_err();
    assert_eq!(err.codes(), vec!["E002::missing_secret"]);
}

#[test]
fn a_secret_outside_env_command_args_is_refused() {
    let err = load_with(
        "services:\n  api:\n    image: \"{{ secret('T') }}\"\n",
        &inputs(&[("T", CANARY)]),
    )
    .unwrap_err();
    assert_eq!(err.codes(), vec!["E002::secret_not_allowed"]);
    assert!(!rendered(&err).contains(CANARY));
}

#[test]
fn dollar_interpolation_and_secret_names() {
    let doc = "secrets: [DB_URL]\nservices:\n  api:\n    command: x\n    env:\n      A: \"${PLAIN}\"\n      B: \"${MISSING:-dflt}\"\n      C: \"${API_KEY}\"\n      D: \"${DB_URL}\"\n      E: \"$${LITERAL}\"\n";
    let l = load_with(
        doc,
        &inputs(&[("PLAIN", "p"), ("API_KEY", CANARY), ("DB_URL", CANARY)]),
    )
    .unwrap();
    assert_no_canary(&l);
    let env = &l.desired.services["api"].env;
    assert_eq!(env["A"], deploy_code::model::Text::plain("p"));
    assert_eq!(env["B"], deploy_code::model::Text::plain("dflt"));
    assert!(env["C"].is_sensitive(), "named like a secret");
    assert!(env["D"].is_sensitive(), "declared in `secrets`");
    assert_eq!(env["E"].display(), "${LITERAL}");
    let err = load("services:\n  api:\n    command: \"${UNSET_VAR}\"\n").unwrap_err();
    assert_eq!(err.codes(), vec!["E002::unset_variable"]);
    insta::assert_snapshot!(rendered(&err));
}

#[test]
fn a_loop_generates_27_services() {
    let doc = "services:\n{% for i in range(27) %}\n  mcp-{{ i }}:\n    command: server\n    args: [\"--port\", \"{{ 3000 + i }}\"]\n    ports: [{container_port: {{ 3000 + i }}}]\n{% endfor %}\n";
    let l = load(doc).unwrap();
    assert_eq!(l.desired.services.len(), 27);
    assert_eq!(l.desired.services["mcp-26"].ports[0].host_port, Some(3026));
}

#[test]
fn lowering_is_canonical() {
    let doc = "services:\n  z:\n    command: x\n  a:\n    command: x\n  api:\n    command: x\n    dependencies: [z, a]\n    env: {B: 1, A: true}\n";
    let l = load(doc).unwrap();
    let api = &l.desired.services["api"];
    assert_eq!(
        api.dependencies
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>(),
        ["a", "z"]
    );
    assert_eq!(api.env.keys().collect::<Vec<_>>(), ["A", "B"]);
    assert_eq!(api.env["A"].display(), "true");
    assert_eq!(
        api.resources.cpu_cores, 0.1,
        "a local process counts a tenth of a core"
    );
    assert_eq!(api.replicas, 1);
    let again = load(doc).unwrap();
    assert_eq!(api.spec_hash(), again.desired.services["api"].spec_hash());
}

/// What the history keeps for `rollback`: the rendered configuration as a
/// template whose secrets are the `secret('NAME')` calls that made them. It
/// holds no plaintext; rendered again it is the same configuration, with
/// each secret read anew by name (today's value) and still sensitive, and
/// template-like text of the first rendering stays text.
#[test]
fn the_replay_renders_the_same_configuration_with_todays_secrets() {
    let doc = "services:\n  api:\n    command: x\n    args: [\"--token=Bearer {{ secret('API_TOKEN') }}\", \"{{ '{{ literal }} endraw {% raw %}' }}\"]\n    env:\n      PASSWORD: \"{{ secret('DB_PASSWORD') }}\"\n";
    let first = load_with(
        doc,
        &inputs(&[("API_TOKEN", CANARY), ("DB_PASSWORD", "pw-then")]),
    )
    .unwrap();
    assert!(!first.replay_render.contains(CANARY));
    assert!(!first.replay_render.contains("pw-then"));
    let again = load_with(
        &first.replay_render,
        &inputs(&[("API_TOKEN", "token-now"), ("DB_PASSWORD", "pw-now")]),
    )
    .unwrap();
    assert_eq!(again.redacted_render, first.redacted_render);
    let api = &again.desired.services["api"];
    assert!(api.args[0].is_sensitive());
    assert_eq!(api.args[0].expose(), Some("--token=Bearer token-now"));
    assert_eq!(api.args[1].expose(), Some("{{ literal }} endraw {% raw %}"));
    assert!(api.env["PASSWORD"].is_sensitive());
    assert_eq!(api.env["PASSWORD"].expose(), Some("pw-now"));
    // A secret that is no longer set stops the replay, naming it.
    let err = load_with(&first.replay_render, &inputs(&[("API_TOKEN", "t")])).unwrap_err();
    assert!(rendered(&err).contains("DB_PASSWORD"), "{}", rendered(&err));
}
