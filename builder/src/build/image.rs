//! The disk image: its plan, STATE, the signed manifest that describes all of it, the ESP,
//! and the bytes written into `disk.raw`.

use std::path::Path;

use keel_contract::layout::{self, BootEntry, PartitionRole, Slot};
use keel_contract::manifest::{self, FileDigest, KernelFile, Manifest, Sha256Digest, SourceItem};
use keel_contract::secrets::NodeSecrets;
use keel_minisign::SecretKey;

use super::boot::BootFiles;
use super::payload::Payload;
use super::{BuildError, io_at, sha256};
use crate::disk::{DiskPlan, PlannedPartition};
use crate::fat::{FatEntry, FatSpec};
use crate::initramfs::Initramfs;
use crate::io::Window;
use crate::progress::{Reporter, human_bytes};

/// The disk's layout, checked to hold the payload in a slot.
pub(super) fn plan_disk(
    identity: &str,
    image: &keel_contract::profile::Image,
    payload: &Payload,
) -> Result<DiskPlan, BuildError> {
    let plan = crate::disk::plan(
        identity,
        image.esp_size.bytes(),
        image.slot_size.bytes(),
        image.state_size.bytes(),
    )?;
    let slot_a = partition(&plan, PartitionRole::SlotA)?;
    if payload.bytes_len() > slot_a.size {
        return Err(BuildError::Input(format!(
            "the root needs {} but image.slot_size is {}: raise image.slot_size",
            human_bytes(payload.bytes_len()),
            human_bytes(slot_a.size)
        )));
    }
    Ok(plan)
}

pub(super) fn partition(
    plan: &DiskPlan,
    role: PartitionRole,
) -> Result<&PlannedPartition, BuildError> {
    plan.partition(role)
        .ok_or_else(|| BuildError::Input(format!("no {} partition", role.label())))
}

/// What STATE starts with: a format marker and, when the profile names `image.secrets`,
/// the node's share of them as [`layout::state::SECRETS`]. The secrets go to STATE only: the
/// root, the initramfs and the manifest are the same for every node of a release and may be
/// published, while STATE is the node's own (the manifest lists only its digest). The disk
/// image then carries them, so an image built with secrets is as secret as they are.
pub(super) fn state_entries(
    name: &str,
    node_secrets: Option<&NodeSecrets>,
) -> Result<Vec<FatEntry>, BuildError> {
    let mut entries = vec![FatEntry::File(
        layout::state::MARKER.into(),
        layout::state::marker(name).into_bytes(),
    )];
    if let Some(secrets) = node_secrets {
        let text = secrets
            .to_toml()
            .map_err(|e| BuildError::Input(format!("image.secrets: {e}")))?;
        entries.push(FatEntry::File(
            layout::state::SECRETS.into(),
            text.into_bytes(),
        ));
    }
    Ok(entries)
}

/// STATE: a FAT filesystem labelled STATE holding `entries`. The node keeps its applied
/// profile, identity and upgrade journal there too.
pub(super) fn state_partition(
    plan: &DiskPlan,
    entries: &[FatEntry],
    sde: u64,
) -> Result<Vec<u8>, BuildError> {
    let state = partition(plan, PartitionRole::State)?;
    let mut image = std::io::Cursor::new(vec![0u8; state.size as usize]);
    crate::fat::write_fat(
        &mut image,
        &FatSpec {
            label: layout::state::VOLUME_LABEL,
            volume_id: keel_fat::esp::volume_id(
                plan.disk_guid.as_bytes(),
                PartitionRole::State.label(),
            ),
            source_date_epoch: sde,
            entries,
        },
    )?;
    Ok(image.into_inner())
}

/// The parts of the image the manifest describes.
pub(super) struct Described<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub image: &'a keel_contract::profile::Image,
    pub source_date_epoch: u64,
    pub profile_sha256: [u8; 32],
    pub boot: &'a BootFiles,
    pub initramfs: &'a Initramfs,
    pub payload: &'a Payload,
    pub plan: &'a DiskPlan,
    pub state_image: &'a [u8],
    pub sources: Vec<SourceItem>,
}

