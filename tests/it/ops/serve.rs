//! `deploy-code serve`: the Python API's tests (python/tests, pytest) run
//! against the binary built here, and the server's refusals to start.

use std::process::Command;

use crate::support::free_port;

/// Whether the Python packages the API's tests need are importable; CI
/// installs them (`.ci/run`) and demands them.
fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import grpc, jwt, pytest, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::support::skip(
            "the_python_api_passes_its_tests_against_a_real_server",
            "DEPLOY_CODE_REQUIRE_TOOLS",
            "the Python API's test packages are missing: `pip install './python[test]'`",
        );
    }
    ok
}

#[test]
fn the_python_api_passes_its_tests_against_a_real_server() {
    if !python_ready() {
        return;
    }
    let out = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-s",
            "tests",
        ])
        .current_dir("python")
        .env("DEPLOY_CODE_BIN", env!("CARGO_BIN_EXE_deploy-code"))
        .env_remove("DEPLOY_CODE_STATE")
        .env_remove("DEPLOY_CODE_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pytest failed:\n{text}");
    // The measured event delivery, for the record.
    for line in text.lines().filter(|l| l.contains("event delivery")) {
        eprintln!("{line}");
    }
}

fn serve(config: &str, listen: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("deploy-code.yaml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(dir.path())
        .args(["serve", "--listen", listen])
        .env_remove("DEPLOY_CODE_STATE")
        .env_remove("DEPLOY_CODE_CONFIG")
        .env("JWT_SECRET", "serve-refusal-secret-0123456789abcdef")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub(super) const SERVICE: &str =
    "services:\n  web:\n    command: /bin/busybox\n    args: [\"sleep\", \"60\"]\n";

#[test]
fn serve_refuses_a_public_address_without_authentication() {
    let (code, out) = serve(SERVICE, &format!("0.0.0.0:{}", free_port()));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("without authentication"), "{out}");
    assert!(out.contains("loopback"), "{out}");
}

#[test]
fn serve_refuses_tokens_it_could_not_check() {
    let config = format!("security:\n  auth: {{enabled: true, method: JWT}}\n{SERVICE}");
    let (code, out) = serve(&config, &format!("127.0.0.1:{}", free_port()));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("names no key"), "{out}");
}

#[test]
fn serve_refuses_missing_certificate_files() {
    let config = format!(
        "security:\n  tls_enabled: true\n  cert_path: nowhere/server.crt\n  key_path: nowhere/server.key\n{SERVICE}"
    );
    let (code, out) = serve(&config, &format!("127.0.0.1:{}", free_port()));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cert_path"), "{out}");
}

/// `security.tls` as a mapping serves over TLS: a TLS client gets the
/// server's certificate; the mapping and the flat keys together are refused.
#[test]
fn the_tls_mapping_serves_over_tls() {
    if !crate::support::have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let twice = format!(
        "security:\n  tls_enabled: true\n  tls: {{cert_path: server.crt, key_path: server.key}}\n{SERVICE}"
    );
    std::fs::write(dir.path().join("deploy-code.yaml"), twice).unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .arg("validate")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("TLS given here too"),
        "{refused:?}"
    );
    let config =
        format!("security:\n  tls: {{cert_path: server.crt, key_path: server.key}}\n{SERVICE}");
    let server = Server::start(dir, &config);
    let hello = Command::new("openssl")
        .args(["s_client", "-connect", &server.addr, "-alpn", "h2"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&hello.stdout);
    assert!(text.contains("BEGIN CERTIFICATE"), "{text}");
    assert!(
        text.contains("CN=localhost") || text.contains("CN = localhost"),
        "{text}"
    );
}

/// A request carrying `token` as its bearer token.
pub(super) fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// A server on a free port over `config`, stopped (by its pid) on drop.
pub(super) struct Server {
    child: std::process::Child,
    pub(super) addr: String,
    pub(super) dir: tempfile::TempDir,
}

impl Server {
    pub(super) fn start(dir: tempfile::TempDir, config: &str) -> Server {
        Server::start_with(dir, config, &[])
    }

