//! `keel run` as a person uses it: build the stock image with the CLI, boot it as a node of
//! their own (a profile and the cluster secrets given at boot), and press Ctrl-C (SIGINT to
//! keel), which must power the VM off in an orderly way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The static init, built the same way (and into the same directory) as the vm-tests do.
fn static_init() -> PathBuf {
    let target_dir = workspace().join("target").join("keel-init");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "build",
            "--release",
            "-p",
            "keel-init",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    target_dir.join("x86_64-unknown-linux-gnu/release/keel-init")
}

#[test]
fn keel_run_boots_the_image_and_ctrl_c_powers_it_off() {
    let keel = env!("CARGO_BIN_EXE_keel");
    let dir = tempfile::tempdir().unwrap();
    let init = static_init();
    let key_dir = dir.path().join("keys");
    assert!(
        Command::new(keel)
            .args(["key", "gen", "--unencrypted", "-o"])
            .arg(&key_dir)
            .status()
            .unwrap()
            .success()
    );
    let out = dir.path().join("out");
    let built = Command::new(keel)
        .arg("build")
        .arg(workspace().join("profiles/worker.toml"))
        .arg("-o")
        .arg(&out)
        .arg("--key")
        .arg(key_dir.join("keel.key"))
        .arg("--init")
        .arg(&init)
        .status()
        .unwrap();
    assert!(built.success());
    let secrets = dir.path().join("cluster.secrets.toml");
    assert!(
        Command::new(keel)
            .args(["secrets", "gen", "-o"])
            .arg(&secrets)
            .status()
            .unwrap()
            .success()
    );
    let node = dir.path().join("laptop-worker.toml");
    std::fs::write(
        &node,
        "[node]\nrole = \"worker\"\nhostname = \"laptop-worker\"\n\n[node.cluster]\nendpoint = \"https://10.0.2.2:6443\"\n",
    )
    .unwrap();

    let mut child = Command::new(keel)
        .arg("run")
        .arg(&out)
        .args(["--disk-size", "4GiB", "--profile"])
        .arg(&node)
        .arg("--secrets")
        .arg(&secrets)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str, timeout: Duration, seen: &mut Vec<String>| {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return true;
                }
            }
        }
        false
    };
    let mut seen = Vec::new();
    let ready = wait_for("keel: ready", Duration::from_secs(300), &mut seen);
    if !ready {
        let _ = child.kill();
        panic!("no ready line; console:\n{}", seen.join("\n"));
    }
    for want in [
        "profile from QEMU fw_cfg opt/keel/profile: role worker",
        "hostname laptop-worker",
        "role worker: 2 certificates and kubeconfigs",
    ] {
        assert!(
            seen.iter().any(|l| l.contains(want)),
            "{want:?} missing; console:\n{}",
            seen.join("\n")
        );
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let powered_off = wait_for("powering off", Duration::from_secs(120), &mut seen);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        powered_off,
        "Ctrl-C must power the node off in order; console:\n{}",
        seen.join("\n")
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "keel run must exit by itself once the VM is off"
    );
    assert!(seen.iter().any(|l| l.contains("stopping services")));
}
