//! Opening a bundle: the layout's metadata is parsed strictly and every blob is checked
//! against its descriptor (size and sha256) while it is read.
//!
//! `index.json` and `oci-layout` are the two files no digest covers, so they are held to what
//! the OCI spec defines: unknown fields, other media types and another platform are refused
//! rather than ignored. That way a damaged byte anywhere in them is an error instead of a
//! silently different reading. The image manifest, config and parts are covered by digests.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use keel_contract::bundle::{self, Part};
use keel_contract::manifest::Sha256Digest;
use ocidir::cap_std::{ambient_authority, fs::Dir};
use ocidir::oci_spec::image::{Descriptor, MediaType};
use ocidir::{OciDir, OciRead as _};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{BlobInfo, BundleError, describe};
use crate::error::chain;
use crate::io::VerifyingReader;

/// Limits for the JSON files read into memory (a registry refuses manifests over 4 MiB).
const MAX_JSON: u64 = 4 << 20;
const BLOB_BUF_SIZE: usize = 128 << 10;

/// An OCI image layout: a directory with `oci-layout` and `index.json`.
pub fn is_bundle(path: &Path) -> bool {
    path.join("oci-layout").is_file() && path.join("index.json").is_file()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLayout {
    image_layout_version: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIndex {
    schema_version: u32,
    media_type: Option<String>,
    artifact_type: Option<String>,
    manifests: Vec<RawDescriptor>,
    subject: Option<RawDescriptor>,
    // Allowed (the spec defines it) but carries nothing a bundle needs.
    #[allow(dead_code)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawManifest {
    schema_version: u32,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: RawDescriptor,
    layers: Vec<RawDescriptor>,
    subject: Option<RawDescriptor>,
    // Allowed: the writer puts the version there for registry UIs.
    #[allow(dead_code)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: u64,
    urls: Option<Vec<String>>,
    annotations: Option<BTreeMap<String, String>>,
    data: Option<String>,
    platform: Option<RawPlatform>,
    artifact_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlatform {
    architecture: String,
    os: String,
    #[serde(rename = "os.version")]
    os_version: Option<String>,
    #[serde(rename = "os.features")]
    os_features: Option<Vec<String>>,
    variant: Option<String>,
    features: Option<Vec<String>>,
}

impl RawDescriptor {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    fn info(&self) -> Result<BlobInfo, String> {
        let hex = self.digest.strip_prefix("sha256:").ok_or_else(|| {
            format!(
                "digest {:?}: expected sha256:<64 lower-case hex digits>",
                self.digest
            )
        })?;
        let digest: Sha256Digest = hex
            .parse()
            .map_err(|e| format!("digest {:?}: {e}", self.digest))?;
        Ok(BlobInfo {
            media_type: self.media_type.clone(),
            digest,
            size: self.size,
        })
    }
}

/// An opened bundle. The manifest, its signature, the config and the image manifest have
/// been read and checked against their digests; the kernel, initramfs and payload are known
/// to exist with the right size and are checked as they are read ([`Bundle::open_part`]).
/// Nothing here says the manifest is signed by a trusted key: that is `keel verify`.
#[derive(Debug)]
pub struct Bundle {
    layout: Layout,
    /// The ref name of the chosen image in `index.json`, if it has one.
    pub reference: Option<String>,
    /// `os/architecture` from the index entry, when it names a platform.
    pub platform: Option<String>,
    pub image_manifest: BlobInfo,
    pub config: BlobInfo,
    /// In [`Part::ALL`] order.
    pub parts: [BlobInfo; 5],
    /// The bytes of `manifest.json`, as signed.
    pub manifest: Vec<u8>,
    /// The bytes of `manifest.json.minisig`.
    pub signature: Vec<u8>,
}

/// The opened directory, for reading blobs.
#[derive(Debug)]
struct Layout {
    location: PathBuf,
    oci: OciDir,
}

/// A blob reader that fails, naming the blob, instead of ending when the bytes differ from
/// the descriptor (at end of file for a wrong digest, as soon as it grows past its size).
pub struct BundleReader {
    what: String,
    inner: VerifyingReader<BufReader<File>>,
}

impl Read for BundleReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.what)))
    }
}

impl BundleReader {
    /// Reads to the end; a mismatch comes back as the blob's own verdict.
    fn check(&mut self) -> Result<(), String> {
        match self.inner.drain() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(mismatch)) => Err(format!("{}: {mismatch}", self.what)),
            Err(e) => Err(format!("{}: {e}", self.what)),
        }
    }
}

