//! Pure decisions about an OCI layout's metadata: which descriptor to follow and what a media
//! type means. No I/O here, so every rule is testable on literal JSON.

use ocidir::oci_spec::image::{Arch, Descriptor, ImageIndex, Os, Platform};

/// The annotation an OCI layout uses for a tag (`oci:dir:TAG` in skopeo, `dir:TAG` in umoci).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Keel nodes are linux/amd64; a multi-arch index resolves to this platform.
pub const TARGET_OS: Os = Os::Linux;
pub const TARGET_ARCH: Arch = Arch::Amd64;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Why no descriptor could be chosen, or a media type is not one we read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("index.json lists no images")]
    Empty,
    #[error("no image has ref {wanted:?}; refs present: {}", list(.available))]
    RefNotFound {
        wanted: String,
        available: Vec<String>,
    },
    #[error(
        "index.json lists {} images and no ref was given; set `ref` to one of: {}",
        .available.len(),
        list(.available)
    )]
    SeveralImages { available: Vec<String> },
    #[error(
        "{count} images have ref {wanted:?} and not exactly one of them is {}/{}",
        TARGET_OS,
        TARGET_ARCH
    )]
    AmbiguousRef { wanted: String, count: usize },
    #[error("image index {index} has no {}/{} image; it has: {}", TARGET_OS, TARGET_ARCH, list(.available))]
    NoMatchingPlatform {
        index: String,
        available: Vec<String>,
    },
    #[error("{what} {digest}: unsupported media type {media_type}")]
    UnsupportedMediaType {
        what: &'static str,
        digest: String,
        media_type: String,
    },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

/// What a descriptor in an index points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    Manifest,
    Index,
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Maps an index entry's media type. Docker's v2s2 types are accepted because images pulled
/// from Docker Hub keep them when copied into an OCI layout.
pub fn manifest_kind(media_type: &str) -> Option<ManifestKind> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(ManifestKind::Manifest),
        OCI_INDEX | DOCKER_MANIFEST_LIST => Some(ManifestKind::Index),
        _ => None,
    }
}

/// Config media types that describe a runnable image (rather than an artifact such as a Helm
/// chart or a signature stored in the same layout).
pub fn is_image_config(media_type: &str) -> bool {
    matches!(media_type, OCI_CONFIG | DOCKER_CONFIG)
}

/// Maps a layer media type to its compression; `None` for anything that is not a filesystem
/// layer we can unpack.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// The ref annotation of a descriptor, if any.
pub fn ref_name(desc: &Descriptor) -> Option<&str> {
    desc.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME_ANNOTATION))
        .map(String::as_str)
}

pub fn is_target_platform(platform: &Platform) -> bool {
    platform.os() == &TARGET_OS && platform.architecture() == &TARGET_ARCH
}

/// `os/arch[/variant]`, as `docker --platform` spells it.
pub fn platform_name(platform: &Platform) -> String {
    match platform.variant() {
        Some(variant) => format!("{}/{}/{variant}", platform.os(), platform.architecture()),
        None => format!("{}/{}", platform.os(), platform.architecture()),
    }
}

/// How an index.json entry is offered to the user: its ref, or its digest when untagged (a
/// digest is also accepted as `ref`).
fn display_name(desc: &Descriptor) -> String {
    ref_name(desc).map_or_else(|| desc.digest().to_string(), str::to_owned)
}

/// Picks the entry of the layout's `index.json` that `reference` names: by ref annotation or,
/// for untagged images, by digest. Without a reference the layout must hold exactly one entry.
/// When one ref names several entries (some tools tag each platform's manifest alike), the
/// single linux/amd64 entry among them wins.
pub fn select_entry<'a>(
    index: &'a ImageIndex,
    reference: Option<&str>,
) -> Result<&'a Descriptor, SelectError> {
    let entries = index.manifests();
    let Some(wanted) = reference else {
        return match entries.as_slice() {
            [] => Err(SelectError::Empty),
            [only] => Ok(only),
            several => Err(SelectError::SeveralImages {
                available: several.iter().map(display_name).collect(),
            }),
        };
    };
    let matching: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| ref_name(d) == Some(wanted) || d.digest().as_ref() == wanted)
        .collect();
    match matching.as_slice() {
        [] => {
            let mut available: Vec<String> = entries.iter().map(display_name).collect();
            available.sort();
            available.dedup();
            Err(SelectError::RefNotFound {
                wanted: wanted.to_owned(),
                available,
            })
        }
        [only] => Ok(only),
        several => {
            let mut for_target = several
                .iter()
                .filter(|d| d.platform().as_ref().is_some_and(is_target_platform));
            match (for_target.next(), for_target.next()) {
                (Some(one), None) => Ok(one),
                _ => Err(SelectError::AmbiguousRef {
                    wanted: wanted.to_owned(),
                    count: several.len(),
                }),
            }
        }
    }
}

