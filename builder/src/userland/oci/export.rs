//! Writes one image of a store as a self-contained oci-archive, for baking container images
//! into a node's root so an air-gapped node can import them into containerd at boot.
//!
//! The output depends only on the image (its blobs and its index.json entry): entries are
//! sorted, owners and times fixed, and index.json is written by us with sorted keys, so the
//! same image gives the same bytes and the signed root image stays reproducible.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;

use super::{OciError, OciSource, Resolved, Store};
use ocidir::oci_spec::image::Descriptor;

const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Any fixed time would do; 0 keeps the archive independent of SOURCE_DATE_EPOCH too.
const ENTRY_MTIME: u64 = 0;

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedImage {
    /// The image's config blob (OCI image configuration JSON), verified.
    pub config: Vec<u8>,
    /// `sha256:...` of the (platform) manifest the archive's index.json points at.
    pub manifest_digest: String,
    /// Every blob written, `sha256:...`, sorted.
    pub blobs: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: [IndexEntry<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry<'a> {
    media_type: String,
    digest: String,
    size: u64,
    platform: PlatformEntry,
    // A BTreeMap, not the HashMap oci-spec uses, so keys are written in a fixed order.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct PlatformEntry {
    architecture: String,
    os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
}

enum Blob<'a> {
    Memory(&'a [u8]),
    Layer(&'a Descriptor),
}

/// Writes the image `src` selects as an oci-archive with only the blobs it needs: its
/// manifest, config and layers. A multi-arch image is narrowed to its linux/amd64 manifest.
/// The index.json entry keeps the annotations (the ref name) of the source's entry. Blobs
/// are verified as they are copied; on error `dest` holds a partial archive to discard.
pub fn export_oci_archive(src: &OciSource, dest: impl Write) -> Result<ExportedImage, OciError> {
    export_oci_archive_named(src, None, dest)
}

/// [`export_oci_archive`], naming the image `name` in the archive's index (both
/// `org.opencontainers.image.ref.name` and containerd's `io.containerd.image.name`), so that
/// `ctr images import` on the node registers it under that name.
pub fn export_oci_archive_named(
    src: &OciSource,
    name: Option<&str>,
    dest: impl Write,
) -> Result<ExportedImage, OciError> {
    let store = Store::open(src)?;
    let image = store.resolve(src.reference.as_deref())?;
    let export_err = |source| OciError::Export {
        location: store.location.clone(),
        source,
    };

    let mut blobs: BTreeMap<String, (u64, Blob<'_>)> = BTreeMap::new();
    let digest_hex = |d: &Descriptor| d.as_digest_sha256().unwrap_or_default().to_owned();
    blobs.insert(
        digest_hex(&image.manifest_desc),
        (
            image.manifest_desc.size(),
            Blob::Memory(&image.manifest_bytes),
        ),
    );
    let config_desc = image.manifest.config();
    blobs.insert(
        digest_hex(config_desc),
        (config_desc.size(), Blob::Memory(&image.config_bytes)),
    );
    for (layer, _) in &image.layers {
        blobs.insert(digest_hex(layer), (layer.size(), Blob::Layer(layer)));
    }

    let mut tar = tar::Builder::new(dest);
    for dir in ["blobs/", "blobs/sha256/"] {
        let header = header(dir, tar::EntryType::Directory, 0o755, 0).map_err(export_err)?;
        tar.append(&header, io::empty()).map_err(export_err)?;
    }
    for (hex, (size, blob)) in &blobs {
        let path = format!("blobs/sha256/{hex}");
        let header = header(&path, tar::EntryType::Regular, 0o644, *size).map_err(export_err)?;
        match blob {
            Blob::Memory(bytes) => tar.append(&header, *bytes).map_err(export_err)?,
            Blob::Layer(desc) => {
                let mut reader = store.blob(desc)?;
                if let Err(err) = tar.append(&header, &mut reader) {
                    return Err(match reader.verdict() {
                        Some(Err(_)) => store.read_error(desc, &reader, err),
                        _ => export_err(err),
                    });
                }
            }
        }
    }
    let index = index_json(&image, name).map_err(|e| export_err(e.into()))?;
    for (path, bytes) in [("index.json", &index[..]), ("oci-layout", OCI_LAYOUT)] {
        let header =
            header(path, tar::EntryType::Regular, 0o644, bytes.len() as u64).map_err(export_err)?;
        tar.append(&header, bytes).map_err(export_err)?;
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(export_err)?;

    Ok(ExportedImage {
        config: image.config_bytes.clone(),
        manifest_digest: image.manifest_desc.digest().to_string(),
        blobs: blobs.keys().map(|hex| format!("sha256:{hex}")).collect(),
    })
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> io::Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_path(path)?;
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(ENTRY_MTIME);
    header.set_size(size);
    header.set_cksum();
    Ok(header)
}

fn index_json(image: &Resolved, name: Option<&str>) -> serde_json::Result<Vec<u8>> {
    let mut annotations: BTreeMap<&str, &str> = image
        .entry
        .annotations()
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Some(name) = name {
        annotations.insert("org.opencontainers.image.ref.name", name);
        annotations.insert("io.containerd.image.name", name);
    }
    let index = Index {
        schema_version: 2,
        media_type: OCI_INDEX_MEDIA_TYPE,
        manifests: [IndexEntry {
            media_type: image.manifest_desc.media_type().to_string(),
            digest: image.manifest_desc.digest().to_string(),
            size: image.manifest_desc.size(),
            // From the verified config, so containerd's platform filter on import need not
            // open the config to decide.
            platform: PlatformEntry {
                architecture: image.config.architecture().to_string(),
                os: image.config.os().to_string(),
                variant: image.config.variant().clone(),
            },
            annotations,
        }],
    };
    serde_json::to_vec(&index)
}
