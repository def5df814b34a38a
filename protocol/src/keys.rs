//! Signing keys are NATS nkeys (ed25519): the controller signs every command,
//! agents trust a configured set of public keys. Seeds never leave the process
//! that loaded them.

use std::collections::BTreeMap;
use std::fmt;

use nkeys::KeyPair;

use crate::{Error, Refusal, RefusalReason};

/// A private signing key (an nkey seed, `SU...`).
pub struct SigningKey(KeyPair);

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Self {
        SigningKey(KeyPair::new_user())
    }

    /// Loads a key from its seed text (surrounding whitespace ignored).
    pub fn from_seed(seed: &str) -> Result<Self, Error> {
        KeyPair::from_seed(seed.trim())
            .map(SigningKey)
            .map_err(|e| Error::Key(format!("not a valid nkey seed: {e}")))
    }

    /// The seed, to store in a file readable by its owner only.
    pub fn seed(&self) -> Result<String, Error> {
        self.0.seed().map_err(|e| Error::Key(e.to_string()))
    }

    /// The public key (`U...`), what agents list as trusted.
    pub fn public_key(&self) -> String {
        self.0.public_key()
    }

    /// Signs `bytes`.
    pub fn sign(&self, bytes: &[u8]) -> Result<Vec<u8>, Error> {
        self.0.sign(bytes).map_err(|e| Error::Key(e.to_string()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the seed.
        f.debug_tuple("SigningKey")
            .field(&self.public_key())
            .finish()
    }
}

/// The public keys whose signatures an agent accepts.
#[derive(Default)]
pub struct TrustedKeys(BTreeMap<String, KeyPair>);

impl TrustedKeys {
    /// Builds the set, refusing any text that is not a public nkey.
    pub fn new<I, S>(keys: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut map = BTreeMap::new();
        for key in keys {
            let key = key.as_ref().trim();
            let pair = KeyPair::from_public_key(key)
                .map_err(|e| Error::Key(format!("{key:?} is not a public nkey: {e}")))?;
            map.insert(key.to_owned(), pair);
        }
        Ok(TrustedKeys(map))
    }

    /// Whether `public_key` is trusted.
    pub fn contains(&self, public_key: &str) -> bool {
        self.0.contains_key(public_key)
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks `signature` over `bytes` by the trusted key `public_key`.
    pub fn verify(&self, public_key: &str, bytes: &[u8], signature: &[u8]) -> Result<(), Refusal> {
        let pair = self.0.get(public_key).ok_or_else(|| {
            Refusal::new(
                RefusalReason::UntrustedIssuer,
                format!("issuer {public_key} is not trusted"),
            )
        })?;
        pair.verify(bytes, signature).map_err(|_| {
            Refusal::new(
                RefusalReason::BadSignature,
                format!(
                    "the signature does not match the command's content and issuer {public_key}"
                ),
            )
        })
    }
}

impl fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}
