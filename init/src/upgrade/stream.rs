//! Reading the upload stream: its entries in contract order, each bounded before a byte of it
//! is read (the manifest and signature by fixed limits, everything after them by the sizes in
//! the signed manifest), and copied to where it goes while it is hashed, with one buffer: PID
//! 1's memory does not grow with the size of an update.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use keel_contract::bundle::UPLOAD_ENTRIES;
use keel_contract::manifest::{Manifest, Sha256Digest};
use keel_minisign::{self as minisign, SignatureFile, TrustedKeys};
use sha2::{Digest, Sha256};

use super::{UpgradeError, io};

const MAX_MANIFEST: u64 = 1 << 20;
const MAX_SIGNATURE: u64 = 16 << 10;
/// One buffer for every copy (and the read-back).
pub(super) const BUFFER: usize = 1 << 20;

/// The upload stream, entry by entry.
pub(super) struct Upload<'a, R: Read> {
    entries: tar::Entries<'a, R>,
}

/// The signed manifest as it came in, verified.
pub(super) struct Verified {
    pub manifest: Manifest,
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
    pub key_id: String,
}

impl<'a, R: Read> Upload<'a, R> {
    pub fn new(archive: &'a mut tar::Archive<R>) -> Result<Self, UpgradeError> {
        Ok(Upload {
            entries: archive.entries().map_err(io("reading the update stream"))?,
        })
    }

    /// The next entry, which must be `want` and declare `size` bytes (or at most `limit`).
    fn next(&mut self, want: &str, size: Bound) -> Result<(tar::Entry<'a, R>, u64), UpgradeError> {
        let entry = self
            .entries
            .next()
            .ok_or_else(|| UpgradeError::Rejected(format!("the update stream ends before {want}")))?
            .map_err(io("reading the update stream"))?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name != want {
            return Err(UpgradeError::Rejected(format!(
                "expected {want} in the update stream, found {name:?}"
            )));
        }
        let declared = entry.size();
        match size {
            Bound::Exactly(n) if declared != n => Err(UpgradeError::Rejected(format!(
                "{want} is {declared} bytes in the update stream; the signed manifest says {n}"
            ))),
            Bound::AtMost(n) if declared > n => Err(UpgradeError::Rejected(format!(
                "{want} is larger than {n} bytes"
            ))),
            _ => Ok((entry, declared)),
        }
    }

    /// The manifest and its signature, checked against the trusted keys.
    pub fn verified_manifest(&mut self, keys: &TrustedKeys) -> Result<Verified, UpgradeError> {
        let bytes = self.read_small(UPLOAD_ENTRIES[0], MAX_MANIFEST)?;
        let signature = self.read_small(UPLOAD_ENTRIES[1], MAX_SIGNATURE)?;
        let sig = SignatureFile::parse(&String::from_utf8_lossy(&signature))
            .map_err(|e| UpgradeError::Rejected(format!("{}: {e}", UPLOAD_ENTRIES[1])))?;
        let verified = minisign::verify_bytes(keys, &sig, &bytes)
            .map_err(|e| UpgradeError::Rejected(format!("{}: {e}", UPLOAD_ENTRIES[0])))?;
        let manifest = Manifest::from_json(&bytes)
            .map_err(|e| UpgradeError::Rejected(format!("{}: {e}", UPLOAD_ENTRIES[0])))?;
        Ok(Verified {
            manifest,
            bytes,
            signature,
            key_id: verified.key_id.to_string(),
        })
    }

    fn read_small(&mut self, want: &str, limit: u64) -> Result<Vec<u8>, UpgradeError> {
        let (entry, declared) = self.next(want, Bound::AtMost(limit))?;
        let mut out = Vec::with_capacity(declared as usize);
        entry
            .take(limit)
            .read_to_end(&mut out)
            .map_err(io(format!("reading {want}")))?;
        if out.len() as u64 != declared {
            return Err(UpgradeError::Rejected(format!(
                "the update stream ends inside {want}"
            )));
        }
        Ok(out)
    }

    /// Copies entry `want` (exactly `size` bytes, digest `sha256`) into a new file at `path`,
    /// syncs it and reads it back.
    pub fn copy_to_file(
        &mut self,
        want: &str,
        (size, sha256): (u64, &Sha256Digest),
        path: &Path,
        buf: &mut [u8],
    ) -> Result<(), UpgradeError> {
        let (entry, _) = self.next(want, Bound::Exactly(size))?;
        let mut file =
            std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
        let digest = copy_hashed(&mut entry.take(size), &mut file, size, buf, &|_| {})
            .map_err(|e| e.context(want, path))?;
        if digest != *sha256 {
            return Err(UpgradeError::Rejected(format!(
                "{want} does not match the signed manifest"
            )));
        }
        file.sync_all()
            .map_err(io(format!("syncing {}", path.display())))?;
        drop_cache(&file);
        read_back(path, size, sha256, buf)
    }

    /// The payload entry, which must declare the signed size.
    pub fn payload(&mut self, size: u64) -> Result<tar::Entry<'a, R>, UpgradeError> {
        self.next(UPLOAD_ENTRIES[4], Bound::Exactly(size))
            .map(|(entry, _)| entry)
    }
}

enum Bound {
    Exactly(u64),
    AtMost(u64),
}

/// What went wrong in [`copy_hashed`]: on which side.
pub(crate) enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
    /// The input ended early.
    Short {
        got: u64,
    },
}

impl CopyError {
    pub fn context(self, what: &str, dest: &Path) -> UpgradeError {
        match self {
            CopyError::Read(source) => UpgradeError::Io {
                what: format!("reading {what} from the update stream"),
                source,
            },
            CopyError::Write(source) => UpgradeError::Io {
                what: format!("writing {}", dest.display()),
                source,
            },
            CopyError::Short { got } => UpgradeError::Rejected(format!(
                "the update stream ends inside {what} (after {got} bytes)"
            )),
        }
    }
}

/// Copies exactly `size` bytes from `input` to `output` through `buf`, hashing them;
/// `progress` gets the bytes copied so far after each chunk.
pub(crate) fn copy_hashed(
    input: &mut impl Read,
    output: &mut impl Write,
    size: u64,
    buf: &mut [u8],
    progress: &dyn Fn(u64),
) -> Result<Sha256Digest, CopyError> {
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while done < size {
        let want = buf.len().min((size - done) as usize);
        let n = input.read(&mut buf[..want]).map_err(CopyError::Read)?;
        if n == 0 {
            return Err(CopyError::Short { got: done });
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(CopyError::Write)?;
        done += n as u64;
        progress(done);
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

/// Drops a synced file's cached pages, so that a read-back reads what the device holds, not
/// what the page cache remembers.
pub(crate) fn drop_cache(file: &std::fs::File) {
    // SAFETY: posix_fadvise on a descriptor that `file` keeps open.
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(file),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
}

/// Reads `size` bytes back from `path` (after [`drop_cache`]) and compares their digest.
pub(super) fn read_back(
    path: &Path,
    size: u64,
    expected: &Sha256Digest,
    buf: &mut [u8],
) -> Result<(), UpgradeError> {
    let mut input = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
    input.seek(SeekFrom::Start(0)).map_err(io("seeking"))?;
    let digest = copy_hashed(&mut input, &mut std::io::sink(), size, buf, &|_| {})
        .map_err(|e| e.context("the read-back", path))?;
    if digest != *expected {
        return Err(UpgradeError::Io {
            what: format!("reading back {}", path.display()),
            source: std::io::Error::other("the device does not hold what was written"),
        });
    }
    Ok(())
}
