//! Userland sources: Debian packages, OCI images and host files, applied to a [`crate::tree::Tree`].

pub mod alternatives;
pub mod deb;
pub mod deb822;
pub mod debian;
pub mod oci;
pub mod shlibs;
pub mod tar_layer;

use std::path::Path;

use keel_contract::manifest::{Sha256Digest, SourceItem};
use keel_contract::profile::{ContainerImage, UserlandSource};

use crate::progress::{Reporter, human_bytes};
use crate::tree::Tree;

/// Where baked container images go in the root (one oci-archive per image); the init
/// imports every archive there into containerd at boot.
pub use keel_contract::layout::root::BAKED_IMAGES_DIR;

/// The package cache: `$KEEL_CACHE_DIR`, `$XDG_CACHE_HOME/keel` or `~/.cache/keel`.
pub fn default_cache_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(dir) = std::env::var_os("KEEL_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("keel");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/keel"))
        .unwrap_or_else(|| PathBuf::from(".keel-cache"))
}

#[derive(Debug, thiserror::Error)]
pub enum UserlandError {
    #[error("image.container_images[{index}] ({name}): {message}")]
    ContainerImage {
        index: usize,
        name: String,
        message: String,
    },
    #[error("image.userland[{index}] (debian): {message}")]
    Debian { index: usize, message: String },
    #[error("image.userland[{index}] (oci): {message}")]
    Oci { index: usize, message: String },
}

fn digest_from_hex(hex_text: &str) -> Sha256Digest {
    let hex_text = hex_text.strip_prefix("sha256:").unwrap_or(hex_text);
    hex_text.parse().unwrap_or_default()
}

/// Applies every source in order and returns what went in, for the manifest.
pub fn apply_sources(
    sources: &[UserlandSource],
    cache_dir: &Path,
    tree: &mut Tree,
    rep: &Reporter,
) -> Result<Vec<SourceItem>, UserlandError> {
    let mut items = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        match source {
            UserlandSource::Debian(deb) => {
                let phase = rep.phase("debian", None);
                let mut log = |line: &str| {
                    phase.message(line);
                    rep.debug(line);
                };
                let resolved =
                    debian::resolve_and_download(deb, cache_dir, &mut log).map_err(|e| {
                        UserlandError::Debian {
                            index,
                            message: e.to_string(),
                        }
                    })?;
                let stats =
                    debian::install(&resolved, tree).map_err(|e| UserlandError::Debian {
                        index,
                        message: e.to_string(),
                    })?;
                let bytes: u64 = resolved.iter().map(|r| r.size).sum();
                phase.finish(&format!(
                    "{} packages ({}) from {}, {} files",
                    resolved.len(),
                    human_bytes(bytes),
                    deb.suite,
                    stats.iter().map(|s| s.layer.entries).sum::<usize>()
                ));
                items.extend(resolved.iter().map(|r| SourceItem {
                    kind: "deb".into(),
                    name: r.package.clone(),
                    version: r.version.clone(),
                    sha256: digest_from_hex(&r.sha256),
                }));
            }
            UserlandSource::Oci(spec) => {
                let phase = rep.phase("oci", None);
                let mut src = match (&spec.layout, &spec.archive) {
                    (Some(l), _) => oci::OciSource::layout(l),
                    (None, Some(a)) => oci::OciSource::archive(a),
                    (None, None) => {
                        return Err(UserlandError::Oci {
                            index,
                            message: "neither layout nor archive given".into(),
                        });
                    }
                };
                if let Some(r) = &spec.reference {
                    src = src.with_ref(r);
                }
                let image = oci::apply_oci(tree, &src).map_err(|e| UserlandError::Oci {
                    index,
                    message: e.to_string(),
                })?;
                phase.finish(&format!(
                    "{} ({} layers)",
                    src.path().display(),
                    image.layers.len()
                ));
                let name = spec
                    .reference
                    .clone()
                    .unwrap_or_else(|| src.path().display().to_string());
                items.extend(image.layers.iter().map(|l| SourceItem {
                    kind: "oci-layer".into(),
                    name: name.clone(),
                    version: image.manifest_digest.clone(),
                    sha256: digest_from_hex(&l.digest),
                }));
            }
        }
    }
    Ok(items)
}

/// Exports each baked image from its layout or archive into the root as
/// `<BAKED_IMAGES_DIR>/<name>.tar`, named `keel.local/<name>:latest` for containerd.
pub fn bake_container_images(
    images: &[ContainerImage],
    tree: &mut Tree,
    rep: &Reporter,
) -> Result<Vec<SourceItem>, UserlandError> {
    let mut items = Vec::new();
    for (index, image) in images.iter().enumerate() {
        let err = |message: String| UserlandError::ContainerImage {
            index,
            name: image.name.to_string(),
            message,
        };
        let phase = rep.phase("image", None);
        let mut src = match (&image.layout, &image.archive) {
            (Some(l), _) => oci::OciSource::layout(l),
            (None, Some(a)) => oci::OciSource::archive(a),
            (None, None) => return Err(err("neither layout nor archive given".into())),
        };
        if let Some(r) = &image.reference {
            src = src.with_ref(r);
        }
        let mut archive = Vec::new();
        let name = ContainerImage::containerd_name(&image.name);
        let exported = oci::export_oci_archive_named(&src, Some(&name), &mut archive)
            .map_err(|e| err(e.to_string()))?;
        let path = format!("{BAKED_IMAGES_DIR}/{}.tar", image.name);
        let size = archive.len() as u64;
        tree.insert(
            &path,
            crate::tree::Node::file(crate::tree::Meta::root(0o644), archive),
        )
        .map_err(|e| err(e.to_string()))?;
        // The config beside it: the node needs the entrypoint to run the image with arguments
        // of its own (`ctr run` replaces the whole command line).
        let config_path = format!("{BAKED_IMAGES_DIR}/{}.config.json", image.name);
        tree.insert(
            &config_path,
            crate::tree::Node::file(crate::tree::Meta::root(0o644), exported.config.clone()),
        )
        .map_err(|e| err(e.to_string()))?;
        phase.finish(&format!("{name} ({}) -> {path}", human_bytes(size)));
        items.push(SourceItem {
            kind: "oci-image".into(),
            name: image.name.to_string(),
            version: exported.manifest_digest.clone(),
            sha256: digest_from_hex(&exported.manifest_digest),
        });
    }
    Ok(items)
}
