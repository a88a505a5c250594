//! Unpacks a `.deb` into a [`Tree`] without dpkg.
//!
//! A `.deb` is an `ar` archive whose members are, in order, `debian-binary` (the format
//! version, `2.0\n`), `control.tar[.gz|.xz|.zst]` and `data.tar[.gz|.xz|.zst|.lzma]`; members
//! whose names start with `_` are reserved and skipped (deb(5)). Only `data.tar` is applied;
//! `control` is read for the package's identity. Maintainer scripts do not run.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::tar_layer::{LayerError, LayerStats, Whiteouts, apply_tar};
use crate::tree::Tree;

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a .deb: {reason}")]
    NotADeb { path: PathBuf, reason: String },
    #[error("{path}: unsupported .deb format version {found:?} (expected \"2.0\")")]
    BadVersion { path: PathBuf, found: String },
    #[error("{path}: the .deb has no {member} member")]
    MissingMember { path: PathBuf, member: &'static str },
    #[error(
        "{path}: member {member}: unsupported compression (supported: none, gz, xz, zst, lzma)"
    )]
    UnsupportedCompression { path: PathBuf, member: String },
    #[error("{path}: member {member}: {source}")]
    Member {
        path: PathBuf,
        member: String,
        source: std::io::Error,
    },
    #[error("{path}: control file: {reason}")]
    Control { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Layer { path: PathBuf, source: LayerError },
    #[error("{path}: SHA256 is {actual}, expected {expected}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: the package inside is {found}, expected {expected}")]
    ControlMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
}

/// What unpacking one package did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebStats {
    pub package: String,
    pub version: String,
    pub architecture: String,
    /// The data member's name (`data.tar.xz`), which tells the compression.
    pub data_member: String,
    pub layer: LayerStats,
    /// The package's `postinst`, never run; read for its `update-alternatives` calls.
    pub postinst: Option<String>,
}

/// Unpacks the `.deb` at `path` into `tree`.
pub fn unpack_deb(path: &Path, tree: &mut Tree) -> Result<DebStats, DebError> {
    let bytes = std::fs::read(path).map_err(|source| DebError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    unpack_deb_bytes(&bytes, path, tree)
}

/// Unpacks a `.deb` held in memory; `path` only names it in errors.
pub fn unpack_deb_bytes(bytes: &[u8], path: &Path, tree: &mut Tree) -> Result<DebStats, DebError> {
    let decoded = decode_deb(bytes, path)?;
    apply_decoded(decoded, path, tree)
}

/// A `.deb` read and decompressed, ready to apply. Decoding is the slow part (xz) and needs
/// no tree, so many packages can be decoded at once and applied in order afterwards.
pub struct DecodedDeb {
    control: Control,
    data_member: String,
    data_tar: Vec<u8>,
}

/// Applies a decoded package's files to `tree`.
pub fn apply_decoded(
    decoded: DecodedDeb,
    path: &Path,
    tree: &mut Tree,
) -> Result<DebStats, DebError> {
    let layer =
        apply_tar(tree, decoded.data_tar.as_slice(), Whiteouts::Literal).map_err(|source| {
            DebError::Layer {
                path: path.to_path_buf(),
                source,
            }
        })?;
    Ok(DebStats {
        package: decoded.control.package,
        version: decoded.control.version,
        architecture: decoded.control.architecture,
        data_member: decoded.data_member,
        layer,
        postinst: decoded.control.postinst,
    })
}

/// Checks a `.deb`'s structure, reads its control data and decompresses its data tarball.
pub fn decode_deb(bytes: &[u8], path: &Path) -> Result<DecodedDeb, DebError> {
    let not_a_deb = |reason: String| DebError::NotADeb {
        path: path.to_path_buf(),
        reason,
    };
    let mut archive = ar::Archive::new(bytes);
    let mut seen_version = false;
    let mut control: Option<Control> = None;
    let mut result: Option<(String, Vec<u8>)> = None;
    while let Some(entry) = archive.next_entry() {
        let mut entry = entry.map_err(|e| not_a_deb(e.to_string()))?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let member_err = |source| DebError::Member {
            path: path.to_path_buf(),
            member: name.clone(),
            source,
        };
        if !seen_version {
            if name != "debian-binary" {
                return Err(not_a_deb(format!(
                    "first member is {name:?}, not \"debian-binary\""
                )));
            }
            let mut version = String::new();
            entry
                .by_ref()
                .take(64)
                .read_to_string(&mut version)
                .map_err(member_err)?;
            // dpkg accepts any 2.x; the format has not changed within major version 2.
            let ok = version
                .strip_prefix("2.")
                .and_then(|v| v.strip_suffix('\n'))
                .is_some_and(|minor| {
                    !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit())
                });
            if !ok {
                return Err(DebError::BadVersion {
                    path: path.to_path_buf(),
                    found: version,
                });
            }
            seen_version = true;
        } else if name.starts_with('_') {
            continue;
        } else if name.starts_with("control.tar") && control.is_none() && result.is_none() {
            let mut reader = decompress(&name, &mut entry, path)?;
            control = Some(read_control(&mut reader).map_err(|e| match e {
                ControlReadError::Io(source) => member_err(source),
                ControlReadError::Bad(reason) => DebError::Control {
                    path: path.to_path_buf(),
                    reason,
                },
            })?);
        } else if name.starts_with("data.tar") && result.is_none() {
            if control.is_none() {
                return Err(DebError::MissingMember {
                    path: path.to_path_buf(),
                    member: "control.tar",
                });
            }
            let mut reader = decompress(&name, &mut entry, path)?;
            // The whole stream, so the decompressor also checks the tail and its checksum.
            let mut data = Vec::new();
            reader.read_to_end(&mut data).map_err(member_err)?;
            result = Some((name.clone(), data));
        } else {
            return Err(not_a_deb(format!("unexpected member {name:?}")));
        }
    }
    if !seen_version {
        return Err(not_a_deb("empty archive".into()));
    }
    let control = control.ok_or_else(|| DebError::MissingMember {
        path: path.to_path_buf(),
        member: "control.tar",
    })?;
    let (data_member, data_tar) = result.ok_or_else(|| DebError::MissingMember {
        path: path.to_path_buf(),
        member: "data.tar",
    })?;
    Ok(DecodedDeb {
        control,
        data_member,
        data_tar,
    })
}

