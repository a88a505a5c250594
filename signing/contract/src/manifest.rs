//! The image manifest: what a build produced, signed so that `keel verify`, the init and the
//! upgrade path can trust it. Serialised as canonical JSON (sorted keys, no insignificant
//! whitespace) so the signed bytes are a pure function of the content.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Bumped when a field changes meaning or a required field is added. Readers refuse other
/// versions rather than guess.
pub const MANIFEST_SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON for schema {MANIFEST_SCHEMA}: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest schema {found} is not supported (this Keel reads schema {MANIFEST_SCHEMA})")]
    UnsupportedSchema { found: u64 },
    #[error("manifest bytes are not canonical JSON (sorted keys, no whitespace)")]
    NotCanonical,
}

/// A SHA-256 digest, written as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::str::FromStr for Sha256Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("expected 64 lower-case hex digits, got {s:?}"));
        }
        hex::decode_to_slice(s, &mut out).map_err(|e| format!("bad hex digest {s:?}: {e}"))?;
        Ok(Sha256Digest(out))
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub name: String,
    /// The OS version (semver text).
    pub version: String,
    pub arch: String,
    /// `keel <version>` that built it.
    pub builder: String,
    pub source_date_epoch: u64,
    /// SHA-256 over the profile files (see `LoadedProfile::digest`).
    pub profile_sha256: Sha256Digest,
    pub kernel: KernelFile,
    pub initramfs: FileDigest,
    /// systemd-boot, installed as `\EFI\BOOT\BOOTX64.EFI`.
    pub bootloader: FileDigest,
    /// Kernel command line after Keel's own `keel.slot=` and `keel.roothash=`.
    pub cmdline: Vec<String>,
    pub root: RootFs,
    /// What a slot partition holds: the squashfs followed by its verity hash tree. Update
    /// bundles carry exactly these bytes.
    pub slot_payload: FileDigest,
    pub disk: Disk,
    /// Userland provenance: every Debian package and OCI layer that went into the root.
    pub sources: Vec<SourceItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub size: u64,
    pub sha256: Sha256Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelFile {
    /// `uname -r` of the kernel.
    pub release: String,
    pub size: u64,
    pub sha256: Sha256Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootFs {
    /// Always `squashfs`.
    pub format: String,
    /// `zstd` or `none`.
    pub compression: String,
    /// Bytes of the squashfs image (a multiple of the verity data block size).
    pub size: u64,
    pub verity: Verity,
}

/// dm-verity parameters, as `veritysetup format` would print them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verity {
    /// Always `sha256`.
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    /// Byte offset of the verity superblock in the slot (right after the squashfs).
    pub hash_offset: u64,
    pub salt: String,
    pub root_hash: Sha256Digest,
    pub uuid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub size: u64,
    pub guid: String,
    pub partitions: Vec<Partition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub guid: String,
    /// Byte offset and size on the disk.
    pub offset: u64,
    pub size: u64,
    /// Digest of the first `content.size` bytes, for partitions whose content is fixed at
    /// build time. The ESP has none: boot counting renames files in it, so its files are
    /// covered one by one (`kernel`, `initramfs`, `bootloader`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<FileDigest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceItem {
    /// `deb` or `oci-layer` or `file`.
    pub kind: String,
    pub name: String,
    pub version: String,
    pub sha256: Sha256Digest,
}

impl Manifest {
    /// Canonical JSON bytes: these are what gets signed.
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, ManifestError> {
        canonical_json(self)
    }

    /// Parses manifest bytes, refusing unknown schemas and non-canonical encodings (the bytes
    /// that were signed must be the bytes that are read).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)?;
        let schema = value
            .get("schema")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if schema != u64::from(MANIFEST_SCHEMA) {
            return Err(ManifestError::UnsupportedSchema { found: schema });
        }
        if serde_json::to_vec(&value)? != bytes {
            return Err(ManifestError::NotCanonical);
        }
        Ok(serde_json::from_value(value)?)
    }

    pub fn partition(&self, label: &str) -> Option<&Partition> {
        self.disk.partitions.iter().find(|p| p.label == label)
    }
}

/// Serialises `value` as canonical JSON: object keys sorted bytewise, no whitespace.
/// (`serde_json::Value` keeps objects in a sorted map unless `preserve_order` is enabled,
/// which this workspace never enables.)
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, ManifestError> {
    let value = serde_json::to_value(value)?;
    Ok(serde_json::to_vec(&value)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Manifest {
        let d = |b: u8| Sha256Digest([b; 32]);
        Manifest {
            schema: MANIFEST_SCHEMA,
            name: "keel".into(),
            version: "1.0.0".into(),
            arch: "x86_64".into(),
            builder: "keel 0.1.0".into(),
            source_date_epoch: 0,
            profile_sha256: d(1),
            kernel: KernelFile {
                release: "6.1.0-50-cloud-amd64".into(),
                size: 10,
                sha256: d(2),
            },
            initramfs: FileDigest {
                size: 11,
                sha256: d(3),
            },
            bootloader: FileDigest {
                size: 12,
                sha256: d(4),
            },
            cmdline: vec!["console=ttyS0".into()],
            root: RootFs {
                format: "squashfs".into(),
                compression: "zstd".into(),
                size: 4096,
                verity: Verity {
                    algorithm: "sha256".into(),
                    data_block_size: 4096,
                    hash_block_size: 4096,
                    data_blocks: 1,
                    hash_offset: 4096,
                    salt: "00".repeat(32),
                    root_hash: d(5),
                    uuid: "00000000-0000-0000-0000-000000000000".into(),
                },
            },
            slot_payload: FileDigest {
                size: 12288,
                sha256: d(6),
            },
            disk: Disk {
                size: 1 << 30,
                guid: "00000000-0000-0000-0000-000000000001".into(),
                partitions: vec![Partition {
                    number: 2,
                    label: "KEEL-A".into(),
                    type_guid: crate::layout::type_guid::ROOT_X86_64.into(),
                    guid: "00000000-0000-0000-0000-000000000002".into(),
                    offset: 1 << 20,
                    size: 1 << 26,
                    content: Some(FileDigest {
                        size: 12288,
                        sha256: d(6),
                    }),
                }],
            },
            sources: vec![],
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_has_no_whitespace() {
        let bytes = sample().to_canonical_json().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with("{\"arch\":\"x86_64\",\"bootloader\":{\"sha256\":"),
            "{text}"
        );
        assert!(!text.contains("\": ") && !text.contains(", \"") && !text.contains('\n'));
        assert_eq!(Manifest::from_json(&bytes).unwrap(), sample());
    }

    #[test]
    fn non_canonical_and_unknown_schema_are_refused() {
        let bytes = sample().to_canonical_json().unwrap();
        let pretty = serde_json::to_vec_pretty(
            &serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            Manifest::from_json(&pretty),
            Err(ManifestError::NotCanonical)
        ));
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("\"schema\":1", "\"schema\":2");
        assert!(matches!(
            Manifest::from_json(text.as_bytes()),
            Err(ManifestError::UnsupportedSchema { found: 2 })
        ));
    }
}
