//! Layouts built by umoci and skopeo (independent implementations of the same formats), and
//! layouts written by hand for the cases those tools cannot produce: zstd layers, opaque
//! whiteouts, multi-arch indexes and damaged blobs.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::*;
use crate::tree::NodeKind;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Runs an external tool; a missing tool fails the test rather than skipping it, so a
/// machine without umoci or skopeo cannot pass by testing nothing.
fn run<I, S>(program: &str, args: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let output = Command::new(program)
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (apt-get install -y umoci skopeo)"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn content(tree: &Tree, path: &str) -> Option<Vec<u8>> {
    match &tree.get_no_follow(path)?.kind {
        NodeKind::File(c) => Some(c.bytes().to_vec()),
        _ => None,
    }
}

/// One line per node: kind, permission bits, owner and content or link target (times are
/// left out: umoci's unpack and our tree clamp them differently).
fn describe(kind: &str, mode: u32, uid: u32, gid: u32, extra: &[u8]) -> String {
    format!(
        "{kind} {:o} {uid}:{gid} {}",
        mode & 0o7777,
        String::from_utf8_lossy(extra)
    )
}

fn tree_listing(tree: &Tree) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    tree.walk(|path, node| {
        let m = node.meta;
        let line = match &node.kind {
            NodeKind::Dir(_) => describe("dir", m.mode.into(), m.uid, m.gid, b""),
            NodeKind::File(c) => describe("file", m.mode.into(), m.uid, m.gid, c.bytes()),
            NodeKind::Symlink(t) => describe("link", m.mode.into(), m.uid, m.gid, t),
            other => format!("{other:?}"),
        };
        out.insert(String::from_utf8_lossy(path).into_owned(), line);
    });
    out
}