    /// The server's pid, to signal it.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A server over `config` with `env` set in its environment.
    pub(super) fn start_with(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        std::fs::write(dir.path().join("deploy-code.yaml"), config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_deploy-code"))
            .current_dir(dir.path())
            .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
            .env_remove("DEPLOY_CODE_STATE")
            .env_remove("DEPLOY_CODE_CONFIG")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("serve did not start: {line}"))
            .to_owned();
        Server { child, addr, dir }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RS256/EdDSA: a public key checks the tokens, with issuer and audience;
/// a custom role allows only its permissions.
#[test]
fn eddsa_tokens_with_issuer_audience_and_a_custom_role() {
    use deploy_code::serve::pb::{self, deploy_code_client::DeployCodeClient};
    if !crate::support::have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let s = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(s.success(), "openssl {args:?}");
    };
    run(&["genpkey", "-algorithm", "ed25519", "-out", "jwt.key"]);
    run(&["pkey", "-in", "jwt.key", "-pubout", "-out", "jwt.pub"]);
    let private = std::fs::read(dir.path().join("jwt.key")).unwrap();
    let config = format!(
        "security:\n  auth:\n    enabled: true\n    method: JWT\n    jwt_public_key_path: jwt.pub\n    jwt_algorithm: EdDSA\n    issuer: ci.example.com\n    audience: deploy-code\n  rbac:\n    enabled: true\n    roles:\n      - name: watcher\n        permissions: [status]\n{SERVICE}"
    );
    let server = Server::start(dir, &config);
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&private).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |iss: &str, aud: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &serde_json::json!({"sub": "bot", "role": "watcher", "iss": iss, "aud": aud, "exp": now + 300}),
            &key,
        )
        .unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = DeployCodeClient::connect(format!("http://{}", server.addr))
            .await
            .unwrap();
        let call = |t: String| bearer(pb::StatusRequest {}, &t);
        let doc = client
            .status(call(token("ci.example.com", "deploy-code")))
            .await
            .unwrap()
            .into_inner();
        assert!(doc.json.contains("\"services\""), "{}", doc.json);
        let e = client
            .status(call(token("elsewhere", "deploy-code")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("issuer"), "{}", e.message());
        let e = client
            .status(call(token("ci.example.com", "other")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("audience"), "{}", e.message());
        let plan = bearer(
            pb::PlanRequest::default(),
            &token("ci.example.com", "deploy-code"),
        );
        let e = client.plan(plan).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("`watcher`"), "{}", e.message());
        // An HS256 token is refused by an EdDSA server.
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub": "eve", "role": "watcher", "iss": "ci.example.com", "aud": "deploy-code", "exp": now + 300}),
            &jsonwebtoken::EncodingKey::from_secret(b"guess"),
        )
        .unwrap();
        let e = client.status(call(forged)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    });
}

/// RS256: an RSA public key checks the tokens; a token signed by another
/// RSA key is refused.
#[test]
fn rs256_tokens_are_checked_with_the_public_key() {
    use deploy_code::serve::pb::{self, deploy_code_client::DeployCodeClient};
    if !crate::support::have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let s = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(s.success(), "openssl {args:?}");
    };
    for name in ["jwt", "other"] {
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &format!("{name}.key"),
        ]);
    }
    run(&["pkey", "-in", "jwt.key", "-pubout", "-out", "jwt.pub"]);
    let private = std::fs::read(dir.path().join("jwt.key")).unwrap();
    let other = std::fs::read(dir.path().join("other.key")).unwrap();
    let config = format!(
        "security:\n  auth:\n    enabled: true\n    method: JWT\n    jwt_public_key_path: jwt.pub\n    jwt_algorithm: RS256\n  rbac:\n    enabled: true\n{SERVICE}"
    );
    let server = Server::start(dir, &config);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |pem: &[u8]| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &serde_json::json!({"sub": "release-bot", "role": "viewer", "exp": now + 300}),
            &jsonwebtoken::EncodingKey::from_rsa_pem(pem).unwrap(),
        )
        .unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = DeployCodeClient::connect(format!("http://{}", server.addr))
            .await
            .unwrap();
        let call = |t: String| bearer(pb::StatusRequest {}, &t);
        let doc = client
            .status(call(token(&private)))
            .await
            .unwrap()
            .into_inner();
        assert!(doc.json.contains("\"services\""), "{}", doc.json);
        let e = client.status(call(token(&other))).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    });
}
