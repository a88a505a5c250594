//! What `keel build` writes into its output directory: the names `keel verify`, `keel
//! inspect`, `keel run`, `keel node upgrade`, the tests and anything serving images (PXE)
//! rely on.

use crate::profile::OutputFormat;

/// The raw GPT disk image, always written.
pub const DISK: &str = OutputFormat::Raw.file_name();
/// The signed manifest (canonical JSON) and its minisign signature.
pub const MANIFEST: &str = crate::layout::MANIFEST_FILE;
pub const SIGNATURE: &str = crate::layout::SIGNATURE_FILE;
/// The kernel and initramfs also on the ESP (for PXE and inspection).
pub const KERNEL: &str = "vmlinuz";
pub const INITRAMFS: &str = "initramfs";
/// The update bundle, an OCI image layout.
pub const BUNDLE_DIR: &str = crate::bundle::BUNDLE_DIR;
/// The software bill of materials: SPDX 2.3 JSON of every package and layer that went in.
pub const SBOM: &str = "sbom.spdx.json";
