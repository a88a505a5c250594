//! Public keys and sets of trusted public keys.

use std::fmt;
use std::path::Path;

use ed25519_dalek::VerifyingKey;

use super::error::{Algorithm, FileError, FormatError};
use super::text::{self, Line, Lines, UNTRUSTED_PREFIX};
use super::{FileKind, KEY_ID_LEN, KeyId, PUBLIC_KEY_BLOB_LEN, SIG_ALG};

/// An Ed25519 public key with its minisign key id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key_id: KeyId,
    key: VerifyingKey,
}

impl PublicKey {
    #[cfg(feature = "secret-keys")]
    pub(crate) fn new(key_id: KeyId, key: VerifyingKey) -> Self {
        PublicKey { key_id, key }
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The 42 bytes minisign base64-encodes: `"Ed"` ‖ key id ‖ key.
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_BLOB_LEN] {
        let mut blob = [0u8; PUBLIC_KEY_BLOB_LEN];
        blob[..2].copy_from_slice(&SIG_ALG);
        blob[2..2 + KEY_ID_LEN].copy_from_slice(&self.key_id.0);
        blob[2 + KEY_ID_LEN..].copy_from_slice(self.key.as_bytes());
        blob
    }

    /// The single-line form minisign accepts with `-P` and prints after `minisign -G`.
    pub fn to_base64(&self) -> String {
        text::encode(&self.to_bytes())
    }

    /// Parses the single-line form used with `minisign -P`.
    pub fn from_base64(base64: &str) -> Result<Self, FormatError> {
        let line = Line {
            number: 1,
            text: base64.trim_end_matches(['\r', '\n']),
        };
        decode_key_line(line)
    }

    /// The comment `minisign -G` writes, which shows the key id.
    pub fn default_comment(&self) -> String {
        format!("minisign public key {}", self.key_id)
    }

    /// The two-line public key file.
    pub fn to_file_string(&self, untrusted_comment: &str) -> Result<String, FormatError> {
        text::validate_comment(untrusted_comment, UNTRUSTED_PREFIX)?;
        Ok(format!(
            "{UNTRUSTED_PREFIX}{untrusted_comment}\n{}\n",
            self.to_base64()
        ))
    }

    /// Parses a file holding exactly one public key. Use [`TrustedKeys::parse`] for files that
    /// may hold several.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut lines = Lines::new(text, FileKind::PublicKey);
        let first = lines.expect("an untrusted comment")?;
        let key = parse_block(&mut lines, first)?;
        lines.finish()?;
        Ok(key)
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, FileError> {
        let path = path.as_ref();
        let text = text::read_small_file(path, FileKind::PublicKey)?;
        Self::parse(&text).map_err(|error| FileError::Format {
            path: path.to_owned(),
            error,
        })
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("key_id", &self.key_id)
            .field("key", &self.to_base64())
            .finish()
    }
}

/// A comment line followed by the base64 key line.
fn parse_block(lines: &mut Lines<'_>, comment: Line<'_>) -> Result<PublicKey, FormatError> {
    text::parse_comment(comment, FileKind::PublicKey, UNTRUSTED_PREFIX)?;
    let line = lines.expect("the base64-encoded public key")?;
    decode_key_line(line)
}

fn decode_key_line(line: Line<'_>) -> Result<PublicKey, FormatError> {
    let blob: [u8; PUBLIC_KEY_BLOB_LEN] = text::decode_blob(line, FileKind::PublicKey)?;
    let alg = [blob[0], blob[1]];
    if alg != SIG_ALG {
        return Err(FormatError::UnsupportedAlgorithm {
            kind: FileKind::PublicKey,
            line: line.number,
            what: "signature",
            found: Algorithm(alg),
            supported: "\"Ed\" (Ed25519)",
        });
    }
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&blob[2..2 + KEY_ID_LEN]);
    let key_id = KeyId(id);
    let mut key_bytes = [0u8; 32];
    key_bytes.copy_from_slice(&blob[2 + KEY_ID_LEN..]);
    let invalid = FormatError::InvalidPublicKey {
        line: line.number,
        key_id,
    };
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| invalid)?;
    // A small-order key would be rejected by verify_strict anyway; refusing it here says why.
    if key.is_weak() {
        return Err(FormatError::InvalidPublicKey {
            line: line.number,
            key_id,
        });
    }
    Ok(PublicKey { key_id, key })
}

/// The public keys an image or manifest may be signed with. Several keys allow rotation: a
/// signature is accepted when the key whose id it names verifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    /// Builds a set from keys, refusing two different keys with the same id, since a
    /// signature could not say which of them it means.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Result<Self, FormatError> {
        let mut set = TrustedKeys { keys: Vec::new() };
        for key in keys {
            set.insert(key)?;
        }
        if set.keys.is_empty() {
            return Err(FormatError::NoKeys);
        }
        Ok(set)
    }

    /// Parses one or more public key files concatenated, with optional blank lines between.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut lines = Lines::new(text, FileKind::PublicKey);
        let mut set = TrustedKeys { keys: Vec::new() };
        let mut first_lines = Vec::new();
        while let Some(comment) = lines.next_non_blank() {
            let key = parse_block(&mut lines, comment)?;
            if let Some(index) = set.keys.iter().position(|k| k.key_id == key.key_id) {
                if set.keys[index] != key {
                    return Err(FormatError::DuplicateKeyId {
                        key_id: key.key_id,
                        lines: Some((first_lines[index], comment.number)),
                    });
                }
                continue;
            }
            first_lines.push(comment.number);
            set.keys.push(key);
        }
        if set.keys.is_empty() {
            return Err(FormatError::NoKeys);
        }
        Ok(set)
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, FileError> {
        let path = path.as_ref();
        let text = text::read_small_file(path, FileKind::PublicKey)?;
        Self::parse(&text).map_err(|error| FileError::Format {
            path: path.to_owned(),
            error,
        })
    }

    fn insert(&mut self, key: PublicKey) -> Result<(), FormatError> {
        match self.get(key.key_id) {
            Some(existing) if *existing != key => Err(FormatError::DuplicateKeyId {
                key_id: key.key_id,
                lines: None,
            }),
            Some(_) => Ok(()),
            None => {
                self.keys.push(key);
                Ok(())
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.iter()
    }

    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(PublicKey::key_id).collect()
    }

    pub fn contains(&self, key_id: KeyId) -> bool {
        self.get(key_id).is_some()
    }

    pub fn get(&self, key_id: KeyId) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// All keys as one file, each with minisign's default comment.
    pub fn to_file_string(&self) -> String {
        self.keys
            .iter()
            .map(|k| {
                format!(
                    "{UNTRUSTED_PREFIX}{}\n{}\n",
                    k.default_comment(),
                    k.to_base64()
                )
            })
            .collect()
    }
}

impl From<PublicKey> for TrustedKeys {
    fn from(key: PublicKey) -> Self {
        TrustedKeys { keys: vec![key] }
    }
}

impl<'a> IntoIterator for &'a TrustedKeys {
    type Item = &'a PublicKey;
    type IntoIter = std::slice::Iter<'a, PublicKey>;

    fn into_iter(self) -> Self::IntoIter {
        self.keys.iter()
    }
}
