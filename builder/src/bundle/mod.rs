//! Update bundles: `OUTDIR/update/`, an OCI image layout holding the signed manifest, its
//! signature, the kernel, the initramfs and the slot payload as the layers of one artifact
//! manifest (the format is `keel_contract::bundle`'s contract), and the tar stream an upgrade
//! sends to a node.
//!
//! Blobs are written with `ocidir`; nothing in a bundle carries a time stamp, so the same
//! parts give the same bytes in every file. Reading checks every blob's size and sha256
//! against its descriptor while it is read: `ocidir` itself compares only the size.

mod read;
mod upload;
mod write;

use std::path::PathBuf;

use keel_contract::bundle::Part;
use keel_contract::manifest::Sha256Digest;

pub use read::{Bundle, BundleReader, is_bundle, open_bundle};
pub use upload::{UploadStream, upload_stream};
pub use write::{WrittenBundle, write_bundle};

/// A blob as its descriptor names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub media_type: String,
    pub digest: Sha256Digest,
    pub size: u64,
}

impl BlobInfo {
    /// `sha256:<hex>`, as OCI tools print digests.
    pub fn oci_digest(&self) -> String {
        format!("sha256:{}", self.digest)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The layout is not a Keel update bundle, or a blob differs from its descriptor.
    #[error("{}: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: String,
        source: std::io::Error,
    },
}

/// How messages name a part: what it is and its file name.
pub fn describe(part: Part) -> &'static str {
    match part {
        Part::Manifest => "signed manifest (manifest.json)",
        Part::Signature => "signature (manifest.json.minisig)",
        Part::Kernel => "kernel (vmlinuz)",
        Part::Initramfs => "initramfs",
        Part::Payload => "slot payload (squashfs + verity tree)",
    }
}
