//! minisign-compatible keys and signatures.
//!
//! Keel signs its images and manifests with minisign's formats so that operators can check
//! them with the stock `minisign` tool, and so that keys made with `minisign -G` can sign
//! Keel images. Everything here follows minisign 0.11 byte for byte:
//!
//! ```text
//! public key:  untrusted comment: …
//!              base64("Ed" ‖ key id (8) ‖ Ed25519 public key (32))
//! secret key:  untrusted comment: …
//!              base64("Ed" ‖ kdf ("Sc" or 0,0) ‖ "B2" ‖ salt (32) ‖ opslimit (8, LE) ‖
//!                     memlimit (8, LE) ‖ key id (8) ‖ seed+pk (64) ‖ BLAKE2b-256 checksum (32))
//!              the last 104 bytes XORed with scrypt output when passphrase-protected
//! signature:   untrusted comment: …
//!              base64("ED" ‖ key id (8) ‖ Ed25519(BLAKE2b-512(data)))
//!              trusted comment: …
//!              base64(Ed25519(signature ‖ trusted comment))
//! ```
//!
//! Only verification is available without the `secret-keys` feature, which keeps the init
//! free of scrypt and of any randomness source.
//!
//! Deliberate differences, all on the strict side: a file may not carry anything but blank
//! lines after its last line (minisign ignores trailing content, which would let a
//! signature file smuggle unauthenticated text); comments may not contain `\r` or `\0`
//! (minisign silently cuts the comment there, so it would check a different trusted comment
//! than we do); base64 must be canonical. Unencrypted secret keys we write carry a real
//! checksum where `minisign -G -W` leaves zeros; minisign ignores it either way.
//!
//! Key ids are shown the way minisign shows them: the 8 bytes read as a little-endian
//! integer, in upper-case hexadecimal, so the text matches `minisign public key XXXX…`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod error;
mod public;
mod signature;
mod text;

#[cfg(feature = "secret-keys")]
mod kdf;
#[cfg(feature = "secret-keys")]
mod secret;

#[cfg(test)]
mod tests;
#[cfg(all(test, feature = "secret-keys"))]
mod tests_secret;
#[cfg(all(test, feature = "secret-keys"))]
mod tests_signing;
#[cfg(all(test, feature = "secret-keys"))]
mod tests_tamper;

use std::fmt;
use std::str::FromStr;

pub use error::{Algorithm, CommentProblem, FileError, FormatError, VerifyError};
pub use public::{PublicKey, TrustedKeys};
pub use signature::{
    SignatureFile, Verified, verify, verify_bytes, verify_file, verify_require_prehashed,
};

#[cfg(feature = "secret-keys")]
pub use error::{SecretKeyError, SignError};
#[cfg(feature = "secret-keys")]
pub use kdf::KdfLimits;
#[cfg(feature = "secret-keys")]
pub use secret::{SecretKey, SecretKeyFile, sign, sign_bytes, sign_file};

/// The 8-byte identifier minisign stores next to every key and signature, so that a verifier
/// can pick the right key out of several without trying each one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The bytes as they appear inside the key and signature files.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // minisign prints `le64_load(keynum)` with `%016" PRIX64`, i.e. the bytes reversed.
        // `%" PRIX64`: no zero padding, exactly as minisign prints ids in comments and errors.
        write!(f, "{:X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = FormatError;

    /// Parses the form minisign prints (up to 16 hexadecimal digits, either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || FormatError::InvalidKeyId {
            text: s.chars().take(40).collect(),
        };
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let value = u64::from_str_radix(s, 16).map_err(|_| invalid())?;
        Ok(KeyId(value.to_le_bytes()))
    }
}

/// What a minisign file holds; used to tell the user that they passed the wrong kind of file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    PublicKey,
    SecretKey,
    Signature,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::PublicKey => "public key",
            FileKind::SecretKey => "secret key",
            FileKind::Signature => "signature",
        })
    }
}

/// Signature algorithm tag of keys and of legacy (whole-message) signatures.
const SIG_ALG: [u8; 2] = *b"Ed";
/// Signature algorithm tag of prehashed signatures (Ed25519 over BLAKE2b-512 of the data).
const SIG_ALG_PREHASHED: [u8; 2] = *b"ED";

const KEY_ID_LEN: usize = 8;
const PUBLIC_KEY_LEN: usize = 32;
const SIGNATURE_LEN: usize = 64;

/// Decoded sizes of the base64 line of each file kind; they differ, which is what lets us
/// recognise a file of the wrong kind instead of reporting a confusing length error.
const PUBLIC_KEY_BLOB_LEN: usize = 2 + KEY_ID_LEN + PUBLIC_KEY_LEN;
const SIGNATURE_BLOB_LEN: usize = 2 + KEY_ID_LEN + SIGNATURE_LEN;
const SECRET_KEY_BLOB_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + KEY_ID_LEN + 64 + 32;

/// Key and signature files are tiny; refusing anything bigger keeps a wrongly passed image
/// from being read into memory whole.
const MAX_FILE_LEN: u64 = 1 << 20;
