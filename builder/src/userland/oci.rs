//! OCI images as a userland source: a local OCI image layout directory or an oci-archive tar
//! (what `skopeo copy ... oci-archive:x.tar` writes) is resolved to one linux/amd64 image whose
//! layers are applied to a [`Tree`] with whiteouts honoured.
//!
//! Every blob (manifest, config, layers) is checked against its descriptor's sha256 and size
//! while it is read, and each layer's uncompressed stream against the config's `diff_ids`, so
//! a layout that was tampered with or damaged on disk cannot reach a signed image. Layers are
//! streamed rather than verified first, which means a failed [`apply_oci`] may have applied
//! part of a bad layer: the caller must discard the tree on error (the build fails anyway).
//!
//! Layouts are opened with `ocidir` (cap-std underneath, so blob paths cannot escape the
//! layout); archives with `ocidir::OciArchive`, which indexes the tar once and then reads
//! members in place, so member order does not matter and nothing is extracted to disk.

mod export;
mod select;

#[cfg(test)]
mod tests;

use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use ocidir::cap_std::{ambient_authority, fs::Dir};
use ocidir::oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use ocidir::{OciArchive, OciDir, OciRead as _};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::tree::Tree;
use crate::userland::tar_layer::{LayerError, LayerStats, Whiteouts, apply_tar};

pub use crate::io::Mismatch;
pub use export::{ExportedImage, export_oci_archive, export_oci_archive_named};
pub use select::{
    Compression, ManifestKind, REF_NAME_ANNOTATION, SelectError, TARGET_ARCH, TARGET_OS,
    layer_compression, manifest_kind, select_entry, select_platform,
};

use crate::io::{HashingReader, VerifyingReader};
use select::is_image_config;

/// Manifests, indexes and configs are read into memory; a registry refuses manifests over
/// 4 MiB, and configs with long histories stay well below this.
const MAX_JSON_BLOB: u64 = 8 << 20;
/// Layer blobs are large sequential reads; the default 8 KiB buffer costs syscalls.
const BLOB_BUF_SIZE: usize = 128 << 10;

/// Where the image is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciStore {
    /// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`).
    Layout(PathBuf),
    /// The same layout packed in a tar (skopeo's `oci-archive:` transport).
    Archive(PathBuf),
}

/// One `oci = { ... }` userland entry of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawOciSource")]
pub struct OciSource {
    pub store: OciStore,
    /// A ref name (`org.opencontainers.image.ref.name`) or a manifest digest; may be omitted
    /// when the layout holds exactly one image.
    pub reference: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOciSource {
    layout: Option<PathBuf>,
    archive: Option<PathBuf>,
    #[serde(rename = "ref")]
    reference: Option<String>,
}

impl TryFrom<RawOciSource> for OciSource {
    type Error = String;

    fn try_from(raw: RawOciSource) -> Result<Self, String> {
        let store = match (raw.layout, raw.archive) {
            (Some(path), None) => OciStore::Layout(path),
            (None, Some(path)) => OciStore::Archive(path),
            _ => return Err("an oci source needs exactly one of `layout` or `archive`".into()),
        };
        Ok(OciSource {
            store,
            reference: raw.reference,
        })
    }
}

impl OciSource {
    pub fn layout(path: impl Into<PathBuf>) -> Self {
        OciSource {
            store: OciStore::Layout(path.into()),
            reference: None,
        }
    }

    pub fn archive(path: impl Into<PathBuf>) -> Self {
        OciSource {
            store: OciStore::Archive(path.into()),
            reference: None,
        }
    }

    pub fn with_ref(mut self, reference: impl Into<String>) -> Self {
        self.reference = Some(reference.into());
        self
    }

    pub fn path(&self) -> &Path {
        match &self.store {
            OciStore::Layout(path) | OciStore::Archive(path) => path,
        }
    }

