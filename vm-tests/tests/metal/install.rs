//! Issue 13's installer, end to end on the metal image: the image is a USB stick, and the
//! machine has a blank NVMe disk (serial KEEL-TARGET) and an NVMe data disk that holds a
//! partition (KEEL-DATA).
//! 1. Four boots with selectors the installer must refuse (the partitioned data disk without
//!    `wipe`, a selector matching the stick it booted from, one matching nothing, one
//!    matching two disks): each refusal is on the console, the node is degraded with its API
//!    up, and neither NVMe disk changed by a byte.
//! 2. A boot that selects KEEL-TARGET installs, sets BootNext and reboots; with the stick
//!    still attached and first in QEMU's boot order, the firmware boots the NVMe disk.
//! 3. The stick removed and QEMU started afresh, the node comes up from the NVMe disk with the
//!    same host name and secrets (its STATE came along: the operator's certificate is still
//!    accepted), its `/var` kept across boots, and an A/B upgrade through the API boots
//!    slot b.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_builder::node::{NodeClient, credentials_from_secrets};
use keel_builder::progress::Reporter;
use keel_builder::qemu::DiskBus;
use keel_contract::layout::config;
use keel_contract::profile::Role;
use keel_vm_tests::{Machine, cluster_secrets, free_port, vm_disk, write_file};
use sha2::{Digest, Sha256};

use super::{READY, metal};

const HOSTNAME: &str = "rack1-node7";

/// An NVMe disk. `bootindex` after the stick's 1: OVMF connects only the devices in QEMU's
/// boot order (real firmware connects every disk), and a BootNext naming a disk it did not
/// connect falls back to BootOrder, which OVMF rebuilds from QEMU's order at every boot.
fn nvme_args(id: &str, file: &Path, serial: &str, bootindex: u32) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("if=none,id={id},format=raw,file={}", file.display()),
        "-device".into(),
        format!("nvme,drive={id},serial={serial},bootindex={bootindex}"),
    ]
}

fn digest(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).unwrap();
    format!("{:x}", h.finalize())
}

/// A blank sparse disk of `size` bytes.
fn blank(path: &Path, size: u64) -> PathBuf {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
    path.to_path_buf()
}