/// Picks the linux/amd64 manifest of a multi-arch image index (`index_digest` is only for the
/// error). Entries without a platform are not considered: the image spec lets an index omit
/// it, but multi-arch indexes in practice always carry it, and guessing would mean fetching
/// every config. The first match wins, as in containerd.
pub fn select_platform<'a>(
    index: &'a ImageIndex,
    index_digest: &str,
) -> Result<&'a Descriptor, SelectError> {
    index
        .manifests()
        .iter()
        .find(|d| d.platform().as_ref().is_some_and(is_target_platform))
        .ok_or_else(|| SelectError::NoMatchingPlatform {
            index: index_digest.to_owned(),
            available: index
                .manifests()
                .iter()
                .map(|d| {
                    d.platform()
                        .as_ref()
                        .map_or_else(|| format!("{} (no platform)", d.digest()), platform_name)
                })
                .collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    /// (digest, ref, (os, arch))
    type Entry<'a> = (&'a str, Option<&'a str>, Option<(&'a str, &'a str)>);

    fn index(entries: &[Entry]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(digest, name, platform)| {
                let mut d = serde_json::json!({
                    "mediaType": OCI_MANIFEST, "digest": digest, "size": 10,
                });
                if let Some(name) = name {
                    d["annotations"] = serde_json::json!({ REF_NAME_ANNOTATION: name });
                }
                if let Some((os, arch)) = platform {
                    d["platform"] = serde_json::json!({ "os": os, "architecture": arch });
                }
                d
            })
            .collect();
        serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap()
    }

    #[test]
    fn select_entry_rules() {
        let one_untagged = index(&[(D1, None, None)]);
        let two = index(&[(D1, Some("latest"), None), (D2, Some("v2"), None)]);
        let per_platform = index(&[
            (D1, Some("t"), Some(("linux", "arm64"))),
            (D2, Some("t"), Some(("linux", "amd64"))),
            (D3, Some("other"), None),
        ]);
        let twice_amd64 = index(&[
            (D1, Some("t"), Some(("linux", "amd64"))),
            (D2, Some("t"), Some(("linux", "amd64"))),
        ]);
        let empty = index(&[]);
        let cases: Vec<(&ImageIndex, Option<&str>, Result<&str, SelectError>)> = vec![
            (&one_untagged, None, Ok(D1)),
            (&one_untagged, Some(D1), Ok(D1)),
            (&two, Some("v2"), Ok(D2)),
            (&two, Some(D1), Ok(D1)),
            (
                &two,
                Some("nope"),
                Err(SelectError::RefNotFound {
                    wanted: "nope".into(),
                    available: vec!["latest".into(), "v2".into()],
                }),
            ),
            (
                &two,
                None,
                Err(SelectError::SeveralImages {
                    available: vec!["latest".into(), "v2".into()],
                }),
            ),
            (&per_platform, Some("t"), Ok(D2)),
            (
                &twice_amd64,
                Some("t"),
                Err(SelectError::AmbiguousRef {
                    wanted: "t".into(),
                    count: 2,
                }),
            ),
            (&empty, None, Err(SelectError::Empty)),
            (
                &empty,
                Some("x"),
                Err(SelectError::RefNotFound {
                    wanted: "x".into(),
                    available: vec![],
                }),
            ),
        ];
        for (index, reference, want) in cases {
            let got = select_entry(index, reference).map(|d| d.digest().to_string());
            assert_eq!(got, want.map(str::to_owned), "ref {reference:?}");
        }
    }

    #[test]
    fn untagged_entries_are_offered_by_digest() {
        let err = select_entry(&index(&[(D1, None, None), (D2, Some("a"), None)]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(D1) && err.contains(", a"), "{err}");
    }

    #[test]
    fn select_platform_rules() {
        let multi = index(&[
            (D1, None, Some(("linux", "arm64"))),
            (D2, None, Some(("linux", "amd64"))),
            (D3, None, Some(("linux", "amd64"))),
        ]);
        assert_eq!(select_platform(&multi, "x").unwrap().digest().as_ref(), D2);
        let no_amd64 = index(&[
            (D1, None, Some(("linux", "arm64"))),
            (D2, None, Some(("windows", "amd64"))),
            (D3, None, None),
        ]);
        let err = select_platform(&no_amd64, "sha256:idx").unwrap_err();
        assert_eq!(
            err,
            SelectError::NoMatchingPlatform {
                index: "sha256:idx".into(),
                available: vec![
                    "linux/arm64".into(),
                    "windows/amd64".into(),
                    format!("{D3} (no platform)"),
                ],
            }
        );
        assert!(err.to_string().contains("no linux/amd64 image"), "{err}");
    }

    #[test]
    fn media_type_mapping() {
        use Compression::*;
        let layers = [
            ("application/vnd.oci.image.layer.v1.tar", Some(None)),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Zstd)),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Gzip),
            ),
            ("application/vnd.docker.image.rootfs.diff.tar", Some(None)),
            ("application/vnd.oci.image.layer.v1.tar+bzip2", Option::None),
            ("application/vnd.oci.image.config.v1+json", Option::None),
            ("application/octet-stream", Option::None),
        ];
        for (media_type, want) in layers {
            assert_eq!(layer_compression(media_type), want, "{media_type}");
        }
        let manifests = [
            (OCI_MANIFEST, Some(ManifestKind::Manifest)),
            (DOCKER_MANIFEST, Some(ManifestKind::Manifest)),
            (OCI_INDEX, Some(ManifestKind::Index)),
            (DOCKER_MANIFEST_LIST, Some(ManifestKind::Index)),
            (
                "application/vnd.docker.distribution.manifest.v1+json",
                Option::None,
            ),
            ("application/vnd.oci.image.layer.v1.tar", Option::None),
        ];
        for (media_type, want) in manifests {
            assert_eq!(manifest_kind(media_type), want, "{media_type}");
        }
        assert!(is_image_config(OCI_CONFIG));
        assert!(is_image_config(DOCKER_CONFIG));
        assert!(!is_image_config("application/vnd.cncf.helm.config.v1+json"));
    }
}
