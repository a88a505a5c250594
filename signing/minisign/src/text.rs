//! The line-oriented text layer shared by all three file kinds.

use std::io::Read;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::error::{CommentProblem, FileError, FormatError};
use super::{FileKind, MAX_FILE_LEN, PUBLIC_KEY_BLOB_LEN, SECRET_KEY_BLOB_LEN, SIGNATURE_BLOB_LEN};

pub(crate) const UNTRUSTED_PREFIX: &str = "untrusted comment: ";
pub(crate) const TRUSTED_PREFIX: &str = "trusted comment: ";

/// minisign reads comment lines with `fgets` into a 1024-byte buffer that must also hold the
/// prefix, the newline and the terminating NUL: 1024 - 19 - 2.
pub(crate) const MAX_UNTRUSTED_COMMENT: usize = 1003;
/// Same for the 8192-byte trusted comment buffer and its 17-byte prefix; minisign's signer
/// refuses anything longer.
pub(crate) const MAX_TRUSTED_COMMENT: usize = 8173;

/// One line without its terminator, with its 1-based number for error messages.
#[derive(Clone, Copy)]
pub(crate) struct Line<'a> {
    pub number: usize,
    pub text: &'a str,
}

/// Splits on `\n`, also accepting `\r\n` since minisign strips `\r` too.
pub(crate) struct Lines<'a> {
    rest: &'a str,
    number: usize,
    kind: FileKind,
}

impl<'a> Lines<'a> {
    pub fn new(text: &'a str, kind: FileKind) -> Self {
        Lines {
            rest: text,
            number: 0,
            kind,
        }
    }

    pub fn next_line(&mut self) -> Option<Line<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        // Only a `\r` directly before `\n` is a line ending; anywhere else it stays in the
        // line and fails parsing, so no byte of a signature file can be changed unnoticed.
        let (text, rest) = match self.rest.find('\n') {
            Some(end) => {
                let line = &self.rest[..end];
                (
                    line.strip_suffix('\r').unwrap_or(line),
                    &self.rest[end + 1..],
                )
            }
            None => (self.rest, ""),
        };
        self.rest = rest;
        self.number += 1;
        Some(Line {
            number: self.number,
            text,
        })
    }

    /// The next line, or a "truncated" error saying what should have been there.
    pub fn expect(&mut self, expected: &'static str) -> Result<Line<'a>, FormatError> {
        let number = self.number + 1;
        self.next_line().ok_or(FormatError::Truncated {
            kind: self.kind,
            line: number,
            expected,
        })
    }

    /// The next non-blank line, for files that hold several blocks separated by blank lines.
    pub fn next_non_blank(&mut self) -> Option<Line<'a>> {
        loop {
            let line = self.next_line()?;
            if !line.text.is_empty() {
                return Some(line);
            }
        }
    }

    /// Rejects anything but blank lines after the last expected line: minisign ignores such
    /// content, but accepting it would let a signature file carry unauthenticated payload.
    pub fn finish(mut self) -> Result<(), FormatError> {
        match self.next_non_blank() {
            None => Ok(()),
            Some(line) => Err(FormatError::TrailingData {
                kind: self.kind,
                line: line.number,
            }),
        }
    }
}

/// The comment text after `prefix`, checked the way minisign would read it.
pub(crate) fn parse_comment<'a>(
    line: Line<'a>,
    kind: FileKind,
    prefix: &'static str,
) -> Result<&'a str, FormatError> {
    let comment = line
        .text
        .strip_prefix(prefix)
        .ok_or(FormatError::MissingPrefix {
            kind,
            line: line.number,
            prefix,
        })?;
    let (what, max) = comment_rules(prefix);
    check_comment(comment, max).map_err(|problem| FormatError::InvalidComment {
        what,
        line: Some(line.number),
        problem,
    })?;
    Ok(comment)
}

/// Checks a comment we are about to write.
pub(crate) fn validate_comment(comment: &str, prefix: &'static str) -> Result<(), FormatError> {
    let (what, max) = comment_rules(prefix);
    check_comment(comment, max).map_err(|problem| FormatError::InvalidComment {
        what,
        line: None,
        problem,
    })
}

fn comment_rules(prefix: &'static str) -> (&'static str, usize) {
    if prefix == TRUSTED_PREFIX {
        ("trusted comment", MAX_TRUSTED_COMMENT)
    } else {
        ("untrusted comment", MAX_UNTRUSTED_COMMENT)
    }
}

fn check_comment(comment: &str, max: usize) -> Result<(), CommentProblem> {
    if let Some(c) = comment.chars().find(|c| matches!(c, '\n' | '\r' | '\0')) {
        return Err(CommentProblem::ForbiddenCharacter(c));
    }
    if comment.len() > max {
        return Err(CommentProblem::TooLong {
            len: comment.len(),
            max,
        });
    }
    Ok(())
}

/// Which kind of minisign file a decoded base64 line of this length belongs to.
fn kind_of_len(len: usize) -> Option<FileKind> {
    match len {
        PUBLIC_KEY_BLOB_LEN => Some(FileKind::PublicKey),
        SIGNATURE_BLOB_LEN => Some(FileKind::Signature),
        SECRET_KEY_BLOB_LEN => Some(FileKind::SecretKey),
        _ => None,
    }
}

/// Decodes the base64 line that carries a key or signature, telling apart a file of another
/// kind from a damaged one.
pub(crate) fn decode_blob<const N: usize>(
    line: Line<'_>,
    kind: FileKind,
) -> Result<[u8; N], FormatError> {
    let bytes = decode(line, kind)?;
    if let Some(found) = kind_of_len(bytes.len()).filter(|found| *found != kind) {
        return Err(FormatError::WrongKind {
            expected: kind,
            found,
            line: line.number,
        });
    }
    fixed(bytes, line, kind)
}

/// Decodes a base64 line of a fixed size that is not one of the three blobs (the global
/// signature).
pub(crate) fn decode_fixed<const N: usize>(
    line: Line<'_>,
    kind: FileKind,
) -> Result<[u8; N], FormatError> {
    fixed(decode(line, kind)?, line, kind)
}

fn decode(line: Line<'_>, kind: FileKind) -> Result<Vec<u8>, FormatError> {
    // STANDARD insists on canonical padding and zero trailing bits, so every base64 text has
    // exactly one accepted spelling and no character of a signature can be changed for free.
    STANDARD
        .decode(line.text)
        .map_err(|error| FormatError::Base64 {
            kind,
            line: line.number,
            error,
        })
}

fn fixed<const N: usize>(
    bytes: Vec<u8>,
    line: Line<'_>,
    kind: FileKind,
) -> Result<[u8; N], FormatError> {
    let actual = bytes.len();
    bytes.try_into().map_err(|_| FormatError::WrongLength {
        kind,
        line: line.number,
        expected: N,
        actual,
    })
}

pub(crate) fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Reads a small text file, refusing large ones before they are read whole.
pub(crate) fn read_small_file(path: &Path, kind: FileKind) -> Result<String, FileError> {
    let read_error = |error| FileError::Read {
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            limit: MAX_FILE_LEN,
        });
    }
    String::from_utf8(bytes).map_err(|_| FileError::Format {
        path: path.to_owned(),
        error: FormatError::NotUtf8 { kind },
    })
}
