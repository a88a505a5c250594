//! The software bill of materials of an image, as SPDX 2.3 JSON (`OUTDIR/sbom.spdx.json`).
//!
//! It is derived from the signed manifest alone, which lists every Debian package (with the
//! SHA-256 of its `.deb`), every OCI layer and every baked container image that went in, so
//! it says exactly what the manifest says, in the format scanners and registries read. It is
//! reproducible: the creation time is SOURCE_DATE_EPOCH, the document namespace is derived
//! from the manifest's digest, and nothing depends on the host.
//!
//! The document describes one package, the OS image, which CONTAINS a package per source
//! item. Debian packages carry a `pkg:deb` package URL, baked images a `pkg:oci` one. What
//! the manifest does not know (licences, suppliers, download locations) is `NOASSERTION`, as
//! SPDX asks, rather than guessed.

use keel_contract::manifest::{Manifest, SourceItem};
use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("the manifest: {0}")]
    Manifest(#[from] keel_contract::manifest::ManifestError),
    #[error("SOURCE_DATE_EPOCH {0} is not a date")]
    Time(u64),
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
}

const NOASSERTION: &str = "NOASSERTION";
const IMAGE_ID: &str = "SPDXRef-Image";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdx_id: &'static str,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    packages: Vec<Package>,
    relationships: Vec<Relationship>,
}

#[derive(Serialize)]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Package {
    name: String,
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    version_info: String,
    download_location: &'static str,
    files_analyzed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checksums: Vec<Checksum>,
    license_concluded: &'static str,
    license_declared: &'static str,
    copyright_text: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_package_purpose: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<ExternalRef>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Checksum {
    algorithm: &'static str,
    checksum_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

/// The SPDX 2.3 JSON document for the image `manifest` describes (pretty-printed, with a
/// final newline).
pub fn spdx(manifest: &Manifest) -> Result<Vec<u8>, SbomError> {
    let digest = hex::encode(Sha256::digest(manifest.to_canonical_json()?));
    let image = Package {
        name: manifest.name.clone(),
        spdx_id: IMAGE_ID.to_owned(),
        version_info: manifest.version.clone(),
        download_location: NOASSERTION,
        files_analyzed: false,
        checksums: vec![Checksum {
            algorithm: "SHA256",
            checksum_value: manifest.slot_payload.sha256.to_string(),
        }],
        license_concluded: NOASSERTION,
        license_declared: NOASSERTION,
        copyright_text: NOASSERTION,
        primary_package_purpose: Some("OPERATING-SYSTEM"),
        comment: Some(format!(
            "Keel image for {}, kernel {}; the checksum is the root slot's payload (squashfs and dm-verity tree), root hash {}",
            manifest.arch, manifest.kernel.release, manifest.root.verity.root_hash
        )),
        external_refs: Vec::new(),
    };
    let mut packages = vec![image];
    let mut relationships = vec![Relationship {
        spdx_element_id: "SPDXRef-DOCUMENT".into(),
        relationship_type: "DESCRIBES",
        related_spdx_element: IMAGE_ID.into(),
    }];
    for (i, item) in manifest.sources.iter().enumerate() {
        let package = source_package(i, item);
        relationships.push(Relationship {
            spdx_element_id: IMAGE_ID.into(),
            relationship_type: "CONTAINS",
            related_spdx_element: package.spdx_id.clone(),
        });
        packages.push(package);
    }
    let document = Document {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdx_id: "SPDXRef-DOCUMENT",
        name: format!("{}-{}", manifest.name, manifest.version),
        document_namespace: format!(
            "https://keel.invalid/spdx/{}-{}-{digest}",
            manifest.name, manifest.version
        ),
        creation_info: CreationInfo {
            created: iso8601(manifest.source_date_epoch)?,
            creators: vec![format!("Tool: {}", manifest.builder.replace(' ', "-"))],
        },
        packages,
        relationships,
    };
    let mut bytes = serde_json::to_vec_pretty(&document)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// One manifest source item as a package: its index keeps SPDX ids unique (a layer and an
/// image may share a name).
fn source_package(index: usize, item: &SourceItem) -> Package {
    let (purl, comment) = match item.kind.as_str() {
        "deb" => (
            Some(format!(
                "pkg:deb/debian/{}@{}",
                percent_encode(&item.name),
                percent_encode(&item.version)
            )),
            "Debian package; the checksum is the .deb's",
        ),
        "oci-image" => (
            item.version
                .strip_prefix("sha256:")
                .map(|hex| format!("pkg:oci/{}@sha256%3A{hex}", percent_encode(&item.name))),
            "OCI image baked into the root; the version is its manifest digest",
        ),
        _ => (
            None,
            "OCI image layer; the version is the image's manifest digest, the checksum the layer's",
        ),
    };
    Package {
        name: item.name.clone(),
        spdx_id: format!("SPDXRef-{}-{index}-{}", item.kind, id_safe(&item.name)),
        version_info: item.version.clone(),
        download_location: NOASSERTION,
        files_analyzed: false,
        checksums: vec![Checksum {
            algorithm: "SHA256",
            checksum_value: item.sha256.to_string(),
        }],
        license_concluded: NOASSERTION,
        license_declared: NOASSERTION,
        copyright_text: NOASSERTION,
        primary_package_purpose: None,
        comment: Some(comment.to_owned()),
        external_refs: purl
            .map(|locator| ExternalRef {
                reference_category: "PACKAGE-MANAGER",
                reference_type: "purl",
                reference_locator: locator,
            })
            .into_iter()
            .collect(),
    }
}

/// SPDX ids allow letters, digits, `.` and `-`.
fn id_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Percent-encoding for a package URL component: everything but unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `2023-11-14T22:13:20Z` (the same RFC 3339 form keel-pki writes for Kubernetes).
fn iso8601(epoch: u64) -> Result<String, SbomError> {
    i64::try_from(epoch)
        .ok()
        .and_then(keel_pki::rfc3339)
        .ok_or(SbomError::Time(epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_ids_and_purls() {
        assert_eq!(iso8601(1_700_000_000).unwrap(), "2023-11-14T22:13:20Z");
        assert_eq!(iso8601(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(id_safe("libc6:amd64+x"), "libc6-amd64-x");
        assert_eq!(
            percent_encode("1.6.20~ds1-1+deb12u3"),
            "1.6.20~ds1-1%2Bdeb12u3"
        );
        assert_eq!(percent_encode("2:1.2"), "2%3A1.2");
    }
}
