//! Signature files and verification.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use blake2::{Blake2b512, Digest};
use ed25519_dalek::Signature;

use super::error::{Algorithm, FileError, FormatError, VerifyError};
use super::public::{PublicKey, TrustedKeys};
use super::text::{self, Lines, TRUSTED_PREFIX, UNTRUSTED_PREFIX};
use super::{
    FileKind, KEY_ID_LEN, KeyId, SIG_ALG, SIG_ALG_PREHASHED, SIGNATURE_BLOB_LEN, SIGNATURE_LEN,
};

/// The untrusted comment `minisign -S` writes.
#[cfg(feature = "secret-keys")]
pub(crate) const DEFAULT_UNTRUSTED_COMMENT: &str = "signature from minisign secret key";

/// minisign 0.10 and later refuse to make legacy signatures over more than 1 GB, and checking
/// one needs the whole data in memory, so nothing larger can carry a genuine one.
const LEGACY_MAX_LEN: u64 = 1 << 30;

/// A parsed `.minisig` file.
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureFile {
    untrusted_comment: String,
    prehashed: bool,
    key_id: KeyId,
    signature: [u8; SIGNATURE_LEN],
    trusted_comment: String,
    global_signature: [u8; SIGNATURE_LEN],
}

impl SignatureFile {
    /// Assembles a signature file from signatures the caller has made and checked.
    #[cfg(feature = "secret-keys")]
    pub(crate) fn new(
        key_id: KeyId,
        prehashed: bool,
        signature: [u8; SIGNATURE_LEN],
        trusted_comment: String,
        global_signature: [u8; SIGNATURE_LEN],
    ) -> Self {
        SignatureFile {
            untrusted_comment: DEFAULT_UNTRUSTED_COMMENT.to_owned(),
            prehashed,
            key_id,
            signature,
            trusted_comment,
            global_signature,
        }
    }

    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let kind = FileKind::Signature;
        let mut lines = Lines::new(text, kind);

        let line = lines.expect("an untrusted comment")?;
        let untrusted_comment = text::parse_comment(line, kind, UNTRUSTED_PREFIX)?.to_owned();

        let line = lines.expect("the base64-encoded signature")?;
        let blob: [u8; SIGNATURE_BLOB_LEN] = text::decode_blob(line, kind)?;
        let alg = [blob[0], blob[1]];
        let prehashed = match alg {
            SIG_ALG_PREHASHED => true,
            SIG_ALG => false,
            _ => {
                return Err(FormatError::UnsupportedAlgorithm {
                    kind,
                    line: line.number,
                    what: "signature",
                    found: Algorithm(alg),
                    supported: "\"ED\" (Ed25519 over BLAKE2b-512) and legacy \"Ed\"",
                });
            }
        };
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&blob[2..2 + KEY_ID_LEN]);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&blob[2 + KEY_ID_LEN..]);

        let line = lines.expect("the trusted comment")?;
        let trusted_comment = text::parse_comment(line, kind, TRUSTED_PREFIX)?.to_owned();

        let line = lines.expect("the base64-encoded global signature")?;
        let global_signature = text::decode_fixed(line, kind)?;

        lines.finish()?;
        Ok(SignatureFile {
            untrusted_comment,
            prehashed,
            key_id: KeyId(key_id),
            signature,
            trusted_comment,
            global_signature,
        })
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, FileError> {
        let path = path.as_ref();
        let text = text::read_small_file(path, FileKind::Signature)?;
        Self::parse(&text).map_err(|error| FileError::Format {
            path: path.to_owned(),
            error,
        })
    }

    /// The four-line file, as `minisign -S` writes it.
    pub fn to_file_string(&self) -> String {
        let alg = if self.prehashed {
            SIG_ALG_PREHASHED
        } else {
            SIG_ALG
        };
        let mut blob = [0u8; SIGNATURE_BLOB_LEN];
        blob[..2].copy_from_slice(&alg);
        blob[2..2 + KEY_ID_LEN].copy_from_slice(&self.key_id.0);
        blob[2 + KEY_ID_LEN..].copy_from_slice(&self.signature);
        format!(
            "{UNTRUSTED_PREFIX}{}\n{}\n{TRUSTED_PREFIX}{}\n{}\n",
            self.untrusted_comment,
            text::encode(&blob),
            self.trusted_comment,
            text::encode(&self.global_signature),
        )
    }

    /// The id of the key that made the signature.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The signed comment. Only meaningful once [`verify`] has succeeded.
    pub fn trusted_comment(&self) -> &str {
        &self.trusted_comment
    }

    /// The first line's comment, which nothing authenticates.
    pub fn untrusted_comment(&self) -> &str {
        &self.untrusted_comment
    }

    /// Replaces the untrusted comment; the signatures stay valid since it is not signed.
    pub fn set_untrusted_comment(&mut self, comment: &str) -> Result<(), FormatError> {
        text::validate_comment(comment, UNTRUSTED_PREFIX)?;
        comment.clone_into(&mut self.untrusted_comment);
        Ok(())
    }

    /// Whether the signature covers BLAKE2b-512 of the data (`"ED"`, what minisign makes
    /// since 0.10) rather than the data itself (legacy `"Ed"`).
    pub fn is_prehashed(&self) -> bool {
        self.prehashed
    }
}

