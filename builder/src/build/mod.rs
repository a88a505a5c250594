//! `keel build`: the pipeline from a profile to a signed output directory.
//!
//! Everything that can be checked cheaply (profile, key, passphrase, init binary, referenced
//! files) is checked before the long work starts. Outputs are written into a temporary
//! directory beside the destination and moved into place only when everything succeeded.

mod outdir;
mod payload;

use std::path::{Path, PathBuf};

use keel_contract::layout::{self, BootEntry, EntryName, PartitionRole, Slot};
use keel_contract::manifest::{self, FileDigest, KernelFile, Manifest, Sha256Digest};
use keel_contract::output;
use keel_contract::profile::{LoadedProfile, ProfileError};
use keel_contract::secrets::NodeSecrets;
use keel_minisign::{SecretKey, TrustedKeys};
use sha2::{Digest, Sha256};

use crate::esp::{FatEntry, FatSpec, Window};
use crate::progress::{Reporter, human_bytes};
use crate::tree::Tree;

pub use outdir::OutputDir;

#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub profile: PathBuf,
    pub output: PathBuf,
    pub key: Option<PathBuf>,
    pub version: Option<semver::Version>,
    pub init: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub source_date_epoch: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Init(#[from] crate::init_binary::InitBinaryError),
    #[error("userland: {0}")]
    Userland(String),
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error(transparent)]
    Kmod(#[from] crate::kmod::KmodError),
    #[error(transparent)]
    Initramfs(#[from] crate::initramfs::InitramfsError),
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    #[error("root filesystem: {0}")]
    Payload(String),
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    #[error("FAT: {0}")]
    Fat(#[from] crate::esp::FatError),
    #[error("manifest: {0}")]
    Manifest(#[from] manifest::ManifestError),
    #[error("signing the manifest: {0}")]
    Sign(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("update bundle: {0}")]
    Bundle(#[from] crate::bundle::BundleError),
    #[error("output format {format}: {message}")]
    Format { format: String, message: String },
    #[error("interrupted")]
    Interrupted,
}

impl BuildError {
    /// Bad input (exit code 2) as opposed to a failure while building (exit code 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            BuildError::Profile(_)
                | BuildError::Input(_)
                | BuildError::Key(_)
                | BuildError::Init(_)
        )
    }
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

/// Inputs checked and loaded before any long work.
struct Prepared {
    loaded: LoadedProfile,
    version: semver::Version,
    secret: SecretKey,
    trusted: TrustedKeys,
    init: Vec<u8>,
    /// The node's share of `image.secrets`, for STATE.
    node_secrets: Option<NodeSecrets>,
}

fn prepare(req: &BuildRequest) -> Result<Prepared, BuildError> {
    let loaded = LoadedProfile::load(&req.profile)?;
    let image = &loaded.profile.image;
    let version = match (&req.version, &image.version) {
        (Some(v), _) | (None, Some(v)) => v.clone(),
        (None, None) => {
            return Err(BuildError::Profile(ProfileError::Invalid(vec![
                loaded.diagnostic(
                    "image.version",
                    "not set: expected a semantic version like \"1.0.0\" here or --version".into(),
                ),
            ])));
        }
    };
    if image.userland.is_empty() {
        return Err(BuildError::Profile(ProfileError::Invalid(vec![
            loaded.diagnostic(
                "image.userland",
                "expected at least one userland source".into(),
            ),
        ])));
    }
    let missing = crate::commands::missing_profile_paths(&loaded, req.key.is_some());
    if !missing.is_empty() {
        return Err(BuildError::Profile(ProfileError::Invalid(missing)));
    }
    let node_secrets = crate::secrets::node_secrets_for(&loaded)?;
    let key_path = req.key.clone().or_else(|| image.signing_key.clone()).ok_or_else(|| {
        BuildError::Profile(ProfileError::Invalid(vec![loaded.diagnostic(
            "image.signing_key",
            "no signing key: set image.signing_key or pass --key (create one with `keel key gen`)".into(),
        )]))
    })?;
    let secret = crate::keys::load_secret(&key_path)?;
    let (_, public) = crate::keys::public_for_secret(&key_path, &secret)?;
    let trusted = crate::keys::trusted_set(&public, &image.trusted_keys)?;
    let (_, init) = crate::init_binary::load(req.init.as_deref())?;
    Ok(Prepared {
        loaded,
        version,
        secret,
        trusted,
        init,
        node_secrets,
    })
}

/// What a finished build reports.
#[derive(Debug)]
pub struct BuildReport {
    pub output: PathBuf,
    pub manifest: Manifest,
    pub files: Vec<(String, u64)>,
}

pub fn build(req: &BuildRequest, rep: &Reporter) -> Result<BuildReport, BuildError> {
    let prepared = prepare(req)?;
    let profile = &prepared.loaded.profile;
    let image = &profile.image;
    let name = image.name.as_str();
    let version = prepared.version.to_string();
    let sde = req.source_date_epoch;
    let sde32 = u32::try_from(sde)
        .map_err(|_| BuildError::Input(format!("SOURCE_DATE_EPOCH {sde} does not fit 32 bits")))?;
    rep.note(&format!(
        "building {name} {version} from {}",
        req.profile.display()
    ));
    let out = OutputDir::create(&req.output)?;

    // Userland.
    let mut tree = Tree::with_merged_usr();
    let mut sources =
        crate::userland::apply_sources(&image.userland, &req.cache_dir, &mut tree, rep)
            .map_err(|e| BuildError::Userland(e.to_string()))?;
    sources.extend(
        crate::userland::bake_container_images(&image.container_images, &mut tree, rep)
            .map_err(|e| BuildError::Userland(e.to_string()))?,
    );

    // Kernel and modules.
    let phase = rep.phase("kernel", None);
    let kernel = crate::kernel::locate(&mut tree, &image.kernel)?;
    let index = crate::kmod::ModuleIndex::from_tree(&tree, &kernel.release)?;
    let bootloader = match tree
        .get(layout::esp::SYSTEMD_BOOT_IN_USERLAND)
        .map(|n| &n.kind)
    {
        Some(crate::tree::NodeKind::File(c)) => c.bytes().to_vec(),
        _ => {
            return Err(BuildError::Input(format!(
                "systemd-boot not found at {} in the userland: add the systemd-boot-efi package",
                layout::esp::SYSTEMD_BOOT_IN_USERLAND
            )));
        }
    };
    phase.finish(&format!(
        "{} ({} modules)",
        kernel.release,
        index.modules.len()
    ));

    // Root tree -> squashfs + verity.
    crate::rootfs::finish(
        &mut tree,
        &crate::rootfs::RootfsSpec {
            image_name: name,
            version: &version,
            init: &prepared.init,
            kernel_release: &kernel.release,
            modules_dep: index.modules_dep(),
            files: &image.files,
            source_date_epoch: sde32,
        },
    )?;

    // Initramfs.
    let phase = rep.phase("initramfs", None);
    let baked = crate::commands::baked_profile(profile);
    let trusted_text = prepared.trusted.to_file_string();
    let initramfs = crate::initramfs::build(
        &tree,
        &index,
        &crate::initramfs::InitramfsSpec {
            init: &prepared.init,
            trusted_keys: &trusted_text,
            profile: Some(&baked),
            extra_modules: &image.initramfs.modules,
            mtime: sde32,
        },
    )?;
    phase.finish(&format!(
        "{} ({} modules)",
        human_bytes(initramfs.bytes.len() as u64),
        initramfs.modules.len()
    ));

    let payload = payload::build(&tree, &image.squashfs, sde32, rep)?;
    drop(tree);

    // Disk plan, STATE, manifest.
    let plan = crate::disk::plan(
        name,
        image.esp_size.bytes(),
        image.slot_size.bytes(),
        image.state_size.bytes(),
    )?;
    let slot_a = plan
        .partition(PartitionRole::SlotA)
        .ok_or_else(|| BuildError::Input("no slot A".into()))?;
    if payload.bytes_len() > slot_a.size {
        return Err(BuildError::Input(format!(
            "the root needs {} but image.slot_size is {}: raise image.slot_size",
            human_bytes(payload.bytes_len()),
            human_bytes(slot_a.size)
        )));
    }
    let state_image = state_partition(
        &plan,
        &state_entries(name, prepared.node_secrets.as_ref())?,
        sde,
    )?;
    let cmdline = image.cmdline.clone();
    let manifest = Manifest {
        schema: manifest::MANIFEST_SCHEMA,
        name: name.to_owned(),
        version: version.clone(),
        arch: image.arch.as_str().to_owned(),
        builder: format!("keel {}", env!("CARGO_PKG_VERSION")),
        source_date_epoch: sde,
        profile_sha256: Sha256Digest(prepared.loaded.digest()),
        kernel: KernelFile {
            release: kernel.release.clone(),
            size: kernel.image.len() as u64,
            sha256: sha256(&kernel.image),
        },
        initramfs: FileDigest {
            size: initramfs.bytes.len() as u64,
            sha256: sha256(&initramfs.bytes),
        },
        bootloader: FileDigest {
            size: bootloader.len() as u64,
            sha256: sha256(&bootloader),
        },
        cmdline: cmdline.clone(),
        root: payload.root_fs(image.squashfs.compression),
        slot_payload: payload.digest(),
        disk: manifest::Disk {
            size: plan.total_size,
            guid: plan.disk_guid.hyphenated().to_string().to_uppercase(),
            partitions: plan
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
                        PartitionRole::SlotA => Some(payload.digest()),
                        PartitionRole::State => Some(FileDigest {
                            size: state_image.len() as u64,
                            sha256: sha256(&state_image),
                        }),
                        _ => None,
                    },
                })
                .collect(),
        },
        sources,
    };
    let manifest_bytes = manifest.to_canonical_json()?;
    let comment = format!(
        "timestamp:{sde}\tfile:{}\tkeel:{name} {version}",
        layout::MANIFEST_FILE
    );
    let signature = keel_minisign::sign_bytes(&prepared.secret, &manifest_bytes, &comment)
        .map_err(|e| BuildError::Sign(e.to_string()))?
        .to_file_string();

    // The disk.
    let phase = rep.phase("disk", Some(plan.total_size));
    let disk_path = out.path().join(output::DISK);
    let mut disk = crate::disk::create_disk(&disk_path, &plan)?;
    let entry = BootEntry::new(Slot::A, &version, &payload.root_hash_hex(), &cmdline);
    let esp_entries = vec![
        FatEntry::Dir("/EFI".into()),
        FatEntry::Dir("/EFI/BOOT".into()),
        FatEntry::File(layout::esp::BOOTLOADER.into(), bootloader.clone()),
        FatEntry::Dir("/loader".into()),
        FatEntry::File(
            layout::esp::LOADER_CONF.into(),
            layout::loader_conf().into_bytes(),
        ),
        FatEntry::Dir(layout::esp::ENTRIES_DIR.into()),
        FatEntry::File(
            format!(
                "{}/{}",
                layout::esp::ENTRIES_DIR,
                EntryName::fresh(Slot::A).file_name()
            ),
            entry.render().into_bytes(),
        ),
        FatEntry::Dir(layout::esp::SLOTS_DIR.into()),
        FatEntry::Dir(Slot::A.esp_dir()),
        FatEntry::File(Slot::A.kernel_path(), kernel.image.clone()),
        FatEntry::File(Slot::A.initramfs_path(), initramfs.bytes.clone()),
        FatEntry::File(Slot::A.manifest_path(), manifest_bytes.clone()),
        FatEntry::File(Slot::A.signature_path(), signature.clone().into_bytes()),
    ];
    let esp = plan
        .partition(PartitionRole::Esp)
        .ok_or_else(|| BuildError::Input("no ESP".into()))?;
    crate::esp::write_fat(
        Window::new(&mut disk, esp.offset, esp.size).map_err(io_at(&disk_path))?,
        &FatSpec {
            label: layout::esp::VOLUME_LABEL,
            volume_id: volume_id(&plan.disk_guid, "ESP"),
            source_date_epoch: sde,
            entries: &esp_entries,
        },
    )?;
    phase.set_position(esp.offset + esp.size);
    payload
        .write_at(&mut disk, slot_a.offset)
        .map_err(io_at(&disk_path))?;
    let state = plan
        .partition(PartitionRole::State)
        .ok_or_else(|| BuildError::Input("no STATE".into()))?;
    write_at(&mut disk, state.offset, &state_image).map_err(io_at(&disk_path))?;
    disk.sync_all().map_err(io_at(&disk_path))?;
    drop(disk);
    phase.finish(&format!(
        "disk.raw {} (root {}, initramfs {})",
        human_bytes(plan.total_size),
        human_bytes(payload.bytes_len()),
        human_bytes(initramfs.bytes.len() as u64)
    ));

    out.write(output::MANIFEST, &manifest_bytes)?;
    out.write(output::SIGNATURE, signature.as_bytes())?;
    out.write(output::KERNEL, &kernel.image)?;
    out.write(output::INITRAMFS, &initramfs.bytes)?;

    // The update bundle: the same signed manifest, signature, kernel and initramfs, and the
    // payload streamed from the same buffers that were just written into KEEL-A.
    let phase = rep.phase("bundle", None);
    let written = crate::bundle::write_bundle(
        &out.path().join(keel_contract::bundle::BUNDLE_DIR),
        &version,
        &manifest_bytes,
        signature.as_bytes(),
        &kernel.image,
        &initramfs.bytes,
        &|w| payload.write_to(w),
    )?;
    let blob = written.part(keel_contract::bundle::Part::Payload);
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
        "{}/ {}, ref {version}",
        keel_contract::bundle::BUNDLE_DIR,
        written.image_manifest.oci_digest()
    ));

    // Other formats.
    for format in &image.formats {
        crate::commands::convert_format(
            *format,
            &disk_path,
            out.path(),
            sde,
            &plan.disk_guid,
            rep,
        )?;
    }
    if prepared.node_secrets.is_some() {
        restrict_disk_files(out.path())?;
    }
    let files = out.list()?;
    let output = out.commit()?;
    Ok(BuildReport {
        output,
        manifest,
        files,
    })
}

