//! Update bundles written from synthetic parts (no Debian packages, no build): verified by
//! `keel verify`, copied by skopeo (which checks every digest itself), listed by GNU tar as an
//! upload stream, reproducible, and refused, with the culprit named, after any flipped byte.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use keel_builder::bundle::{BundleError, WrittenBundle, open_bundle, upload_stream, write_bundle};
use keel_builder::verify::{VerifyError, verify_bundle};
use keel_contract::bundle::{
    Part, UPLOAD_ENTRIES, UploadEntry, upload_stream_len, validate_upload_entries,
};

#[path = "common/synthetic.rs"]
mod synthetic;
use keel_contract::manifest::{Manifest, Sha256Digest};
use keel_minisign::{KeyId, SecretKey, TrustedKeys};
use synthetic::{digest, manifest_for, noise, sha, sign, trusted, write_pub};

/// Synthetic parts and their signed manifest. Sizes are not multiples of 512 so the upload
/// stream's padding is exercised.
struct Parts {
    version: String,
    manifest: Vec<u8>,
    signature: String,
    kernel: Vec<u8>,
    initramfs: Vec<u8>,
    payload: Vec<u8>,
}

fn parts(version: &str) -> Parts {
    let kernel = noise(1, 70_001);
    let initramfs = noise(2, 90_003);
    let payload = noise(3, (1 << 20) + 3 * 4096 + 17);
    let (manifest, signature) = sign(&manifest_for(version, &kernel, &initramfs, &payload));
    Parts {
        version: version.into(),
        manifest,
        signature,
        kernel,
        initramfs,
        payload,
    }
}

fn write(parts: &Parts, dir: &Path) -> Result<WrittenBundle, BundleError> {
    // Two writes, as the build streams the squashfs and then the verity tree.
    let split = parts.payload.len() - 3 * 4096;
    write_bundle(
        dir,
        &parts.version,
        &parts.manifest,
        parts.signature.as_bytes(),
        &parts.kernel,
        &parts.initramfs,
        &|w: &mut dyn Write| {
            w.write_all(&parts.payload[..split])?;
            w.write_all(&parts.payload[split..])
        },
    )
}

/// Relative path -> bytes of every file under `dir`.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for (rel, bytes) in files(from) {
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, bytes).unwrap();
    }
}

fn flip(path: &Path, at: usize, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= mask;
    std::fs::write(path, bytes).unwrap();
}

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn tool(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (is it installed? see vm-tests/install-host-packages)")
    })
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn blob_path(bundle: &Path, hex: &Sha256Digest) -> PathBuf {
    bundle.join("blobs/sha256").join(hex.to_hex())
}

