//! What a build hands to scripts and other tools, checked on a real build of the stock worker
//! (squashfs at zstd level 1 to save time; everything else stock), made with the CLI:
//! `keel build --json`; the SBOM beside the manifest, checked by the SPDX project's own
//! validator (`pyspdxtools` from spdx-tools) and against the manifest; the network-boot
//! directory (`image.formats = ["pxe"]`) against the disk; and `keel verify` and `keel
//! inspect` on an output directory nobody may write to.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .stdin(Stdio::null())
        .env_remove("KEEL_KEY_PASSPHRASE")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

struct Built {
    _dir: tempfile::TempDir,
    out: PathBuf,
    public: PathBuf,
    /// `keel build --json`'s stdout.
    json: serde_json::Value,
}

/// The image, built once for the tests of this file.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        assert!(
            keel(&["key", "gen", "-o", p(&keys), "--unencrypted"])
                .status
                .success()
        );
        let profile = dir.path().join("worker-fast.toml");
        std::fs::write(
            &profile,
            format!(
                "extends = \"{}\"\n[image]\nformats = [\"raw\", \"pxe\"]\n[image.squashfs]\nlevel = 1\n",
                workspace().join("profiles/worker.toml").display()
            ),
        )
        .unwrap();
        let out = dir.path().join("out");
        // Any static executable will do as the init for an image that never boots.
        let build = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["build", p(&profile), "-o", p(&out), "--json"])
            .args([
                "--key",
                p(&keys.join("keel.key")),
                "--init",
                "/sbin/ldconfig",
            ])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(build.status.success(), "{}", stderr(&build));
        let json = serde_json::from_slice(&build.stdout)
            .unwrap_or_else(|e| panic!("build --json: {e}: {:?}", build.stdout));
        Built {
            out,
            public: keys.join("keel.pub"),
            json,
            _dir: dir,
        }
    })
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn build_json_describes_the_output() {
    let b = built();
    let m = manifest(&b.out);
    assert_eq!(b.json["output"], p(&b.out));
    assert_eq!(b.json["name"], m["name"]);
    assert_eq!(b.json["version"], m["version"]);
    assert_eq!(b.json["root_hash"], m["root"]["verity"]["root_hash"]);
    let files: Vec<&str> = b.json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for want in [
        "disk.raw",
        "manifest.json",
        "sbom.spdx.json",
        "update/",
        "pxe/",
    ] {
        assert!(files.contains(&want), "{want} missing: {files:?}");
    }
}

fn pyspdxtools() -> PathBuf {
    let path = workspace().join("target/tools/py/bin/pyspdxtools");
    assert!(
        path.exists(),
        "{} is missing: run vm-tests/install-host-packages (it installs spdx-tools from PyPI)",
        path.display()
    );
    path
}

fn validate_spdx(file: &Path) -> Output {
    Command::new(pyspdxtools())
        .arg("-i")
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn the_sbom_is_valid_spdx_and_lists_every_source_of_the_manifest() {
    let b = built();
    let sbom_path = b.out.join("sbom.spdx.json");
    let check = validate_spdx(&sbom_path);
    assert!(
        check.status.success(),
        "pyspdxtools: {}{}",
        String::from_utf8_lossy(&check.stdout),
        stderr(&check)
    );

    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sbom_path).unwrap()).unwrap();
    let m = manifest(&b.out);
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    assert_eq!(sbom["creationInfo"]["created"], "2023-11-14T22:13:20Z");
    let packages = sbom["packages"].as_array().unwrap();
    let image = &packages[0];
    assert_eq!(image["name"], m["name"]);
    assert_eq!(image["versionInfo"], m["version"]);
    assert_eq!(
        image["checksums"][0]["checksumValue"],
        m["slot_payload"]["sha256"]
    );
    let sources = m["sources"].as_array().unwrap();
    assert!(
        sources.len() > 10,
        "the stock image has its Debian packages"
    );
    assert_eq!(packages.len(), sources.len() + 1);
    for (source, package) in sources.iter().zip(&packages[1..]) {
        assert_eq!(package["name"], source["name"]);
        assert_eq!(package["versionInfo"], source["version"]);
        assert_eq!(package["checksums"][0]["checksumValue"], source["sha256"]);
        if source["kind"] == "deb" {
            let purl = package["externalRefs"][0]["referenceLocator"]
                .as_str()
                .unwrap();
            assert!(
                purl.starts_with(&format!(
                    "pkg:deb/debian/{}@",
                    source["name"].as_str().unwrap()
                )),
                "{purl}"
            );
        }
    }
    let contains = sbom["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["relationshipType"] == "CONTAINS")
        .count();
    assert_eq!(contains, sources.len());

    // The validator is a real judge: the same document with a broken reference is refused.
    let mut broken = sbom.clone();
    broken["relationships"][0]["relatedSpdxElement"] = "SPDXRef-Nothing".into();
    let dir = tempfile::tempdir().unwrap();
    let broken_path = dir.path().join("broken.spdx.json");
    std::fs::write(&broken_path, serde_json::to_vec(&broken).unwrap()).unwrap();
    assert!(!validate_spdx(&broken_path).status.success());
}

/// Runs `program` as an unprivileged user when this test runs as root (root may write to any
/// file, whatever its mode), so a read-only file really cannot be opened for writing.
fn unprivileged(program: &str, args: &[&str]) -> Output {
    let root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    let mut cmd = if root.unwrap_or(false) {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).stdin(Stdio::null()).output().unwrap()
}