/// Opens the bundle at `path`: the image named `reference`, or the only one in the layout.
pub fn open_bundle(path: &Path, reference: Option<&str>) -> Result<Bundle, BundleError> {
    let invalid = |message: String| BundleError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let chosen = choose_image(path, reference)?;
    let layout = Layout {
        location: path.to_path_buf(),
        oci: Dir::open_ambient_dir(path, ambient_authority())
            .map_err(ocidir::Error::from)
            .and_then(OciDir::open)
            .map_err(|e| invalid(format!("opening the OCI layout: {}", chain(&e))))?,
    };
    let (config, parts) = read_image_manifest(&layout, &chosen.image_manifest)?;
    let read_part = |part: Part| {
        let info = &parts[part.index()];
        layout.read_blob(&blob_what(part, info), info)
    };
    let manifest = read_part(Part::Manifest)?;
    let signature = read_part(Part::Signature)?;
    let bundle = Bundle {
        layout,
        reference: chosen.reference,
        platform: chosen.platform,
        image_manifest: chosen.image_manifest,
        config,
        parts,
        manifest,
        signature,
    };
    // The large parts are read later; opening them now reports a missing or truncated blob
    // before anything else happens.
    for part in [Part::Kernel, Part::Initramfs, Part::Payload] {
        bundle.open_part(part)?;
    }
    Ok(bundle)
}

/// The image `oci-layout` and `index.json` point at, checked as far as they describe it.
struct ChosenImage {
    reference: Option<String>,
    platform: Option<String>,
    image_manifest: BlobInfo,
}

/// Reads `oci-layout` and `index.json` and picks the image (by `reference` when given).
fn choose_image(path: &Path, reference: Option<&str>) -> Result<ChosenImage, BundleError> {
    let invalid = |message: String| BundleError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let layout: RawLayout = parse_json(path, "oci-layout")?;
    if layout.image_layout_version != "1.0.0" {
        return Err(invalid(format!(
            "oci-layout: imageLayoutVersion {:?}, expected \"1.0.0\"",
            layout.image_layout_version
        )));
    }
    let index: RawIndex = parse_json(path, "index.json")?;
    let index_err = |message: String| invalid(format!("index.json: {message}"));
    check_index(&index).map_err(index_err)?;
    let entry = select(&index.manifests, reference).map_err(index_err)?;
    let reference = entry
        .annotation(bundle::REF_NAME_ANNOTATION)
        .map(str::to_owned);
    let what_entry = match &reference {
        Some(r) => format!("image {r:?}"),
        None => "the image".to_owned(),
    };
    let entry_err = |message: String| index_err(format!("{what_entry}: {message}"));
    let platform = check_index_entry(entry).map_err(entry_err)?;
    let image_manifest = entry.info().map_err(entry_err)?;
    if image_manifest.size > MAX_JSON {
        return Err(entry_err(format!(
            "image manifest of {} bytes is too large",
            image_manifest.size
        )));
    }
    Ok(ChosenImage {
        reference,
        platform,
        image_manifest,
    })
}

fn check_index(index: &RawIndex) -> Result<(), String> {
    if index.schema_version != 2 {
        return Err(format!(
            "schemaVersion {}, expected 2",
            index.schema_version
        ));
    }
    if let Some(mt) = index
        .media_type
        .as_deref()
        .filter(|mt| *mt != bundle::IMAGE_INDEX_MEDIA_TYPE)
    {
        return Err(format!(
            "mediaType {mt:?}, expected {:?}",
            bundle::IMAGE_INDEX_MEDIA_TYPE
        ));
    }
    if index.subject.is_some() || index.artifact_type.is_some() {
        return Err("an index with a subject or artifactType is not a bundle layout".into());
    }
    Ok(())
}

/// Checks the index's entry for the image; returns its platform (`linux/amd64`) if it has one.
fn check_index_entry(entry: &RawDescriptor) -> Result<Option<String>, String> {
    if entry.media_type != bundle::IMAGE_MANIFEST_MEDIA_TYPE {
        return Err(format!(
            "mediaType {:?}, expected {:?}",
            entry.media_type,
            bundle::IMAGE_MANIFEST_MEDIA_TYPE
        ));
    }
    if let Some(at) = entry
        .artifact_type
        .as_deref()
        .filter(|at| *at != bundle::ARTIFACT_TYPE)
    {
        return Err(format!(
            "artifactType {at:?}, expected {:?}",
            bundle::ARTIFACT_TYPE
        ));
    }
    if entry.urls.is_some() || entry.data.is_some() {
        return Err("urls and data are not used in a bundle's index".into());
    }
    let Some(p) = &entry.platform else {
        return Ok(None);
    };
    let extra = p.os_version.is_some()
        || p.os_features.is_some()
        || p.variant.is_some()
        || p.features.is_some();
    // Keel builds x86_64 only; the platform is the one the writer derives from it.
    if p.architecture != "amd64" || p.os != "linux" || extra {
        return Err(format!(
            "platform {}/{}{}: a bundle is linux/amd64",
            p.architecture,
            p.os,
            if extra { " with extra fields" } else { "" }
        ));
    }
    Ok(Some(format!("{}/{}", p.os, p.architecture)))
}

