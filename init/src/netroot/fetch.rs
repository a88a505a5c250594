//! Streaming `root.img` into RAM while hashing it, and the checks that decide whether a single
//! byte of it may be used: its size and SHA-256 against the signed manifest's `slot_payload`.
//! The copy is generic over its source and sink so the checks are tested without a network.

use std::io::{self, Read, Write};

use keel_contract::manifest::{FileDigest, Sha256Digest};
use sha2::{Digest, Sha256};

/// Why the fetched bytes are not the signed root. Each names what did not match: the console
/// line a refused network boot ends with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Mismatch {
    #[error(
        "root.img from {url}: the server announces {announced} bytes, the signed manifest's slot_payload is {want} bytes"
    )]
    Announced {
        url: String,
        announced: u64,
        want: u64,
    },
    #[error(
        "root.img from {url}: truncated: {got} bytes, the signed manifest's slot_payload is {want} bytes"
    )]
    Truncated { url: String, got: u64, want: u64 },
    #[error("root.img from {url}: longer than the signed manifest's slot_payload of {want} bytes")]
    TooLong { url: String, want: u64 },
    #[error(
        "root.img from {url}: SHA-256 {got}, the signed manifest's slot_payload has {want} (a damaged root.img or one from another build)"
    )]
    Digest {
        url: String,
        got: Sha256Digest,
        want: Sha256Digest,
    },
}

/// What stopped a fetch: the bytes themselves (never retried: the same server would send the
/// same wrong bytes), or the transfer (retried).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    #[error("{url}: {reason}")]
    Transfer { url: String, reason: String },
    #[error("{path}: {source}")]
    Write { path: String, source: io::Error },
}

/// Copies exactly `want.size` bytes from `from` to `to`, hashing them, and checks them against
/// `want`; one byte more than `want.size` is refused too. `progress` gets the bytes copied so
/// far after each chunk. On `Ok`, `to` holds the signed root, byte for byte.
pub fn copy_verified(
    url: &str,
    from: &mut dyn Read,
    to: &mut dyn Write,
    to_name: &str,
    want: &FileDigest,
    progress: &mut dyn FnMut(u64),
) -> Result<(), FetchError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut got: u64 = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A Content-Length body cut short says so (keel_http::Body): the transfer failed,
            // which a retry may cure; a short file served whole is caught below.
            Err(e) => {
                return Err(FetchError::Transfer {
                    url: url.to_owned(),
                    reason: e.to_string(),
                });
            }
        };
        let chunk = buf.get(..n).unwrap_or_default();
        got += n as u64;
        if got > want.size {
            return Err(Mismatch::TooLong {
                url: url.to_owned(),
                want: want.size,
            }
            .into());
        }
        hasher.update(chunk);
        to.write_all(chunk).map_err(|source| FetchError::Write {
            path: to_name.to_owned(),
            source,
        })?;
        progress(got);
    }
    if got != want.size {
        return Err(Mismatch::Truncated {
            url: url.to_owned(),
            got,
            want: want.size,
        }
        .into());
    }
    let digest = Sha256Digest(hasher.finalize().into());
    if digest != want.sha256 {
        return Err(Mismatch::Digest {
            url: url.to_owned(),
            got: digest,
            want: want.sha256,
        }
        .into());
    }
    Ok(())
}

/// A file beside `url` (same directory): where the manifest and its signature are served.
pub fn sibling(url: &str, name: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = rest.split_once('/')?;
    let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
    Some(if dir.is_empty() {
        format!("{scheme}://{authority}/{name}")
    } else {
        format!("{scheme}://{authority}/{dir}/{name}")
    })
}

/// A progress line every tenth of the payload: a console is slow, and a PXE farm's operator
/// only needs to see that it moves.
pub struct Progress {
    total: u64,
    next_tenth: u64,
}

impl Progress {
    pub fn new(total: u64) -> Self {
        Progress {
            total,
            next_tenth: 1,
        }
    }

    /// The line to print for `done` bytes, if a new tenth was reached.
    pub fn line(&mut self, done: u64, seconds: f64) -> Option<String> {
        if self.total == 0 || done * 10 < self.next_tenth * self.total {
            return None;
        }
        self.next_tenth = done * 10 / self.total + 1;
        let mib = done as f64 / f64::from(1 << 20);
        Some(format!(
            "root.img: {mib:.0} of {:.0} MiB ({}%, {:.1} MiB/s)",
            self.total as f64 / f64::from(1 << 20),
            done * 100 / self.total,
            if seconds > 0.0 { mib / seconds } else { 0.0 }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> FileDigest {
        FileDigest {
            size: bytes.len() as u64,
            sha256: Sha256Digest(Sha256::digest(bytes).into()),
        }
    }

    fn copy(served: &[u8], want: &FileDigest) -> (Result<(), FetchError>, Vec<u8>) {
        let mut out = Vec::new();
        let r = copy_verified(
            "http://h/root.img",
            &mut &served[..],
            &mut out,
            "ram",
            want,
            &mut |_| {},
        );
        (r, out)
    }

    fn payload() -> Vec<u8> {
        (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn the_signed_bytes_pass_whole() {
        let p = payload();
        let (r, out) = copy(&p, &digest_of(&p));
        r.unwrap();
        assert_eq!(out, p);
    }

    #[test]
    fn a_flipped_byte_is_refused_naming_the_digest() {
        let p = payload();
        let mut bad = p.clone();
        bad[1_234_567] ^= 1;
        let e = copy(&bad, &digest_of(&p)).0.unwrap_err();
        assert!(
            matches!(e, FetchError::Mismatch(Mismatch::Digest { .. })),
            "{e}"
        );
        assert!(e.to_string().contains("SHA-256"), "{e}");
    }

    #[test]
    fn a_truncated_or_longer_root_is_refused_naming_the_size() {
        let p = payload();
        let e = copy(&p[..p.len() - 1], &digest_of(&p)).0.unwrap_err();
        assert!(
            matches!(e, FetchError::Mismatch(Mismatch::Truncated { got, .. }) if got == p.len() as u64 - 1),
            "{e}"
        );
        let mut longer = p.clone();
        longer.push(0);
        let e = copy(&longer, &digest_of(&p)).0.unwrap_err();
        assert!(
            matches!(e, FetchError::Mismatch(Mismatch::TooLong { .. })),
            "{e}"
        );
    }

    #[test]
    fn a_root_of_another_build_is_refused() {
        let p = payload();
        let other: Vec<u8> = p.iter().map(|b| b.wrapping_add(1)).collect();
        let e = copy(&other, &digest_of(&p)).0.unwrap_err();
        assert!(
            matches!(e, FetchError::Mismatch(Mismatch::Digest { .. })),
            "{e}"
        );
    }

    #[test]
    fn siblings_are_beside_the_root() {
        assert_eq!(
            sibling("http://10.0.2.2:8080/keel/1.0.0/root.img", "manifest.json").as_deref(),
            Some("http://10.0.2.2:8080/keel/1.0.0/manifest.json")
        );
        assert_eq!(
            sibling("http://h/root.img", "manifest.json.minisig").as_deref(),
            Some("http://h/manifest.json.minisig")
        );
        assert_eq!(sibling("not a url", "x"), None);
    }

    #[test]
    fn progress_prints_each_tenth_once() {
        let mut p = Progress::new(100);
        let lines: Vec<_> = (1..=100).filter_map(|d| p.line(d, 1.0)).collect();
        assert_eq!(lines.len(), 10, "{lines:?}");
        assert!(lines[9].contains("100%"), "{lines:?}");
    }
}
