//! A build with `image.secrets` never lets anyone else read them: its staging directory is
//! owner-only from its creation, and the disk (which carries STATE with the node's share) is
//! owner-only from its first byte, also when the build is killed partway and leaves its
//! staging directory behind. The build is the stock worker's, with the CLI, killed as soon as
//! `disk.raw` appears (the image is never finished, so this costs the build up to its disk).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

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

fn mode(path: &Path) -> Option<u32> {
    Some(std::fs::symlink_metadata(path).ok()?.mode() & 0o777)
}

/// The build's staging directory in `dir`, if it exists yet.
fn staging(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with(".out.partial-").then(|| e.path())
    })
}

/// Every file and directory under `dir` that holds secrets or could give access to them,
/// with its mode: the directory itself and the `disk.*` files (and formats being converted).
/// `None` if the directory went away while we looked (renamed into place).
fn secret_holders(dir: &Path) -> Option<Vec<(PathBuf, u32)>> {
    let mut out = vec![(dir.to_path_buf(), mode(dir)?)];
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("disk.") || name.starts_with(".keel-convert-") {
            // A file renamed away between the listing and the look is seen under its new name.
            if let Some(m) = mode(&entry.path()) {
                out.push((entry.path(), m));
            }
        }
    }
    Some(out)
}

#[test]
fn a_killed_build_with_secrets_leaves_nothing_readable_by_others() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    assert!(
        keel(&["key", "gen", "-o", p(&keys), "--unencrypted"])
            .status
            .success()
    );
    let secrets = dir.path().join("cluster.secrets.toml");
    let made = keel(&[
        "secrets",
        "gen",
        "-o",
        p(&secrets),
        "--cluster-name",
        "prod-1",
        "--endpoint",
        "https://10.0.0.1:6443",
    ]);
    assert!(made.status.success(), "{made:?}");
    let profile = dir.path().join("p.toml");
    std::fs::write(
        &profile,
        format!(
            "extends = \"{}\"\n[image]\nsecrets = \"{}\"\n[image.squashfs]\nlevel = 1\n[node.cluster]\nname = \"prod-1\"\n",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../profiles/worker.toml")
                .display(),
            p(&secrets)
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let mut build = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["build", p(&profile), "-o", p(&out)])
        .args([
            "--key",
            p(&keys.join("keel.key")),
            "--init",
            "/sbin/ldconfig",
        ])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Watch the staging directory for the whole build; kill the build once the disk exists.
    let mut seen: Vec<(PathBuf, u32)> = Vec::new();
    let killed = loop {
        if let Some(holders) = staging(dir.path()).and_then(|d| secret_holders(&d)) {
            let has_disk = holders.iter().any(|(p, _)| p.ends_with("disk.raw"));
            seen.extend(holders);
            if has_disk {
                build.kill().unwrap();
                break true;
            }
        }
        if let Some(status) = build.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(build.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            assert!(status.success(), "{stderr}");
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    build.wait().unwrap();
    eprintln!("killed partway: {killed}; {} observations", seen.len());
    if killed {
        let left = staging(dir.path()).expect("a killed build leaves its staging directory");
        assert!(!out.exists(), "a killed build has no OUTDIR");
        seen.extend(secret_holders(&left).unwrap());
    } else {
        // Finished before we saw its disk: the output must be as private.
        assert_eq!(mode(&out.join("disk.raw")), Some(0o600));
    }
    assert!(!seen.is_empty());
    let readable: std::collections::BTreeSet<String> = seen
        .iter()
        .filter(|(_, m)| m & 0o077 != 0)
        .map(|(path, m)| format!("{} ({m:o})", path.display()))
        .collect();
    assert!(
        readable.is_empty(),
        "readable by others while the build ran: {}",
        readable.into_iter().collect::<Vec<_>>().join(", ")
    );
}
