//! What a build writes into its output directory besides `disk.raw`: the signed manifest and
//! its signature, the kernel and initramfs, the update bundle, the SBOM and the other disk
//! formats.

use keel_contract::bundle::{BUNDLE_DIR, Part};
use keel_contract::manifest::Manifest;
use keel_contract::output;
use keel_contract::profile::OutputFormat;

use super::boot::BootFiles;
use super::image::Signed;
use super::payload::Payload;
use super::{BuildError, OutputDir};
use crate::initramfs::Initramfs;
use crate::progress::{Reporter, human_bytes};

/// Everything a build writes from the payload's and boot files' buffers besides the disk:
/// `manifest.json`, its signature, `vmlinuz`, `initramfs`, the update bundle and, when the
/// profile asks for it, `pxe/`.
pub(super) struct BesideDisk<'a> {
    pub out: &'a OutputDir,
    pub manifest: &'a Manifest,
    pub signed: &'a Signed,
    pub boot: &'a BootFiles,
    pub initramfs: &'a Initramfs,
    pub payload: &'a Payload,
    pub pxe: bool,
}

impl BesideDisk<'_> {
    pub fn write(&self, rep: &Reporter) -> Result<(), BuildError> {
        let BesideDisk {
            out,
            manifest,
            signed,
            boot,
            initramfs,
            payload,
            pxe,
        } = *self;
        write_boot_files(out, signed, boot, initramfs)?;
        write_update_bundle(out, manifest, signed, boot, initramfs, payload, rep)?;
        if pxe {
            write_pxe(out, manifest, signed, boot, initramfs, payload, rep)?;
        }
        Ok(())
    }
}

/// `manifest.json`, its signature, `vmlinuz` and `initramfs`.
fn write_boot_files(
    out: &OutputDir,
    signed: &Signed,
    boot: &BootFiles,
    initramfs: &Initramfs,
) -> Result<(), BuildError> {
    out.write(output::MANIFEST, &signed.bytes)?;
    out.write(output::SIGNATURE, signed.signature.as_bytes())?;
    out.write(output::KERNEL, &boot.kernel.image)?;
    out.write(output::INITRAMFS, &initramfs.bytes)
}

/// The update bundle: the same signed manifest, signature, kernel and initramfs, and the
/// payload streamed from the same buffers that were just written into KEEL-A.
fn write_update_bundle(
    out: &OutputDir,
    manifest: &Manifest,
    signed: &Signed,
    boot: &BootFiles,
    initramfs: &Initramfs,
    payload: &Payload,
    rep: &Reporter,
) -> Result<(), BuildError> {
    let phase = rep.phase("bundle", None);
    let written = crate::bundle::write_bundle(
        &out.path().join(BUNDLE_DIR),
        &manifest.version,
        &signed.bytes,
        signed.signature.as_bytes(),
        &boot.kernel.image,
        &initramfs.bytes,
        &|w| payload.write_to(w),
    )?;
    let blob = written.part(Part::Payload);
    if blob.size != manifest.slot_payload.size || blob.digest != manifest.slot_payload.sha256 {
        return Err(BuildError::Bundle(crate::bundle::BundleError::Invalid {
            path: written.path.clone(),
            message: format!(
                "the payload blob ({} bytes, {}) differs from the manifest's slot_payload",
                blob.size,
                blob.oci_digest()
            ),
        }));
    }
    phase.finish(&format!(
        "{BUNDLE_DIR}/ {}, ref {}",
        written.image_manifest.oci_digest(),
        manifest.version
    ));
    Ok(())
}

/// `pxe/` when the profile asks for it: the same signed manifest, kernel and initramfs, and
/// the payload streamed from the same buffers as KEEL-A's, as `root.img`.
fn write_pxe(
    out: &OutputDir,
    manifest: &Manifest,
    signed: &Signed,
    boot: &BootFiles,
    initramfs: &Initramfs,
    payload: &Payload,
    rep: &Reporter,
) -> Result<(), BuildError> {
    let phase = rep.phase("pxe", None);
    let files = crate::pxe::write_dir(
        &out.path().join(output::pxe::DIR),
        &crate::pxe::PxeParts {
            manifest,
            manifest_bytes: &signed.bytes,
            signature: signed.signature.as_bytes(),
            kernel: &boot.kernel.image,
            initramfs: &initramfs.bytes,
            payload: &|w| payload.write_to(w),
        },
    )?;
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    phase.finish(&format!(
        "{}/ {} ({} files)",
        output::pxe::DIR,
        human_bytes(total),
        files.len()
    ));
    Ok(())
}

/// The software bill of materials, beside the manifest it is derived from.
pub(super) fn write_sbom(out: &OutputDir, manifest: &Manifest) -> Result<(), BuildError> {
    let sbom = crate::sbom::spdx(manifest).map_err(|e| BuildError::Sbom(e.to_string()))?;
    out.write(output::SBOM, &sbom)
}

/// Converts `disk.raw` to each other output format the profile asks for.
pub(super) fn convert_formats(
    formats: &[OutputFormat],
    out: &OutputDir,
    sde: u64,
    disk_guid: &uuid::Uuid,
    private: bool,
    rep: &Reporter,
) -> Result<(), BuildError> {
    let raw = out.path().join(output::DISK);
    for &format in formats {
        // Raw is written already; pxe is no disk ([`write_pxe`]).
        if format == OutputFormat::Raw || !format.is_disk() {
            continue;
        }
        let phase = rep.phase(format.name(), None);
        let dest = out.path().join(format.file_name());
        let summary = crate::formats::convert(
            &raw,
            format,
            &dest,
            &crate::formats::ConvertOptions {
                source_date_epoch: sde,
                unique_id_seed: *disk_guid.as_bytes(),
                private,
            },
        )
        .map_err(|e| BuildError::Format {
            format: format.name().to_owned(),
            message: e.to_string(),
        })?;
        phase.finish(&format!(
            "{} {}",
            format.file_name(),
            human_bytes(summary.size)
        ));
    }
    Ok(())
}