#[test]
fn a_bundle_of_synthetic_parts_verifies_and_inspects() {
    let dir = tempfile::tempdir().unwrap();
    let parts = parts("1.2.0");
    let bundle = dir.path().join("update");
    let written = write(&parts, &bundle).unwrap();
    assert_eq!(written.part(Part::Payload).digest, sha(&parts.payload));
    assert_eq!(written.part(Part::Payload).size, parts.payload.len() as u64);

    let report = verify_bundle(&bundle, &trusted()).unwrap();
    assert_eq!(report.manifest.version, "1.2.0");
    let checked = report.checked.join("\n");
    for needle in [
        "manifest signature",
        "ref name 1.2.0",
        "kernel",
        "initramfs",
        "slot payload",
    ] {
        assert!(checked.contains(needle), "{needle} not checked:\n{checked}");
    }

    // The layout is what the contract says: one image, the five parts in upload order.
    let opened = open_bundle(&bundle, None).unwrap();
    assert_eq!(opened.reference.as_deref(), Some("1.2.0"));
    assert_eq!(opened.platform.as_deref(), Some("linux/amd64"));
    assert_eq!(opened.manifest, parts.manifest);
    assert_eq!(opened.signature, parts.signature.as_bytes());
    assert_eq!(opened.image_manifest, written.image_manifest);
    for part in Part::ALL {
        assert_eq!(opened.part(part), written.part(part));
        assert_eq!(opened.part(part).media_type, part.media_type());
    }
    let index = std::fs::read_to_string(bundle.join("index.json")).unwrap();
    assert!(
        index.contains("\"org.opencontainers.image.ref.name\":\"1.2.0\""),
        "{index}"
    );
    let image_manifest =
        std::fs::read_to_string(blob_path(&bundle, &written.image_manifest.digest)).unwrap();
    for needle in [
        "\"artifactType\":\"application/vnd.keel.update.v1\"",
        "\"mediaType\":\"application/vnd.oci.empty.v1+json\"",
        "\"org.opencontainers.image.title\":\"vmlinuz\"",
    ] {
        assert!(
            image_manifest.contains(needle),
            "{needle}: {image_manifest}"
        );
    }

    // The CLI dispatches on what the path is: an OCI layout is a bundle.
    let public = write_pub(dir.path());
    let out = keel(&["verify", p(&bundle), "--pub", p(&public)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("verified keel-test 1.2.0"),
        "{}",
        text(&out)
    );
    let out = keel(&["inspect", p(&bundle)]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("keel-test 1.2.0 (x86_64)"), "{shown}");
    assert!(shown.contains("ref 1.2.0"), "{shown}");
    assert!(
        shown.contains(&written.image_manifest.oci_digest()),
        "{shown}"
    );
    for part in Part::ALL {
        assert!(
            shown.contains(&written.part(part).oci_digest()),
            "{part} digest missing:\n{shown}"
        );
    }

    // A directory that exists is never written into, and the ref must be the signed version.
    assert!(write(&parts, &bundle).is_err());
    let mut other = parts;
    other.version = "1.2.1".into();
    let err = write(&other, &dir.path().join("mismatch")).unwrap_err();
    assert!(err.to_string().contains("differs"), "{err}");
}

#[test]
fn writing_the_same_bundle_twice_gives_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let parts = parts("2.0.0-rc.1");
    let a = dir.path().join("a/update");
    let b = dir.path().join("elsewhere/b/update");
    std::fs::create_dir_all(a.parent().unwrap()).unwrap();
    std::fs::create_dir_all(b.parent().unwrap()).unwrap();
    write(&parts, &a).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write(&parts, &b).unwrap();
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(
        fa.iter().map(|f| &f.0).collect::<Vec<_>>(),
        fb.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    // oci-layout, index.json, the config, the image manifest and five parts.
    assert_eq!(
        fa.len(),
        2 + 1 + 1 + 5,
        "{:?}",
        fa.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{name} differs between two writes");
    }
    // And the inputs matter: another payload is another bundle.
    let mut changed = parts;
    changed.payload[0] ^= 1;
    let (manifest, signature) = sign(&manifest_for(
        &changed.version,
        &changed.kernel,
        &changed.initramfs,
        &changed.payload,
    ));
    changed.manifest = manifest;
    changed.signature = signature;
    let c = dir.path().join("c");
    write(&changed, &c).unwrap();
    assert_ne!(
        std::fs::read(a.join("index.json")).unwrap(),
        std::fs::read(c.join("index.json")).unwrap()
    );
}

/// Each blob of the layout, flipped at its start, middle and end: `keel verify` fails and the
/// message names the blob that is wrong.
#[test]
fn a_flipped_byte_in_any_blob_fails_verify_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let parts = parts("1.0.0");
    let good = dir.path().join("good");
    let written = write(&parts, &good).unwrap();
    let public = write_pub(dir.path());
    let config_digest = sha(b"{}");
    let mut blobs = vec![
        (config_digest, format!("config sha256:{config_digest}")),
        (
            written.image_manifest.digest,
            format!("image manifest {}", written.image_manifest.oci_digest()),
        ),
    ];
    for (part, name) in [
        (Part::Manifest, "signed manifest (manifest.json)"),
        (Part::Signature, "signature (manifest.json.minisig)"),
        (Part::Kernel, "kernel (vmlinuz)"),
        (Part::Initramfs, "initramfs"),
        (Part::Payload, "slot payload (squashfs + verity tree)"),
    ] {
        let blob = written.part(part);
        blobs.push((blob.digest, format!("{name} blob {}", blob.oci_digest())));
    }
    let mut case = 0;
    for (hex, name) in &blobs {
        let len = std::fs::metadata(blob_path(&good, hex)).unwrap().len() as usize;
        for at in [0, len / 2, len - 1] {
            case += 1;
            let bundle = dir.path().join(format!("case{case}"));
            copy_tree(&good, &bundle);
            flip(&blob_path(&bundle, hex), at, 0x01);
            let expected = format!("{name}: digest mismatch");
            // The CLI once per blob (it is slower), the library for the other offsets.
            let message = if at == len / 2 {
                let out = keel(&["verify", p(&bundle), "--pub", p(&public)]);
                assert_eq!(out.status.code(), Some(1), "{name} at {at}: {}", text(&out));
                text(&out)
            } else {
                verify_bundle(&bundle, &trusted()).unwrap_err().to_string()
            };
            assert!(
                message.contains(&expected),
                "{name} flipped at {at}: expected {expected:?} in:\n{message}"
            );
            std::fs::remove_dir_all(&bundle).unwrap();
        }
    }
    // A blob that is missing or has another size is named too.
    let bundle = dir.path().join("short");
    copy_tree(&good, &bundle);
    let kernel = blob_path(&bundle, &written.part(Part::Kernel).digest);
    std::fs::write(&kernel, &parts.kernel[1..]).unwrap();
    let err = verify_bundle(&bundle, &trusted()).unwrap_err().to_string();
    assert!(
        err.contains("kernel (vmlinuz) blob") && err.contains("bytes"),
        "{err}"
    );
    std::fs::remove_file(&kernel).unwrap();
    let err = verify_bundle(&bundle, &trusted()).unwrap_err().to_string();
    assert!(
        err.contains("kernel (vmlinuz) blob") && err.contains("missing"),
        "{err}"
    );
}

