//! The one redaction step for every byte that leaves the process: standard
//! output and error, events, our own logs, failure evidence, plan files and
//! state rows.
//!
//! Every plaintext secret of the run is registered here when its
//! sensitive value (`model::Sensitive`) is made, with its base64 and hex forms;
//! [`text`] replaces each of them with `(sensitive)`. A secret shorter than
//! [`MIN_LEN`] bytes is not searched for (it would match everywhere); it is
//! still never serialized, as every sensitive value is kept as a digest.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::RwLock;

use base64::Engine;

/// What a secret is replaced by.
pub(crate) const MARK: &str = "(sensitive)";

/// Secrets shorter than this are not searched for in text.
pub(crate) const MIN_LEN: usize = 4;

/// Every form of every secret, longest first (so that a secret containing
/// another is replaced whole).
type Registry = BTreeSet<(Reverse<usize>, String)>;

fn registry() -> &'static RwLock<Registry> {
    static R: RwLock<Registry> = RwLock::new(BTreeSet::new());
    &R
}

/// The forms of a secret that text may carry: itself, base64 (standard and
/// URL-safe, with and without padding) and hex (lower and upper case).
fn forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let b = secret.as_bytes();
    let mut v = vec![
        secret.to_owned(),
        STANDARD.encode(b),
        STANDARD_NO_PAD.encode(b),
        URL_SAFE.encode(b),
        URL_SAFE_NO_PAD.encode(b),
        hex::encode(b),
        hex::encode_upper(b),
    ];
    v.sort();
    v.dedup();
    v
}

/// Registers a plaintext secret of this run.
pub(crate) fn register(secret: &str) {
    if secret.len() < MIN_LEN {
        return;
    }
    let mut r = registry().write().unwrap_or_else(|e| e.into_inner());
    if r.contains(&(Reverse(secret.len()), secret.to_owned())) {
        return;
    }
    r.extend(forms(secret).into_iter().map(|f| (Reverse(f.len()), f)));
}

/// `s` with every registered secret (in any of its forms) replaced by
/// [`MARK`].
pub fn text(s: &str) -> Cow<'_, str> {
    let r = registry().read().unwrap_or_else(|e| e.into_inner());
    if r.is_empty() || !r.iter().any(|(_, secret)| s.contains(secret.as_str())) {
        return Cow::Borrowed(s);
    }
    let mut out = s.to_owned();
    for (_, secret) in r.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MARK);
        }
    }
    Cow::Owned(out)
}

/// Every string of a JSON value (keys included) redacted in place.
pub fn json(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            if let Cow::Owned(r) = text(s) {
                *s = r;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(json),
        Value::Object(o) => {
            let redacted: serde_json::Map<String, Value> = std::mem::take(o)
                .into_iter()
                .map(|(k, mut v)| {
                    json(&mut v);
                    (text(&k).into_owned(), v)
                })
                .collect();
            *o = redacted;
        }
        _ => {}
    }
}

/// A serializable value with every string redacted, through its JSON form.
pub fn value<T: serde::Serialize + serde::de::DeserializeOwned>(v: &T) -> Option<T> {
    let mut j = serde_json::to_value(v).ok()?;
    json(&mut j);
    serde_json::from_value(j).ok()
}

/// A writer that redacts what passes through it, line by line.
pub(crate) struct Writer<W: std::io::Write>(pub W);

impl<W: std::io::Write> std::io::Write for Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s = String::from_utf8_lossy(buf);
        self.0.write_all(text(&s).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_a_secret_is_replaced() {
        register("canary-b7e1-redact");
        let b64 = base64::engine::general_purpose::STANDARD.encode("canary-b7e1-redact");
        let hexed = hex::encode("canary-b7e1-redact");
        let s = format!("a canary-b7e1-redact b {b64} c {hexed} d");
        assert_eq!(text(&s), "a (sensitive) b (sensitive) c (sensitive) d");
        let mut j = serde_json::json!({"x": ["canary-b7e1-redact"], "canary-b7e1-redact": 1});
        json(&mut j);
        assert_eq!(
            j,
            serde_json::json!({"x": ["(sensitive)"], "(sensitive)": 1})
        );
        assert!(matches!(text("nothing here"), Cow::Borrowed(_)));
    }
}