/// A decompressing reader chosen by the member name's extension.
fn decompress<'a>(
    member: &str,
    reader: &'a mut dyn Read,
    path: &Path,
) -> Result<Box<dyn Read + 'a>, DebError> {
    let ext = member
        .strip_prefix("control.tar")
        .or_else(|| member.strip_prefix("data.tar"))
        .unwrap_or(member);
    Ok(match ext {
        "" => Box::new(reader),
        ".gz" => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        ".xz" => Box::new(liblzma::read::XzDecoder::new_multi_decoder(reader)),
        ".zst" => Box::new(zstd::stream::read::Decoder::new(reader).map_err(|source| {
            DebError::Member {
                path: path.to_path_buf(),
                member: member.to_string(),
                source,
            }
        })?),
        ".lzma" => {
            let stream = liblzma::stream::Stream::new_lzma_decoder(u64::MAX).map_err(|e| {
                DebError::Member {
                    path: path.to_path_buf(),
                    member: member.to_string(),
                    source: e.into(),
                }
            })?;
            Box::new(liblzma::read::XzDecoder::new_stream(reader, stream))
        }
        _ => {
            return Err(DebError::UnsupportedCompression {
                path: path.to_path_buf(),
                member: member.to_string(),
            });
        }
    })
}

struct Control {
    package: String,
    version: String,
    architecture: String,
    postinst: Option<String>,
}

enum ControlReadError {
    Io(std::io::Error),
    Bad(String),
}

