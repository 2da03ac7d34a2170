//! `serve`: starts the gRPC server of `crate::serve` on this configuration
//! and state.

use crate::cli::{Context, ServeArgs};
use crate::error::{Code, Failure, Plain, exit};

pub fn run(ctx: &Context, args: &ServeArgs) -> Result<u8, Failure> {
    let loaded = super::apply::load_config(ctx)?;
    let security = &loaded.desired.settings.security;
    let refuse = |msg: String, help: &str| -> Failure {
        Plain::new(Code::E016, msg).help(help.to_owned()).into()
    };
    let gate = crate::serve::auth::Gate::new(security)
        .map_err(|m| refuse(m, "see `security.auth` in docs/serve.md"))?;
    if !gate.authenticates() && !args.listen.ip().is_loopback() {
        return Err(refuse(
            format!(
                "refusing to serve on {} without authentication: anyone who reaches it could deploy",
                args.listen
            ),
            "listen on a loopback address (the default, 127.0.0.1:8401), or enable `security.auth`",
        ));
    }
    let tls = match &security.tls {
        None => None,
        Some(t) => {
            let read = |p: &Option<std::path::PathBuf>, what: &str| {
                let Some(p) = p else {
                    return Err(refuse(
                        format!("`security.tls_enabled` is true but `{what}` is not set"),
                        "name the server's certificate (`cert_path`) and key (`key_path`), PEM files",
                    ));
                };
                std::fs::read(p).map_err(|e| {
                    refuse(
                        format!("cannot read `{}` (`{what}`): {e}", p.display()),
                        "check the path (relative paths resolve against the configuration's directory)",
                    )
                })
            };
            let cert = read(&t.cert, "cert_path")?;
            let key = read(&t.key, "key_path")?;
            let mut cfg = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key));
            if t.client_ca.is_some() {
                let ca = read(&t.client_ca, "client_ca_path")?;
                cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            Some(cfg)
        }
    };
    let state = super::apply::state_path(ctx, Some(&loaded));
    let service = crate::serve::Service::new(ctx.global.clone(), state.clone(), gate)?;
    let rt = super::apply::runtime()?;
    let summary = format!(
        "state {}, tls {}, auth {}, roles {}",
        state.display(),
        if security.tls.is_some() { "on" } else { "off" },
        if security.auth.is_some() {
            "JWT"
        } else {
            "off"
        },
        if security.rbac.is_some() { "on" } else { "off" }
    );
    rt.block_on(crate::serve::serve(
        service,
        crate::serve::Listen {
            addr: args.listen,
            tls,
        },
        |addr| outln!("deploy-code serve: listening on {addr} ({summary})"),
    ))
    .map_err(|m| refuse(m, "pick another `--listen` address, or check `security`"))?;
    Ok(exit::OK)
}