    /// Paths in a profile are relative to the profile's directory, not the working directory.
    pub fn relative_to(&self, base: &Path) -> Self {
        let rebase = |p: &PathBuf| base.join(p);
        OciSource {
            store: match &self.store {
                OciStore::Layout(p) => OciStore::Layout(rebase(p)),
                OciStore::Archive(p) => OciStore::Archive(rebase(p)),
            },
            reference: self.reference.clone(),
        }
    }
}

/// The image that was applied.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// `sha256:...` of the manifest (the platform manifest when resolved through an index).
    pub manifest_digest: String,
    pub config_digest: String,
    pub config: ImageConfiguration,
    /// In application order.
    pub layers: Vec<OciLayer>,
}

/// What one layer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciLayer {
    pub digest: String,
    pub media_type: String,
    /// Compressed size, as stored.
    pub size: u64,
    /// `sha256:...` of the uncompressed tar, as the config lists it.
    pub diff_id: String,
    pub stats: LayerStats,
}

/// Errors name the layout or archive and, where one is involved, the blob.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{}: cannot open as an OCI {kind}: {}", .location.display(), chain(.source))]
    Open {
        location: PathBuf,
        kind: &'static str,
        source: ocidir::Error,
    },
    #[error("{}: reading index.json: {}", .location.display(), chain(.source))]
    Index {
        location: PathBuf,
        source: ocidir::Error,
    },
    #[error("{}: {source}", .location.display())]
    Select {
        location: PathBuf,
        source: SelectError,
    },
    #[error("{}: blob {digest} is missing", .location.display())]
    MissingBlob { location: PathBuf, digest: String },
    #[error("{}: blob {digest}: only sha256 digests are supported", .location.display())]
    UnsupportedDigest { location: PathBuf, digest: String },
    #[error("{}: blob {digest}: {mismatch}", .location.display())]
    BlobMismatch {
        location: PathBuf,
        digest: String,
        mismatch: Mismatch,
    },
    #[error("{}: blob {digest}: {}", .location.display(), chain(.source))]
    OpenBlob {
        location: PathBuf,
        digest: String,
        source: ocidir::Error,
    },
    #[error("{}: blob {digest}: reading: {source}", .location.display())]
    ReadBlob {
        location: PathBuf,
        digest: String,
        source: io::Error,
    },
    #[error("{}: {what} {digest} is {size} bytes, over the {MAX_JSON_BLOB}-byte limit", .location.display())]
    TooLarge {
        location: PathBuf,
        what: &'static str,
        digest: String,
        size: u64,
    },
    #[error("{}: {what} {digest} is not valid: {source}", .location.display())]
    Json {
        location: PathBuf,
        what: &'static str,
        digest: String,
        source: serde_json::Error,
    },
    #[error("{}: manifest {digest} says it is {found} but its descriptor says {expected}", .location.display())]
    MediaTypeMismatch {
        location: PathBuf,
        digest: String,
        expected: String,
        found: String,
    },
    #[error("{}: image {manifest} is {os}/{arch}; Keel nodes are {}/{}", .location.display(), TARGET_OS, TARGET_ARCH)]
    WrongPlatform {
        location: PathBuf,
        manifest: String,
        os: String,
        arch: String,
    },
    #[error("{}: manifest {manifest} has {layers} layers but its config lists {diff_ids} diff_ids", .location.display())]
    LayerCount {
        location: PathBuf,
        manifest: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("{}: layer {digest}: uncompressed content is {found}, the config says {expected}", .location.display())]
    DiffIdMismatch {
        location: PathBuf,
        digest: String,
        expected: String,
        found: String,
    },
    #[error("{}: layer {digest}: decompressing: {source}", .location.display())]
    Decompress {
        location: PathBuf,
        digest: String,
        source: io::Error,
    },
    #[error("{}: layer {digest}: {source}", .location.display())]
    Layer {
        location: PathBuf,
        digest: String,
        source: LayerError,
    },
    #[error("{}: writing the oci-archive: {source}", .location.display())]
    Export {
        location: PathBuf,
        source: io::Error,
    },
}

pub(crate) use crate::error::chain;

