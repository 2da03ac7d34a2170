//! `deploy-code serve` from the attacker's side: a real server on a real
//! socket over a real configuration, tokens minted as a caller would mint
//! them, and what a call leaves in the real state file.

use std::process::{Command, Output};

use deploy_code::serve::pb::{self, deploy_code_client::DeployCodeClient};

use super::serve::{SERVICE, Server, bearer};

/// A secret of exactly 32 bytes: the shortest HS256 secret accepted.
const SECRET: &str = "serve-attack-secret-0123456789ab";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Runs the binary in `dir` with `args` and `JWT_SECRET` set to `secret`.
fn run(dir: &std::path::Path, args: &[&str], secret: &str) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(dir)
        .args(args)
        .env_remove("DEPLOY_CODE_STATE")
        .env_remove("DEPLOY_CODE_CONFIG")
        .env("NO_COLOR", "1")
        .env("JWT_SECRET", secret)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

const HS256_CONFIG: &str = "security:\n  auth:\n    enabled: true\n    method: JWT\n    jwt_secret: \"{{ secret('JWT_SECRET') }}\"\n    token_expiry_seconds: 3600\n  rbac:\n    enabled: true\n";

/// An empty or short HS256 secret would let anyone sign admin tokens:
/// `validate` and `serve` refuse it, naming the secret, never its value;
/// authentication without a key is refused by `validate` too.
#[test]
fn a_short_or_missing_jwt_key_is_refused_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deploy-code.yaml"),
        format!("{HS256_CONFIG}{SERVICE}"),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", crate::support::free_port());
    for secret in ["", "short-secret-of-31-bytes-xxxxxx"] {
        let (out, text) = run(dir.path(), &["validate", "--format", "json"], secret);
        assert_eq!(out.status.code(), Some(1), "{secret:?}: {text}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let message = v["diagnostics"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("the secret `JWT_SECRET`"), "{text}");
        assert!(message.contains("at least 32 bytes"), "{text}");
        assert_eq!(v["diagnostics"][0]["line"], 5, "{text}");
        assert!(secret.is_empty() || !text.contains(secret), "{text}");
        let (out, text) = run(dir.path(), &["serve", "--listen", &listen], secret);
        assert_eq!(out.status.code(), Some(1), "{secret:?}: {text}");
        assert!(!text.contains("listening"), "{text}");
        assert!(text.contains("32 bytes"), "{text}");
        assert!(secret.is_empty() || !text.contains(secret), "{text}");
    }
    let (out, text) = run(dir.path(), &["validate"], SECRET);
    assert!(out.status.success(), "{text}");

    std::fs::write(
        dir.path().join("deploy-code.yaml"),
        format!("security:\n  auth: {{enabled: true, method: JWT}}\n{SERVICE}"),
    )
    .unwrap();
    let (out, text) = run(dir.path(), &["validate", "--format", "json"], SECRET);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "E002::missing_key", "{text}");
    assert!(
        d["message"].as_str().unwrap().contains("names no key"),
        "{text}"
    );
    assert_eq!(d["line"], 2, "{text}");
}

/// A token's times are judged against the server's clock: a token minted
/// with a far `iat` and `exp` (three years of validity under a one-hour
/// `token_expiry_seconds`), one not valid before a future `nbf`, and one
/// issued in the future are refused; an ordinary one passes.
#[test]
fn token_times_are_judged_against_the_server_clock() {
    let server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &format!("{HS256_CONFIG}{SERVICE}"),
        &[("JWT_SECRET", SECRET)],
    );
    let t = now();
    let token = |claims: serde_json::Value| {
        let mut c = serde_json::json!({"sub": "mallory", "role": "viewer"});
        c.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        hs256(SECRET, c)
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = DeployCodeClient::connect(format!("http://{}", server.addr))
            .await
            .unwrap();
        let fine = token(serde_json::json!({"iat": t, "exp": t + 600}));
        client
            .status(bearer(pb::StatusRequest {}, &fine))
            .await
            .unwrap();
        for (claims, why) in [
            (
                serde_json::json!({"iat": t + 100_000_000 - 60, "exp": t + 100_000_000}),
                "`iat`",
            ),
            (
                serde_json::json!({"nbf": t + 3000, "exp": t + 3500}),
                "`nbf`",
            ),
            (
                serde_json::json!({"iat": t + 3000, "exp": t + 3500}),
                "`iat`",
            ),
        ] {
            let e = client
                .status(bearer(pb::StatusRequest {}, &token(claims.clone())))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{claims}: {e:?}");
            assert!(e.message().contains(why), "{claims}: {}", e.message());
        }
    });
}

