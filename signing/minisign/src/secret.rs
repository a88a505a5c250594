//! Secret keys (optionally passphrase-protected) and signing.

use std::fmt;
use std::io::Read;
use std::path::Path;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use ed25519_dalek::{Signature, Signer, SigningKey};
use zeroize::Zeroizing;

use super::error::{Algorithm, FileError, FormatError, SecretKeyError, SignError};
use super::kdf::{self, KdfLimits};
use super::public::PublicKey;
use super::signature::{self, SignatureFile};
use super::text::{self, Lines, TRUSTED_PREFIX, UNTRUSTED_PREFIX};
use super::{FileKind, KEY_ID_LEN, KeyId, SECRET_KEY_BLOB_LEN, SIG_ALG};

const KDF_SCRYPT: [u8; 2] = *b"Sc";
const KDF_NONE: [u8; 2] = [0, 0];
const CHECKSUM_BLAKE2B: [u8; 2] = *b"B2";

const SALT_LEN: usize = 32;
const CHECKSUM_LEN: usize = 32;
/// key id ‖ seed ‖ public key ‖ checksum: the part the passphrase encrypts.
const KEYNUM_LEN: usize = KEY_ID_LEN + 64 + CHECKSUM_LEN;

// Offsets in the decoded secret key file.
const KDF_ALG_AT: usize = 2;
const CHECKSUM_ALG_AT: usize = 4;
const SALT_AT: usize = 6;
const OPSLIMIT_AT: usize = SALT_AT + SALT_LEN;
const MEMLIMIT_AT: usize = OPSLIMIT_AT + 8;
const KEYNUM_AT: usize = MEMLIMIT_AT + 8;

/// An Ed25519 signing key with its minisign key id. Its memory is wiped on drop.
pub struct SecretKey {
    key_id: KeyId,
    signing_key: SigningKey,
}