/// `index.json` and `oci-layout` are covered by no digest: every single-bit flip (and every
/// letter-case flip) in them must still be refused, by the strict parsing of both.
#[test]
fn every_flipped_byte_of_index_json_and_oci_layout_fails_verify() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("update");
    write(&parts("1.0.0"), &bundle).unwrap();
    verify_bundle(&bundle, &trusted()).unwrap();
    for name in ["index.json", "oci-layout"] {
        let path = bundle.join(name);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        for at in 0..len {
            for mask in [0x01, 0x20] {
                flip(&path, at, mask);
                let result = verify_bundle(&bundle, &trusted());
                flip(&path, at, mask);
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    result.is_err(),
                    "{name}: flipping byte {at} ({:?}) with {mask:#04x} went unnoticed",
                    bytes[at] as char
                );
            }
        }
    }
    // The untouched layout still verifies (the flips were all undone).
    verify_bundle(&bundle, &trusted()).unwrap();
}

#[test]
fn refs_keys_and_the_signed_manifest_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let parts = parts("1.0.0");

    // Re-tagged as another version: the ref is not signed, so it must match the manifest.
    let bundle = dir.path().join("retagged");
    write(&parts, &bundle).unwrap();
    let index = std::fs::read_to_string(bundle.join("index.json")).unwrap();
    std::fs::write(
        bundle.join("index.json"),
        index.replace("\"1.0.0\"", "\"9.0.0\""),
    )
    .unwrap();
    let err = verify_bundle(&bundle, &trusted()).unwrap_err().to_string();
    assert!(
        err.contains("ref name \"9.0.0\" differs from the signed manifest's version \"1.0.0\""),
        "{err}"
    );

    // Consistent OCI digests, but a kernel other than the one the manifest signed.
    let mut swapped = parts;
    swapped.kernel = noise(9, 70_001);
    let bundle = dir.path().join("swapped");
    write(&swapped, &bundle).unwrap();
    let err = verify_bundle(&bundle, &trusted()).unwrap_err().to_string();
    assert!(
        err.contains("kernel (vmlinuz): the bundle's blob is sha256:")
            && err.contains("the signed manifest says"),
        "{err}"
    );

    // Another key.
    let other =
        TrustedKeys::new([SecretKey::from_seed(KeyId(*b"otherkey"), &[9; 32]).public_key()])
            .unwrap();
    let good = dir.path().join("good");
    let restored = crate::parts("1.0.0");
    write(&restored, &good).unwrap();
    assert!(matches!(
        verify_bundle(&good, &other),
        Err(VerifyError::Signature(_))
    ));
    // Not a bundle at all.
    let err = open_bundle(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("oci-layout"), "{err}");
}