/// Reads the image `source` names and applies its layers, in order, to `tree`.
pub fn apply_oci(tree: &mut Tree, source: &OciSource) -> Result<OciImage, OciError> {
    let store = Store::open(source)?;
    let image = store.resolve(source.reference.as_deref())?;
    let mut layers = Vec::with_capacity(image.layers.len());
    for ((desc, compression), diff_id) in image.layers.iter().zip(image.config.rootfs().diff_ids())
    {
        layers.push(store.apply_layer(tree, desc, *compression, diff_id)?);
    }
    Ok(OciImage {
        manifest_digest: image.manifest_desc.digest().to_string(),
        config_digest: image.manifest.config().digest().to_string(),
        config: image.config,
        layers,
    })
}

/// Blob access over either kind of store. An enum rather than generics over `OciRead`, whose
/// associated reader type would otherwise leak into every helper.
enum Backend {
    Layout(OciDir),
    Archive(OciArchive),
}

struct Store {
    backend: Backend,
    location: PathBuf,
}

/// An image resolved from its store: metadata read and verified, layers not yet read.
struct Resolved {
    /// The entry of the store's index.json that was chosen; its annotations carry the ref.
    entry: Descriptor,
    manifest_desc: Descriptor,
    manifest_bytes: Vec<u8>,
    manifest: ImageManifest,
    config_bytes: Vec<u8>,
    config: ImageConfiguration,
    layers: Vec<(Descriptor, Compression)>,
}

type BlobReader = VerifyingReader<Box<dyn Read + Send>>;

impl Store {
    fn open(source: &OciSource) -> Result<Store, OciError> {
        let location = source.path().to_path_buf();
        let backend = match &source.store {
            OciStore::Layout(path) => Dir::open_ambient_dir(path, ambient_authority())
                .map_err(ocidir::Error::from)
                .and_then(OciDir::open)
                .map(Backend::Layout)
                .map_err(|source| OciError::Open {
                    location: location.clone(),
                    kind: "image layout",
                    source,
                })?,
            OciStore::Archive(path) => {
                OciArchive::open(path)
                    .map(Backend::Archive)
                    .map_err(|source| OciError::Open {
                        location: location.clone(),
                        kind: "archive",
                        source,
                    })?
            }
        };
        Ok(Store { backend, location })
    }

    fn read_index(&self) -> Result<ImageIndex, OciError> {
        match &self.backend {
            Backend::Layout(dir) => dir.read_index(),
            Backend::Archive(archive) => archive.read_index(),
        }
        .map_err(|source| OciError::Index {
            location: self.location.clone(),
            source,
        })
    }

    /// A lookup that fails says nothing about the blob; reading it later reports the cause.
    fn has_blob(&self, desc: &Descriptor) -> bool {
        match &self.backend {
            Backend::Layout(dir) => dir.has_blob(desc),
            Backend::Archive(archive) => archive.has_blob(desc),
        }
        .unwrap_or(true)
    }

    /// Opens a blob behind a verifier. ocidir already compares the stored size with the
    /// descriptor; the verifier checks both again on the bytes actually read.
    fn blob(&self, desc: &Descriptor) -> Result<BlobReader, OciError> {
        let digest = desc.digest().to_string();
        let Some(hex) = desc.as_digest_sha256() else {
            return Err(OciError::UnsupportedDigest {
                location: self.location.clone(),
                digest,
            });
        };
        let opened: ocidir::Result<Box<dyn Read + Send>> = match &self.backend {
            Backend::Layout(dir) => dir
                .read_blob(desc)
                .map(|f| Box::new(BufReader::with_capacity(BLOB_BUF_SIZE, f)) as _),
            Backend::Archive(archive) => archive
                .read_blob(desc)
                .map(|r| Box::new(BufReader::with_capacity(BLOB_BUF_SIZE, r)) as _),
        };
        let reader = opened.map_err(|err| match err {
            ocidir::Error::SizeMismatch { expected, found } => {
                self.mismatch(desc, Mismatch::Size { expected, found })
            }
            ocidir::Error::Io(io) if io.kind() == io::ErrorKind::NotFound => {
                OciError::MissingBlob {
                    location: self.location.clone(),
                    digest: digest.clone(),
                }
            }
            source => OciError::OpenBlob {
                location: self.location.clone(),
                digest: digest.clone(),
                source,
            },
        })?;
        Ok(VerifyingReader::new(reader, hex, desc.size()))
    }

