//! Who is calling and what they may call: JWT bearer tokens (HS256 with a
//! secret of at least 32 bytes, RS256 or EdDSA with a public key), their
//! times (`exp`, `nbf`, `iat`) judged against the server's clock, issuer and
//! audience checks, and roles from the `role` (a string) or `roles` (a list)
//! claim judged against `security.rbac`. Nothing here reaches the engine: a
//! call that is refused here never runs.

use std::collections::{BTreeMap, BTreeSet};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::model::{AuthSettings, JwtKey, SecuritySettings};

/// The caller as far as the audit needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The token's `sub`; `anonymous` without authentication.
    pub subject: String,
    /// The role the call was allowed under (or the token's roles, joined,
    /// when it was refused).
    pub role: String,
}

/// Why a call was refused, before it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No token, a bad signature, an expired token, a wrong issuer or audience.
    Unauthenticated(String),
    /// The token is valid but none of its roles has the call's permission.
    Denied(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
}

/// Checks tokens and roles; built once when the server starts.
pub struct Gate {
    verifier: Option<Verifier>,
    roles: Option<BTreeMap<String, BTreeSet<String>>>,
}

struct Verifier {
    key: DecodingKey,
    validation: Validation,
    max_lifetime: Option<u64>,
}

/// Clock slack between the server and whoever minted a token, seconds: a
/// token expired this recently still passes, one whose `nbf` or `iat` lies
/// this far in the server's future too, and one that expires this much
/// later than `token_expiry_seconds` from now. Documented in docs/serve.md.
const LEEWAY: u64 = 5;

impl Gate {
    /// The gate `security` describes, or why it cannot be built (a missing
    /// key, an unreadable public key file).
    pub fn new(security: &SecuritySettings) -> Result<Gate, String> {
        let verifier = security.auth.as_ref().map(Verifier::new).transpose()?;
        Ok(Gate {
            verifier,
            roles: security.rbac.clone(),
        })
    }

    pub(crate) fn authenticates(&self) -> bool {
        self.verifier.is_some()
    }

    /// Judges a call needing `permission`, given the `authorization`
    /// metadata value. On refusal the caller is returned as far as it is
    /// known, for the audit.
    pub(crate) fn admit(
        &self,
        authorization: Option<&str>,
        call: &str,
        permission: &str,
    ) -> Result<Caller, (Caller, Refusal)> {
        let Some(v) = &self.verifier else {
            return Ok(Caller {
                subject: "anonymous".into(),
                role: String::new(),
            });
        };
        let refuse = |why: String| (Caller::default(), Refusal::Unauthenticated(why));
        let Some(header) = authorization else {
            return Err(refuse(format!(
                "`{call}` needs a bearer token (`authorization: Bearer <JWT>`)"
            )));
        };
        let Some(token) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
        else {
            return Err(refuse(
                "the `authorization` metadata is not `Bearer <JWT>`".into(),
            ));
        };
        let claims = jsonwebtoken::decode::<Claims>(token.trim(), &v.key, &v.validation)
            .map_err(|e| {
                // The audit names who the token claims to be, unverified.
                let claimed = Caller {
                    subject: claimed_subject(token.trim()),
                    role: String::new(),
                };
                (
                    claimed,
                    Refusal::Unauthenticated(format!("the token was refused: {}", describe(&e))),
                )
            })?
            .claims;
        let judged = judge_times(&claims, now(), v.max_lifetime);
        let mut held: Vec<String> = claims.role.into_iter().collect();
        held.extend(claims.roles.unwrap_or_default());
        let caller = |role: String| Caller {
            subject: claims.sub.clone(),
            role,
        };
        if let Err(why) = judged {
            return Err((
                caller(held.join(",")),
                Refusal::Unauthenticated(format!("the token was refused: {why}")),
            ));
        }
        let Some(roles) = &self.roles else {
            return Ok(caller(held.join(",")));
        };
        if let Some(role) = held
            .iter()
            .find(|r| roles.get(*r).is_some_and(|p| p.contains(permission)))
        {
            return Ok(caller(role.clone()));
        }
        // The least privileged role first: the one to ask for.
        let mut allowed: Vec<(usize, &str)> = roles
            .iter()
            .filter(|(_, p)| p.contains(permission))
            .map(|(r, p)| (p.len(), r.as_str()))
            .collect();
        allowed.sort();
        let allowed: Vec<&str> = allowed.into_iter().map(|(_, r)| r).collect();
        let has = if held.is_empty() {
            "the token names no role (claim `role` or `roles`)".to_owned()
        } else {
            format!(
                "the token's role{} `{}` {}",
                if held.len() > 1 { "s" } else { "" },
                held.join("`, `"),
                if held.len() > 1 {
                    "do not allow it"
                } else {
                    "does not allow it"
                }
            )
        };
        Err((
            caller(held.join(",")),
            Refusal::Denied(format!(
                "`{call}` needs the role {} (permission `{permission}`); {has}",
                if allowed.is_empty() {
                    "(none has it)".to_owned()
                } else {
                    allowed
                        .iter()
                        .map(|r| format!("`{r}`"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                }
            )),
        ))
    }
}

impl Verifier {
    fn new(auth: &AuthSettings) -> Result<Verifier, String> {
        let (key, algorithm) = match &auth.key {
            None => {
                return Err("`security.auth` is enabled but names no key: give `jwt_secret` (HS256) or `jwt_public_key_path` with `jwt_algorithm`".into());
            }
            Some(JwtKey::Hs256(text)) => {
                let Some(secret) = text.expose() else {
                    return Err("`security.auth.jwt_secret` has no value".into());
                };
                // `validate` refuses it first; this holds for any settings.
                if secret.len() < crate::model::MIN_HS256_SECRET_BYTES {
                    return Err(format!(
                        "`security.auth.jwt_secret` is {}: an HS256 secret needs at least {} bytes (RFC 7518 §3.2)",
                        if secret.is_empty() {
                            "empty"
                        } else {
                            "too short"
                        },
                        crate::model::MIN_HS256_SECRET_BYTES
                    ));
                }
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                )
            }
            Some(JwtKey::Public { path, algorithm }) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("cannot read the JWT public key `{}`: {e}", path.display())
                })?;
                let (key, alg) = match algorithm {
                    crate::config::schema::JwtAlgorithm::RS256 => {
                        (DecodingKey::from_rsa_pem(&pem), Algorithm::RS256)
                    }
                    crate::config::schema::JwtAlgorithm::EdDSA => {
                        (DecodingKey::from_ed_pem(&pem), Algorithm::EdDSA)
                    }
                };
                let key = key.map_err(|e| {
                    format!(
                        "`{}` is not a {alg:?} public key (PEM): {e}",
                        path.display()
                    )
                })?;
                (key, alg)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &auth.issuer {
            Some(i) => validation.set_issuer(&[i]),
            None => validation.iss = None,
        }
        match &auth.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        if auth.issuer.is_some() {
            validation.required_spec_claims.insert("iss".into());
        }
        if auth.audience.is_some() {
            validation.required_spec_claims.insert("aud".into());
        }
        Ok(Verifier {
            key,
            validation,
            max_lifetime: auth.max_lifetime,
        })
    }
}

