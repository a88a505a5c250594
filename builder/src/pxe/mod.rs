//! Network boot: the `pxe` output format (`OUTDIR/pxe/`, [`write_dir`]) and `keel serve`
//! ([`serve`]), the small HTTP server for it.
//!
//! The directory holds the same kernel, initramfs, signed manifest and slot payload as the
//! disk image (`root.img` is KEEL-A's content, the manifest's `slot_payload`), plus the iPXE
//! script ([`script`]). Nothing in it is a secret: STATE, where `image.secrets` go, is not
//! part of a network boot.

pub mod script;
pub mod serve;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use keel_contract::manifest::{FileDigest, Manifest, Sha256Digest};
use keel_contract::output::pxe;
use sha2::{Digest, Sha256};

use crate::io::HashingWriter;

pub use script::{ScriptError, boot_script};

#[derive(Debug, thiserror::Error)]
pub enum PxeError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Script(#[from] ScriptError),
    #[error("{}: {message}", path.display())]
    Mismatch { path: PathBuf, message: String },
}

impl crate::error::Classify for PxeError {
    fn is_bad_input(&self) -> bool {
        matches!(self, PxeError::Script(_))
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PxeError + '_ {
    move |source| PxeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What goes into `pxe/`: the build's own bytes, never read back from the disk.
pub struct PxeParts<'a> {
    pub manifest: &'a Manifest,
    /// The signed (canonical) bytes of `manifest`, and the signature file's text.
    pub manifest_bytes: &'a [u8],
    pub signature: &'a [u8],
    pub kernel: &'a [u8],
    pub initramfs: &'a [u8],
    /// Streams the slot payload (squashfs, then the verity tree).
    pub payload: &'a dyn Fn(&mut dyn Write) -> io::Result<()>,
}

/// A directory that holds a network boot's files (`keel verify` and `keel serve` tell it
/// from an output directory by these two).
pub fn is_pxe_dir(dir: &Path) -> bool {
    dir.join(pxe::SCRIPT).is_file() && dir.join(pxe::ROOT).is_file()
}

fn digest_of(bytes: &[u8]) -> FileDigest {
    FileDigest {
        size: bytes.len() as u64,
        sha256: Sha256Digest(Sha256::digest(bytes).into()),
    }
}

/// Writes `dir` (created; it must not hold an earlier build): the files of
/// [`pxe::FILES`], each checked against the manifest as it is written. Returns the files
/// and their sizes.
pub fn write_dir(dir: &Path, parts: &PxeParts<'_>) -> Result<Vec<(String, u64)>, PxeError> {
    let m = parts.manifest;
    // Before anything is written: a cmdline iPXE would misread is the profile's fault.
    let script = boot_script(m)?;
    for (name, bytes, expected) in [
        (pxe::KERNEL, parts.kernel, m.kernel.sha256),
        (pxe::INITRAMFS, parts.initramfs, m.initramfs.sha256),
    ] {
        if digest_of(bytes).sha256 != expected {
            return Err(PxeError::Mismatch {
                path: dir.join(name),
                message: "differs from the signed manifest".into(),
            });
        }
    }
    std::fs::create_dir(dir).map_err(io_at(dir))?;
    let mut files = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<(), PxeError> {
        let path = dir.join(name);
        let mut file = File::create(&path).map_err(io_at(&path))?;
        file.write_all(bytes).map_err(io_at(&path))?;
        file.sync_all().map_err(io_at(&path))?;
        files.push((name.to_owned(), bytes.len() as u64));
        Ok(())
    };
    put(pxe::KERNEL, parts.kernel)?;
    put(pxe::INITRAMFS, parts.initramfs)?;
    let root = write_root(&dir.join(pxe::ROOT), parts.payload, &m.slot_payload)?;
    put(pxe::MANIFEST, parts.manifest_bytes)?;
    put(pxe::SIGNATURE, parts.signature)?;
    put(pxe::SCRIPT, script.as_bytes())?;
    files.insert(2, (pxe::ROOT.to_owned(), root));
    Ok(files)
}

/// `root.img`, hashed while it is written: it must be exactly the manifest's slot payload.
fn write_root(
    path: &Path,
    payload: &dyn Fn(&mut dyn Write) -> io::Result<()>,
    expected: &FileDigest,
) -> Result<u64, PxeError> {
    let file = File::create(path).map_err(io_at(path))?;
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    payload(&mut out).map_err(io_at(path))?;
    out.flush().map_err(io_at(path))?;
    let hashed = out.finish();
    let file = hashed
        .inner
        .into_inner()
        .map_err(|e| io_at(path)(e.into_error()))?;
    file.sync_all().map_err(io_at(path))?;
    if hashed.len != expected.size || Sha256Digest(hashed.sha256) != expected.sha256 {
        return Err(PxeError::Mismatch {
            path: path.to_path_buf(),
            message: format!(
                "{} bytes, sha256 {}: not the manifest's slot_payload ({} bytes, {})",
                hashed.len,
                hex::encode(hashed.sha256),
                expected.size,
                expected.sha256
            ),
        });
    }
    Ok(hashed.len)
}

#[cfg(test)]
mod tests;