    fn mismatch(&self, desc: &Descriptor, mismatch: Mismatch) -> OciError {
        OciError::BlobMismatch {
            location: self.location.clone(),
            digest: desc.digest().to_string(),
            mismatch,
        }
    }

    /// The error for a failed read from `blob`: its verdict if it reached one, else the I/O
    /// error itself.
    fn read_error(&self, desc: &Descriptor, blob: &BlobReader, source: io::Error) -> OciError {
        match blob.verdict() {
            Some(Err(mismatch)) => self.mismatch(desc, mismatch.clone()),
            _ => OciError::ReadBlob {
                location: self.location.clone(),
                digest: desc.digest().to_string(),
                source,
            },
        }
    }

    /// Reads a whole (small) JSON blob, verified, and parses it.
    fn read_json<T: DeserializeOwned>(
        &self,
        desc: &Descriptor,
        what: &'static str,
    ) -> Result<(Vec<u8>, T), OciError> {
        if desc.size() > MAX_JSON_BLOB {
            return Err(OciError::TooLarge {
                location: self.location.clone(),
                what,
                digest: desc.digest().to_string(),
                size: desc.size(),
            });
        }
        let mut blob = self.blob(desc)?;
        let mut bytes = Vec::with_capacity(desc.size() as usize);
        if let Err(err) = blob.read_to_end(&mut bytes) {
            return Err(self.read_error(desc, &blob, err));
        }
        let value = serde_json::from_slice(&bytes).map_err(|source| OciError::Json {
            location: self.location.clone(),
            what,
            digest: desc.digest().to_string(),
            source,
        })?;
        Ok((bytes, value))
    }

    fn select_error(&self, source: SelectError) -> OciError {
        OciError::Select {
            location: self.location.clone(),
            source,
        }
    }

    fn unsupported(&self, what: &'static str, desc: &Descriptor) -> OciError {
        self.select_error(SelectError::UnsupportedMediaType {
            what,
            digest: desc.digest().to_string(),
            media_type: desc.media_type().to_string(),
        })
    }

