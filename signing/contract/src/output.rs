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

/// `OUTDIR/pxe/` (`image.formats = ["pxe"]`): what a network boot needs, served as it is
/// by `keel serve` or any HTTP server. The node (stage 1 with `keel.root=`) fetches
/// [`pxe::ROOT`], [`pxe::MANIFEST`] and [`pxe::SIGNATURE`] from beside each other.
pub mod pxe {
    use crate::profile::OutputFormat;

    /// The directory in OUTDIR.
    pub const DIR: &str = OutputFormat::Pxe.file_name();
    /// The kernel and the initramfs: the same bytes as on the disk's ESP (the manifest's
    /// `kernel` and `initramfs`). The initramfs carries the trusted keys the manifest is
    /// verified with.
    pub const KERNEL: &str = super::KERNEL;
    pub const INITRAMFS: &str = super::INITRAMFS;
    /// The slot payload (squashfs, then its dm-verity hash tree): exactly the bytes the
    /// manifest's `slot_payload` digest covers, KEEL-A's content on a disk.
    pub const ROOT: &str = "root.img";
    /// The signed manifest and its signature, the same bytes as OUTDIR's.
    pub const MANIFEST: &str = super::MANIFEST;
    pub const SIGNATURE: &str = super::SIGNATURE;
    /// The iPXE script: fetches kernel and initramfs relative to its own URL and boots them
    /// with `keel.root=` pointing at [`ROOT`] beside it.
    pub const SCRIPT: &str = "boot.ipxe";
    /// Every file in the directory, in the order a build writes them.
    pub const FILES: [&str; 6] = [KERNEL, INITRAMFS, ROOT, MANIFEST, SIGNATURE, SCRIPT];

    /// Not in the directory: a one-line iPXE script an HTTP server serves beside
    /// [`SCRIPT`] to tell it its absolute base URL (iPXE resolves relative URLs for what it
    /// fetches, but the kernel's command line needs absolute ones). `keel serve` generates it;
    /// with another server, write it by hand or `set keel-base` before chaining the script.
    pub const BASE_SCRIPT: &str = "base.ipxe";
    /// The iPXE variables [`SCRIPT`] reads: the absolute URL of its directory (ending in
    /// `/`), and of the directory per-node profiles are served from (default:
    /// `${keel-base}configs/`).
    pub const BASE_VAR: &str = "keel-base";
    pub const CONFIGS_VAR: &str = "keel-configs";
    /// Where per-node profiles are served (`keel serve --configs DIR`), one per MAC address
    /// as iPXE's `${mac:hexhyp}` writes it: `52-54-00-12-34-56.toml`, with its `.minisig`.
    pub const CONFIGS_DIR: &str = "configs";
    /// The file name of a node's profile in [`CONFIGS_DIR`]: `mac` as `52-54-00-12-34-56`.
    pub fn config_file(mac: &str) -> String {
        format!("{mac}.toml")
    }
}
