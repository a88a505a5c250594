//! Error types. Each message is complete on its own (inner errors are part of the text rather
//! than a `source()`), because the CLI and the init print them as a single line.

use std::fmt;
use std::io;
use std::path::PathBuf;

use thiserror::Error;

use super::{FileKind, KeyId};

/// A two-byte algorithm tag as found in a file, printed readably even when it is garbage.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Algorithm(pub [u8; 2]);

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|b| b.is_ascii_graphic()) {
            write!(f, "\"{}{}\"", char::from(self.0[0]), char::from(self.0[1]))
        } else {
            write!(f, "0x{:02x}{:02x}", self.0[0], self.0[1])
        }
    }
}

impl fmt::Debug for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Algorithm({self})")
    }
}

/// Why a comment cannot be written to, or was refused in, a minisign file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommentProblem {
    /// minisign reads comment lines into fixed buffers and fails on longer ones.
    TooLong { len: usize, max: usize },
    /// A line break would split the line; minisign also cuts comments at `\r` and `\0`, so
    /// such a comment would be signed differently from what minisign checks.
    ForbiddenCharacter(char),
}

impl fmt::Display for CommentProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommentProblem::TooLong { len, max } => {
                write!(f, "it is {len} bytes long, minisign accepts at most {max}")
            }
            CommentProblem::ForbiddenCharacter(c) => {
                write!(
                    f,
                    "it contains the character {c:?}, which minisign cannot represent"
                )
            }
        }
    }
}

fn on_line(line: &Option<usize>) -> String {
    match line {
        Some(line) => format!(" on line {line}"),
        None => String::new(),
    }
}

fn at_lines(lines: &Option<(usize, usize)>) -> String {
    match lines {
        Some((first, second)) => format!(" (lines {first} and {second})"),
        None => String::new(),
    }
}

/// A key, signature or trusted-keys text that is not what minisign would write.
#[derive(Debug, Error)]
pub enum FormatError {
    #[error("the {kind} file is not UTF-8 text")]
    NotUtf8 { kind: FileKind },

    #[error("the {kind} file is truncated: it ends before line {line}, which should be {expected}")]
    Truncated {
        kind: FileKind,
        line: usize,
        expected: &'static str,
    },

    #[error("line {line} of the {kind} file should start with {prefix:?}")]
    MissingPrefix {
        kind: FileKind,
        line: usize,
        prefix: &'static str,
    },

    #[error("line {line} of the {kind} file is not valid base64: {error}")]
    Base64 {
        kind: FileKind,
        line: usize,
        error: base64::DecodeError,
    },

    #[error(
        "line {line} of the {kind} file decodes to {actual} bytes, but a minisign {kind} is \
         {expected} bytes"
    )]
    WrongLength {
        kind: FileKind,
        line: usize,
        expected: usize,
        actual: usize,
    },

    #[error("expected a minisign {expected}, but line {line} holds a minisign {found}")]
    WrongKind {
        expected: FileKind,
        found: FileKind,
        line: usize,
    },

    #[error(
        "unsupported {what} algorithm {found} in the {kind} on line {line} (supported: {supported})"
    )]
    UnsupportedAlgorithm {
        kind: FileKind,
        line: usize,
        what: &'static str,
        found: Algorithm,
        supported: &'static str,
    },

    #[error("unexpected content on line {line}, after the end of the {kind}")]
    TrailingData { kind: FileKind, line: usize },

    #[error("invalid {what}{}: {problem}", on_line(line))]
    InvalidComment {
        what: &'static str,
        line: Option<usize>,
        problem: CommentProblem,
    },

    #[error("line {line}: the public key {key_id} is not a usable Ed25519 public key")]
    InvalidPublicKey { line: usize, key_id: KeyId },

    #[error("the trusted keys contain no public key")]
    NoKeys,

    #[error("key id {key_id} names two different trusted keys{}", at_lines(lines))]
    DuplicateKeyId {
        key_id: KeyId,
        /// The lines where the two keys start, when they came from a file.
        lines: Option<(usize, usize)>,
    },

    #[error("invalid key id {text:?}: expected 16 hexadecimal digits")]
    InvalidKeyId { text: String },
}