fn disk_listing(root: &Path) -> BTreeMap<String, String> {
    fn go(root: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
        let path = root.join(rel.trim_start_matches('/'));
        let meta = fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let line = if ft.is_dir() {
            describe("dir", meta.mode(), meta.uid(), meta.gid(), b"")
        } else if ft.is_file() {
            describe(
                "file",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                &fs::read(&path).unwrap(),
            )
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).unwrap();
            describe(
                "link",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                target.as_os_str().as_encoded_bytes(),
            )
        } else {
            format!("other {ft:?}")
        };
        out.insert(
            if rel.is_empty() {
                "/".into()
            } else {
                rel.into()
            },
            line,
        );
        if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            for name in names {
                go(root, &format!("{rel}/{name}"), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, "", &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// umoci and skopeo

/// A two-layer image made with umoci; the second layer deletes a file, a directory and the
/// whole contents of another directory (re-creating one file in it), and changes metadata.
fn umoci_image(tmp: &Path) -> PathBuf {
    let layout = tmp.join("L");
    let bundle = tmp.join("B");
    let image = format!("{}:t", layout.display());
    run("umoci", ["init", "--layout", layout.to_str().unwrap()]);
    run("umoci", ["new", "--image", &image]);
    // umoci stamps the host's architecture; pin it so the test means the same everywhere.
    run(
        "umoci",
        [
            "config",
            "--image",
            &image,
            "--architecture",
            "amd64",
            "--os",
            "linux",
        ],
    );
    run(
        "umoci",
        ["unpack", "--image", &image, bundle.to_str().unwrap()],
    );
    let rootfs = bundle.join("rootfs");
    let write = |path: &str, data: &str| {
        let path = rootfs.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    };
    let chmod = |path: &str, mode: u32| {
        fs::set_permissions(rootfs.join(path), fs::Permissions::from_mode(mode)).unwrap()
    };
    let chown = |path: &str, uid: u32, gid: u32| {
        std::os::unix::fs::lchown(rootfs.join(path), Some(uid), Some(gid)).unwrap()
    };

    write("etc/a", "secret");
    chown("etc/a", 1000, 1001);
    chmod("etc/a", 0o4750);
    write("etc/keep", "kept");
    write("d/sub/f", "f");
    write("op/old", "old");
    write("op/x/y", "y");
    write("usr/bin/tool", "#!/bin/sh\n");
    chmod("usr/bin/tool", 0o755);
    fs::hard_link(rootfs.join("usr/bin/tool"), rootfs.join("usr/bin/tool2")).unwrap();
    std::os::unix::fs::symlink("etc/a", rootfs.join("lnk")).unwrap();
    std::os::unix::fs::symlink("../usr/bin/tool", rootfs.join("etc/tool-link")).unwrap();
    chown("etc/tool-link", 3, 4);
    fs::create_dir(rootfs.join("srv")).unwrap();
    chown("srv", 5, 6);
    chmod("srv", 0o700);
    // --refresh-bundle makes the next repack diff against this layer rather than the base.
    run(
        "umoci",
        [
            "repack",
            "--refresh-bundle",
            "--image",
            &image,
            bundle.to_str().unwrap(),
        ],
    );

    fs::remove_file(rootfs.join("etc/a")).unwrap();
    fs::remove_dir_all(rootfs.join("d")).unwrap();
    fs::remove_dir_all(rootfs.join("op")).unwrap();
    write("op/new", "new");
    chmod("usr/bin/tool", 0o711);
    chown("etc/keep", 7, 8);
    run(
        "umoci",
        ["repack", "--image", &image, bundle.to_str().unwrap()],
    );
    layout
}

fn check_umoci_tree(tree: &Tree) {
    for gone in ["/etc/a", "/d", "/op/old", "/op/x"] {
        assert!(
            tree.get_no_follow(gone).is_none(),
            "{gone} must be whited out"
        );
    }
    assert_eq!(content(tree, "/op/new").as_deref(), Some(&b"new"[..]));
    assert_eq!(content(tree, "/etc/keep").as_deref(), Some(&b"kept"[..]));
    let keep = tree.get("/etc/keep").unwrap().meta;
    assert_eq!((keep.uid, keep.gid), (7, 8));
    assert_eq!(tree.get("/usr/bin/tool").unwrap().meta.mode, 0o711);
    assert_eq!(
        content(tree, "/usr/bin/tool2").as_deref(),
        Some(&b"#!/bin/sh\n"[..])
    );
    let srv = tree.get("/srv").unwrap().meta;
    assert_eq!((srv.mode, srv.uid, srv.gid), (0o700, 5, 6));
    assert_eq!(
        tree.get_no_follow("/lnk").unwrap().kind,
        NodeKind::Symlink(b"etc/a".to_vec())
    );
    let link = tree.get_no_follow("/etc/tool-link").unwrap();
    assert_eq!(link.kind, NodeKind::Symlink(b"../usr/bin/tool".to_vec()));
    assert_eq!((link.meta.uid, link.meta.gid), (3, 4));
}

#[test]
fn umoci_layers_and_whiteouts_match_umoci_unpack() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = umoci_image(tmp.path());
    let mut tree = Tree::new();
    let image = apply_oci(&mut tree, &OciSource::layout(&layout).with_ref("t")).unwrap();
    check_umoci_tree(&tree);

    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.config.architecture(), &TARGET_ARCH);
    assert!(
        image
            .layers
            .iter()
            .all(|l| l.media_type.ends_with("tar+gzip"))
    );
    // The setuid file was applied by layer 1 before layer 2 deleted it.
    assert!(image.layers[0].stats.entries >= 12, "{:?}", image.layers[0]);
    // umoci writes one `.wh.NAME` per deleted entry, never an opaque marker: etc/a, d,
    // op/old and op/x.
    assert_eq!(image.layers[1].stats.whiteouts, 4, "{:?}", image.layers[1]);

    // umoci's own unpack of the same image is the reference.
    let bundle = tmp.path().join("check");
    run(
        "umoci",
        [
            "unpack",
            "--image",
            &format!("{}:t", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(tree_listing(&tree), disk_listing(&bundle.join("rootfs")));
}

/// Rewrites a tar with its members in reverse order (index.json and blobs before the
/// directories that hold them).
fn reversed_tar(src: &Path, dest: &Path) {
    let mut archive = tar::Archive::new(fs::File::open(src).unwrap());
    let mut members = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        members.push((header, path, data));
    }
    assert!(members.len() > 3);
    let mut out = tar::Builder::new(fs::File::create(dest).unwrap());
    for (mut header, path, data) in members.into_iter().rev() {
        out.append_data(&mut header, path, &data[..]).unwrap();
    }
    out.finish().unwrap();
}

#[test]
fn skopeo_archive_gives_the_same_tree_as_the_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = umoci_image(tmp.path());
    let mut from_layout = Tree::new();
    let image = apply_oci(&mut from_layout, &OciSource::layout(&layout).with_ref("t")).unwrap();

    let untagged = tmp.path().join("X.tar");
    let tagged = tmp.path().join("Y.tar");
    let src = format!("oci:{}:t", layout.display());
    run(
        "skopeo",
        ["copy", &src, &format!("oci-archive:{}", untagged.display())],
    );
    run(
        "skopeo",
        [
            "copy",
            &src,
            &format!("oci-archive:{}:foo", tagged.display()),
        ],
    );
    let reversed = tmp.path().join("R.tar");
    reversed_tar(&untagged, &reversed);

    for source in [
        OciSource::archive(&untagged),
        OciSource::archive(&tagged).with_ref("foo"),
        OciSource::archive(&reversed),
    ] {
        let mut tree = Tree::new();
        let from_archive = apply_oci(&mut tree, &source).unwrap();
        assert_eq!(tree, from_layout, "{source:?}");
        check_umoci_tree(&tree);
        // skopeo rewrites the manifest (its own JSON), but the layers travel unchanged.
        assert_eq!(from_archive.layers, image.layers);
    }

    let err = apply_oci(&mut Tree::new(), &OciSource::archive(&tagged).with_ref("t"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Y.tar") && err.contains("\"t\"") && err.contains("foo"),
        "{err}"
    );
}

fn archive_members(bytes: &[u8]) -> Vec<(String, u64, u64, u64)> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().display().to_string(),
                h.mtime().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
            )
        })
        .collect()
}