impl fmt::Debug for SignatureFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureFile")
            .field("key_id", &self.key_id)
            .field("prehashed", &self.prehashed)
            .field("trusted_comment", &self.trusted_comment)
            .field("untrusted_comment", &self.untrusted_comment)
            .finish_non_exhaustive()
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The trusted key that made the signature.
    pub key_id: KeyId,
    /// The comment covered by the global signature.
    pub trusted_comment: String,
    /// False for a legacy signature over the raw data.
    pub prehashed: bool,
}

/// Checks `sig` over the data read from `data`, with the trusted key whose id it names.
/// Prehashed signatures are checked while streaming; legacy ones need the data in memory
/// (at most 1 GiB).
pub fn verify(
    keys: &TrustedKeys,
    sig: &SignatureFile,
    data: impl Read,
) -> Result<Verified, VerifyError> {
    verify_reader(keys, sig, data, true, LEGACY_MAX_LEN)
}

/// Like [`verify`], but refuses legacy signatures, as `minisign -V -H` does: a verifier that
/// streams large images should not be made to buffer them.
pub fn verify_require_prehashed(
    keys: &TrustedKeys,
    sig: &SignatureFile,
    data: impl Read,
) -> Result<Verified, VerifyError> {
    verify_reader(keys, sig, data, false, LEGACY_MAX_LEN)
}

/// [`verify`] for data already in memory.
pub fn verify_bytes(
    keys: &TrustedKeys,
    sig: &SignatureFile,
    data: &[u8],
) -> Result<Verified, VerifyError> {
    let key = find_key(keys, sig)?;
    if sig.prehashed {
        check(key, sig, &Blake2b512::digest(data))
    } else {
        check(key, sig, data)
    }
}

/// Verifies the file at `data` against the signature file at `signature`.
pub fn verify_file(
    keys: &TrustedKeys,
    signature: impl AsRef<Path>,
    data: impl AsRef<Path>,
) -> Result<Verified, FileError> {
    let (signature, data) = (signature.as_ref(), data.as_ref());
    let sig = SignatureFile::from_file(signature)?;
    let file = std::fs::File::open(data).map_err(|error| FileError::Read {
        path: data.to_owned(),
        error,
    })?;
    verify(keys, &sig, file).map_err(|error| FileError::Verify {
        data: data.to_owned(),
        signature: signature.to_owned(),
        error,
    })
}

pub(crate) fn verify_reader(
    keys: &TrustedKeys,
    sig: &SignatureFile,
    mut data: impl Read,
    allow_legacy: bool,
    legacy_max_len: u64,
) -> Result<Verified, VerifyError> {
    if !sig.prehashed && !allow_legacy {
        return Err(VerifyError::LegacyRefused);
    }
    // The key is looked up before reading anything, so an untrusted signature does not cost
    // a pass over a multi-gigabyte image.
    let key = find_key(keys, sig)?;
    if sig.prehashed {
        let hash = hash_reader(data).map_err(|error| VerifyError::Read { error })?;
        check(key, sig, &hash)
    } else {
        let mut message = Vec::new();
        (&mut data)
            .take(legacy_max_len.saturating_add(1))
            .read_to_end(&mut message)
            .map_err(|error| VerifyError::Read { error })?;
        if message.len() as u64 > legacy_max_len {
            return Err(VerifyError::LegacyTooLarge {
                limit: legacy_max_len,
            });
        }
        check(key, sig, &message)
    }
}

fn find_key<'a>(keys: &'a TrustedKeys, sig: &SignatureFile) -> Result<&'a PublicKey, VerifyError> {
    keys.get(sig.key_id).ok_or_else(|| VerifyError::UnknownKey {
        signature_key_id: sig.key_id,
        trusted: keys.key_ids(),
    })
}

/// Both checks minisign makes, in its order: the signature over the message (the data or its
/// hash), then the global signature over signature ‖ trusted comment.
fn check(key: &PublicKey, sig: &SignatureFile, message: &[u8]) -> Result<Verified, VerifyError> {
    let key_id = key.key_id();
    key.verifying_key()
        .verify_strict(message, &Signature::from_bytes(&sig.signature))
        .map_err(|_| VerifyError::BadSignature { key_id })?;
    key.verifying_key()
        .verify_strict(
            &global_message(&sig.signature, &sig.trusted_comment),
            &Signature::from_bytes(&sig.global_signature),
        )
        .map_err(|_| VerifyError::TrustedCommentAltered { key_id })?;
    Ok(Verified {
        key_id,
        trusted_comment: sig.trusted_comment.clone(),
        prehashed: sig.prehashed,
    })
}

/// What the global signature covers. The algorithm tag and key id are not part of it; they
/// are bound indirectly, through the signature bytes and the key that must verify them.
pub(crate) fn global_message(signature: &[u8; SIGNATURE_LEN], trusted_comment: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_LEN + trusted_comment.len());
    message.extend_from_slice(signature);
    message.extend_from_slice(trusted_comment.as_bytes());
    message
}

/// BLAKE2b-512 of everything `data` yields, in constant memory.
pub(crate) fn hash_reader(mut data: impl Read) -> io::Result<[u8; 64]> {
    let mut hasher = Blake2b512::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match data.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(hasher.finalize().into())
}