/// Reads and checks the image manifest: its empty config and its five layers' descriptors.
fn read_image_manifest(
    layout: &Layout,
    image_manifest: &BlobInfo,
) -> Result<(BlobInfo, [BlobInfo; 5]), BundleError> {
    let invalid = |message: String| BundleError::Invalid {
        path: layout.location.clone(),
        message,
    };
    let what = format!("image manifest {}", image_manifest.oci_digest());
    let manifest_bytes = layout.read_blob(&what, image_manifest)?;
    let raw: RawManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| invalid(format!("{what}: not an OCI image manifest: {e}")))?;
    check_image_manifest(&raw).map_err(|m| invalid(format!("{what}: {m}")))?;
    let config = raw
        .config
        .info()
        .map_err(|m| invalid(format!("{what}: config: {m}")))?;
    let config_bytes = layout.read_blob(&format!("config {}", config.oci_digest()), &config)?;
    if config_bytes != bundle::EMPTY_CONFIG {
        return Err(invalid(format!(
            "config {}: expected the empty config {{}}",
            config.oci_digest()
        )));
    }
    let mut parts = Vec::with_capacity(Part::ALL.len());
    for (layer, part) in raw.layers.iter().zip(Part::ALL) {
        let info = layer
            .info()
            .map_err(|m| invalid(format!("{what}: {}: {m}", describe(part))))?;
        if info.size > part.max_size() {
            return Err(invalid(format!(
                "{}: {} bytes, more than the {} allowed",
                describe(part),
                info.size,
                part.max_size()
            )));
        }
        parts.push(info);
    }
    // check_image_manifest made sure there are exactly five.
    let parts: [BlobInfo; 5] = parts
        .try_into()
        .map_err(|_| invalid(format!("{what}: expected five layers")))?;
    Ok((config, parts))
}

fn blob_what(part: Part, info: &BlobInfo) -> String {
    format!("{} blob {}", describe(part), info.oci_digest())
}