/// Why a signature was not accepted.
#[derive(Debug, Error)]
pub enum VerifyError {
    #[error(
        "the signature was made with key {signature_key_id}, which is not a trusted key \
         (trusted: {})",
        list_ids(trusted)
    )]
    UnknownKey {
        signature_key_id: KeyId,
        trusted: Vec<KeyId>,
    },

    #[error(
        "the signature by key {key_id} does not match the data: the data or the signature was \
         altered"
    )]
    BadSignature { key_id: KeyId },

    #[error(
        "the trusted comment's signature by key {key_id} does not verify: the trusted comment \
         or the signature was altered"
    )]
    TrustedCommentAltered { key_id: KeyId },

    #[error("legacy (non-prehashed) minisign signature refused: only prehashed ones are accepted")]
    LegacyRefused,

    #[error(
        "legacy (non-prehashed) minisign signatures can only be checked on data up to {limit} \
         bytes; re-sign with a current minisign"
    )]
    LegacyTooLarge { limit: u64 },

    #[error("cannot read the signed data: {error}")]
    Read { error: io::Error },
}

fn list_ids(ids: &[KeyId]) -> String {
    if ids.is_empty() {
        return "none".to_owned();
    }
    ids.iter()
        .map(KeyId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a secret key could not be loaded or written.
#[cfg(feature = "secret-keys")]
#[derive(Debug, Error)]
pub enum SecretKeyError {
    #[error(transparent)]
    Format(#[from] FormatError),

    #[error("the secret key is encrypted: a passphrase is required")]
    PassphraseRequired,

    #[error("wrong passphrase for the secret key (checksum mismatch after decryption)")]
    WrongPassphrase,

    #[error("the unencrypted secret key is corrupted (checksum mismatch)")]
    ChecksumMismatch,

    #[error("the secret key {key_id} is corrupted: its public half does not match its seed")]
    InconsistentKey { key_id: KeyId },

    #[error(
        "scrypt parameters opslimit={opslimit} memlimit={memlimit} ask for more than Keel allows \
         ({reason})"
    )]
    KdfTooExpensive {
        opslimit: u64,
        memlimit: u64,
        reason: &'static str,
    },

    #[error("scrypt rejected the parameters opslimit={opslimit} memlimit={memlimit}")]
    KdfFailed { opslimit: u64, memlimit: u64 },

    #[error("cannot get random bytes from the operating system: {error}")]
    Random { error: String },
}

/// Why data could not be signed.
#[cfg(feature = "secret-keys")]
#[derive(Debug, Error)]
pub enum SignError {
    #[error(transparent)]
    Format(#[from] FormatError),

    #[error("cannot read the data to sign: {error}")]
    Read { error: io::Error },

    #[error("the new signature does not verify with the key's own public key")]
    SelfCheckFailed,
}

/// An error from one of the `*_from_file` helpers, naming the file involved.
#[derive(Debug, Error)]
pub enum FileError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },

    #[error("{} is larger than {limit} bytes, so it is not a minisign file", path.display())]
    TooLarge { path: PathBuf, limit: u64 },

    #[error("{}: {error}", path.display())]
    Format { path: PathBuf, error: FormatError },

    #[error("{} (signature {}): {error}", data.display(), signature.display())]
    Verify {
        data: PathBuf,
        signature: PathBuf,
        error: VerifyError,
    },

    #[cfg(feature = "secret-keys")]
    #[error("{}: {error}", path.display())]
    SecretKey {
        path: PathBuf,
        error: SecretKeyError,
    },

    #[cfg(feature = "secret-keys")]
    #[error("signing {}: {error}", path.display())]
    Sign { path: PathBuf, error: SignError },
}

impl FileError {
    /// The file the error is about (the data file, for verification failures).
    pub fn path(&self) -> &std::path::Path {
        match self {
            FileError::Read { path, .. }
            | FileError::TooLarge { path, .. }
            | FileError::Format { path, .. } => path,
            FileError::Verify { data, .. } => data,
            #[cfg(feature = "secret-keys")]
            FileError::SecretKey { path, .. } | FileError::Sign { path, .. } => path,
        }
    }
}