/// A second definition of a role name would replace the first one's
/// permissions (a viewer granted everything): refused at the second one.
#[test]
fn a_role_defined_twice_is_refused_at_its_second_definition() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deploy-code.yaml"),
        format!(
            "security:\n  auth:\n    enabled: true\n    method: JWT\n    jwt_secret: \"{{{{ secret('JWT_SECRET') }}}}\"\n  rbac:\n    enabled: true\n    roles:\n      - viewer\n      - name: viewer\n        permissions: [\"*\"]\n{SERVICE}"
        ),
    )
    .unwrap();
    let (out, text) = run(dir.path(), &["validate", "--format", "json"], SECRET);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "E002::invalid_value", "{text}");
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("`viewer` is defined twice"),
        "{text}"
    );
    assert_eq!(
        (d["line"].clone(), d["column"].clone()),
        (10.into(), 9.into()),
        "{text}"
    );
    let (_, human) = run(dir.path(), &["validate"], SECRET);
    assert!(human.contains("first defined here"), "{human}");
}

/// A viewer's `Plan` naming 100,000 targets is refused as INVALID_ARGUMENT
/// before it runs, with a short message; the audit row it leaves is
/// bounded, and `state audit` prints the audit afterwards.
#[test]
fn a_call_cannot_bloat_the_state_or_break_state_audit() {
    let server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &format!("{HS256_CONFIG}{SERVICE}"),
        &[("JWT_SECRET", SECRET)],
    );
    let t = now();
    let viewer = hs256(
        SECRET,
        serde_json::json!({"sub": "mallory", "role": "viewer", "iat": t, "exp": t + 600}),
    );
    let many: Vec<String> = (0..100_000).map(|i| format!("target-{i:06}")).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = DeployCodeClient::connect(format!("http://{}", server.addr))
            .await
            .unwrap();
        let e = client
            .plan(bearer(
                pb::PlanRequest {
                    targets: many,
                    destroy: false,
                },
                &viewer,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains("at most 256"), "{}", e.message());
        let trailers: usize = e
            .metadata()
            .iter()
            .map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    k.as_str().len() + v.as_encoded_bytes().len()
                }
                tonic::metadata::KeyAndValueRef::Binary(k, v) => {
                    k.as_str().len() + v.as_encoded_bytes().len()
                }
            })
            .sum();
        assert!(
            e.message().len() + trailers < 8 * 1024,
            "{} bytes",
            e.message().len()
        );
        // A name that is no service name is refused the same way.
        let e = client
            .plan(bearer(
                pb::PlanRequest {
                    targets: vec!["x".repeat(100_000)],
                    destroy: false,
                },
                &viewer,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(e.message().len() < 1024, "{} bytes", e.message().len());
    });
    let state = server.dir.path().join(".deploy-code/state.db");
    let conn = rusqlite::Connection::open(&state).unwrap();
    let longest: i64 = conn
        .query_row(
            "SELECT max(length(message)) FROM events WHERE kind = 'audit'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(longest < 8 * 1024, "an audit row of {longest} bytes");
    let (out, text) = run(
        server.dir.path(),
        &["state", "audit", "--limit", "1000"],
        SECRET,
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("mallory"), "{text}");
}

/// `state audit` prints whatever an audit row of a real state file holds:
/// a detail of megabytes (rows written before audit rows were bounded), a
/// subject wider than any format width, control characters and a terminal
/// escape, a message that is not JSON.
#[test]
fn state_audit_prints_any_stored_row() {
    use deploy_code::state::{Holder, Store};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    drop(Store::open(&state, &Holder::current("test"), None).unwrap());
    let conn = rusqlite::Connection::open(&state).unwrap();
    let insert = |outcome: &str, message: &str| {
        conn.execute(
            "INSERT INTO events (revision, at, service, kind, outcome, message) \
             VALUES (0, '2026-01-01T00:00:00Z', NULL, 'audit', ?1, ?2)",
            rusqlite::params![outcome, message],
        )
        .unwrap();
    };
    let record = |subject: String, detail: String| {
        serde_json::json!({"subject": subject, "role": "viewer", "call": "Plan", "detail": detail})
            .to_string()
    };
    insert("failed", &record("mallory".into(), "d".repeat(3_000_000)));
    insert("denied", &record("s".repeat(70_000), "short".into()));
    insert(
        "failed",
        &record(
            "eve\u{1b}]0;owned\u{7}".into(),
            "line one\nline two\u{1b}[2J\u{202e}".into(),
        ),
    );
    insert("succeeded", "not json at all");
    drop(conn);
    let out = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(dir.path())
        .args(["--state", "state.db", "state", "audit", "--limit", "1000"])
        .env_remove("DEPLOY_CODE_STATE")
        .env_remove("DEPLOY_CODE_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One header and one line per row; the widest a cell shows is bounded.
    assert_eq!(text.lines().count(), 5, "{}", &text[..text.len().min(4000)]);
    assert!(text.len() < 16 * 1024, "{} bytes", text.len());
    assert!(
        text.contains("characters more"),
        "{}",
        &text[..text.len().min(4000)]
    );
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{202e}'),
        "{text}"
    );
    assert!(text.contains("line one\\nline two"), "{text}");
    // JSON shows every value whole.
    let json = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(dir.path())
        .args(["--state", "state.db", "state", "audit", "--format", "json"])
        .env_remove("DEPLOY_CODE_STATE")
        .env_remove("DEPLOY_CODE_CONFIG")
        .output()
        .unwrap();
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["calls"].as_array().unwrap().len(), 4);
}