impl SecretKey {
    /// A fresh key pair with a random key id, like `minisign -G`.
    pub fn generate() -> Result<(SecretKey, PublicKey), SecretKeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        random(&mut seed[..])?;
        let mut key_id = [0u8; KEY_ID_LEN];
        random(&mut key_id)?;
        let secret = SecretKey::from_seed(KeyId(key_id), &seed);
        let public = secret.public_key();
        Ok((secret, public))
    }

    /// A key from its 32-byte Ed25519 seed, for deterministic tests and key import.
    pub fn from_seed(key_id: KeyId, seed: &[u8; 32]) -> Self {
        SecretKey {
            key_id,
            signing_key: SigningKey::from_bytes(seed),
        }
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::new(self.key_id, self.signing_key.verifying_key())
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The secret key file, encrypted with minisign's default (1 GiB, seconds-long) scrypt
    /// cost when a passphrase is given.
    pub fn to_file_string(&self, passphrase: Option<&str>) -> Result<String, SecretKeyError> {
        self.to_file_string_with_params(passphrase, KdfLimits::MINISIGN_DEFAULT)
    }

    /// The secret key file with an explicit scrypt cost (ignored without a passphrase).
    pub fn to_file_string_with_params(
        &self,
        passphrase: Option<&str>,
        limits: KdfLimits,
    ) -> Result<String, SecretKeyError> {
        let mut blob = Zeroizing::new([0u8; SECRET_KEY_BLOB_LEN]);
        blob[..2].copy_from_slice(&SIG_ALG);
        blob[CHECKSUM_ALG_AT..SALT_AT].copy_from_slice(&CHECKSUM_BLAKE2B);
        let keynum = &mut blob[KEYNUM_AT..];
        keynum[..KEY_ID_LEN].copy_from_slice(&self.key_id.0);
        keynum[KEY_ID_LEN..KEY_ID_LEN + 32].copy_from_slice(self.signing_key.as_bytes());
        keynum[KEY_ID_LEN + 32..KEY_ID_LEN + 64]
            .copy_from_slice(self.signing_key.verifying_key().as_bytes());
        // `minisign -G -W` leaves the checksum zero; a real one costs nothing and still lets
        // minisign (which ignores it for unencrypted keys) read the file.
        let sum = checksum(self.key_id, &keynum[KEY_ID_LEN..KEY_ID_LEN + 64]);
        keynum[KEY_ID_LEN + 64..].copy_from_slice(&sum[..]);

        let comment = match passphrase {
            None => {
                blob[KDF_ALG_AT..CHECKSUM_ALG_AT].copy_from_slice(&KDF_NONE);
                "minisign unencrypted secret key"
            }
            Some(passphrase) => {
                blob[KDF_ALG_AT..CHECKSUM_ALG_AT].copy_from_slice(&KDF_SCRYPT);
                let mut salt = [0u8; SALT_LEN];
                random(&mut salt)?;
                blob[SALT_AT..OPSLIMIT_AT].copy_from_slice(&salt);
                blob[OPSLIMIT_AT..MEMLIMIT_AT].copy_from_slice(&limits.opslimit.to_le_bytes());
                blob[MEMLIMIT_AT..KEYNUM_AT].copy_from_slice(&limits.memlimit.to_le_bytes());
                let mut stream = Zeroizing::new([0u8; KEYNUM_LEN]);
                kdf::derive(passphrase.as_bytes(), &salt, limits, &mut stream[..])?;
                xor(&mut blob[KEYNUM_AT..], &stream[..]);
                "minisign encrypted secret key"
            }
        };
        Ok(format!(
            "{UNTRUSTED_PREFIX}{comment}\n{}\n",
            text::encode(&blob[..])
        ))
    }

    /// Parses and, if needed, decrypts a secret key file. A passphrase given for an
    /// unencrypted key is ignored, as minisign does with `-W`.
    pub fn parse(text: &str, passphrase: Option<&str>) -> Result<Self, SecretKeyError> {
        SecretKeyFile::parse(text)?.decrypt(passphrase)
    }

    pub fn from_file(path: impl AsRef<Path>, passphrase: Option<&str>) -> Result<Self, FileError> {
        let path = path.as_ref();
        SecretKeyFile::from_file(path)?
            .decrypt(passphrase)
            .map_err(|error| FileError::SecretKey {
                path: path.to_owned(),
                error,
            })
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A secret key file parsed but not yet decrypted, so a caller can find out whether to ask
/// for a passphrase before spending the KDF time.
pub struct SecretKeyFile {
    untrusted_comment: String,
    /// `None` for an unencrypted key.
    kdf: Option<([u8; SALT_LEN], KdfLimits)>,
    keynum: Zeroizing<[u8; KEYNUM_LEN]>,
}

impl SecretKeyFile {
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let kind = FileKind::SecretKey;
        let mut lines = Lines::new(text, kind);
        let line = lines.expect("an untrusted comment")?;
        let untrusted_comment = text::parse_comment(line, kind, UNTRUSTED_PREFIX)?.to_owned();
        let line = lines.expect("the base64-encoded secret key")?;
        let blob: Zeroizing<[u8; SECRET_KEY_BLOB_LEN]> =
            Zeroizing::new(text::decode_blob(line, kind)?);
        lines.finish()?;

        let unsupported = |what, at: usize, supported| FormatError::UnsupportedAlgorithm {
            kind,
            line: line.number,
            what,
            found: Algorithm([blob[at], blob[at + 1]]),
            supported,
        };
        if blob[..2] != SIG_ALG {
            return Err(unsupported("signature", 0, "\"Ed\" (Ed25519)"));
        }
        if blob[CHECKSUM_ALG_AT..SALT_AT] != CHECKSUM_BLAKE2B {
            return Err(unsupported("checksum", CHECKSUM_ALG_AT, "\"B2\" (BLAKE2b)"));
        }
        let kdf = match [blob[KDF_ALG_AT], blob[KDF_ALG_AT + 1]] {
            KDF_NONE => None,
            KDF_SCRYPT => {
                let mut salt = [0u8; SALT_LEN];
                salt.copy_from_slice(&blob[SALT_AT..OPSLIMIT_AT]);
                let limits = KdfLimits {
                    opslimit: le64(&blob[OPSLIMIT_AT..MEMLIMIT_AT]),
                    memlimit: le64(&blob[MEMLIMIT_AT..KEYNUM_AT]),
                };
                Some((salt, limits))
            }
            _ => {
                return Err(unsupported(
                    "key derivation",
                    KDF_ALG_AT,
                    "\"Sc\" (scrypt) or none",
                ));
            }
        };
        let mut keynum = Zeroizing::new([0u8; KEYNUM_LEN]);
        keynum.copy_from_slice(&blob[KEYNUM_AT..]);
        Ok(SecretKeyFile {
            untrusted_comment,
            kdf,
            keynum,
        })
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, FileError> {
        let path = path.as_ref();
        let text = Zeroizing::new(text::read_small_file(path, FileKind::SecretKey)?);
        Self::parse(&text).map_err(|error| FileError::Format {
            path: path.to_owned(),
            error,
        })
    }

    /// Whether [`decrypt`](Self::decrypt) needs a passphrase.
    pub fn is_encrypted(&self) -> bool {
        self.kdf.is_some()
    }

    /// The scrypt cost stored in the file, for telling the user how long decryption takes.
    pub fn kdf_limits(&self) -> Option<KdfLimits> {
        self.kdf.map(|(_, limits)| limits)
    }

    pub fn untrusted_comment(&self) -> &str {
        &self.untrusted_comment
    }

    pub fn decrypt(&self, passphrase: Option<&str>) -> Result<SecretKey, SecretKeyError> {
        let mut keynum = self.keynum.clone();
        let zero_checksum_allowed = match (&self.kdf, passphrase) {
            (None, _) => true,
            (Some(_), None) => return Err(SecretKeyError::PassphraseRequired),
            (Some((salt, limits)), Some(passphrase)) => {
                let mut stream = Zeroizing::new([0u8; KEYNUM_LEN]);
                kdf::derive(passphrase.as_bytes(), salt, *limits, &mut stream[..])?;
                xor(&mut keynum[..], &stream[..]);
                false
            }
        };

        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&keynum[..KEY_ID_LEN]);
        let key_id = KeyId(id);
        let secret = &keynum[KEY_ID_LEN..KEY_ID_LEN + 64];
        let stored = &keynum[KEY_ID_LEN + 64..];
        let computed = checksum(key_id, secret);
        // minisign never computes the checksum of a key generated with -W, so an all-zero one
        // is what such keys carry; the seed/public-key consistency check below still applies.
        let accepted = constant_time_eq(stored, &computed[..])
            || (zero_checksum_allowed && stored.iter().all(|&b| b == 0));
        if !accepted {
            return Err(if self.kdf.is_some() {
                SecretKeyError::WrongPassphrase
            } else {
                SecretKeyError::ChecksumMismatch
            });
        }

        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&secret[..32]);
        let key = SecretKey::from_seed(key_id, &seed);
        if key.signing_key.verifying_key().as_bytes()[..] != secret[32..] {
            return Err(SecretKeyError::InconsistentKey { key_id });
        }
        Ok(key)
    }
}

