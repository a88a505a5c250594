//! Writing a bundle with `ocidir`.
//!
//! Reproducible by construction: blobs are named by their digest, `ocidir` serialises the
//! image manifest and `index.json` as canonical JSON (sorted keys, no whitespace), and no
//! time stamp is written anywhere. (`ocidir`'s `push_layer` would add a config history entry
//! stamped with the current time; a bundle has no image config, so it is never called.)

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use keel_contract::bundle::{self, Part};
use keel_contract::manifest::{Manifest, Sha256Digest};
use ocidir::OciDir;
use ocidir::cap_std::{ambient_authority, fs::Dir};
use ocidir::oci_spec::image::{Arch, Descriptor, MediaType, Os, Platform, PlatformBuilder};

use super::{BlobInfo, BundleError, describe};
use crate::error::chain;

/// `org.opencontainers.image.version` on the image manifest, for registry UIs.
const VERSION_ANNOTATION: &str = "org.opencontainers.image.version";

/// What was written: the descriptors, so the caller can check them against what it meant to
/// write (the build compares the payload with the manifest's `slot_payload`).
#[derive(Debug, Clone)]
pub struct WrittenBundle {
    pub path: PathBuf,
    pub image_manifest: BlobInfo,
    /// In [`Part::ALL`] order.
    pub parts: [BlobInfo; 5],
}

impl WrittenBundle {
    pub fn part(&self, part: Part) -> &BlobInfo {
        &self.parts[part.index()]
    }
}

fn oci_error(path: &Path, what: &str) -> impl FnOnce(ocidir::Error) -> BundleError {
    let path = path.to_path_buf();
    let what = what.to_owned();
    move |e| BundleError::Invalid {
        message: format!("{what}: {}", chain(&e)),
        path,
    }
}

fn spec_error(path: &Path) -> impl FnOnce(ocidir::oci_spec::OciSpecError) -> BundleError {
    let path = path.to_path_buf();
    move |e| BundleError::Invalid {
        message: format!("building an OCI descriptor: {e}"),
        path,
    }
}

fn io_error(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = path.to_path_buf();
    let what = what.to_owned();
    move |source| BundleError::Io { path, what, source }
}

/// The OCI platform of a manifest's `arch` (Keel's names are the kernel's).
pub(super) fn platform_for(arch: &str) -> Option<Platform> {
    let architecture = match arch {
        "x86_64" => Arch::Amd64,
        _ => return None,
    };
    PlatformBuilder::default()
        .architecture(architecture)
        .os(Os::Linux)
        .build()
        .ok()
}

pub(super) fn descriptor_info(desc: &Descriptor) -> Option<BlobInfo> {
    Some(BlobInfo {
        media_type: desc.media_type().to_string(),
        digest: desc.as_digest_sha256()?.parse::<Sha256Digest>().ok()?,
        size: desc.size(),
    })
}

/// Writes a bundle into `dir`, which must not exist yet (its parent must). `manifest` is the
/// signed manifest's canonical JSON and `version` its version, which becomes the ref name;
/// `payload` writes the slot payload (called once, so a 100+ MB payload never needs to be in
/// one buffer). On error the directory is left half written: the build discards its whole
/// temporary OUTDIR, and other callers should remove it.
pub fn write_bundle(
    dir: &Path,
    version: &str,
    manifest: &[u8],
    signature: &[u8],
    kernel: &[u8],
    initramfs: &[u8],
    payload: &dyn Fn(&mut dyn Write) -> std::io::Result<()>,
) -> Result<WrittenBundle, BundleError> {
    let invalid = |message: String| BundleError::Invalid {
        path: dir.to_path_buf(),
        message,
    };
    // The ref name is what `keel verify` matches against the signed version, and the platform
    // comes from the manifest's arch: both are read from the manifest rather than trusted.
    let parsed = Manifest::from_json(manifest).map_err(|e| invalid(e.to_string()))?;
    if parsed.version != version {
        return Err(invalid(format!(
            "version {version} differs from the manifest's {}",
            parsed.version
        )));
    }
    let platform = platform_for(&parsed.arch)
        .ok_or_else(|| invalid(format!("no OCI platform for arch {:?}", parsed.arch)))?;

    std::fs::create_dir(dir).map_err(io_error(dir, "creating the bundle directory"))?;
    let oci = Dir::open_ambient_dir(dir, ambient_authority())
        .map_err(ocidir::Error::from)
        .and_then(OciDir::ensure)
        .map_err(oci_error(dir, "creating the OCI layout"))?;
    // The empty config (`{}`, application/vnd.oci.empty.v1+json): an artifact has no config.
    let builder = oci
        .new_empty_manifest()
        .map_err(oci_error(dir, "writing the empty config"))?;

    let mut layers = Vec::with_capacity(Part::ALL.len());
    let mut parts = Vec::with_capacity(Part::ALL.len());
    for part in Part::ALL {
        let what = format!("writing the {}", describe(part));
        let mut blob = oci.create_blob().map_err(oci_error(dir, &what))?;
        match part {
            Part::Manifest => blob.write_all(manifest),
            Part::Signature => blob.write_all(signature),
            Part::Kernel => blob.write_all(kernel),
            Part::Initramfs => blob.write_all(initramfs),
            Part::Payload => payload(&mut blob),
        }
        .map_err(io_error(dir, &what))?;
        let blob = blob.complete().map_err(oci_error(dir, &what))?;
        let desc = blob
            .descriptor()
            .media_type(MediaType::Other(part.media_type().into()))
            .annotations(HashMap::from([(
                bundle::TITLE_ANNOTATION.to_owned(),
                part.entry_name().to_owned(),
            )]))
            .build()
            .map_err(spec_error(dir))?;
        parts.push(descriptor_info(&desc).ok_or_else(|| invalid(format!("{what}: no digest")))?);
        layers.push(desc);
    }

    let image_manifest = builder
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::Other(bundle::ARTIFACT_TYPE.into()))
        .layers(layers)
        .annotations(HashMap::from([(
            VERSION_ANNOTATION.to_owned(),
            version.to_owned(),
        )]))
        .build()
        .map_err(spec_error(dir))?;
    let desc = oci
        .insert_manifest(image_manifest, Some(bundle::ref_name(version)), platform)
        .map_err(oci_error(dir, "writing the image manifest and index.json"))?;
    let image_manifest =
        descriptor_info(&desc).ok_or_else(|| invalid("image manifest: no digest".into()))?;
    let parts: [BlobInfo; 5] = parts
        .try_into()
        .map_err(|_| invalid("expected five parts".into()))?;
    sync_tree(dir)?;
    Ok(WrittenBundle {
        path: dir.to_path_buf(),
        image_manifest,
        parts,
    })
}

/// `ocidir` does not sync what it writes; the rest of a build's outputs are synced before the
/// output directory is renamed into place, and so is the bundle.
fn sync_tree(dir: &Path) -> Result<(), BundleError> {
    let entries = std::fs::read_dir(dir).map_err(io_error(dir, "listing"))?;
    for entry in entries {
        let entry = entry.map_err(io_error(dir, "listing"))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_error(&path, "stat"))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_error(&path, "syncing"))?;
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir, "syncing"))
}