/// With `image.secrets`, STATE holds the node's secrets and every disk format carries
/// STATE: the disk files become owner-only (0600), like the secrets file itself.
fn restrict_disk_files(dir: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let path = entry.map_err(io_at(dir))?.path();
        let is_disk = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("disk."));
        if is_disk {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io_at(&path))?;
        }
    }
    Ok(())
}

fn write_at(file: &mut std::fs::File, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)
}

/// A FAT volume id derived from the disk GUID and the partition's name.
fn volume_id(disk_guid: &uuid::Uuid, what: &str) -> u32 {
    let digest = Sha256::digest([disk_guid.as_bytes().as_slice(), what.as_bytes()].concat());
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// What STATE starts with: a format marker and, when the profile names `image.secrets`,
/// the node's share of them as [`layout::state::SECRETS`]. The secrets go to STATE only: the
/// root, the initramfs and the manifest are the same for every node of a release and may be
/// published, while STATE is the node's own (the manifest lists only its digest). The disk
/// image then carries them, so an image built with secrets is as secret as they are.
fn state_entries(
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
fn state_partition(
    plan: &crate::disk::DiskPlan,
    entries: &[FatEntry],
    sde: u64,
) -> Result<Vec<u8>, BuildError> {
    let state = plan
        .partition(PartitionRole::State)
        .ok_or_else(|| BuildError::Input("no STATE".into()))?;
    let mut image = std::io::Cursor::new(vec![0u8; state.size as usize]);
    crate::esp::write_fat(
        &mut image,
        &FatSpec {
            label: layout::state::VOLUME_LABEL,
            volume_id: volume_id(&plan.disk_guid, "STATE"),
            source_date_epoch: sde,
            entries,
        },
    )?;
    Ok(image.into_inner())
}

#[cfg(test)]
mod tests;