/// The image manifest: everything a node or `keel verify` checks, by digest.
pub(super) fn manifest(d: Described<'_>) -> Manifest {
    let partitions = d
        .plan
        .partitions
        .iter()
        .map(|p| manifest::Partition {
            number: p.role.number(),
            label: p.role.label().to_owned(),
            type_guid: p.role.type_guid().to_owned(),
            guid: p.guid.hyphenated().to_string().to_uppercase(),
            offset: p.offset,
            size: p.size,
            content: match p.role {
                PartitionRole::SlotA => Some(d.payload.digest()),
                PartitionRole::State => Some(FileDigest {
                    size: d.state_image.len() as u64,
                    sha256: sha256(d.state_image),
                }),
                _ => None,
            },
        })
        .collect();
    Manifest {
        schema: manifest::MANIFEST_SCHEMA,
        name: d.name.to_owned(),
        version: d.version.to_owned(),
        arch: d.image.arch.as_str().to_owned(),
        builder: format!("keel {}", env!("CARGO_PKG_VERSION")),
        source_date_epoch: d.source_date_epoch,
        profile_sha256: Sha256Digest(d.profile_sha256),
        kernel: KernelFile {
            release: d.boot.kernel.release.clone(),
            size: d.boot.kernel.image.len() as u64,
            sha256: sha256(&d.boot.kernel.image),
        },
        initramfs: FileDigest {
            size: d.initramfs.bytes.len() as u64,
            sha256: sha256(&d.initramfs.bytes),
        },
        bootloader: FileDigest {
            size: d.boot.bootloader.len() as u64,
            sha256: sha256(&d.boot.bootloader),
        },
        cmdline: d.image.cmdline.clone(),
        root: d.payload.root_fs(d.image.squashfs.compression),
        slot_payload: d.payload.digest(),
        disk: manifest::Disk {
            size: d.plan.total_size,
            guid: d.plan.disk_guid.hyphenated().to_string().to_uppercase(),
            partitions,
        },
        sources: d.sources,
    }
}

/// The manifest's canonical bytes and their minisign signature (file text).
pub(super) struct Signed {
    pub bytes: Vec<u8>,
    pub signature: String,
}

pub(super) fn sign(manifest: &Manifest, secret: &SecretKey) -> Result<Signed, BuildError> {
    let bytes = manifest.to_canonical_json()?;
    let comment = format!(
        "timestamp:{}\tfile:{}\tkeel:{} {}",
        manifest.source_date_epoch,
        layout::MANIFEST_FILE,
        manifest.name,
        manifest.version
    );
    let signature = keel_minisign::sign_bytes(secret, &bytes, &comment)
        .map_err(|e| BuildError::Sign(e.to_string()))?
        .to_file_string();
    Ok(Signed { bytes, signature })
}

/// What goes onto the disk besides its plan.
pub(super) struct DiskContents<'a> {
    pub boot: &'a BootFiles,
    pub initramfs: &'a Initramfs,
    pub payload: &'a Payload,
    pub state_image: &'a [u8],
    pub signed: &'a Signed,
    pub manifest: &'a Manifest,
}

