//! Secrets: the key that digests them, a sensitive value that serializes
//! as its digest only, and text that may hold one.

use super::*;

/// The key that turns a secret into a digest. One per state lineage (kept in the
/// state's metadata), so a change of a secret is detected without storing it.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn random() -> Self {
        Self(rand::random())
    }

    pub fn from_hex(hex_str: &str) -> Option<Self> {
        let bytes = hex::decode(hex_str).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// `hmac-sha256:<hex>` of the plaintext.
    pub fn digest(&self, plaintext: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(plaintext.as_bytes());
        format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// A sensitive value. Equality, hashing, `Debug`, `Display` and serialization see
/// only the digest; the plaintext is reachable only through [`Sensitive::expose`].
#[derive(Clone)]
pub struct Sensitive {
    digest: String,
    plaintext: Option<String>,
}

impl Sensitive {
    pub fn new(key: &SecretKey, plaintext: String) -> Self {
        crate::redact::register(&plaintext);
        Self {
            digest: key.digest(&plaintext),
            plaintext: Some(plaintext),
        }
    }

    /// A value known only by its digest (read back from the state or a plan).
    pub(crate) fn from_digest(digest: String) -> Self {
        Self {
            digest,
            plaintext: None,
        }
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Recomputes the digest under another key (the state's), keeping the plaintext.
    /// A value without plaintext keeps its digest.
    pub fn rekey(&mut self, key: &SecretKey) {
        if let Some(p) = &self.plaintext {
            self.digest = key.digest(p);
        }
    }

    /// The plaintext, for a backend that must hand it to a process or container.
    /// `None` when the value was read back from the state.
    pub fn expose(&self) -> Option<&str> {
        self.plaintext.as_deref()
    }
}

impl PartialEq for Sensitive {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}
impl Eq for Sensitive {}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(sensitive)")
    }
}

impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(sensitive)")
    }
}

#[derive(Serialize, Deserialize)]
struct SensitiveWire {
    sensitive: String,
}

impl Serialize for Sensitive {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SensitiveWire {
            sensitive: self.digest.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Sensitive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = SensitiveWire::deserialize(d)?;
        Ok(Self::from_digest(wire.sensitive))
    }
}

/// A string value that may be sensitive (env values, command arguments).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Text {
    Plain(String),
    Sensitive(Sensitive),
}

impl Text {
    pub fn plain(s: impl Into<String>) -> Self {
        Text::Plain(s.into())
    }

    pub fn is_sensitive(&self) -> bool {
        matches!(self, Text::Sensitive(_))
    }

    /// The value to hand to a process: the plaintext, or `None` for a sensitive
    /// value read back without its plaintext.
    pub fn expose(&self) -> Option<&str> {
        match self {
            Text::Plain(s) => Some(s),
            Text::Sensitive(s) => s.expose(),
        }
    }

    pub fn rekey(&mut self, key: &SecretKey) {
        if let Text::Sensitive(s) = self {
            s.rekey(key);
        }
    }

    /// What may be shown to a person: the plain value, or `(sensitive)`.
    pub fn display(&self) -> &str {
        match self {
            Text::Plain(s) => s,
            Text::Sensitive(_) => "(sensitive)",
        }
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display())
    }
}
