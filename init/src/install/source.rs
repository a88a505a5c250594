//! What the installer copies, read from wherever the running node got it and checked against
//! the signed manifest before a byte of it is written: the boot disk's ESP and slot for a node
//! booted from a medium, or, for a network-booted node, the server it booted from (kernel,
//! initramfs, manifest and signature beside `root.img`), the root it holds in RAM, and the
//! bootloader inside that verified root. Both paths then share one write order
//! ([`super::write`]).

use std::path::{Path, PathBuf};

use keel_contract::layout;
use keel_contract::manifest::{FileDigest, Manifest, Sha256Digest};
use keel_contract::output::pxe;
use sha2::{Digest, Sha256};

use crate::bootinfo::{self, BootSource, Handoff};
use crate::netroot;

/// A kernel or an initramfs is tens of MiB; more than this is not one of ours.
const MAX_BOOT_FILE: u64 = 512 << 20;

/// One file of the new ESP: its bytes and where they were read from (for error lines).
pub struct BootFile {
    pub origin: String,
    pub bytes: Vec<u8>,
}

impl BootFile {
    /// The bytes, when their size and SHA-256 are the signed manifest's.
    pub fn checked(&self, want: &FileDigest) -> Result<&[u8], String> {
        if self.bytes.len() as u64 != want.size {
            return Err(format!(
                "{}: {} bytes, the signed manifest says {}",
                self.origin,
                self.bytes.len(),
                want.size
            ));
        }
        let got = Sha256Digest(Sha256::digest(&self.bytes).into());
        if got != want.sha256 {
            return Err(format!(
                "{}: sha256 {}, the signed manifest says {}",
                self.origin,
                got.to_hex(),
                want.sha256.to_hex()
            ));
        }
        Ok(&self.bytes)
    }
}

/// The running image, as the installer writes it.
pub struct Image {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub signature: Vec<u8>,
    pub kernel: BootFile,
    pub initramfs: BootFile,
    pub bootloader: BootFile,
    /// The device holding the running slot payload (a partition, or the loop device over
    /// the network root in RAM).
    pub payload: PathBuf,
}

/// The running image from where this node booted it; `esp` is the mounted ESP of a disk
/// boot. The manifest is verified here; the other files when they are written.
pub fn running(handoff: &Handoff, esp: &Path, log: &dyn Fn(&str)) -> Result<Image, String> {
    match &handoff.source {
        BootSource::Disk { partitions, .. } => {
            let read = |path: &str| read_file(&layout::on_volume(esp, path));
            let slot = handoff.slot;
            let manifest_bytes = read(&slot.manifest_path())?.bytes;
            let signature = read(&slot.signature_path())?.bytes;
            let manifest =
                verified_manifest(handoff, &slot.manifest_path(), &manifest_bytes, &signature)?;
            Ok(Image {
                manifest,
                manifest_bytes,
                signature,
                kernel: read(&slot.kernel_path())?,
                initramfs: read(&slot.initramfs_path())?,
                bootloader: read(layout::esp::BOOTLOADER)?,
                payload: partitions.slot.path.clone(),
            })
        }
        BootSource::Network { url, device, .. } => from_server(handoff, url, device, log),
    }
}

fn from_server(
    handoff: &Handoff,
    root_url: &str,
    device: &Path,
    log: &dyn Fn(&str),
) -> Result<Image, String> {
    let get = |name: &str, max: u64| {
        let url = netroot::fetch::sibling(root_url, name)
            .ok_or_else(|| format!("keel.root={root_url}: not a URL with a path"))?;
        log(&format!("install: fetching {url}"));
        let bytes = netroot::get_with_retries(&url, max, log).map_err(|e| e.to_string())?;
        Ok::<_, String>(BootFile { origin: url, bytes })
    };
    let manifest_file = get(pxe::MANIFEST, netroot::MAX_MANIFEST)?;
    let signature = get(pxe::SIGNATURE, netroot::MAX_SIGNATURE)?.bytes;
    let manifest = verified_manifest(
        handoff,
        &manifest_file.origin,
        &manifest_file.bytes,
        &signature,
    )?;
    // The bootloader the builder put on the ESP is the userland's systemd-boot, which the
    // running root holds under dm-verity.
    let bootloader = read_file(Path::new(layout::esp::SYSTEMD_BOOT_IN_USERLAND))?;
    Ok(Image {
        manifest,
        manifest_bytes: manifest_file.bytes,
        signature,
        kernel: get(pxe::KERNEL, MAX_BOOT_FILE)?,
        initramfs: get(pxe::INITRAMFS, MAX_BOOT_FILE)?,
        bootloader,
        payload: device.to_path_buf(),
    })
}

fn read_file(path: &Path) -> Result<BootFile, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(BootFile {
        origin: path.display().to_string(),
        bytes,
    })
}

/// The manifest, when its signature verifies with the keys stage 1 trusted and it is the
/// one stage 1 booted (name, version, root hash).
fn verified_manifest(
    handoff: &Handoff,
    origin: &str,
    bytes: &[u8],
    signature: &[u8],
) -> Result<Manifest, String> {
    let keys = bootinfo::trusted_keys()?;
    let sig = keel_minisign::SignatureFile::parse(&String::from_utf8_lossy(signature))
        .map_err(|e| format!("{origin}.minisig: {e}"))?;
    keel_minisign::verify_bytes(&keys, &sig, bytes).map_err(|e| format!("{origin}: {e}"))?;
    let manifest = Manifest::from_json(bytes).map_err(|e| format!("{origin}: {e}"))?;
    is_running(handoff, &manifest).map_err(|why| format!("{origin}: {why}"))?;
    Ok(manifest)
}

/// Whether `manifest` describes the system this node runs.
pub fn is_running(handoff: &Handoff, manifest: &Manifest) -> Result<(), String> {
    if manifest.name != handoff.name
        || manifest.version != handoff.version.to_string()
        || manifest.root.verity.root_hash.to_hex() != handoff.root_hash
    {
        return Err(format!(
            "{} {} (root hash {}) is not the running system, {} {} (root hash {})",
            manifest.name,
            manifest.version,
            manifest.root.verity.root_hash.to_hex(),
            handoff.name,
            handoff.version,
            handoff.root_hash
        ));
    }
    Ok(())
}