/// Reads the package's identity from `./control` in a control tarball, and `./postinst`.
fn read_control(reader: &mut dyn Read) -> Result<Control, ControlReadError> {
    let mut archive = tar::Archive::new(reader);
    let mut control = None;
    let mut postinst = None;
    for entry in archive.entries().map_err(ControlReadError::Io)? {
        let mut entry = entry.map_err(ControlReadError::Io)?;
        let path = entry.path_bytes();
        let name = path.strip_prefix(b"./").unwrap_or(&path).to_vec();
        if name != b"control" && name != b"postinst" {
            continue;
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(ControlReadError::Io)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if name == b"postinst" {
            postinst = Some(text);
            continue;
        }
        let stanzas = super::deb822::parse_stanzas(&text);
        let stanza = stanzas
            .first()
            .ok_or_else(|| ControlReadError::Bad("empty".into()))?;
        let field = |name: &str| {
            stanza
                .field(name)
                .map(str::to_string)
                .ok_or_else(|| ControlReadError::Bad(format!("no {name} field")))
        };
        control = Some((field("Package")?, field("Version")?, field("Architecture")?));
    }
    let (package, version, architecture) =
        control.ok_or_else(|| ControlReadError::Bad("no ./control in control.tar".into()))?;
    Ok(Control {
        package,
        version,
        architecture,
        postinst,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tree::NodeKind;
    use std::io::Write;

    fn tar_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1);
            if path.ends_with('/') {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, path, &[][..]).unwrap();
            } else {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, *data).unwrap();
            }
        }
        builder.into_inner().unwrap()
    }

    pub(crate) fn compress(ext: &str, data: &[u8]) -> Vec<u8> {
        match ext {
            "" => data.to_vec(),
            ".gz" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            ".xz" => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            ".zst" => zstd::encode_all(data, 1).unwrap(),
            other => panic!("no test compressor for {other}"),
        }
    }

    fn control_tar(package: &str) -> Vec<u8> {
        let control = format!(
            "Package: {package}\nVersion: 1:1.0-1\nArchitecture: amd64\nDescription: test\n multi-line\n"
        );
        tar_bytes(&[("./", b""), ("./control", control.as_bytes())])
    }

    /// An ar archive of (member name, bytes), as dpkg-deb writes it.
    pub(crate) fn ar_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut builder = ar::Builder::new(Vec::new());
        for (name, data) in members {
            let header = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
            builder.append(&header, &data[..]).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// A .deb for `package` whose data.tar uses compression `ext` and holds `files`.
    pub(crate) fn deb_of(package: &str, ext: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
        ar_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.gz", compress(".gz", &control_tar(package))),
            (&format!("data.tar{ext}"), compress(ext, &tar_bytes(files))),
        ])
    }

    fn file_content(tree: &Tree, path: &str) -> Vec<u8> {
        match &tree.get(path).unwrap().kind {
            NodeKind::File(c) => c.bytes().to_vec(),
            other => panic!("{path} is {other:?}"),
        }
    }

    #[test]
    fn unpacks_data_tar_with_each_compression() {
        for ext in [".xz", ".zst", ".gz", ""] {
            let deb = deb_of(
                "hello",
                ext,
                &[
                    ("./", b""),
                    ("./usr/", b""),
                    ("./usr/bin/", b""),
                    ("./usr/bin/hello", b"#!/bin/sh\necho hi\n"),
                    ("./lib/x86_64-linux-gnu/libhello.so.1", b"\x7fELF"),
                ],
            );
            let mut tree = Tree::with_merged_usr();
            let stats = unpack_deb_bytes(&deb, Path::new("hello.deb"), &mut tree).unwrap();
            assert_eq!(stats.package, "hello", "{ext}");
            assert_eq!(stats.version, "1:1.0-1");
            assert_eq!(stats.architecture, "amd64");
            assert_eq!(stats.data_member, format!("data.tar{ext}"));
            assert_eq!(
                stats.layer.entries, 4,
                "\"./\" only sets the root's metadata"
            );
            assert_eq!(
                file_content(&tree, "/usr/bin/hello"),
                b"#!/bin/sh\necho hi\n"
            );
            // /lib is the merged-/usr link, so the library lands in /usr/lib.
            assert!(
                tree.get_no_follow("/usr/lib/x86_64-linux-gnu/libhello.so.1")
                    .is_some(),
                "{ext}"
            );
            assert!(matches!(
                tree.get_no_follow("/lib").unwrap().kind,
                NodeKind::Symlink(_)
            ));
        }
    }

    #[test]
    fn zstd_and_xz_control_members_are_read() {
        for ext in [".xz", ".zst", ""] {
            let deb = ar_of(&[
                ("debian-binary", b"2.0\n".to_vec()),
                (
                    &format!("control.tar{ext}"),
                    compress(ext, &control_tar("c")),
                ),
                (
                    "data.tar.gz",
                    compress(".gz", &tar_bytes(&[("./etc/c", b"c")])),
                ),
            ]);
            let mut tree = Tree::new();
            let stats = unpack_deb_bytes(&deb, Path::new("c.deb"), &mut tree).unwrap();
            assert_eq!(stats.package, "c");
        }
    }

    #[test]
    fn bad_debian_binary_is_rejected() {
        for version in [&b"3.0\n"[..], b"2.0", b"garbage", b""] {
            let deb = ar_of(&[
                ("debian-binary", version.to_vec()),
                ("control.tar.gz", compress(".gz", &control_tar("x"))),
                ("data.tar.gz", compress(".gz", &tar_bytes(&[("./x", b"x")]))),
            ]);
            let mut tree = Tree::new();
            let err = unpack_deb_bytes(&deb, Path::new("x.deb"), &mut tree).unwrap_err();
            assert!(matches!(err, DebError::BadVersion { .. }), "{err}");
            assert!(tree.is_empty(), "nothing may be unpacked from a bad .deb");
        }
        let deb = ar_of(&[
            ("control.tar.gz", compress(".gz", &control_tar("x"))),
            ("debian-binary", b"2.0\n".to_vec()),
        ]);
        let err = unpack_deb_bytes(&deb, Path::new("x.deb"), &mut Tree::new()).unwrap_err();
        assert!(matches!(err, DebError::NotADeb { .. }), "{err}");
    }

    #[test]
    fn missing_data_member_is_an_error_naming_the_file() {
        let deb = ar_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.gz", compress(".gz", &control_tar("x"))),
        ]);
        let err = unpack_deb_bytes(&deb, Path::new("/cache/x_1_amd64.deb"), &mut Tree::new())
            .unwrap_err();
        assert!(
            matches!(
                err,
                DebError::MissingMember {
                    member: "data.tar",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("/cache/x_1_amd64.deb"), "{err}");
    }

    #[test]
    fn unsupported_compression_is_named() {
        let deb = ar_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.gz", compress(".gz", &control_tar("x"))),
            ("data.tar.bz2", b"BZh9".to_vec()),
        ]);
        let err = unpack_deb_bytes(&deb, Path::new("x.deb"), &mut Tree::new()).unwrap_err();
        assert!(
            matches!(&err, DebError::UnsupportedCompression { member, .. } if member == "data.tar.bz2"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_data_is_an_error_not_a_partial_success() {
        let mut data = compress(".xz", &tar_bytes(&[("./x", b"x")]));
        let n = data.len();
        data[n - 20] ^= 0xff;
        let deb = ar_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.gz", compress(".gz", &control_tar("x"))),
            ("data.tar.xz", data),
        ]);
        assert!(unpack_deb_bytes(&deb, Path::new("x.deb"), &mut Tree::new()).is_err());
    }

    #[test]
    fn not_an_ar_archive() {
        let err =
            unpack_deb_bytes(b"PK\x03\x04 zip", Path::new("x.deb"), &mut Tree::new()).unwrap_err();
        assert!(matches!(err, DebError::NotADeb { .. }), "{err}");
    }

    #[test]
    fn reserved_members_are_skipped() {
        let deb = ar_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("_gpgorigin", b"sig".to_vec()),
            ("control.tar.gz", compress(".gz", &control_tar("x"))),
            ("data.tar.gz", compress(".gz", &tar_bytes(&[("./x", b"x")]))),
        ]);
        let stats = unpack_deb_bytes(&deb, Path::new("x.deb"), &mut Tree::new()).unwrap();
        assert_eq!(stats.layer.entries, 1);
    }

    #[test]
    fn unpack_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.deb");
        std::fs::write(&path, deb_of("y", ".zst", &[("./etc/y", b"y")])).unwrap();
        let mut tree = Tree::new();
        assert_eq!(unpack_deb(&path, &mut tree).unwrap().package, "y");
        assert_eq!(file_content(&tree, "/etc/y"), b"y");
        let err = unpack_deb(&dir.path().join("missing.deb"), &mut tree).unwrap_err();
        assert!(err.to_string().contains("missing.deb"), "{err}");
    }
}