/// Writes `disk.raw` (sparse): the partition table, the ESP, slot A and STATE; owner-only
/// from the start when STATE holds secrets (`private`).
pub(super) fn write_disk(
    disk_path: &Path,
    plan: &DiskPlan,
    private: bool,
    c: &DiskContents<'_>,
    sde: u64,
    rep: &Reporter,
) -> Result<(), BuildError> {
    let phase = rep.phase("disk", Some(plan.total_size));
    let mut disk = crate::disk::create_disk(disk_path, plan, private)?;
    let entry = BootEntry::new(
        Slot::A,
        &c.manifest.version,
        &c.payload.root_hash_hex(),
        &c.manifest.cmdline,
    );
    let esp = partition(plan, PartitionRole::Esp)?;
    crate::fat::write_fat(
        Window::new(&mut disk, esp.offset, esp.size).map_err(io_at(disk_path))?,
        &FatSpec {
            label: layout::esp::VOLUME_LABEL,
            volume_id: keel_fat::esp::volume_id(
                plan.disk_guid.as_bytes(),
                PartitionRole::Esp.label(),
            ),
            source_date_epoch: sde,
            entries: &keel_fat::esp::entries(
                c.boot.bootloader.clone(),
                &entry,
                keel_fat::esp::SlotFiles {
                    kernel: c.boot.kernel.image.clone(),
                    initramfs: c.initramfs.bytes.clone(),
                    manifest: c.signed.bytes.clone(),
                    signature: c.signed.signature.clone().into_bytes(),
                },
            ),
        },
    )?;
    phase.set_position(esp.offset + esp.size);
    let slot_a = partition(plan, PartitionRole::SlotA)?;
    c.payload
        .write_at(&mut disk, slot_a.offset)
        .map_err(io_at(disk_path))?;
    let state = partition(plan, PartitionRole::State)?;
    write_nonzero_at(&disk, state.offset, c.state_image).map_err(io_at(disk_path))?;
    disk.sync_all().map_err(io_at(disk_path))?;
    drop(disk);
    phase.finish(&format!(
        "disk.raw {} (root {}, initramfs {})",
        human_bytes(plan.total_size),
        human_bytes(c.payload.bytes_len()),
        human_bytes(c.initramfs.bytes.len() as u64)
    ));
    Ok(())
}

/// Writes the 4 KiB pieces of `bytes` that are not all zeros. Only for a disk file just
/// created with its full length, whose unwritten ranges read as zeros: STATE is a 64 MiB
/// FAT image of which a few hundred KiB are not zero, and writing its zeros cost 0.14 s of a
/// build's single-threaded tail (`strace` of a build: 207 MB written to `disk.raw`).
fn write_nonzero_at(file: &std::fs::File, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    const PIECE: usize = 4096;
    let zero = |piece: usize| {
        let start = piece * PIECE;
        bytes[start..bytes.len().min(start + PIECE)]
            .iter()
            .all(|&b| b == 0)
    };
    let pieces = bytes.len().div_ceil(PIECE);
    let mut piece = 0;
    while piece < pieces {
        if zero(piece) {
            piece += 1;
            continue;
        }
        // One write per run of pieces that are not zero.
        let run = (piece..pieces).find(|&p| zero(p)).unwrap_or(pieces);
        let end = bytes.len().min(run * PIECE);
        file.write_all_at(&bytes[piece * PIECE..end], offset + (piece * PIECE) as u64)?;
        piece = run;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pieces_that_are_not_zero_are_written_and_the_file_reads_the_same() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let file = std::fs::File::create_new(&path).unwrap();
        let offset = 1 << 20;
        file.set_len(offset + (8 << 20)).unwrap();
        // Zeros, a run of two pieces, zeros, one byte late in a piece, and a short last piece.
        let mut bytes = vec![0u8; (6 << 20) + 100];
        bytes[8192..16384].fill(0xa5);
        bytes[(3 << 20) + 4095] = 1;
        *bytes.last_mut().unwrap() = 2;
        write_nonzero_at(&file, offset, &bytes).unwrap();
        file.sync_all().unwrap();
        let written = std::fs::read(&path).unwrap();
        assert!(written[..offset as usize].iter().all(|&b| b == 0));
        assert_eq!(&written[offset as usize..][..bytes.len()], &bytes[..]);
        // Four pieces hold data; the rest of the 9 MiB file is holes.
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated <= 64 << 10, "{allocated} bytes allocated");
    }
}