#[test]
fn the_metal_image_installs_itself_from_a_usb_stick_onto_nvme() {
    let img = metal();
    let dir = img.dir.join("install");
    let _ = std::fs::remove_dir_all(&dir);
    let (secrets_path, secrets) = cluster_secrets(&dir.join("secrets"));
    let node_secrets = write_file(
        &dir,
        "node.secrets.toml",
        &secrets.for_role(Role::Worker).to_toml().unwrap(),
    );
    let creds = credentials_from_secrets(&secrets_path).unwrap();
    let stick = vm_disk(&img.out, &dir.join("stick"), 4 << 30);
    let target = blank(&dir.join("target.img"), 3 << 30);
    let data = blank(&dir.join("data.img"), 2 << 30);
    let sgdisk = std::process::Command::new("sgdisk")
        .args(["-n", "1:2048:+64M", "-c", "1:precious"])
        .arg(&data)
        .output()
        .expect("sgdisk");
    assert!(sgdisk.status.success(), "{sgdisk:?}");
    let port = free_port();
    let profile = |name: &str, selector: &str, wipe: bool| {
        write_file(
            &dir,
            &format!("{name}.toml"),
            &format!(
                "[node]\nhostname = \"{HOSTNAME}\"\n\n[node.cluster]\nendpoint = \"https://10.0.2.2:6443\"\n\n[node.install]\ndisk = {selector}\nwipe = {wipe}\n"
            ),
        )
    };
    let boot_stick = |name: &str, profile: &Path| {
        Machine::start(name, &stick, &dir.join("vm-stick"), |c| {
            c.disk_bus = DiskBus::Usb;
            c.forwards.push((port, keel_contract::api::PORT));
            c.fw_cfg
                .push((config::FW_CFG_PROFILE.into(), profile.to_path_buf()));
            c.fw_cfg
                .push((config::FW_CFG_SECRETS.into(), node_secrets.clone()));
            c.extra_args
                .extend(nvme_args("target", &target, "KEEL-TARGET", 2));
            c.extra_args
                .extend(nvme_args("data", &data, "KEEL-DATA", 3));
        })
    };

    // 1. Refusals: a console line each, the node degraded with its API up, nothing written.
    let (target_before, data_before) = (digest(&target), digest(&data));
    for (name, selector, wipe, refusal) in [
        (
            "partitioned",
            "{ serial = \"KEEL-DATA\" }",
            false,
            "p1); set wipe = true",
        ),
        (
            "boot-disk",
            "{ min_size = \"1GiB\" }",
            true,
            "the disk this node booted from",
        ),
        (
            "no-match",
            "{ serial = \"KEEL-NONE\" }",
            false,
            "matches no disk",
        ),
        (
            "several",
            "{ model = \"QEMU NVMe Ctrl\" }",
            true,
            "matches 2 disks",
        ),
    ] {
        let mut vm = boot_stick(
            &format!("install-refuses-{name}"),
            &profile(name, selector, wipe),
        );
        vm.expect("DEGRADED: install: refused:", READY);
        vm.expect(refusal, Duration::from_secs(5));
        let status = NodeClient::new(&format!("127.0.0.1:{port}"), &creds)
            .unwrap()
            .status()
            .unwrap();
        let degraded = status.degraded.clone().unwrap_or_default();
        assert!(
            degraded.contains(refusal),
            "{name}: status says {degraded:?}"
        );
        vm.kill();
        assert_eq!(digest(&target), target_before, "{name}: the target changed");
        assert_eq!(digest(&data), data_before, "{name}: the data disk changed");
    }

    // 2. The install, then the firmware boots the NVMe disk though the stick comes first.
    let power_on = Instant::now();
    let mut vm = boot_stick(
        "install-writes",
        &profile("install", "{ serial = \"KEEL-TARGET\" }", false),
    );
    vm.expect("install: onto nvme-QEMU_NVMe_Ctrl_KEEL-TARGET", READY);
    let writing = Instant::now();
    vm.expect("it matches the signed manifest", Duration::from_secs(900));
    vm.expect("install: the firmware boots Boot", Duration::from_secs(300));
    vm.expect("install: done; rebooting", Duration::from_secs(60));
    let written = writing.elapsed();
    let after = vm.expect("keel: ready: keel-metal", READY);
    let installed = power_on.elapsed();
    assert!(
        after.contains("boot disk /dev/nvme0n1"),
        "the firmware booted the stick again:\n{after}"
    );
    assert!(
        after.contains("an installed disk: nothing to install"),
        "{after}"
    );
    let node = NodeClient::new(&format!("127.0.0.1:{port}"), &creds).unwrap();
    let status = node.status().unwrap();
    assert_eq!(status.hostname, HOSTNAME);
    vm.kill();
    assert_eq!(digest(&data), data_before, "the data disk changed");
    let record = keel_vm_tests::state_file(&stick, keel_contract::layout::state::INSTALLED)
        .expect("the stick remembers its install");
    assert!(String::from_utf8_lossy(&record).contains("KEEL-TARGET"));

    // 3. The stick gone, a cold start from the NVMe disk alone, no fw_cfg: the node's
    // identity came from the STATE the installer wrote.
    let start_target = |name: &str| {
        Machine::start(name, &target, &dir.join("vm-target"), |c| {
            c.disk_bus = DiskBus::Nvme;
            c.forwards.push((port, keel_contract::api::PORT));
        })
    };
    let power_on = Instant::now();
    let mut vm = start_target("installed-cold");
    vm.expect("keel: ready: keel-metal 1.0.0 slot a, boot 2", READY);
    let plain = power_on.elapsed();
    // Read by vm-tests/bench/install-vs-boot (not an assertion).
    eprintln!(
        "install bench: power-on to ready on the installed disk {:.1} s (writing and checking {:.1} s); a plain boot of the installed disk {:.1} s; ratio {:.2}",
        installed.as_secs_f64(),
        written.as_secs_f64(),
        plain.as_secs_f64(),
        installed.as_secs_f64() / plain.as_secs_f64()
    );
    let status = node.status().unwrap();
    assert_eq!(
        status.hostname, HOSTNAME,
        "the installed node is the same node"
    );
    let mut update = keel_builder::node::open_update_file(&img.out.join("update")).unwrap();
    // The same version again, forced: a second metal build would cost minutes; slot b is
    // written, verified and booted all the same.
    node.upgrade(
        &mut update.reader,
        update.len,
        true,
        true,
        &Reporter::quiet(),
    )
    .unwrap();
    vm.expect("keel: ready: keel-metal 1.0.0 slot b, boot 3", READY);
    vm.kill();
}