    /// Follows index.json to one linux/amd64 image and checks everything but layer contents,
    /// so that a bad image fails before the tree is touched.
    fn resolve(&self, reference: Option<&str>) -> Result<Resolved, OciError> {
        let index = self.read_index()?;
        let entry = select_entry(&index, reference)
            .map_err(|e| self.select_error(e))?
            .clone();
        let manifest_desc = match manifest_kind(entry.media_type().as_ref()) {
            Some(ManifestKind::Manifest) => entry.clone(),
            Some(ManifestKind::Index) => {
                let (_, nested): (_, ImageIndex) = self.read_json(&entry, "image index")?;
                let chosen = select_platform(&nested, entry.digest().as_ref())
                    .map_err(|e| self.select_error(e))?;
                // A nested index inside an index is legal but unseen in practice; refusing it
                // keeps resolution to at most two hops.
                if manifest_kind(chosen.media_type().as_ref()) != Some(ManifestKind::Manifest) {
                    return Err(self.unsupported("platform manifest", chosen));
                }
                chosen.clone()
            }
            None => return Err(self.unsupported("index.json entry", &entry)),
        };
        let (manifest_bytes, manifest): (_, ImageManifest) =
            self.read_json(&manifest_desc, "manifest")?;
        // The descriptor's media type decided how the blob was parsed; a manifest that claims
        // to be something else is confused or crafted.
        if let Some(found) = manifest.media_type()
            && found != manifest_desc.media_type()
        {
            return Err(OciError::MediaTypeMismatch {
                location: self.location.clone(),
                digest: manifest_desc.digest().to_string(),
                expected: manifest_desc.media_type().to_string(),
                found: found.to_string(),
            });
        }
        if !is_image_config(manifest.config().media_type().as_ref()) {
            return Err(self.unsupported("config", manifest.config()));
        }
        let (config_bytes, config): (_, ImageConfiguration) =
            self.read_json(manifest.config(), "config")?;
        if config.os() != &TARGET_OS || config.architecture() != &TARGET_ARCH {
            return Err(OciError::WrongPlatform {
                location: self.location.clone(),
                manifest: manifest_desc.digest().to_string(),
                os: config.os().to_string(),
                arch: config.architecture().to_string(),
            });
        }
        let layers = manifest
            .layers()
            .iter()
            .map(|desc| match layer_compression(desc.media_type().as_ref()) {
                Some(compression) => Ok((desc.clone(), compression)),
                None => Err(self.unsupported("layer", desc)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let diff_ids = config.rootfs().diff_ids().len();
        if layers.len() != diff_ids {
            return Err(OciError::LayerCount {
                location: self.location.clone(),
                manifest: manifest_desc.digest().to_string(),
                layers: layers.len(),
                diff_ids,
            });
        }
        if let Some((odd, _)) = layers.iter().find(|(d, _)| d.as_digest_sha256().is_none()) {
            return Err(OciError::UnsupportedDigest {
                location: self.location.clone(),
                digest: odd.digest().to_string(),
            });
        }
        if let Some((missing, _)) = layers.iter().find(|(desc, _)| !self.has_blob(desc)) {
            return Err(OciError::MissingBlob {
                location: self.location.clone(),
                digest: missing.digest().to_string(),
            });
        }
        Ok(Resolved {
            entry,
            manifest_desc,
            manifest_bytes,
            manifest,
            config_bytes,
            config,
            layers,
        })
    }

    fn apply_layer(
        &self,
        tree: &mut Tree,
        desc: &Descriptor,
        compression: Compression,
        expected_diff_id: &str,
    ) -> Result<OciLayer, OciError> {
        let mut blob = self.blob(desc)?;
        let unpacked = unpack(tree, &mut blob, compression);
        // The blob's verdict outranks whatever went wrong above it: a corrupt blob usually
        // surfaces first as a gzip or tar error, and the digest is the true cause.
        match blob.drain() {
            Ok(Ok(())) => {}
            Ok(Err(mismatch)) => return Err(self.mismatch(desc, mismatch)),
            Err(source) => {
                return Err(OciError::ReadBlob {
                    location: self.location.clone(),
                    digest: desc.digest().to_string(),
                    source,
                });
            }
        }
        let digest = desc.digest().to_string();
        let (stats, diff_hex) = unpacked.map_err(|failure| match failure {
            UnpackError::Decompress(source) => OciError::Decompress {
                location: self.location.clone(),
                digest: digest.clone(),
                source,
            },
            UnpackError::Tar(source) => OciError::Layer {
                location: self.location.clone(),
                digest: digest.clone(),
                source,
            },
        })?;
        let diff_id = format!("sha256:{diff_hex}");
        if diff_id != expected_diff_id {
            return Err(OciError::DiffIdMismatch {
                location: self.location.clone(),
                digest,
                expected: expected_diff_id.to_owned(),
                found: diff_id,
            });
        }
        Ok(OciLayer {
            digest,
            media_type: desc.media_type().to_string(),
            size: desc.size(),
            diff_id,
            stats,
        })
    }
}

enum UnpackError {
    Decompress(io::Error),
    Tar(LayerError),
}

/// Applies one layer and returns its stats and the sha256 (hex) of the uncompressed tar.
fn unpack(
    tree: &mut Tree,
    blob: impl Read,
    compression: Compression,
) -> Result<(LayerStats, String), UnpackError> {
    let decoder = decompress(compression, blob).map_err(UnpackError::Decompress)?;
    let mut tar = HashingReader::new(decoder);
    let stats = apply_tar(tree, &mut tar, Whiteouts::Honour).map_err(UnpackError::Tar)?;
    // The tar reader stops at the end-of-archive marker; the padding after it is part of the
    // diff_id.
    io::copy(&mut tar, &mut io::sink()).map_err(UnpackError::Decompress)?;
    Ok((stats, tar.finish().sha256_hex()))
}

fn decompress<'a>(
    compression: Compression,
    reader: impl Read + 'a,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        // Multi-member: pigz and some registries write concatenated gzip members, which Go's
        // gzip reader (and so every container runtime) accepts.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
    })
}
