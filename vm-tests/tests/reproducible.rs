//! Same profile, inputs and SOURCE_DATE_EPOCH: identical bytes in every output, even when
//! built in different directories at different times.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

use keel_builder::build::BuildRequest;
use keel_builder::io::HashingReader;
use keel_vm_tests::{build, cache_dir, init_binary, run_build, test_dir, test_key, workspace_root};

/// The SHA-256 of every file under `dir`, by relative path. The outputs are hashed and then
/// deleted instead of being kept side by side: three builds with every format would hold
/// several GiB of disk at once, more than a CI machine may have free.
fn digests(dir: &Path) -> BTreeMap<String, [u8; 32]> {
    let sums = files(dir)
        .into_iter()
        .map(|name| {
            let mut reader = HashingReader::new(std::fs::File::open(dir.join(&name)).unwrap());
            std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
            (name, reader.finish().sha256)
        })
        .collect();
    std::fs::remove_dir_all(dir).unwrap();
    sums
}

/// Every file under `dir`, as relative paths: the update bundle is a directory.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut names = Vec::new();
    walk(dir, dir, &mut names);
    names.sort();
    names
}

#[test]
fn two_builds_are_bit_identical() {
    let dir = test_dir("reproducible");
    let (secret, _) = test_key(&dir.join("keys"));
    // The stock worker with every output format, so those are covered too.
    let profile = dir.join("all-formats.toml");
    std::fs::write(
        &profile,
        format!(
            "extends = \"{}\"\n[image]\nformats = [\"raw\", \"qcow2\", \"vhd\", \"gce\", \"pxe\"]\n",
            workspace_root().join("profiles/worker.toml").display()
        ),
    )
    .unwrap();
    let a = dir.join("first/out");
    let b = dir.join("second/elsewhere/out");
    build(&profile, &a, &secret, None, 1_700_000_000);
    let names = files(&a);
    for name in [
        "disk.raw",
        "disk.qcow2",
        "disk.vhd",
        "disk.tar.gz",
        "manifest.json",
        "manifest.json.minisig",
        "vmlinuz",
        "initramfs",
        "update/oci-layout",
        "update/index.json",
        "pxe/root.img",
        "pxe/boot.ipxe",
        "pxe/manifest.json",
    ] {
        assert!(
            names.contains(&name.to_string()),
            "{name} missing: {names:?}"
        );
    }
    let check = std::process::Command::new("qemu-img")
        .arg("check")
        .arg(a.join("disk.qcow2"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "qemu-img check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let first = digests(&a);
    std::thread::sleep(std::time::Duration::from_secs(2));
    // The second build takes nothing from the squashfs block cache and runs on one thread:
    // neither may change a byte.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        run_build(&BuildRequest {
            profile: profile.clone(),
            output: b.clone(),
            key: Some(secret.clone()),
            version: None,
            init: Some(init_binary()),
            cache_dir: cache_dir(),
            block_cache: None,
            source_date_epoch: 1_700_000_000,
        })
    });
    let second = digests(&b);
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    for (name, sum) in &first {
        assert!(
            second[name] == *sum,
            "{name} differs between the two builds"
        );
    }
    // And SOURCE_DATE_EPOCH is an input: another value gives another image.
    let c = dir.join("third/out");
    build(&profile, &c, &secret, None, 1_700_000_001);
    let third = digests(&c);
    assert_ne!(first["manifest.json"], third["manifest.json"]);
    assert_ne!(first["disk.raw"], third["disk.raw"]);
}
