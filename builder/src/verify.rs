//! `keel verify`: a signed file, a build output directory or an update bundle, checked
//! against its signed manifest (signature first, then every digest it lists against what is
//! on disk or in the bundle).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use keel_contract::bundle::Part;
use keel_contract::gpt::{self, Gpt};
use keel_contract::layout::{self, Slot};
use keel_contract::manifest::{FileDigest, Manifest, Sha256Digest};
use keel_contract::output;
use keel_minisign::{self as minisign, SignatureFile, TrustedKeys, Verified};
use sha2::{Digest, Sha256};

use crate::bundle::{Bundle, BundleError};
use crate::io::{ReadOnly, Window};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A public key file that cannot be read or parsed (bad input).
    #[error("{0}")]
    Keys(String),
    /// The thing to verify does not exist (bad input).
    #[error("{}: no such file or directory", .0.display())]
    Missing(PathBuf),
    #[error("{0}")]
    Signature(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("partition {label}: {message}")]
    Partition { label: String, message: String },
    #[error("{what} on the ESP: {message}")]
    EspFile { what: String, message: String },
    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error("update bundle {0}")]
    Bundle(#[from] BundleError),
}

impl crate::error::Classify for VerifyError {
    fn is_bad_input(&self) -> bool {
        matches!(self, VerifyError::Keys(_) | VerifyError::Missing(_))
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> VerifyError + '_ {
    move |source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads every public key file into one trusted set.
pub fn load_trusted(files: &[PathBuf]) -> Result<TrustedKeys, VerifyError> {
    let mut keys = Vec::new();
    for f in files {
        let set = TrustedKeys::from_file(f).map_err(|e| VerifyError::Keys(e.to_string()))?;
        for k in set.iter() {
            if !keys
                .iter()
                .any(|have: &minisign::PublicKey| have.key_id() == k.key_id())
            {
                keys.push(k.clone());
            }
        }
    }
    TrustedKeys::new(keys).map_err(|e| VerifyError::Keys(e.to_string()))
}

/// A file with `FILE.minisig` beside it.
pub fn verify_file(path: &Path, trusted: &TrustedKeys) -> Result<Verified, VerifyError> {
    let mut sig_path = path.as_os_str().to_owned();
    sig_path.push(".minisig");
    minisign::verify_file(trusted, PathBuf::from(sig_path), path)
        .map_err(|e| VerifyError::Signature(e.to_string()))
}

/// Everything checked in an output directory or a bundle.
#[derive(Debug)]
pub struct DirReport {
    pub verified: Verified,
    pub manifest: Manifest,
    pub checked: Vec<String>,
}

fn sha256_of(reader: &mut impl Read, len: u64) -> std::io::Result<Sha256Digest> {
    crate::io::sha256_exact(reader, len).map(Sha256Digest)
}

/// A build output directory: the manifest's signature, then the disk (read-only) against it:
/// the partition table, each partition with a content digest, the ESP's boot files and
/// manifest; then `vmlinuz` and `initramfs` beside it, and the update bundle.
pub fn verify_output_dir(dir: &Path, trusted: &TrustedKeys) -> Result<DirReport, VerifyError> {
    let manifest_path = dir.join(output::MANIFEST);
    let manifest_bytes = std::fs::read(&manifest_path).map_err(io_at(&manifest_path))?;
    let verified = signed_by(
        trusted,
        &manifest_path,
        &manifest_bytes,
        &dir.join(output::SIGNATURE),
    )?;
    let manifest = Manifest::from_json(&manifest_bytes).map_err(|e| VerifyError::Manifest {
        path: manifest_path.clone(),
        message: e.to_string(),
    })?;
    let mut checked = vec![format!("manifest signature (key ID {})", verified.key_id)];

    let disk_path = dir.join(output::DISK);
    // Read-only: verifying must work on an image nobody may write, and must not change it.
    let mut disk = ReadOnly(File::open(&disk_path).map_err(io_at(&disk_path))?);
    check_partitions(&mut disk, &disk_path, &manifest, &mut checked)?;
    check_esp(
        &mut disk,
        &disk_path,
        (&manifest_path, &manifest),
        &manifest_bytes,
        &mut checked,
    )?;
    check_boot_files(dir, &manifest, &mut checked)?;
    // Builds since update bundles were added write one; it must carry the same manifest.
    let bundle_dir = dir.join(keel_contract::bundle::BUNDLE_DIR);
    if crate::bundle::is_bundle(&bundle_dir) {
        let report = verify_bundle(&bundle_dir, trusted)?;
        if report.manifest != manifest {
            return Err(VerifyError::Output {
                path: bundle_dir,
                message: "the bundle's manifest differs from manifest.json".into(),
            });
        }
        let dir_name = keel_contract::bundle::BUNDLE_DIR;
        checked.extend(report.checked.iter().map(|c| format!("{dir_name}/: {c}")));
    }
    // Builds with image.formats = ["pxe"]: the same manifest, and every file against it.
    let pxe_dir = dir.join(output::pxe::DIR);
    if pxe_dir.is_dir() {
        let report = verify_pxe_dir(&pxe_dir, trusted)?;
        if report.manifest != manifest {
            return Err(VerifyError::Output {
                path: pxe_dir,
                message: "its manifest differs from manifest.json".into(),
            });
        }
        let dir_name = output::pxe::DIR;
        checked.extend(report.checked.iter().map(|c| format!("{dir_name}/: {c}")));
    }
    Ok(DirReport {
        verified,
        manifest,
        checked,
    })
}

/// Checks `signature_path` over `bytes` (the file at `path`) with the trusted keys.
fn signed_by(
    trusted: &TrustedKeys,
    path: &Path,
    bytes: &[u8],
    signature_path: &Path,
) -> Result<Verified, VerifyError> {
    let sig_text = std::fs::read_to_string(signature_path).map_err(io_at(signature_path))?;
    let sig = SignatureFile::parse(&sig_text)
        .map_err(|e| VerifyError::Signature(format!("{}: {e}", signature_path.display())))?;
    minisign::verify_bytes(trusted, &sig, bytes)
        .map_err(|e| VerifyError::Signature(format!("{}: {e}", path.display())))
}

type Disk = ReadOnly<File>;

/// The disk's size and partition table, and every partition's content the manifest has a
/// digest for (KEEL-A, STATE).
fn check_partitions(
    disk: &mut Disk,
    disk_path: &Path,
    manifest: &Manifest,
    checked: &mut Vec<String>,
) -> Result<(), VerifyError> {
    let size = disk.0.metadata().map_err(io_at(disk_path))?.len();
    if size != manifest.disk.size {
        return Err(VerifyError::Output {
            path: disk_path.to_path_buf(),
            message: format!("{size} bytes, the manifest says {}", manifest.disk.size),
        });
    }
    let mut head = vec![0u8; gpt::PRIMARY_BYTES as usize];
    disk.read_exact(&mut head).map_err(io_at(disk_path))?;
    let table =
        Gpt::parse_primary(&head, size / layout::SECTOR_SIZE).map_err(|e| VerifyError::Output {
            path: disk_path.to_path_buf(),
            message: format!("partition table: {e}"),
        })?;
    if table.disk_guid.hyphenated().to_string().to_uppercase() != manifest.disk.guid {
        return Err(VerifyError::Output {
            path: disk_path.to_path_buf(),
            message: "disk GUID differs from the manifest".into(),
        });
    }
    for part in &manifest.disk.partitions {
        let err = |message: String| VerifyError::Partition {
            label: part.label.clone(),
            message,
        };
        let (number, found) = table
            .find(&part.label)
            .ok_or_else(|| err("missing from the partition table".into()))?;
        let same = number == part.number
            && found.offset() == part.offset
            && found.size() == part.size
            && found.guid.hyphenated().to_string().to_uppercase() == part.guid
            && found.type_guid.hyphenated().to_string().to_uppercase() == part.type_guid;
        if !same {
            return Err(err("partition table entry differs from the manifest".into()));
        }
        if let Some(content) = &part.content {
            disk.seek(SeekFrom::Start(part.offset))
                .map_err(io_at(disk_path))?;
            let digest = sha256_of(disk, content.size).map_err(io_at(disk_path))?;
            if digest != content.sha256 {
                return Err(err(format!(
                    "content does not match the signed manifest (sha256 {digest}, expected {})",
                    content.sha256
                )));
            }
            checked.push(format!("{} ({} bytes)", part.label, content.size));
        }
    }
    Ok(())
}

/// The ESP's kernel, initramfs and boot loader against the manifest's digests, and its copy
/// of the manifest against the signed bytes.
fn check_esp(
    disk: &mut Disk,
    disk_path: &Path,
    (manifest_path, manifest): (&Path, &Manifest),
    manifest_bytes: &[u8],
    checked: &mut Vec<String>,
) -> Result<(), VerifyError> {
    let esp = manifest
        .partition(layout::PartitionRole::Esp.label())
        .ok_or_else(|| VerifyError::Manifest {
            path: manifest_path.to_path_buf(),
            message: "no ESP partition".into(),
        })?;
    let files = [
        ("kernel", Slot::A.kernel_path(), manifest.kernel.sha256),
        (
            "initramfs",
            Slot::A.initramfs_path(),
            manifest.initramfs.sha256,
        ),
        (
            "bootloader",
            layout::esp::BOOTLOADER.to_owned(),
            manifest.bootloader.sha256,
        ),
    ];
    for (what, path, expected) in files {
        let window = Window::new(&mut *disk, esp.offset, esp.size).map_err(io_at(disk_path))?;
        let bytes = crate::fat::read_fat_file(window, &path).map_err(|e| VerifyError::EspFile {
            what: format!("{what} {path}"),
            message: e.to_string(),
        })?;
        let digest = Sha256Digest(Sha256::digest(&bytes).into());
        if digest != expected {
            return Err(VerifyError::EspFile {
                what: format!("{what} {path}"),
                message: format!(
                    "does not match the signed manifest (sha256 {digest}, expected {expected})"
                ),
            });
        }
        checked.push(format!("ESP {path}"));
    }
    let window = Window::new(&mut *disk, esp.offset, esp.size).map_err(io_at(disk_path))?;
    let on_disk = crate::fat::read_fat_file(window, &Slot::A.manifest_path()).map_err(|e| {
        VerifyError::EspFile {
            what: "manifest".into(),
            message: e.to_string(),
        }
    })?;
    if on_disk != manifest_bytes {
        return Err(VerifyError::EspFile {
            what: Slot::A.manifest_path(),
            message: "differs from manifest.json".into(),
        });
    }
    Ok(())
}

/// `vmlinuz` and `initramfs` beside the disk, when they are there.
fn check_boot_files(
    dir: &Path,
    manifest: &Manifest,
    checked: &mut Vec<String>,
) -> Result<(), VerifyError> {
    for (name, expected) in [
        (output::KERNEL, manifest.kernel.sha256),
        (output::INITRAMFS, manifest.initramfs.sha256),
    ] {
        let path = dir.join(name);
        if let Ok(bytes) = std::fs::read(&path) {
            let digest = Sha256Digest(Sha256::digest(&bytes).into());
            if digest != expected {
                return Err(VerifyError::Output {
                    path,
                    message: "does not match the signed manifest".into(),
                });
            }
            checked.push(name.to_owned());
        }
    }
    Ok(())
}

/// A network-boot directory (`OUTDIR/pxe`, or one copied to a boot server): the manifest's
/// signature, then `vmlinuz`, `initramfs` and `root.img` against the signed manifest (`kernel`,
/// `initramfs`, `slot_payload`), and `boot.ipxe` against the script the manifest gives.
pub fn verify_pxe_dir(dir: &Path, trusted: &TrustedKeys) -> Result<DirReport, VerifyError> {
    use output::pxe;
    let manifest_path = dir.join(pxe::MANIFEST);
    let manifest_bytes = std::fs::read(&manifest_path).map_err(io_at(&manifest_path))?;
    let verified = signed_by(
        trusted,
        &manifest_path,
        &manifest_bytes,
        &dir.join(pxe::SIGNATURE),
    )?;
    let manifest = Manifest::from_json(&manifest_bytes).map_err(|e| VerifyError::Manifest {
        path: manifest_path.clone(),
        message: e.to_string(),
    })?;
    let mut checked = vec![format!("manifest signature (key ID {})", verified.key_id)];
    let kernel = FileDigest {
        size: manifest.kernel.size,
        sha256: manifest.kernel.sha256,
    };
    for (name, expected) in [
        (pxe::KERNEL, &kernel),
        (pxe::INITRAMFS, &manifest.initramfs),
        (pxe::ROOT, &manifest.slot_payload),
    ] {
        check_file(&dir.join(name), expected)?;
        checked.push(format!("{name} ({} bytes)", expected.size));
    }
    let script_path = dir.join(pxe::SCRIPT);
    let script = std::fs::read(&script_path).map_err(io_at(&script_path))?;
    let expected = crate::pxe::boot_script(&manifest).map_err(|e| VerifyError::Output {
        path: script_path.clone(),
        message: e.to_string(),
    })?;
    if script != expected.as_bytes() {
        return Err(VerifyError::Output {
            path: script_path,
            message: "is not the script the signed manifest gives".into(),
        });
    }
    checked.push(pxe::SCRIPT.to_owned());
    Ok(DirReport {
        verified,
        manifest,
        checked,
    })
}

/// A file, streamed, against its size and digest in the signed manifest.
fn check_file(path: &Path, expected: &FileDigest) -> Result<(), VerifyError> {
    let mut file = ReadOnly(File::open(path).map_err(io_at(path))?);
    let size = file.0.metadata().map_err(io_at(path))?.len();
    if size != expected.size {
        return Err(VerifyError::Output {
            path: path.to_path_buf(),
            message: format!("{size} bytes, the signed manifest says {}", expected.size),
        });
    }
    if sha256_of(&mut file, size).map_err(io_at(path))? != expected.sha256 {
        return Err(VerifyError::Output {
            path: path.to_path_buf(),
            message: "does not match the signed manifest".into(),
        });
    }
    Ok(())
}

fn bundle_error(bundle: &Bundle, message: String) -> VerifyError {
    VerifyError::Bundle(BundleError::Invalid {
        path: bundle.location().to_path_buf(),
        message,
    })
}

/// An update bundle (an OCI layout): opening it checks the layout and the digests of the
/// image manifest, config, manifest and signature blobs; then the manifest's signature; then
/// the kernel, initramfs and payload, each against both its OCI descriptor and the signed
/// manifest (`kernel`, `initramfs`, `slot_payload`), in one read.
pub fn verify_bundle(path: &Path, trusted: &TrustedKeys) -> Result<DirReport, VerifyError> {
    let bundle = crate::bundle::open_bundle(path, None)?;
    let sig_text = std::str::from_utf8(&bundle.signature)
        .map_err(|_| bundle_error(&bundle, "the signature blob is not text".into()))?;
    let sig = SignatureFile::parse(sig_text).map_err(|e| {
        VerifyError::Signature(format!("{}: manifest.json.minisig: {e}", path.display()))
    })?;
    let verified = minisign::verify_bytes(trusted, &sig, &bundle.manifest)
        .map_err(|e| VerifyError::Signature(format!("{}: manifest.json: {e}", path.display())))?;
    let manifest = Manifest::from_json(&bundle.manifest).map_err(|e| VerifyError::Manifest {
        path: path.join("manifest.json"),
        message: e.to_string(),
    })?;
    let mut checked = vec![
        format!("manifest signature (key ID {})", verified.key_id),
        format!(
            "OCI image manifest {} and config {}",
            bundle.image_manifest.oci_digest(),
            bundle.config.oci_digest()
        ),
    ];
    // The ref name is not signed; holding it to the signed version means a bundle cannot be
    // offered under another version's name.
    match &bundle.reference {
        Some(r) if *r == manifest.version => checked.push(format!("ref name {r}")),
        Some(r) => {
            return Err(bundle_error(
                &bundle,
                format!(
                    "ref name {r:?} differs from the signed manifest's version {:?}",
                    manifest.version
                ),
            ));
        }
        None => {
            return Err(bundle_error(
                &bundle,
                format!(
                    "index.json names no ref for the image (expected {:?})",
                    manifest.version
                ),
            ));
        }
    }
    let expected = [
        (
            Part::Kernel,
            FileDigest {
                size: manifest.kernel.size,
                sha256: manifest.kernel.sha256,
            },
        ),
        (Part::Initramfs, manifest.initramfs.clone()),
        (Part::Payload, manifest.slot_payload.clone()),
    ];
    for (part, want) in expected {
        let blob = bundle.part(part);
        if blob.size != want.size || blob.digest != want.sha256 {
            return Err(bundle_error(
                &bundle,
                format!(
                    "{}: the bundle's blob is {} ({} bytes), the signed manifest says sha256:{} ({} bytes)",
                    crate::bundle::describe(part),
                    blob.oci_digest(),
                    blob.size,
                    want.sha256,
                    want.size
                ),
            ));
        }
        // The descriptor's digest equals the signed one, so checking the bytes against the
        // descriptor checks them against the manifest too.
        bundle.verify_part(part)?;
        checked.push(format!(
            "{} ({} bytes, sha256 {})",
            crate::bundle::describe(part),
            blob.size,
            blob.digest
        ));
    }
    Ok(DirReport {
        verified,
        manifest,
        checked,
    })
}