fn parse_json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T, BundleError> {
    let path = dir.join(name);
    let file = File::open(&path).map_err(|source| BundleError::Io {
        path: dir.to_path_buf(),
        what: name.to_owned(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| BundleError::Io {
            path: dir.to_path_buf(),
            what: name.to_owned(),
            source,
        })?;
    let invalid = |message: String| BundleError::Invalid {
        path: dir.to_path_buf(),
        message: format!("{name}: {message}"),
    };
    if bytes.len() as u64 > MAX_JSON {
        return Err(invalid("too large".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))
}

/// The index entry: the one with the ref name asked for, or the only one.
fn select<'a>(
    manifests: &'a [RawDescriptor],
    reference: Option<&str>,
) -> Result<&'a RawDescriptor, String> {
    let refs = || {
        manifests
            .iter()
            .map(|m| {
                m.annotation(bundle::REF_NAME_ANNOTATION)
                    .unwrap_or("(no ref name)")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match reference {
        Some(r) => {
            let mut found = manifests
                .iter()
                .filter(|m| m.annotation(bundle::REF_NAME_ANNOTATION) == Some(r));
            match (found.next(), found.next()) {
                (Some(m), None) => Ok(m),
                (None, _) => Err(format!("no image with ref name {r:?} (has: {})", refs())),
                (Some(_), Some(_)) => Err(format!("more than one image with ref name {r:?}")),
            }
        }
        None => match manifests {
            [m] => Ok(m),
            [] => Err("no images".into()),
            _ => Err(format!(
                "{} images ({}): name the one to use",
                manifests.len(),
                refs()
            )),
        },
    }
}

fn check_image_manifest(raw: &RawManifest) -> Result<(), String> {
    if raw.schema_version != 2 {
        return Err(format!("schemaVersion {}, expected 2", raw.schema_version));
    }
    if raw.media_type.as_deref() != Some(bundle::IMAGE_MANIFEST_MEDIA_TYPE) {
        return Err(format!(
            "mediaType {:?}, expected {:?}",
            raw.media_type,
            bundle::IMAGE_MANIFEST_MEDIA_TYPE
        ));
    }
    if raw.artifact_type.as_deref() != Some(bundle::ARTIFACT_TYPE) {
        return Err(format!(
            "artifactType {:?}: not a Keel update bundle (expected {:?})",
            raw.artifact_type,
            bundle::ARTIFACT_TYPE
        ));
    }
    if raw.subject.is_some() {
        return Err("a bundle has no subject".into());
    }
    let empty = Sha256Digest(Sha256::digest(bundle::EMPTY_CONFIG).into());
    if raw.config.media_type != bundle::CONFIG_MEDIA_TYPE
        || raw.config.digest != format!("sha256:{empty}")
        || raw.config.size != bundle::EMPTY_CONFIG.len() as u64
    {
        return Err(format!(
            "config is {} {} ({} bytes), expected the empty config {:?}",
            raw.config.media_type,
            raw.config.digest,
            raw.config.size,
            bundle::CONFIG_MEDIA_TYPE
        ));
    }
    if raw.layers.len() != Part::ALL.len() {
        return Err(format!(
            "{} layers, expected {} ({})",
            raw.layers.len(),
            Part::ALL.len(),
            bundle::UPLOAD_ENTRIES.join(", ")
        ));
    }
    for (i, (layer, part)) in raw.layers.iter().zip(Part::ALL).enumerate() {
        if layer.media_type != part.media_type() {
            return Err(format!(
                "layer {} has media type {:?}, expected {:?} ({})",
                i + 1,
                layer.media_type,
                part.media_type(),
                describe(part)
            ));
        }
        if let Some(title) = layer
            .annotation(bundle::TITLE_ANNOTATION)
            .filter(|t| *t != part.entry_name())
        {
            return Err(format!(
                "layer {} is titled {title:?}, expected {:?}",
                i + 1,
                part.entry_name()
            ));
        }
    }
    Ok(())
}

impl Layout {
    fn invalid(&self, message: String) -> BundleError {
        BundleError::Invalid {
            path: self.location.clone(),
            message,
        }
    }

    /// Opens a blob through `ocidir` (its cap-std directory keeps the path inside the
    /// layout; it compares the file's size with the descriptor's) behind a sha256 check.
    fn open_blob(&self, what: &str, info: &BlobInfo) -> Result<BundleReader, BundleError> {
        let digest: ocidir::oci_spec::image::Sha256Digest = info
            .digest
            .to_hex()
            .parse()
            .map_err(|e| self.invalid(format!("{what}: {e}")))?;
        let desc = Descriptor::new(MediaType::Other(info.media_type.clone()), info.size, digest);
        let file = self.oci.read_blob(&desc).map_err(|e| match e {
            ocidir::Error::SizeMismatch { expected, found } => {
                self.invalid(format!("{what}: expected {expected} bytes, found {found}"))
            }
            ocidir::Error::Io(source) if source.kind() == io::ErrorKind::NotFound => {
                self.invalid(format!("{what}: missing from blobs/sha256"))
            }
            other => self.invalid(format!("{what}: {}", chain(&other))),
        })?;
        Ok(BundleReader {
            what: what.to_owned(),
            inner: VerifyingReader::new(
                BufReader::with_capacity(BLOB_BUF_SIZE, file),
                &info.digest.to_hex(),
                info.size,
            ),
        })
    }

    /// A small blob, read whole and verified.
    fn read_blob(&self, what: &str, info: &BlobInfo) -> Result<Vec<u8>, BundleError> {
        let mut reader = self.open_blob(what, info)?;
        let mut bytes = Vec::with_capacity(usize::try_from(info.size).unwrap_or(0));
        reader.read_to_end(&mut bytes).map_err(|e| {
            self.invalid(match reader.inner.verdict() {
                Some(Err(mismatch)) => format!("{what}: {mismatch}"),
                _ => e.to_string(),
            })
        })?;
        Ok(bytes)
    }
}

impl Bundle {
    pub fn location(&self) -> &Path {
        &self.layout.location
    }

    pub fn part(&self, part: Part) -> &BlobInfo {
        &self.parts[part.index()]
    }

    /// A reader over one part's blob that fails if its bytes differ from the descriptor.
    pub fn open_part(&self, part: Part) -> Result<BundleReader, BundleError> {
        let info = self.part(part);
        self.layout.open_blob(&blob_what(part, info), info)
    }

    /// Reads a part's blob to the end and checks it against its descriptor.
    pub fn verify_part(&self, part: Part) -> Result<(), BundleError> {
        self.open_part(part)?
            .check()
            .map_err(|message| self.layout.invalid(message))
    }
}
