//! Update bundles: what `keel build` writes to `OUTDIR/update/` and what an upgrade sends to
//! a node.
//!
//! On disk a bundle is an OCI image layout holding one image manifest per OS version, so that
//! standard tools move it (`skopeo copy oci:OUTDIR/update:1.2.0 docker://registry/keel:1.2.0`).
//! The image is an OCI 1.1 *artifact*: `artifactType` [`ARTIFACT_TYPE`], the empty config
//! (`application/vnd.oci.empty.v1+json`, the two bytes `{}`), and one layer per [`Part`] with
//! Keel's own media types, in [`Part::ALL`] order. Nothing in it is a filesystem layer, so
//! container runtimes cannot mistake it for a runnable image.
//!
//! On the wire to a node (the *upload stream*) the same five parts travel as a plain tar, in
//! [`UPLOAD_ENTRIES`] order: the signed manifest and its signature first, so the node verifies
//! before it writes anything; the kernel and initramfs (staged on the ESP and checked against
//! the sizes and digests in the manifest before the inactive slot is touched); the slot
//! payload last, so it is streamed straight into the inactive slot.
//!
//! This module is the contract only: names, media types and the rules a reader applies.
//! Reading and writing live in the builder (and, for the upload stream, in the init).

use std::fmt;

/// `artifactType` of the image manifest (and of its index entry, where tools keep it).
pub const ARTIFACT_TYPE: &str = "application/vnd.keel.update.v1";

/// The config is the OCI empty descriptor: the spec's guidance for artifacts that have no
/// configuration. Skopeo 1.9 copies such manifests verbatim; `skopeo inspect` (without
/// `--raw`) and `umoci stat` refuse them, as they refuse every non-container image.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// The OCI image manifest and index media types the layout uses.
pub const IMAGE_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const IMAGE_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// `index.json` annotation naming an image; a bundle's ref name is its OS version.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Layer annotation with a file name, as ORAS and others use it: the part's upload entry name.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// Where `keel build` writes the bundle, inside OUTDIR.
pub const BUNDLE_DIR: &str = "update";

/// The ref name of a bundle: the OS version from the signed manifest, unchanged. (An OCI
/// layout accepts semver's `+`; a registry tag does not, so `+build` versions need another
/// tag when pushed.)
pub fn ref_name(version: &str) -> &str {
    version
}

/// The five parts of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// `manifest.json`: the canonical JSON the signature covers.
    Manifest,
    /// `manifest.json.minisig`: its minisign signature.
    Signature,
    Kernel,
    Initramfs,
    /// The slot payload: squashfs then dm-verity hash tree, exactly the bytes of KEEL-A
    /// that the manifest's `slot_payload` describes.
    Payload,
}

impl Part {
    /// Layer order in the image manifest, and entry order in the upload stream.
    pub const ALL: [Part; 5] = [
        Part::Manifest,
        Part::Signature,
        Part::Kernel,
        Part::Initramfs,
        Part::Payload,
    ];

    /// Position in [`Part::ALL`] (the layer index and the upload entry index).
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn media_type(self) -> &'static str {
        match self {
            Part::Manifest => "application/vnd.keel.manifest.v1+json",
            Part::Signature => "application/vnd.keel.manifest.signature.v1",
            Part::Kernel => "application/vnd.keel.kernel.v1",
            Part::Initramfs => "application/vnd.keel.initramfs.v1",
            Part::Payload => "application/vnd.keel.slot-payload.v1",
        }
    }

    /// The file name: the upload stream's entry name and the layer's title annotation.
    pub const fn entry_name(self) -> &'static str {
        match self {
            Part::Manifest => crate::layout::MANIFEST_FILE,
            Part::Signature => crate::layout::SIGNATURE_FILE,
            Part::Kernel => crate::output::KERNEL,
            Part::Initramfs => crate::output::INITRAMFS,
            Part::Payload => "payload",
        }
    }

    /// Largest size a reader accepts for the part, so a damaged or hostile descriptor cannot
    /// make it allocate without bound. Manifest and signature are read into memory; the
    /// kernel and initramfs are held in memory by the node while it checks them.
    pub const fn max_size(self) -> u64 {
        match self {
            Part::Manifest => 8 << 20,
            Part::Signature => 64 << 10,
            Part::Kernel | Part::Initramfs => 512 << 20,
            Part::Payload => u64::MAX,
        }
    }

    pub fn from_media_type(media_type: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.media_type() == media_type)
    }

    pub fn from_entry_name(name: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.entry_name() == name)
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.entry_name())
    }
}