fn keel_unprivileged(args: &[&str]) -> Output {
    unprivileged(env!("CARGO_BIN_EXE_keel"), args)
}

/// A copy of the output directory (the bundle too) where every file is mode 0444 and
/// every directory 0555.
fn read_only_copy(out: &Path, public: &Path) -> (tempfile::TempDir, PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else if entry.file_name() == "disk.raw" {
                let size = entry.metadata().unwrap().len();
                keel_builder::run::sparse_copy(&entry.path(), &target, size).unwrap();
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    fn lock(path: &Path) {
        for entry in std::fs::read_dir(path).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                lock(&entry.path());
            } else {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o444))
                    .unwrap();
            }
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy_dir = dir.path().join("out");
    copy(out, &copy_dir);
    let key = dir.path().join("keel.pub");
    std::fs::copy(public, &key).unwrap();
    lock(&copy_dir);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o444)).unwrap();
    (dir, copy_dir, key)
}

#[test]
fn verify_and_inspect_need_no_write_access() {
    let b = built();
    let (_dir, out, key) = read_only_copy(&b.out, &b.public);
    let disk = out.join("disk.raw");
    let writable = unprivileged("test", &["-w", p(&disk)]);
    assert!(
        !writable.status.success(),
        "the copy must be read-only for whoever runs keel below"
    );

    let verify = keel_unprivileged(&["verify", p(&out), "--pub", p(&key), "--json"]);
    assert!(verify.status.success(), "verify: {}", stderr(&verify));
    let v: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["kind"], "output");
    let checked: Vec<&str> = v["checked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for want in [
        "KEEL-A",
        "STATE",
        "ESP /EFI/BOOT/BOOTX64.EFI",
        "update/: ref name",
        "pxe/: root.img",
        "pxe/: boot.ipxe",
    ] {
        assert!(
            checked.iter().any(|c| c.starts_with(want)),
            "{want} missing: {checked:?}"
        );
    }

    let inspect = keel_unprivileged(&["inspect", p(&disk), "--json"]);
    assert!(inspect.status.success(), "inspect: {}", stderr(&inspect));
    let i: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let d = &i["disk"];
    let labels: Vec<&str> = d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["ESP", "KEEL-A", "KEEL-B", "STATE"]);
    let m = manifest(&b.out);
    assert_eq!(d["slots"][0]["manifest"]["version"], m["version"]);
    assert_eq!(
        d["slots"][0]["manifest"]["root"]["verity"]["root_hash"],
        m["root"]["verity"]["root_hash"]
    );
    assert!(d["slots"][1]["manifest"].is_null());
    assert_eq!(d["boot_entries"][0], "keel-a+3.conf");

    let text = keel_unprivileged(&["inspect", p(&out)]);
    assert!(text.status.success(), "inspect: {}", stderr(&text));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("update bundle (OCI image layout)"), "{text}");
    assert!(
        text.contains("network boot ") && text.contains("root.img "),
        "{text}"
    );
}

/// `pxe/` holds the disk's own bytes: root.img is KEEL-A's content (the manifest's
/// slot_payload), the kernel and initramfs are OUTDIR's, and the script boots them with the
/// disk entry's options, `keel.root=` instead of `keel.slot=`.
#[test]
fn the_pxe_directory_holds_the_disks_bytes() {
    use std::io::{Read, Seek, SeekFrom};
    let b = built();
    let dir = b.out.join("pxe");
    let m = manifest(&b.out);
    let slot = m["disk"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "KEEL-A")
        .unwrap();
    let size = m["slot_payload"]["size"].as_u64().unwrap();
    let root = std::fs::read(dir.join("root.img")).unwrap();
    assert_eq!(root.len() as u64, size);
    let mut disk = std::fs::File::open(b.out.join("disk.raw")).unwrap();
    disk.seek(SeekFrom::Start(slot["offset"].as_u64().unwrap()))
        .unwrap();
    let mut on_disk = vec![0u8; size as usize];
    disk.read_exact(&mut on_disk).unwrap();
    assert!(root == on_disk, "root.img is not KEEL-A's content");
    for same in [
        "vmlinuz",
        "initramfs",
        "manifest.json",
        "manifest.json.minisig",
    ] {
        assert!(
            std::fs::read(dir.join(same)).unwrap() == std::fs::read(b.out.join(same)).unwrap(),
            "{same}"
        );
    }
    let script = std::fs::read_to_string(dir.join("boot.ipxe")).unwrap();
    let kernel = script
        .lines()
        .find(|l| l.starts_with("kernel vmlinuz initrd=initramfs "))
        .unwrap_or_else(|| panic!("{script}"));
    let hash = m["root"]["verity"]["root_hash"].as_str().unwrap();
    let cmdline: Vec<&str> = m["cmdline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let want = format!(
        "keel.root=${{keel-base}}root.img keel.roothash={hash} {}",
        cmdline.join(" ")
    );
    assert!(kernel.contains(&want), "{kernel}\nwant {want}");
    assert!(!kernel.contains("keel.slot="), "{kernel}");

    let verify = keel(&["verify", p(&dir), "--pub", p(&b.public), "--json"]);
    assert!(verify.status.success(), "verify: {}", stderr(&verify));
    let v: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(v["kind"], "pxe");
}
