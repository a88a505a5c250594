//! `keel cluster` refusing bad input before anything is written or started: exit code 2, a
//! message naming the option and what was expected, no cluster directory, no QEMU. (The
//! clusters themselves are tested in `vm-tests/tests/cluster.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn keel(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("XDG_STATE_HOME", state)
        .env("KEEL_CONFIG", state.join("keel-config.toml"))
        .env_remove("KEEL_CONTEXT")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn refused(out: &Output, wants: &[&str]) {
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    for want in wants {
        assert!(said.contains(want), "{want:?} not in: {said}");
    }
}

#[test]
fn create_refuses_bad_input_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let image = dir.path().join("out");
    std::fs::create_dir_all(&image).unwrap();
    let image_arg = image.to_str().unwrap();

    refused(
        &keel(&state, &["cluster", "create", "dev", "--image", image_arg]),
        &["--image", "no disk.raw", "keel build output directory"],
    );
    // From here on the image has its disk (its content is not read before the checks pass).
    std::fs::write(image.join("disk.raw"), b"").unwrap();
    refused(
        &keel(
            &state,
            &[
                "cluster",
                "create",
                "dev",
                "--image",
                image_arg,
                "--controlplanes",
                "0",
            ],
        ),
        &["--controlplanes", "expected 1 to 9"],
    );
    refused(
        &keel(
            &state,
            &[
                "cluster", "create", "dev", "--image", image_arg, "--memory", "64",
            ],
        ),
        &["--memory", "at least 512"],
    );
    refused(
        &keel(
            &state,
            &[
                "cluster",
                "create",
                "dev",
                "--image",
                image_arg,
                "--disk-size",
                "lots",
            ],
        ),
        &["--disk-size", "binary unit"],
    );
    refused(
        &keel(
            &state,
            &["cluster", "create", "Not_A_Label", "--image", image_arg],
        ),
        &["Not_A_Label"],
    );

    // Secrets of another cluster.
    let secrets = dir.path().join("other.secrets.toml");
    let made = keel(
        &state,
        &[
            "secrets",
            "gen",
            "-o",
            secrets.to_str().unwrap(),
            "--cluster-name",
            "other",
        ],
    );
    assert!(made.status.success(), "{made:?}");
    refused(
        &keel(
            &state,
            &[
                "cluster",
                "create",
                "dev",
                "--image",
                image_arg,
                "--secrets",
                secrets.to_str().unwrap(),
            ],
        ),
        &["--secrets", "its cluster is \"other\", not \"dev\""],
    );
    // A snapshot cut short (its SHA-256 trailer no longer matches) or not one at all.
    let snapshot = dir.path().join("etcd.snapshot");
    std::fs::write(&snapshot, vec![7u8; 512 + 32]).unwrap();
    refused(
        &keel(
            &state,
            &[
                "cluster",
                "create",
                "dev",
                "--image",
                image_arg,
                "--etcd-snapshot",
                snapshot.to_str().unwrap(),
            ],
        ),
        &["--etcd-snapshot", "SHA-256", "keel node etcd snapshot"],
    );
    refused(
        &keel(
            &state,
            &[
                "cluster",
                "create",
                "dev",
                "--image",
                image_arg,
                "--controlplanes",
                "3",
                "--segment",
                "stream",
            ],
        ),
        &["--segment", "exactly two nodes, not 3"],
    );
    assert!(!state.join("keel/clusters/dev").exists(), "nothing written");
    assert!(!state.join("keel-config.toml").exists(), "no context saved");

    for args in [
        &["cluster", "status", "dev"][..],
        &["cluster", "destroy", "dev"],
        &["cluster", "start", "dev"],
        &["cluster", "upgrade", "dev", "/nonexistent"],
        &["cluster", "add", "dev", "--controlplanes", "1"],
        &["cluster", "remove", "dev", "--node", "dev-cp-1"],
    ] {
        refused(&keel(&state, args), &["no cluster named \"dev\""]);
    }
    let list = keel(&state, &["cluster", "list", "--json"]);
    assert!(list.status.success());
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

/// The pids of the QEMUs whose command line names `dir`.
fn qemus_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// A cluster that never becomes healthy (its disks hold nothing to boot: the firmware finds
/// no OS, real QEMU and OVMF all the same): `create` prints the table, then fails with the
/// check that failed after `--wait-timeout` (exit 1), leaving the VMs up to look at; `stop`
/// and `start --node` act on that node alone; `destroy` leaves no QEMU.
#[test]
fn a_cluster_that_never_gets_healthy_fails_with_the_check_and_is_destroyed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let image = dir.path().join("out");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::File::create(image.join("disk.raw"))
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let clusters = state.join("keel/clusters/nb");
    let out = keel(
        &state,
        &[
            "cluster",
            "create",
            "nb",
            "--image",
            image.to_str().unwrap(),
            "--controlplanes",
            "1",
            "--workers",
            "1",
            "--disk-size",
            "16MiB",
            "--memory",
            "512",
            "--wait-timeout",
            "3",
        ],
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("not healthy after 3 s"), "{said}");
    assert!(
        said.contains("nb-cp-1: node API"),
        "the failing check: {said}"
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("nb-cp-1") && table.contains("nb-worker-1"),
        "{table}"
    );
    assert_eq!(qemus_under(&clusters).len(), 2, "the VMs stay up");

    let stopped = keel(&state, &["cluster", "stop", "nb", "--node", "nb-worker-1"]);
    assert!(stopped.status.success(), "{stopped:?}");
    assert_eq!(qemus_under(&clusters.join("nb-worker-1")).len(), 0);
    assert_eq!(qemus_under(&clusters.join("nb-cp-1")).len(), 1);
    let started = keel(
        &state,
        &[
            "cluster",
            "start",
            "nb",
            "--node",
            "nb-worker-1",
            "--wait-timeout",
            "1",
        ],
    );
    let said = String::from_utf8_lossy(&started.stderr);
    assert_eq!(started.status.code(), Some(1), "{said}");
    assert!(said.contains("started: nb-worker-1"), "{said}");
    assert_eq!(qemus_under(&clusters.join("nb-worker-1")).len(), 1);

    let destroyed = keel(&state, &["cluster", "destroy", "nb"]);
    assert!(destroyed.status.success(), "{destroyed:?}");
    assert!(qemus_under(&clusters).is_empty(), "no QEMU left");
    assert!(!clusters.exists());
}