/// The `sub` a refused token claims (its signature unchecked): for the
/// audit only, never for a decision.
fn claimed_subject(token: &str) -> String {
    use base64::Engine;
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("sub").and_then(|s| s.as_str()).map(str::to_owned))
        .map(|s| s.chars().take(200).collect())
        .unwrap_or_default()
}

/// Judges a token's times against the server's clock `now`, never against
/// one another alone: a token minted with a future `iat` must not buy itself
/// a longer life than `token_expiry_seconds`.
fn judge_times(c: &Claims, now: u64, max_lifetime: Option<u64>) -> Result<(), String> {
    if c.exp.saturating_add(LEEWAY) < now {
        return Err("it has expired".into());
    }
    if let Some(nbf) = c.nbf
        && nbf > now.saturating_add(LEEWAY)
    {
        return Err("it is not valid yet (`nbf` lies in the future)".into());
    }
    if let Some(iat) = c.iat
        && iat > now.saturating_add(LEEWAY)
    {
        return Err("it was issued in the future (`iat` is later than the server's clock)".into());
    }
    let Some(max) = max_lifetime else {
        return Ok(());
    };
    let left = c.exp.saturating_sub(now);
    if left > max.saturating_add(LEEWAY) {
        return Err(format!(
            "it is good for another {left} s, longer than `token_expiry_seconds` ({max} s)"
        ));
    }
    if let Some(iat) = c.iat
        && c.exp.saturating_sub(iat) > max
    {
        return Err(format!(
            "it lives {} s, longer than `token_expiry_seconds` ({max} s)",
            c.exp.saturating_sub(iat)
        ));
    }
    Ok(())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What was wrong with a token, in the caller's terms.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => "its signature does not match the server's key".into(),
        K::ExpiredSignature => "it has expired".into(),
        K::ImmatureSignature => "it is not valid yet (`nbf` lies in the future)".into(),
        K::InvalidIssuer => "its issuer (`iss`) is not the one expected".into(),
        K::InvalidAudience => "its audience (`aud`) is not the one expected".into(),
        K::InvalidAlgorithm => "it is signed with another algorithm than the server's key".into(),
        K::MissingRequiredClaim(c) => format!("it has no `{c}` claim"),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => "it is not a JWT".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AuthSettings, Text};
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &str = "unit-test-secret-0123456789abcdef";

    fn gate(secret: &str, rbac: bool) -> Gate {
        let key = crate::model::SecretKey::new([1; 32]);
        Gate::new(&SecuritySettings {
            tls: None,
            auth: Some(AuthSettings {
                key: Some(JwtKey::Hs256(Text::Sensitive(
                    crate::model::Sensitive::new(&key, secret.to_owned()),
                ))),
                max_lifetime: Some(3600),
                issuer: None,
                audience: None,
            }),
            rbac: rbac.then(crate::model::default_roles),
        })
        .unwrap()
    }

    fn token(secret: &str, claims: serde_json::Value) -> String {
        let t = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        format!("Bearer {t}")
    }

    #[test]
    fn roles_decide_and_a_refusal_names_the_missing_role() {
        let g = gate(SECRET, true);
        let exp = now() + 600;
        let viewer = token(
            SECRET,
            serde_json::json!({"sub": "ann", "role": "viewer", "exp": exp}),
        );
        let ok = g.admit(Some(&viewer), "Status", "status").unwrap();
        assert_eq!((ok.subject.as_str(), ok.role.as_str()), ("ann", "viewer"));
        let (who, why) = g.admit(Some(&viewer), "Apply", "apply").unwrap_err();
        assert_eq!(who.subject, "ann");
        match why {
            Refusal::Denied(m) => {
                assert!(m.contains("`operator` or `admin`"), "{m}");
                assert!(m.contains("`viewer`"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        let both = token(
            SECRET,
            serde_json::json!({"sub": "bob", "roles": ["viewer", "admin"], "exp": exp}),
        );
        assert_eq!(
            g.admit(Some(&both), "Destroy", "destroy").unwrap().role,
            "admin"
        );
    }

    #[test]
    fn bad_tokens_are_unauthenticated() {
        let g = gate(SECRET, true);
        let exp = now() + 600;
        let other = token(
            "other",
            serde_json::json!({"sub": "eve", "role": "admin", "exp": exp}),
        );
        let expired = token(
            SECRET,
            serde_json::json!({"sub": "old", "role": "admin", "exp": now() - 120}),
        );
        let long = token(
            SECRET,
            serde_json::json!({"sub": "long", "role": "admin", "exp": now() + 7200}),
        );
        for (t, what) in [
            (None, "bearer token"),
            (Some("Basic abc"), "Bearer"),
            (Some(other.as_str()), "signature"),
            (Some(expired.as_str()), "expired"),
            (Some(long.as_str()), "token_expiry_seconds"),
        ] {
            match g.admit(t, "Status", "status") {
                Err((_, Refusal::Unauthenticated(m))) => assert!(m.contains(what), "{m}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    fn claims(exp: u64, iat: Option<u64>, nbf: Option<u64>) -> Claims {
        Claims {
            sub: "t".into(),
            exp,
            iat,
            nbf,
            role: None,
            roles: None,
        }
    }

    /// Every time is judged against the server's clock: a future `iat`
    /// does not shorten the lifetime `token_expiry_seconds` bounds.
    #[test]
    fn times_are_judged_against_the_server_clock() {
        let now = 1_800_000_000;
        let max = Some(3600);
        let ok = |c: Claims| judge_times(&c, now, max);
        assert!(ok(claims(now + 600, Some(now), None)).is_ok());
        assert!(ok(claims(now + 3600, None, None)).is_ok());
        // Clock slack both ways.
        assert!(ok(claims(now - LEEWAY, Some(now + LEEWAY), Some(now + LEEWAY))).is_ok());
        let far = now + 100_000_000;
        for (c, what) in [
            (claims(far, Some(far - 60), None), "issued in the future"),
            (claims(far, None, None), "token_expiry_seconds"),
            (claims(now + 600, None, Some(now + 60)), "`nbf`"),
            (claims(now + 600, Some(now + 60), None), "`iat`"),
            (claims(now - LEEWAY - 1, None, None), "expired"),
            (claims(now + 600, Some(now - 7200), None), "lives 7800 s"),
            (claims(u64::MAX, Some(u64::MAX), Some(u64::MAX)), "`nbf`"),
        ] {
            match ok(c) {
                Err(m) => assert!(m.contains(what), "{what}: {m}"),
                Ok(()) => panic!("{what}: accepted"),
            }
        }
        // Without `token_expiry_seconds` a long token passes, a future one not.
        assert!(judge_times(&claims(far, None, None), now, None).is_ok());
        assert!(judge_times(&claims(far, Some(far - 60), None), now, None).is_err());
    }

    #[test]
    fn a_short_hs256_secret_builds_no_gate() {
        let key = crate::model::SecretKey::new([1; 32]);
        for secret in ["", "q7Zx", &SECRET[..31]] {
            let e = Gate::new(&SecuritySettings {
                tls: None,
                auth: Some(AuthSettings {
                    key: Some(JwtKey::Hs256(Text::Sensitive(
                        crate::model::Sensitive::new(&key, secret.to_owned()),
                    ))),
                    max_lifetime: None,
                    issuer: None,
                    audience: None,
                }),
                rbac: None,
            })
            .err()
            .unwrap_or_else(|| panic!("{secret:?} was accepted"));
            assert!(e.contains("at least 32 bytes"), "{e}");
            assert!(secret.is_empty() || !e.contains(secret), "{e}");
        }
    }
}