#[test]
fn export_is_deterministic_minimal_and_readable_by_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = umoci_image(tmp.path());
    let source = OciSource::layout(&layout).with_ref("t");
    let mut reference = Tree::new();
    let image = apply_oci(&mut reference, &source).unwrap();

    let mut first = Vec::new();
    let exported = export_oci_archive(&source, &mut first).unwrap();
    let mut second = Vec::new();
    export_oci_archive(&source, &mut second).unwrap();
    assert_eq!(first, second);

    // Only the image's own blobs, though the layout still holds the older manifests.
    let mut wanted: Vec<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    wanted.push(image.manifest_digest.clone());
    wanted.push(image.config_digest.clone());
    wanted.sort();
    assert_eq!(exported.blobs, wanted);
    assert!(fs::read_dir(layout.join("blobs/sha256")).unwrap().count() > wanted.len());

    let members = archive_members(&first);
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(names[0].starts_with("blobs"), "{names:?}");
    assert_eq!(&names[names.len() - 2..], ["index.json", "oci-layout"]);
    assert!(members.iter().all(|m| (m.1, m.2, m.3) == (0, 0, 0)));

    // The same image read from a skopeo archive with the same ref exports identically.
    let tagged = tmp.path().join("Y.tar");
    run(
        "skopeo",
        [
            "copy".to_owned(),
            format!("oci:{}:t", layout.display()),
            format!("oci-archive:{}:t", tagged.display()),
        ],
    );
    let mut via_skopeo = Vec::new();
    let exported_skopeo =
        export_oci_archive(&OciSource::archive(&tagged).with_ref("t"), &mut via_skopeo).unwrap();
    assert_eq!(exported_skopeo, exported);
    assert!(
        via_skopeo == first,
        "same image and ref, different archive bytes"
    );

    let exported_path = tmp.path().join("E.tar");
    fs::write(&exported_path, &first).unwrap();
    let mut tree = Tree::new();
    apply_oci(&mut tree, &OciSource::archive(&exported_path).with_ref("t")).unwrap();
    assert_eq!(tree, reference);

    // skopeo verifies every digest on copy; then our reader agrees with the copy.
    let copied = tmp.path().join("L2");
    run(
        "skopeo",
        [
            "copy".to_owned(),
            format!("oci-archive:{}", exported_path.display()),
            format!("oci:{}:e", copied.display()),
        ],
    );
    let mut tree = Tree::new();
    apply_oci(&mut tree, &OciSource::layout(&copied).with_ref("e")).unwrap();
    assert_eq!(tree, reference);
}

