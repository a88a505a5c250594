//! `keel build`: the pipeline from a profile to a signed output directory.
//!
//! Everything that can be checked cheaply (profile, key, passphrase, init binary, referenced
//! files) is checked before the long work starts. Outputs are written into a temporary
//! directory beside the destination and moved into place only when everything succeeded.

mod boot;
mod image;
mod outdir;
mod outputs;
mod payload;
mod prepare;

use std::path::{Path, PathBuf};

use keel_contract::manifest::{self, Manifest, Sha256Digest};
use keel_contract::output;
use keel_contract::profile::{OutputFormat, ProfileError};
use sha2::{Digest, Sha256};

use crate::progress::Reporter;
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
    /// The squashfs block cache ([`crate::squashfs::BlockCache`]); `None` compresses every
    /// block. Normally [`default_block_cache`] of `cache_dir`.
    pub block_cache: Option<PathBuf>,
    pub source_date_epoch: u64,
}

/// Where the squashfs block cache lives by default: beside the packages in the cache.
pub fn default_block_cache(cache_dir: &Path) -> PathBuf {
    cache_dir.join(crate::squashfs::CACHE_DIR_NAME)
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
    Fat(#[from] crate::fat::FatWriteError),
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
    #[error("SBOM: {0}")]
    Sbom(String),
    #[error("pxe: {0}")]
    Pxe(#[from] crate::pxe::PxeError),
    #[error("interrupted")]
    Interrupted,
}

impl crate::error::Classify for BuildError {
    /// Bad input (exit code 2) as opposed to a failure while building (exit code 1).
    fn is_bad_input(&self) -> bool {
        matches!(
            self,
            BuildError::Profile(_)
                | BuildError::Input(_)
                | BuildError::Key(_)
                | BuildError::Init(_)
                | BuildError::Pxe(crate::pxe::PxeError::Script(_))
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

/// What a finished build reports.
#[derive(Debug)]
pub struct BuildReport {
    pub output: PathBuf,
    pub manifest: Manifest,
    /// File names (a directory as `name/`) and sizes, sorted.
    pub files: Vec<(String, u64)>,
}

/// `keel build`: profile -> userland -> root tree -> squashfs + dm-verity -> initramfs ->
/// ESP -> GPT disk -> signed manifest -> bundle, SBOM and other formats, in a hidden
/// directory renamed into place when everything succeeded.
pub fn build(req: &BuildRequest, rep: &Reporter) -> Result<BuildReport, BuildError> {
    let prepared = prepare::prepare(req)?;
    let image = &prepared.loaded.profile.image;
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

    let (mut tree, sources) = userland(image, &req.cache_dir, rep)?;
    let boot = boot::locate(&mut tree, image, rep)?;
    boot::finish_root(&mut tree, &prepared, &boot, &version, sde32)?;
    let initramfs = boot::initramfs(&tree, &prepared, &boot, sde32, rep)?;
    let payload = payload::build(
        &tree,
        &image.squashfs,
        sde32,
        req.block_cache.as_deref(),
        rep,
    )?;
    drop(tree);

    let identity = crate::disk::build_identity(name, &version, &payload.root_hash_hex());
    let plan = image::plan_disk(&identity, image, &payload)?;
    let state_image = image::state_partition(
        &plan,
        &image::state_entries(name, prepared.node_secrets.as_ref())?,
        sde,
    )?;
    let manifest = image::manifest(image::Described {
        name,
        version: &version,
        image,
        source_date_epoch: sde,
        profile_sha256: prepared.loaded.digest(),
        boot: &boot,
        initramfs: &initramfs,
        payload: &payload,
        plan: &plan,
        state_image: &state_image,
        sources,
    });
    let signed = image::sign(&manifest, &prepared.secret)?;
    let contents = image::DiskContents {
        boot: &boot,
        initramfs: &initramfs,
        payload: &payload,
        state_image: &state_image,
        signed: &signed,
        manifest: &manifest,
    };
    // With `image.secrets`, STATE holds the node's share and every disk format carries STATE:
    // the disk files are owner-only from their first byte, like the secrets file itself.
    let private = prepared.node_secrets.is_some();
    let disk = out.path().join(output::DISK);
    let beside = outputs::BesideDisk {
        out: &out,
        manifest: &manifest,
        signed: &signed,
        boot: &boot,
        initramfs: &initramfs,
        payload: &payload,
        pxe: image.formats.contains(&OutputFormat::Pxe),
    };
    side_by_side(
        || image::write_disk(&disk, &plan, private, &contents, sde, rep),
        || beside.write(rep),
    )?;
    outputs::write_sbom(&out, &manifest)?;
    outputs::convert_formats(&image.formats, &out, sde, &plan.disk_guid, private, rep)?;
    let files = out.list()?;
    let output = out.commit()?;
    Ok(BuildReport {
        output,
        manifest,
        files,
    })
}

/// Runs `first` here and `second` on a thread of its own; the first error wins and a panic
/// is raised again here. For the disk and the files beside it: they are written from the
/// same buffers and need nothing from each other, and each is mostly one core copying into
/// the page cache after a squashfs phase that kept both cores busy, so side by side they
/// take the time of the longer one (0.5 s instead of 1.0 s for the stock worker).
fn side_by_side(
    first: impl FnOnce() -> Result<(), BuildError>,
    second: impl FnOnce() -> Result<(), BuildError> + Send,
) -> Result<(), BuildError> {
    std::thread::scope(|scope| {
        let second = scope.spawn(second);
        let first = first();
        let second = second
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        first.and(second)
    })
}

/// The userland sources applied in order, then the container images baked into the root;
/// returns the tree and what went into it (for the manifest).
fn userland(
    image: &keel_contract::profile::Image,
    cache_dir: &Path,
    rep: &Reporter,
) -> Result<(Tree, Vec<manifest::SourceItem>), BuildError> {
    let mut tree = Tree::with_merged_usr();
    let mut sources = crate::userland::apply_sources(&image.userland, cache_dir, &mut tree, rep)
        .map_err(|e| BuildError::Userland(e.to_string()))?;
    sources.extend(
        crate::userland::bake_container_images(&image.container_images, &mut tree, rep)
            .map_err(|e| BuildError::Userland(e.to_string()))?,
    );
    Ok((tree, sources))
}

#[cfg(test)]
mod tests;