/// skopeo is the independent peer: it reads the layout, checks every blob's digest while
/// copying, and writes its own index.json. The copy verifies; a damaged source does not copy.
#[test]
fn skopeo_copies_a_bundle_and_the_copy_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let parts_1 = parts("1.0.0");
    write(&parts_1, &a).unwrap();
    let b = dir.path().join("b");
    let copy = |from: &Path, to: &Path, version: &str| {
        tool(Command::new("skopeo").args([
            "copy",
            "--quiet",
            &format!("oci:{}:{version}", p(from)),
            &format!("oci:{}:{version}", p(to)),
        ]))
    };
    let out = copy(&a, &b, "1.0.0");
    assert!(out.status.success(), "skopeo copy: {}", text(&out));
    let report = verify_bundle(&b, &trusted()).unwrap();
    assert_eq!(report.manifest.version, "1.0.0");
    // skopeo copied the image manifest byte for byte (same digest), and every blob.
    let (src, dst) = (
        open_bundle(&a, None).unwrap(),
        open_bundle(&b, None).unwrap(),
    );
    assert_eq!(src.image_manifest, dst.image_manifest);
    assert_eq!(src.parts, dst.parts);

    // A second version in the same layout: selected by ref; without one, the choice is named.
    let c = dir.path().join("c");
    write(&parts("1.1.0"), &c).unwrap();
    let out = copy(&c, &b, "1.1.0");
    assert!(out.status.success(), "skopeo copy: {}", text(&out));
    assert_eq!(
        open_bundle(&b, Some("1.1.0")).unwrap().reference.as_deref(),
        Some("1.1.0")
    );
    assert_eq!(
        open_bundle(&b, Some("1.0.0")).unwrap().manifest,
        parts_1.manifest
    );
    let err = open_bundle(&b, None).unwrap_err().to_string();
    assert!(err.contains("2 images (1.0.0, 1.1.0)"), "{err}");
    assert!(open_bundle(&b, Some("3.0.0")).is_err());

    // umoci, another reader of OCI layouts, lists both refs (it cannot unpack an artifact,
    // which is right: a bundle is not a container image).
    if let Ok(out) = Command::new("umoci")
        .args(["ls", "--layout", p(&b)])
        .output()
    {
        assert!(out.status.success(), "umoci ls: {}", text(&out));
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            listed.contains("1.0.0") && listed.contains("1.1.0"),
            "{listed}"
        );
    }

    // skopeo refuses to copy a bundle whose payload was damaged: it checks digests too.
    let payload = blob_path(&a, &written_digest(&a, Part::Payload));
    flip(&payload, 1000, 0x01);
    let out = copy(&a, &dir.path().join("d"), "1.0.0");
    assert!(!out.status.success(), "skopeo copied a damaged bundle");
    assert!(
        text(&out).to_lowercase().contains("digest"),
        "{}",
        text(&out)
    );
}

fn written_digest(bundle: &Path, part: Part) -> Sha256Digest {
    open_bundle(bundle, None).unwrap().part(part).digest
}