// ---------------------------------------------------------------------------------------------
// Hand-built layouts

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Owned(&'a str, &'a str, u32, u32, u32),
    Link(&'a str, &'a str),
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1);
        let (path, data, kind, mode, uid, gid) = match *entry {
            E::Dir(p) => (p, "", tar::EntryType::Directory, 0o755, 0, 0),
            E::File(p, d) => (p, d, tar::EntryType::Regular, 0o644, 0, 0),
            E::Owned(p, d, mode, uid, gid) => (p, d, tar::EntryType::Regular, mode, uid, gid),
            E::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_uid(0);
                h.set_gid(0);
                h.set_size(0);
                builder.append_link(&mut h, p, target).unwrap();
                continue;
            }
        };
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid.into());
        h.set_gid(gid.into());
        h.set_size(data.len() as u64);
        builder.append_data(&mut h, path, data.as_bytes()).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A layer ready to go into a manifest: its descriptor and the diff_id for the config.
#[derive(Clone)]
struct TestLayer {
    desc: Value,
    diff_id: String,
}

struct Layout {
    dir: tempfile::TempDir,
    entries: Vec<Value>,
}

impl Layout {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let layout = Layout {
            dir,
            entries: Vec::new(),
        };
        layout.write_index();
        layout
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn source(&self) -> OciSource {
        OciSource::layout(self.path())
    }

    fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let hex = sha(bytes);
        fs::write(self.path().join("blobs/sha256").join(&hex), bytes).unwrap();
        json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
    }

    fn blob_path(&self, desc: &Value) -> PathBuf {
        let digest = desc["digest"].as_str().unwrap();
        self.path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn layer_typed(&self, tar: &[u8], compression: Compression, media_type: &str) -> TestLayer {
        let bytes = match compression {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(tar).unwrap();
                gz.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
        };
        TestLayer {
            desc: self.blob(media_type, &bytes),
            diff_id: format!("sha256:{}", sha(tar)),
        }
    }

    fn layer(&self, tar: &[u8], compression: Compression) -> TestLayer {
        let media_type = match compression {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        };
        self.layer_typed(tar, compression, media_type)
    }

    fn config(&self, arch: &str, diff_ids: &[&str], media_type: &str) -> Value {
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Entrypoint": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        self.blob(media_type, &serde_json::to_vec(&config).unwrap())
    }

    fn manifest(&self, config: Value, layers: &[TestLayer], media_type: &str) -> Value {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config,
            "layers": layers.iter().map(|l| l.desc.clone()).collect::<Vec<_>>(),
        });
        self.blob(media_type, &serde_json::to_vec(&manifest).unwrap())
    }

    /// An OCI image for `arch` with these layers; returns the manifest descriptor.
    fn image(&self, arch: &str, layers: &[TestLayer]) -> Value {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let config = self.config(arch, &diff_ids, OCI_CONFIG);
        self.manifest(config, layers, OCI_MANIFEST)
    }

    fn add(&mut self, mut desc: Value, name: Option<&str>) {
        if let Some(name) = name {
            desc["annotations"] = json!({ REF_NAME_ANNOTATION: name });
        }
        self.entries.push(desc);
        self.write_index();
    }

    fn write_index(&self) {
        let index = json!({"schemaVersion": 2, "manifests": self.entries});
        fs::write(
            self.path().join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

fn single_layer_layout(compression: Compression) -> (Layout, TestLayer) {
    let mut layout = Layout::new();
    let tar = tar_of(&[E::Dir("etc/"), E::File("etc/os-release", "ID=keel\n")]);
    let layer = layout.layer(&tar, compression);
    let manifest = layout.image("amd64", std::slice::from_ref(&layer));
    layout.add(manifest, Some("latest"));
    (layout, layer)
}

#[test]
fn three_layers_with_each_compression_and_whiteouts() {
    let mut layout = Layout::new();
    let base = layout.layer(
        &tar_of(&[
            E::Dir("etc/"),
            E::File("etc/a", "first"),
            E::Owned("etc/shadow", "x", 0o640, 0, 42),
            E::File("d/old", "old"),
            E::File("d/sub/deep", "deep"),
            E::Link("bin/sh", "busybox"),
        ]),
        Compression::None,
    );
    let middle = layout.layer(
        &tar_of(&[
            E::File("etc/.wh.a", ""),
            E::Dir("d/"),
            E::File("d/.wh..wh..opq", ""),
            E::File("d/new", "new"),
        ]),
        Compression::Gzip,
    );
    let top = layout.layer(
        &tar_of(&[E::File("etc/a", "again"), E::File("bin/busybox", "bb")]),
        Compression::Zstd,
    );
    let manifest = layout.image("amd64", &[base.clone(), middle.clone(), top.clone()]);
    layout.add(manifest.clone(), None);

    let mut tree = Tree::new();
    let image = apply_oci(&mut tree, &layout.source()).unwrap();
    assert_eq!(content(&tree, "/etc/a").as_deref(), Some(&b"again"[..]));
    let shadow = tree.get("/etc/shadow").unwrap().meta;
    assert_eq!((shadow.mode, shadow.uid, shadow.gid), (0o640, 0, 42));
    assert!(tree.get_no_follow("/d/old").is_none());
    assert!(tree.get_no_follow("/d/sub").is_none());
    assert_eq!(content(&tree, "/d/new").as_deref(), Some(&b"new"[..]));
    assert_eq!(
        tree.get("/bin/sh").unwrap().kind,
        NodeKind::File(crate::tree::Content::new(&b"bb"[..]))
    );

    assert_eq!(image.manifest_digest, manifest["digest"].as_str().unwrap());
    let got: Vec<(&str, &str, usize)> = image
        .layers
        .iter()
        .map(|l| (l.digest.as_str(), l.diff_id.as_str(), l.stats.whiteouts))
        .collect();
    let want: Vec<(&str, &str, usize)> = [(&base, 0), (&middle, 2), (&top, 0)]
        .iter()
        .map(|(l, w)| (l.desc["digest"].as_str().unwrap(), l.diff_id.as_str(), *w))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        image
            .config
            .config()
            .as_ref()
            .unwrap()
            .entrypoint()
            .as_deref(),
        Some(&["/bin/sh".to_owned()][..])
    );
}

#[test]
fn docker_v2s2_media_types_are_read() {
    let mut layout = Layout::new();
    let tar = tar_of(&[E::File("hello", "docker")]);
    let layer = layout.layer_typed(
        &tar,
        Compression::Gzip,
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    );
    let config = layout.config(
        "amd64",
        &[&layer.diff_id],
        "application/vnd.docker.container.image.v1+json",
    );
    let manifest = layout.manifest(
        config,
        &[layer],
        "application/vnd.docker.distribution.manifest.v2+json",
    );
    layout.add(manifest, Some("d"));
    let mut tree = Tree::new();
    apply_oci(&mut tree, &layout.source().with_ref("d")).unwrap();
    assert_eq!(content(&tree, "/hello").as_deref(), Some(&b"docker"[..]));
}

fn multi_arch_layout(arches: &[&str]) -> (Layout, BTreeMap<String, Value>) {
    let mut layout = Layout::new();
    let mut manifests = BTreeMap::new();
    let mut entries = Vec::new();
    for arch in arches {
        let layer = layout.layer(&tar_of(&[E::File("arch", arch)]), Compression::Gzip);
        let mut desc = layout.image(arch, &[layer]);
        manifests.insert(arch.to_string(), desc.clone());
        desc["platform"] = json!({"os": "linux", "architecture": arch});
        entries.push(desc);
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    let index_desc = layout.blob(OCI_INDEX, &serde_json::to_vec(&index).unwrap());
    layout.add(index_desc, Some("multi"));
    (layout, manifests)
}

#[test]
fn image_index_resolves_to_amd64() {
    let (layout, manifests) = multi_arch_layout(&["arm64", "amd64"]);
    let source = layout.source().with_ref("multi");
    let mut tree = Tree::new();
    let image = apply_oci(&mut tree, &source).unwrap();
    assert_eq!(content(&tree, "/arch").as_deref(), Some(&b"amd64"[..]));
    assert_eq!(
        image.manifest_digest,
        manifests["amd64"]["digest"].as_str().unwrap()
    );

    // Exporting narrows the index to the amd64 image and its blobs.
    let mut archive = Vec::new();
    let exported = export_oci_archive(&source, &mut archive).unwrap();
    assert_eq!(exported.manifest_digest, image.manifest_digest);
    assert_eq!(exported.blobs.len(), 3);
    assert!(
        !exported
            .blobs
            .iter()
            .any(|d| d == manifests["arm64"]["digest"].as_str().unwrap())
    );
    let path = layout.path().join("amd64.tar");
    fs::write(&path, &archive).unwrap();
    let mut again = Tree::new();
    apply_oci(&mut again, &OciSource::archive(&path).with_ref("multi")).unwrap();
    assert_eq!(again, tree);

    let (arm_only, _) = multi_arch_layout(&["arm64", "ppc64le"]);
    let err = apply_oci(&mut Tree::new(), &arm_only.source()).unwrap_err();
    assert!(
        matches!(
            &err,
            OciError::Select {
                source: SelectError::NoMatchingPlatform { .. },
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("no linux/amd64 image") && msg.contains("linux/arm64, linux/ppc64le"),
        "{msg}"
    );
}

#[test]
fn single_arch_image_for_another_platform_is_refused() {
    let mut layout = Layout::new();
    let layer = layout.layer(&tar_of(&[E::File("x", "x")]), Compression::None);
    let manifest = layout.image("arm64", &[layer]);
    layout.add(manifest, None);
    let mut tree = Tree::new();
    let err = apply_oci(&mut tree, &layout.source()).unwrap_err();
    assert!(
        matches!(&err, OciError::WrongPlatform { arch, .. } if arch == "arm64"),
        "{err}"
    );
    assert!(tree.is_empty(), "nothing may be applied before the checks");
}

fn flip_byte(path: &Path, at: impl Fn(usize) -> usize) {
    let mut bytes = fs::read(path).unwrap();
    let i = at(bytes.len());
    bytes[i] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

#[test]
fn corrupted_layer_is_reported_as_a_digest_mismatch_naming_the_blob() {
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        // Corrupting the middle hits compressed data or, uncompressed, the tar headers/content;
        // the last byte hits the gzip/zstd trailer or the tar's end padding.
        let positions: [fn(usize) -> usize; 2] = [|len| len / 2, |len| len - 1];
        for at in positions {
            let (layout, layer) = single_layer_layout(compression);
            flip_byte(&layout.blob_path(&layer.desc), at);
            let err = apply_oci(&mut Tree::new(), &layout.source()).unwrap_err();
            let digest = layer.desc["digest"].as_str().unwrap();
            match &err {
                OciError::BlobMismatch {
                    location,
                    digest: d,
                    mismatch: Mismatch::Digest { .. },
                } => {
                    assert_eq!(d, digest);
                    assert_eq!(location, layout.path());
                }
                other => panic!("{compression:?}: expected a digest mismatch, got {other}"),
            }
            let msg = err.to_string();
            assert!(
                msg.contains(digest) && msg.contains(&layout.path().display().to_string()),
                "{msg}"
            );
        }
    }
}

#[test]
fn corrupted_manifest_and_config_are_caught() {
    let (layout, _) = single_layer_layout(Compression::Gzip);
    let index: Value =
        serde_json::from_slice(&fs::read(layout.path().join("index.json")).unwrap()).unwrap();
    let manifest_desc = index["manifests"][0].clone();
    let manifest: Value =
        serde_json::from_slice(&fs::read(layout.blob_path(&manifest_desc)).unwrap()).unwrap();
    let config_desc = manifest["config"].clone();

    // A flipped bit inside a JSON string stays valid JSON: only the digest can tell.
    let flip_in_string = |path: &Path| {
        let text = fs::read(path).unwrap();
        let at = text.windows(5).position(|w| w == b"linux").unwrap();
        flip_byte(path, |_| at);
    };
    flip_in_string(&layout.blob_path(&config_desc));
    let err = apply_oci(&mut Tree::new(), &layout.source()).unwrap_err();
    assert!(
        matches!(&err, OciError::BlobMismatch { digest, mismatch: Mismatch::Digest { .. }, .. }
            if digest == config_desc["digest"].as_str().unwrap()),
        "{err}"
    );

    let (layout, _) = single_layer_layout(Compression::Gzip);
    let path = layout.blob_path(&manifest_desc);
    let text = String::from_utf8(fs::read(&path).unwrap()).unwrap();
    fs::write(&path, text.replace("\"size\":", "\"size\" :")).unwrap();
    // Same length is not required: ocidir's size check catches a longer blob first.
    let err = apply_oci(&mut Tree::new(), &layout.source()).unwrap_err();
    assert!(
        matches!(&err, OciError::BlobMismatch { digest, mismatch: Mismatch::Size { .. }, .. }
            if digest == manifest_desc["digest"].as_str().unwrap()),
        "{err}"
    );
}

#[test]
fn truncated_blob_is_a_size_mismatch() {
    let (layout, layer) = single_layer_layout(Compression::Gzip);
    let path = layout.blob_path(&layer.desc);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = apply_oci(&mut Tree::new(), &layout.source()).unwrap_err();
    let size = bytes.len() as u64;
    assert!(
        matches!(&err, OciError::BlobMismatch { digest, mismatch: Mismatch::Size { expected, found }, .. }
            if digest == layer.desc["digest"].as_str().unwrap() && *expected == size && *found == size - 10),
        "{err}"
    );
}

#[test]
fn bytes_after_the_tar_end_marker_are_still_verified() {
    let mut tar = tar_of(&[E::File("f", "data")]);
    tar.extend_from_slice(&[0x5a; 4096]);
    let mut layout = Layout::new();
    let layer = layout.layer(&tar, Compression::None);
    let manifest = layout.image("amd64", std::slice::from_ref(&layer));
    layout.add(manifest, None);

    let mut tree = Tree::new();
    let image = apply_oci(&mut tree, &layout.source()).unwrap();
    assert_eq!(image.layers[0].diff_id, layer.diff_id);
    assert_eq!(content(&tree, "/f").as_deref(), Some(&b"data"[..]));

    // The tar reader never looks at the trailing bytes; damage there must still be seen.
    flip_byte(&layout.blob_path(&layer.desc), |len| len - 100);
    let err = apply_oci(&mut Tree::new(), &layout.source()).unwrap_err();
    assert!(
        matches!(
            &err,
            OciError::BlobMismatch {
                mismatch: Mismatch::Digest { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn diff_id_must_match_the_uncompressed_layer() {
    let mut layout = Layout::new();
    let layer = layout.layer(&tar_of(&[E::File("f", "x")]), Compression::Gzip);
    let wrong = format!("sha256:{}", sha(b"something else"));
    let config = layout.config("amd64", &[&wrong], OCI_CONFIG);
    let manifest = layout.manifest(config, std::slice::from_ref(&layer), OCI_MANIFEST);
    layout.add(manifest, None);
    let err = apply_oci(&mut Tree::new(), &layout.source()).unwrap_err();
    assert!(
        matches!(&err, OciError::DiffIdMismatch { expected, found, .. }
            if *expected == wrong && *found == layer.diff_id),
        "{err}"
    );
}

#[test]
fn selection_errors_name_the_layout_and_the_refs() {
    let mut layout = Layout::new();
    for name in ["v1", "latest"] {
        let layer = layout.layer(&tar_of(&[E::File("v", name)]), Compression::Gzip);
        let manifest = layout.image("amd64", &[layer]);
        layout.add(manifest, Some(name));
    }
    let place = layout.path().display().to_string();

    let err = apply_oci(&mut Tree::new(), &layout.source().with_ref("v2")).unwrap_err();
    assert!(
        matches!(&err, OciError::Select { source: SelectError::RefNotFound { available, .. }, .. }
            if available == &["latest", "v1"]),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(&place) && msg.contains("latest, v1"),
        "{msg}"
    );

    let err = apply_oci(&mut Tree::new(), &layout.source()).unwrap_err();
    assert!(
        matches!(
            &err,
            OciError::Select {
                source: SelectError::SeveralImages { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("v1, latest"), "{err}");

    let mut tree = Tree::new();
    apply_oci(&mut tree, &layout.source().with_ref("v1")).unwrap();
    assert_eq!(content(&tree, "/v").as_deref(), Some(&b"v1"[..]));
}

#[test]
fn unsupported_and_missing_things_fail_before_the_tree_is_touched() {
    // A bzip2 layer after a good one: nothing at all may be applied.
    let mut layout = Layout::new();
    let good = layout.layer(&tar_of(&[E::File("a", "a")]), Compression::None);
    let odd = layout.layer_typed(
        &tar_of(&[E::File("b", "b")]),
        Compression::None,
        "application/vnd.oci.image.layer.v1.tar+bzip2",
    );
    let manifest = layout.image("amd64", &[good, odd]);
    layout.add(manifest, None);
    let mut tree = Tree::new();
    let err = apply_oci(&mut tree, &layout.source()).unwrap_err();
    assert!(
        matches!(&err, OciError::Select { source: SelectError::UnsupportedMediaType { what: "layer", media_type, .. }, .. }
            if media_type.ends_with("bzip2")),
        "{err}"
    );
    assert!(tree.is_empty());

    // An artifact (not a container image) stored in the layout.
    let mut layout = Layout::new();
    let config = layout.blob("application/vnd.cncf.helm.config.v1+json", b"{}");
    let manifest = layout.manifest(config, &[], OCI_MANIFEST);
    layout.add(manifest, None);
    let err = apply_oci(&mut Tree::new(), &layout.source()).unwrap_err();
    assert!(err.to_string().contains("helm"), "{err}");

    // A layer blob that is not there.
    let (layout, layer) = single_layer_layout(Compression::Zstd);
    fs::remove_file(layout.blob_path(&layer.desc)).unwrap();
    let mut tree = Tree::new();
    let err = apply_oci(&mut tree, &layout.source()).unwrap_err();
    assert!(
        matches!(&err, OciError::MissingBlob { digest, .. } if digest == layer.desc["digest"].as_str().unwrap()),
        "{err}"
    );

    // Not a layout at all.
    let empty = tempfile::tempdir().unwrap();
    let err = apply_oci(&mut Tree::new(), &OciSource::layout(empty.path())).unwrap_err();
    assert!(matches!(&err, OciError::Open { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&empty.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn sources_parse_from_a_profile() {
    #[derive(Deserialize)]
    struct Entry {
        oci: OciSource,
    }
    let parse = |text: &str| toml::from_str::<Entry>(text).map(|e| e.oci);
    assert_eq!(
        parse(r#"oci = { layout = "images/base", ref = "latest" }"#).unwrap(),
        OciSource::layout("images/base").with_ref("latest")
    );
    assert_eq!(
        parse(r#"oci = { archive = "images/extra.tar" }"#).unwrap(),
        OciSource::archive("images/extra.tar")
    );
    for bad in [
        r#"oci = { ref = "x" }"#,
        r#"oci = { layout = "a", archive = "b" }"#,
        r#"oci = { layout = "a", tag = "x" }"#,
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        OciSource::archive("x.tar").relative_to(Path::new("/profiles")),
        OciSource::archive("/profiles/x.tar")
    );
    assert_eq!(
        OciSource::archive("/abs/x.tar").relative_to(Path::new("/profiles")),
        OciSource::archive("/abs/x.tar")
    );
}