/// Entry names of the upload stream, in the only order a node accepts.
pub const UPLOAD_ENTRIES: [&str; 5] = [
    Part::ALL[0].entry_name(),
    Part::ALL[1].entry_name(),
    Part::ALL[2].entry_name(),
    Part::ALL[3].entry_name(),
    Part::ALL[4].entry_name(),
];

/// Tar block size; headers are one block, data is padded to whole blocks.
pub const TAR_BLOCK: u64 = 512;

/// Length of an upload stream whose entries have these sizes (in [`Part::ALL`] order): each
/// entry is one header block (plain ustar: no pax or GNU long-name records, which the short
/// fixed names never need; sizes of 8 GiB and more use GNU's base-256 size field) followed by
/// its data padded to a whole block, then two zero blocks end the archive.
pub fn upload_stream_len(sizes: [u64; 5]) -> u64 {
    sizes
        .iter()
        .map(|s| TAR_BLOCK + s.div_ceil(TAR_BLOCK) * TAR_BLOCK)
        .sum::<u64>()
        + 2 * TAR_BLOCK
}

/// Why an upload stream's entries were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error("upload entry {position} is {found:?}, expected {expected:?}")]
    Unexpected {
        position: usize,
        found: String,
        expected: &'static str,
    },
    #[error("upload entry {position} ({name:?}) is not a regular file")]
    NotAFile { position: usize, name: String },
    #[error("upload entry {name:?} is {size} bytes, more than the {max} a node accepts")]
    TooLarge { name: String, size: u64, max: u64 },
    #[error("upload stream has an entry {found:?} after the last one ({last:?})")]
    Extra { found: String, last: &'static str },
    #[error("upload stream ended after {count} entries, before {missing:?}")]
    Missing { count: usize, missing: &'static str },
}

/// What a reader knows of one tar entry when it meets its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadEntry<'a> {
    pub name: &'a str,
    pub regular_file: bool,
    pub size: u64,
}

/// Checks entries one at a time as they arrive, so a node refuses a bad stream at the first
/// wrong header instead of after reading it all.
#[derive(Debug, Clone, Default)]
pub struct UploadSequence {
    seen: usize,
}

impl UploadSequence {
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts the next entry if it is the part expected at this position.
    pub fn accept(&mut self, entry: &UploadEntry<'_>) -> Result<Part, UploadError> {
        let Some(&part) = Part::ALL.get(self.seen) else {
            return Err(UploadError::Extra {
                found: entry.name.to_owned(),
                last: UPLOAD_ENTRIES[UPLOAD_ENTRIES.len() - 1],
            });
        };
        if entry.name != part.entry_name() {
            return Err(UploadError::Unexpected {
                position: self.seen,
                found: entry.name.to_owned(),
                expected: part.entry_name(),
            });
        }
        if !entry.regular_file {
            return Err(UploadError::NotAFile {
                position: self.seen,
                name: entry.name.to_owned(),
            });
        }
        if entry.size > part.max_size() {
            return Err(UploadError::TooLarge {
                name: entry.name.to_owned(),
                size: entry.size,
                max: part.max_size(),
            });
        }
        self.seen += 1;
        Ok(part)
    }

    /// At the end of the archive: every part must have come.
    pub fn finish(&self) -> Result<(), UploadError> {
        match Part::ALL.get(self.seen) {
            Some(missing) => Err(UploadError::Missing {
                count: self.seen,
                missing: missing.entry_name(),
            }),
            None => Ok(()),
        }
    }
}

