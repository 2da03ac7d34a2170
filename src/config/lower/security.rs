//! `security:` (for `serve`) and `hooks:`, lowered and checked.

use super::*;

impl Lowering<'_> {
    /// `security:` for `serve`. A key that would change nothing (a
    /// certificate without `tls_enabled`, auth settings without
    /// `auth.enabled`, roles without `rbac.enabled`) is refused.
    pub(super) fn security(&self, out: &mut Vec<Problem>) -> SecuritySettings {
        let Some(sec) = &self.file.security else {
            return SecuritySettings::default();
        };
        let at = |path: &[&str]| {
            let mut full = vec!["security"];
            full.extend_from_slice(path);
            span_of(self.root, &full).unwrap_or(0..0)
        };
        let unused = |path: &[&str], why: &str, help: &str| {
            Problem::new(
                Kind::InvalidValue,
                format!("`security.{}` has no effect: {why}", path.join(".")),
            )
            .label(at(path), "would have no effect")
            .help(help.to_owned())
        };
        let resolve = |p: &String| self.base_dir.join(p);
        let tls_on = sec.tls_enabled == Some(true);
        for (key, value) in [
            ("cert_path", &sec.cert_path),
            ("key_path", &sec.key_path),
            ("client_ca_path", &sec.client_ca_path),
        ] {
            if value.is_some() && !tls_on {
                out.push(unused(
                    &[key],
                    "`tls_enabled` is not true",
                    "set `tls_enabled: true` to serve over TLS, or remove the key",
                ));
            }
        }
        let mut tls = tls_on.then(|| TlsSettings {
            cert: sec.cert_path.as_ref().map(resolve),
            key: sec.key_path.as_ref().map(resolve),
            client_ca: sec.client_ca_path.as_ref().map(resolve),
        });
        if let Some(t) = &sec.tls {
            if sec.tls_enabled.is_some()
                || sec.cert_path.is_some()
                || sec.key_path.is_some()
                || sec.client_ca_path.is_some()
            {
                out.push(
                    Problem::new(
                        Kind::InvalidValue,
                        "`security.tls` and `security.tls_enabled` / `cert_path` / `key_path` / `client_ca_path` say the same thing twice".to_owned(),
                    )
                    .label(at(&["tls"]), "TLS given here too")
                    .help("keep one form: the `tls:` mapping, or `tls_enabled: true` with the flat keys"),
                );
            }
            tls = Some(TlsSettings {
                cert: Some(resolve(&t.cert_path)),
                key: Some(resolve(&t.key_path)),
                client_ca: t.client_ca_path.as_ref().map(resolve),
            });
        }
        let a = sec.auth.clone().unwrap_or_default();
        let auth_on = a.enabled == Some(true);
        if let Some(m) = &a.method
            && m != "JWT"
        {
            out.push(
                unsupported(
                    "security.auth.method",
                    m,
                    "tokens are JWTs: write `method: JWT`",
                )
                .label(at(&["auth", "method"]), "not supported"),
            );
        }
        if !auth_on {
            for (key, set) in [
                ("method", a.method.is_some()),
                ("token_expiry_seconds", a.token_expiry_seconds.is_some()),
                ("jwt_secret", a.jwt_secret.is_some()),
                ("jwt_public_key_path", a.jwt_public_key_path.is_some()),
                ("jwt_algorithm", a.jwt_algorithm.is_some()),
                ("issuer", a.issuer.is_some()),
                ("audience", a.audience.is_some()),
            ] {
                if set {
                    out.push(unused(
                        &["auth", key],
                        "`auth.enabled` is not true",
                        "set `auth.enabled: true` to require tokens, or remove the key",
                    ));
                }
            }
        }
        if a.jwt_secret.is_some() && a.jwt_public_key_path.is_some() {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`security.auth` names both `jwt_secret` and `jwt_public_key_path`",
                )
                .label(at(&["auth", "jwt_public_key_path"]), "one key only")
                .help("keep `jwt_secret` for HS256 tokens or `jwt_public_key_path` (with `jwt_algorithm`) for RS256/EdDSA tokens"),
            );
        }
        if a.jwt_public_key_path.is_some() != a.jwt_algorithm.is_some() {
            let key = if a.jwt_algorithm.is_some() {
                "jwt_algorithm"
            } else {
                "jwt_public_key_path"
            };
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`security.auth.jwt_public_key_path` and `jwt_algorithm` go together",
                )
                .label(at(&["auth", key]), "needs the other")
                .help("name the public key file and its algorithm (`RS256` or `EdDSA`)"),
            );
        }
        let secret = a.jwt_secret.as_ref().map(|s| self.text(s));
        if let Some(crate::model::Text::Plain(_)) = &secret {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`security.auth.jwt_secret` is written in plain text",
                )
                .label(at(&["auth", "jwt_secret"]), "not a secret")
                .help("give it as a secret: `jwt_secret: \"{{ secret('JWT_SECRET') }}\"`"),
            );
        }
        if auth_on && let Some(crate::model::Text::Sensitive(value)) = &secret {
            // Only the secret's name and whether it is empty are said: its
            // length would tell a guesser where to start.
            let len = value.expose().map_or(0, str::len);
            if len < crate::model::MIN_HS256_SECRET_BYTES {
                let names = a
                    .jwt_secret
                    .as_deref()
                    .map(|s| self.secrets.names(s))
                    .unwrap_or_default();
                let named = match names.as_slice() {
                    [] => "the secret".to_owned(),
                    [one] => format!("the secret `{one}`"),
                    many => format!("the secrets `{}`", many.join("`, `")),
                };
                out.push(
                    Problem::new(
                        Kind::InvalidValue,
                        format!(
                            "`security.auth.jwt_secret` ({named}) is {}: an HS256 secret needs at least {} bytes",
                            if len == 0 { "empty" } else { "too short" },
                            crate::model::MIN_HS256_SECRET_BYTES
                        ),
                    )
                    .label(at(&["auth", "jwt_secret"]), "a guessable key signs tokens anyone could forge")
                    .help(format!(
                        "give {named} at least {} random bytes (RFC 7518 §3.2), e.g. `openssl rand -base64 48`",
                        crate::model::MIN_HS256_SECRET_BYTES
                    )),
                );
            }
        }
        if auth_on && a.jwt_secret.is_none() && a.jwt_public_key_path.is_none() {
            out.push(
                Problem::new(
                    Kind::MissingKey,
                    "`security.auth` is enabled but names no key: no token could be checked",
                )
                .label(at(&["auth", "enabled"]), "tokens need a key")
                .help("give `jwt_secret: \"{{ secret('JWT_SECRET') }}\"` (HS256) or `jwt_public_key_path` with `jwt_algorithm` (RS256 or EdDSA)"),
            );
        }
        let key = match (secret, &a.jwt_public_key_path, a.jwt_algorithm) {
            (Some(s), _, _) => Some(JwtKey::Hs256(s)),
            (None, Some(p), Some(algorithm)) => Some(JwtKey::Public {
                path: resolve(p),
                algorithm,
            }),
            _ => None,
        };
        let auth = auth_on.then(|| AuthSettings {
            key,
            max_lifetime: a.token_expiry_seconds,
            issuer: a.issuer.clone(),
            audience: a.audience.clone(),
        });
        let r = sec.rbac.clone().unwrap_or_default();
        let rbac_on = r.enabled == Some(true);
        if rbac_on && !auth_on {
            out.push(
                Problem::new(
                    Kind::InvalidValue,
                    "`security.rbac` is enabled but `security.auth` is not",
                )
                .label(at(&["rbac", "enabled"]), "roles come from tokens")
                .help("set `security.auth.enabled: true` (roles are claims of the callers' tokens), or disable `rbac`"),
            );
        }
        if r.roles.is_some() && !rbac_on {
            out.push(unused(
                &["rbac", "roles"],
                "`rbac.enabled` is not true",
                "set `rbac.enabled: true` for roles to decide what a token may call, or remove `roles`",
            ));
        }
        let defaults = crate::model::default_roles();
        let mut roles = BTreeMap::new();
        // Where each role was first defined: a second definition of a name
        // would replace the first one's permissions without a word.
        let mut defined: BTreeMap<&str, Range<usize>> = BTreeMap::new();
        match &r.roles {
            None => roles = defaults.clone(),
            Some(list) => {
                for (i, role) in list.iter().enumerate() {
                    let span = self
                        .root
                        .get("security")
                        .and_then(|n| n.get("rbac"))
                        .and_then(|n| n.get("roles"))
                        .and_then(|n| match &n.value {
                            Value::Seq(items) => items.get(i).map(|n| n.span.clone()),
                            _ => None,
                        })
                        .unwrap_or(0..0);
                    let name = match role {
                        schema::Role::Name(name) => name,
                        schema::Role::Full(def) => &def.name,
                    };
                    if let Some(first) = defined.get(name.as_str()) {
                        out.push(
                            Problem::new(
                                Kind::InvalidValue,
                                format!("the role `{name}` is defined twice"),
                            )
                            .label(span.clone(), "defined again here")
                            .label(first.clone(), "first defined here")
                            .help(format!(
                                "keep one definition of `{name}`: a second one would replace the first one's permissions"
                            )),
                        );
                        continue;
                    }
                    defined.insert(name, span.clone());
                    match role {
                        schema::Role::Name(name) => match defaults.get(name) {
                            Some(p) => {
                                roles.insert(name.clone(), p.clone());
                            }
                            None => out.push(
                                Problem::new(
                                    Kind::InvalidValue,
                                    format!("`{name}` is not a default role"),
                                )
                                .label(span, "unknown role")
                                .help(format!(
                                    "the default roles are viewer, operator and admin; define others with `{{name: {name}, permissions: [...]}}`{}",
                                    did_you_mean(name, defaults.keys().map(String::as_str)).map(|d| format!(" (did you mean `{d}`?)")).unwrap_or_default()
                                )),
                            ),
                        },
                        schema::Role::Full(def) => {
                            let mut set = BTreeSet::new();
                            for (j, p) in def.permissions.iter().enumerate() {
                                let at_permission = self
                                    .root
                                    .get("security")
                                    .and_then(|n| n.get("rbac"))
                                    .and_then(|n| n.get("roles"))
                                    .and_then(|n| match &n.value {
                                        Value::Seq(items) => items.get(i),
                                        _ => None,
                                    })
                                    .and_then(|n| n.get("permissions"))
                                    .and_then(|n| match &n.value {
                                        Value::Seq(items) => items.get(j).map(|n| n.span.clone()),
                                        _ => None,
                                    })
                                    .unwrap_or_else(|| span.clone());
                                match p.as_str() {
                                    "*" => set.extend(
                                        crate::model::PERMISSIONS.iter().map(|s| (*s).to_owned()),
                                    ),
                                    "deploy" => {
                                        set.insert("apply".to_owned());
                                    }
                                    p if crate::model::PERMISSIONS.contains(&p) => {
                                        set.insert(p.to_owned());
                                    }
                                    other => out.push(
                                        Problem::new(
                                            Kind::InvalidValue,
                                            format!("`{other}` is not a permission (role `{}`)", def.name),
                                        )
                                        .label(at_permission, "unknown permission")
                                        .help(format!(
                                            "{}permissions are the calls: {}, `deploy` (the same as `apply`) or `*`",
                                            did_you_mean(other, crate::model::PERMISSIONS.iter().copied()).map(|d| format!("did you mean `{d}`? ")).unwrap_or_default(),
                                            crate::model::PERMISSIONS.join(", "),
                                        )),
                                    ),
                                }
                            }
                            roles.insert(def.name.clone(), set);
                        }
                    }
                }
            }
        }
        SecuritySettings {
            tls,
            auth,
            rbac: rbac_on.then_some(roles),
        }
    }

    /// `hooks:`: each one a program or a webhook, never both.
    pub(super) fn hooks(&self, out: &mut Vec<Problem>) -> HooksSettings {
        let Some(h) = &self.file.hooks else {
            return HooksSettings::default();
        };
        let mut lower = |when: &str, list: &Option<Vec<schema::Hook>>| -> Vec<HookSpec> {
            let mut specs = Vec::new();
            for (i, hook) in list.iter().flatten().enumerate() {
                let span = self
                    .root
                    .get("hooks")
                    .and_then(|n| n.get(when))
                    .and_then(|n| match &n.value {
                        Value::Seq(items) => items.get(i).map(|n| n.span.clone()),
                        _ => None,
                    })
                    .unwrap_or(0..0);
                let bad = |msg: String, help: &str| {
                    Problem::new(Kind::InvalidValue, msg)
                        .label(span.clone(), "this hook")
                        .help(help.to_owned())
                };
                let target = match (&hook.command, &hook.url) {
                    (Some(argv), None) if !argv.is_empty() && !argv[0].is_empty() => {
                        if hook.retries.is_some() {
                            out.push(bad(
                                format!("`hooks.{when}[{i}].retries` has no effect on a command"),
                                "only a webhook is retried; remove `retries`",
                            ));
                        }
                        HookTarget::Command(argv.clone())
                    }
                    (None, Some(url)) => {
                        let t = self.text(url);
                        let shown = t.display();
                        let plain = match &t {
                            Text::Plain(p) => p.clone(),
                            Text::Sensitive(s) => s.expose().unwrap_or_default().to_owned(),
                        };
                        if !(plain.starts_with("http://") || plain.starts_with("https://")) {
                            out.push(bad(
                                format!("`hooks.{when}[{i}].url` `{shown}` is not an http(s) URL"),
                                "write `http://...` or `https://...`",
                            ));
                        }
                        HookTarget::Webhook(t)
                    }
                    (Some(_), Some(_)) => {
                        out.push(bad(
                            format!("`hooks.{when}[{i}]` has both `command` and `url`"),
                            "a hook is a program or a webhook: keep one",
                        ));
                        continue;
                    }
                    _ => {
                        out.push(bad(
                            format!("`hooks.{when}[{i}]` has neither a `command` nor a `url`"),
                            "give `command: [program, args...]` or `url: https://...`",
                        ));
                        continue;
                    }
                };
                let spec = HookSpec {
                    target,
                    timeout: std::time::Duration::from_secs(hook.timeout_seconds.unwrap_or(10)),
                    retries: hook.retries.unwrap_or(2),
                };
                // Each bound alone is the schema's (its diagnostic names the
                // range); together they must fit the hook's total.
                let in_range = spec.retries <= HookSpec::MAX_RETRIES
                    && spec.timeout.as_secs() <= HookSpec::MAX_TIMEOUT_SECONDS;
                let worst = spec.worst_case();
                if in_range && worst > HookSpec::MAX_TOTAL {
                    let attempts = spec.retries + 1;
                    let pauses = worst - spec.timeout * attempts;
                    out.push(bad(
                        format!(
                            "`hooks.{when}[{i}]` may take {} s: {attempts} attempts of up to {} s and {} s of pauses, more than the {} s a hook may take",
                            worst.as_secs_f64(),
                            spec.timeout.as_secs(),
                            pauses.as_secs_f64(),
                            HookSpec::MAX_TOTAL.as_secs()
                        ),
                        &format!(
                            "lower `timeout_seconds` or `retries`: (retries + 1) × timeout_seconds plus the pauses between attempts must stay within {} s",
                            HookSpec::MAX_TOTAL.as_secs()
                        ),
                    ));
                }
                specs.push(spec);
            }
            specs
        };
        HooksSettings {
            pre_apply: lower("pre_apply", &h.pre_apply),
            post_apply: lower("post_apply", &h.post_apply),
            on_failure: lower("on_failure", &h.on_failure),
            on_rollback: lower("on_rollback", &h.on_rollback),
        }
    }
}