impl fmt::Debug for SecretKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKeyFile")
            .field("encrypted", &self.is_encrypted())
            .field("kdf_limits", &self.kdf_limits())
            .field("untrusted_comment", &self.untrusted_comment)
            .finish_non_exhaustive()
    }
}

/// Signs the data read from `data` the way `minisign -S` does by default: Ed25519 over its
/// BLAKE2b-512 hash, plus the global signature binding `trusted_comment`.
pub fn sign(
    secret: &SecretKey,
    data: impl Read,
    trusted_comment: &str,
) -> Result<SignatureFile, SignError> {
    // Checked here as well as in sign_message so that a bad comment fails before gigabytes
    // are hashed.
    text::validate_comment(trusted_comment, TRUSTED_PREFIX)?;
    let hash = signature::hash_reader(data).map_err(|error| SignError::Read { error })?;
    sign_message(secret, &hash, true, trusted_comment)
}

/// [`sign`] for data already in memory.
pub fn sign_bytes(
    secret: &SecretKey,
    data: &[u8],
    trusted_comment: &str,
) -> Result<SignatureFile, SignError> {
    sign(secret, data, trusted_comment)
}

/// Signs the file at `path`.
pub fn sign_file(
    secret: &SecretKey,
    path: impl AsRef<Path>,
    trusted_comment: &str,
) -> Result<SignatureFile, FileError> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|error| FileError::Read {
        path: path.to_owned(),
        error,
    })?;
    sign(secret, file, trusted_comment).map_err(|error| FileError::Sign {
        path: path.to_owned(),
        error,
    })
}

/// Makes both signatures over `message` (the hash, or the data for legacy signatures).
pub(crate) fn sign_message(
    secret: &SecretKey,
    message: &[u8],
    prehashed: bool,
    trusted_comment: &str,
) -> Result<SignatureFile, SignError> {
    text::validate_comment(trusted_comment, TRUSTED_PREFIX)?;
    let key = secret.signing_key();
    let sig = key.sign(message).to_bytes();
    let global_message = signature::global_message(&sig, trusted_comment);
    let global = key.sign(&global_message).to_bytes();
    // Like minisign's check against the public key: a fault while signing must not produce a
    // signature file that fails later, far from its cause.
    let public = key.verifying_key();
    if public
        .verify_strict(message, &Signature::from_bytes(&sig))
        .is_err()
        || public
            .verify_strict(&global_message, &Signature::from_bytes(&global))
            .is_err()
    {
        return Err(SignError::SelfCheckFailed);
    }
    Ok(SignatureFile::new(
        secret.key_id(),
        prehashed,
        sig,
        trusted_comment.to_owned(),
        global,
    ))
}

/// BLAKE2b-256(sig_alg ‖ key id ‖ secret key), as minisign's `seckey_compute_chk`.
fn checksum(key_id: KeyId, secret: &[u8]) -> Zeroizing<[u8; CHECKSUM_LEN]> {
    let mut hasher = Blake2b::<U32>::new();
    hasher.update(SIG_ALG);
    hasher.update(key_id.0);
    hasher.update(secret);
    Zeroizing::new(hasher.finalize().into())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn xor(data: &mut [u8], stream: &[u8]) {
    for (byte, key) in data.iter_mut().zip(stream) {
        *byte ^= key;
    }
}

fn le64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(bytes);
    u64::from_le_bytes(buf)
}

fn random(buf: &mut [u8]) -> Result<(), SecretKeyError> {
    getrandom::fill(buf).map_err(|error| SecretKeyError::Random {
        error: error.to_string(),
    })
}