/// Validates a whole entry sequence: exactly [`UPLOAD_ENTRIES`], in order, regular files.
pub fn validate_upload_entries<'a>(
    entries: impl IntoIterator<Item = UploadEntry<'a>>,
) -> Result<(), UploadError> {
    let mut sequence = UploadSequence::new();
    for entry in entries {
        sequence.accept(&entry)?;
    }
    sequence.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> UploadEntry<'_> {
        UploadEntry {
            name,
            regular_file: true,
            size: 1,
        }
    }

    #[test]
    fn entry_names_are_in_upload_order_and_round_trip() {
        assert_eq!(
            UPLOAD_ENTRIES,
            [
                "manifest.json",
                "manifest.json.minisig",
                "vmlinuz",
                "initramfs",
                "payload"
            ]
        );
        for (i, part) in Part::ALL.into_iter().enumerate() {
            assert_eq!(part.index(), i);
            assert_eq!(Part::from_entry_name(part.entry_name()), Some(part));
            assert_eq!(Part::from_media_type(part.media_type()), Some(part));
            assert!(part.media_type().starts_with("application/vnd.keel."));
        }
        assert_eq!(Part::from_media_type(ARTIFACT_TYPE), None);
        assert_eq!(Part::from_entry_name("disk.raw"), None);
    }

    #[test]
    fn the_exact_sequence_is_accepted() {
        validate_upload_entries(UPLOAD_ENTRIES.into_iter().map(file)).unwrap();
        let mut seq = UploadSequence::new();
        for (i, name) in UPLOAD_ENTRIES.into_iter().enumerate() {
            assert_eq!(seq.accept(&file(name)).unwrap(), Part::ALL[i]);
        }
        seq.finish().unwrap();
    }

    #[test]
    fn wrong_order_missing_extra_and_non_files_are_refused() {
        let swapped = ["manifest.json.minisig", "manifest.json"];
        assert_eq!(
            validate_upload_entries(swapped.into_iter().map(file)),
            Err(UploadError::Unexpected {
                position: 0,
                found: "manifest.json.minisig".into(),
                expected: "manifest.json"
            })
        );
        // The payload before the kernel: refused at the payload's header, before any of its
        // bytes would be written to a partition.
        let early = ["manifest.json", "manifest.json.minisig", "payload"];
        assert!(matches!(
            validate_upload_entries(early.into_iter().map(file)),
            Err(UploadError::Unexpected { position: 2, .. })
        ));
        assert_eq!(
            validate_upload_entries(UPLOAD_ENTRIES[..4].iter().copied().map(file)),
            Err(UploadError::Missing {
                count: 4,
                missing: "payload"
            })
        );
        assert_eq!(
            validate_upload_entries(std::iter::empty()),
            Err(UploadError::Missing {
                count: 0,
                missing: "manifest.json"
            })
        );
        let extra = UPLOAD_ENTRIES.into_iter().chain(["payload"]).map(file);
        assert!(matches!(
            validate_upload_entries(extra),
            Err(UploadError::Extra { .. })
        ));
        let dir = UPLOAD_ENTRIES.into_iter().enumerate().map(|(i, name)| {
            let mut e = file(name);
            e.regular_file = i != 3;
            e
        });
        assert!(matches!(
            validate_upload_entries(dir),
            Err(UploadError::NotAFile { position: 3, .. })
        ));
        // A path prefix is another name, not the same entry.
        let prefixed = ["./manifest.json"];
        assert!(matches!(
            validate_upload_entries(prefixed.into_iter().map(file)),
            Err(UploadError::Unexpected { position: 0, .. })
        ));
        let mut huge = file("manifest.json");
        huge.size = (8 << 20) + 1;
        assert!(matches!(
            UploadSequence::new().accept(&huge),
            Err(UploadError::TooLarge { .. })
        ));
    }

    #[test]
    fn stream_length_counts_headers_padding_and_the_end_blocks() {
        assert_eq!(upload_stream_len([0; 5]), 5 * 512 + 1024);
        assert_eq!(
            upload_stream_len([1, 512, 513, 0, 0]),
            5 * 512 + 512 + 512 + 1024 + 1024
        );
    }
}