/// The upload stream, read through GNU tar: exactly the five entries in contract order, each
/// with the bytes the signed manifest describes, and as long as `upload_stream` says.
#[test]
fn the_upload_stream_is_a_tar_of_the_five_parts_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let parts = parts("1.0.0");
    let bundle = dir.path().join("update");
    write(&parts, &bundle).unwrap();
    let opened = open_bundle(&bundle, None).unwrap();
    let (mut stream, len) = upload_stream(&opened).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes.len() as u64, len);
    let sizes = Part::ALL.map(|p| opened.part(p).size);
    assert_eq!(len, upload_stream_len(sizes));

    let pipe = |args: &[&str]| {
        let mut child = Command::new("tar")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("GNU tar");
        let mut stdin = child.stdin.take().unwrap();
        let input = bytes.clone();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(out.status.success(), "tar {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listing = pipe(&["-tvf", "-"]);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 5, "{listing}");
    for ((line, name), part) in lines.iter().zip(UPLOAD_ENTRIES).zip(Part::ALL) {
        // -rw-r--r-- 0/0   70001 1970-01-01 00:00 vmlinuz
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.first(), Some(&"-rw-r--r--"), "{line}");
        assert_eq!(fields.last(), Some(&name), "{listing}");
        assert_eq!(
            fields.get(2),
            Some(&opened.part(part).size.to_string().as_str()),
            "{line}"
        );
    }

    let out = dir.path().join("extracted");
    std::fs::create_dir(&out).unwrap();
    pipe(&["-xf", "-", "-C", p(&out)]);
    let manifest = Manifest::from_json(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        std::fs::read(out.join("manifest.json.minisig")).unwrap(),
        parts.signature.as_bytes()
    );
    let read = |n: &str| std::fs::read(out.join(n)).unwrap();
    assert_eq!(sha(&read("vmlinuz")), manifest.kernel.sha256);
    assert_eq!(digest(&read("initramfs")), manifest.initramfs);
    assert_eq!(digest(&read("payload")), manifest.slot_payload);

    // What a node would do: check each header against the contract as it arrives.
    let mut archive = tar::Archive::new(bytes.as_slice());
    let entries: Vec<(String, bool, u64)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().display().to_string(),
                h.entry_type().is_file(),
                h.size().unwrap(),
            )
        })
        .collect();
    validate_upload_entries(
        entries
            .iter()
            .map(|(name, regular_file, size)| UploadEntry {
                name,
                regular_file: *regular_file,
                size: *size,
            }),
    )
    .unwrap();

    // A payload blob damaged on disk makes the stream fail, naming it, rather than end.
    flip(
        &blob_path(&bundle, &opened.part(Part::Payload).digest),
        4096,
        0x80,
    );
    let (mut stream, _) = upload_stream(&opened).unwrap();
    let err = stream.read_to_end(&mut Vec::new()).unwrap_err().to_string();
    assert!(
        err.contains("slot payload") && err.contains("digest mismatch"),
        "{err}"
    );
}

/// Kills the registry this test started, also when the test fails.
struct Registry(std::process::Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pushed to a registry (Debian's docker-registry, distribution 2.8) and pulled back, the
/// bundle keeps its image manifest digest and verifies. `vm-tests/install-host-packages`
/// installs the registry; this test runs its own instance on a free port.
#[test]
fn a_bundle_pushed_to_a_registry_and_pulled_back_verifies() {
    assert!(
        Command::new("docker-registry")
            .arg("--version")
            .output()
            .is_ok(),
        "docker-registry is not installed (vm-tests/install-host-packages installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            p(&dir.path().join("storage"))
        ),
    )
    .unwrap();
    let _registry = Registry(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed().as_secs() < 20,
            "the registry did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let bundle = dir.path().join("update");
    let written = write(&parts("1.0.0"), &bundle).unwrap();
    let remote = format!("docker://127.0.0.1:{port}/keel/worker:1.0.0");
    let out = tool(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:1.0.0", p(&bundle)),
        &remote,
    ]));
    assert!(out.status.success(), "push: {}", text(&out));
    let back = dir.path().join("back");
    let out = tool(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &remote,
        &format!("oci:{}:1.0.0", p(&back)),
    ]));
    assert!(out.status.success(), "pull: {}", text(&out));
    verify_bundle(&back, &trusted()).unwrap();
    assert_eq!(
        open_bundle(&back, None).unwrap().image_manifest,
        written.image_manifest
    );
}
