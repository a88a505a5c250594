//! The node end to end in QEMU: boot to ready with a system container from a baked image,
//! blessing that survives a reboot, /var that survives a reboot, and a corrupted root that
//! never comes up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use keel_vm_tests::{
    Machine, build, derived_profile, esp_list, marker_image, test_dir, test_key, vm_disk,
};

const BOOT: Duration = Duration::from_secs(240);

/// Builds the worker profile with the marker image baked in and run as a system container.
fn marker_node(dir: &std::path::Path) -> std::path::PathBuf {
    let layout = marker_image(&dir.join("marker"));
    let profile = derived_profile(
        dir,
        "worker",
        &format!(
            "[[image.container_images]]\nname = \"marker\"\nlayout = \"{}\"\nref = \"latest\"\n\n[[node.containers]]\nname = \"marker\"\nimage = \"marker\"\nargs = [\"hello\", \"from\", \"keel\"]\n",
            layout.display()
        ),
    );
    let (secret, _) = test_key(&dir.join("keys"));
    let out = dir.join("out");
    build(&profile, &out, &secret, None, 1_700_000_000);
    out
}

#[test]
fn boots_to_ready_runs_a_system_container_blesses_and_keeps_var_across_reboots() {
    let dir = test_dir("node_ready");
    let out = marker_node(&dir);
    // No shell in the image: nothing for an attacker (or an admin) to log in with.
    let listing = Command::new("sh").arg("-c").arg(format!(
        "dd if={disk} bs=1M skip=257 count=768 status=none > {dir}/root.img && unsquashfs -l {dir}/root.img",
        disk = out.join("disk.raw").display(),
        dir = dir.display()
    )).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("squashfs-root/usr/bin/containerd"),
        "could not list the root"
    );
    for shell in [
        "usr/bin/sh",
        "usr/bin/bash",
        "usr/bin/dash",
        "usr/bin/busybox",
    ] {
        assert!(
            !listing.lines().any(|l| l.ends_with(shell)),
            "{shell} is in the image"
        );
    }

    let disk = vm_disk(&out, &dir, 6 << 30);
    // First boot: DATA is created, containerd comes up, the image is imported, the
    // container prints its marker, the entry is blessed.
    // With `keel run`'s vCPUs (two): what a user's node boots with.
    let keel_run = |c: &mut keel_builder::qemu::VmConfig| c.cpus = keel_builder::qemu::DEFAULT_CPUS;
    let mut vm = Machine::start("node_ready-boot1", &disk, &dir.join("vm"), keel_run);
    let kernel = vm.expect("creating DATA", BOOT);
    assert!(
        kernel.contains("Brought up 1 node, 2 CPUs"),
        "the node must boot with two vCPUs:\n{kernel}"
    );
    vm.expect("boot 1 ", BOOT);
    let before_ready = vm.expect("keel: ready", BOOT);
    assert!(
        before_ready.contains("blessed keel-a+2-1.conf -> keel-a.conf"),
        "the entry must be blessed before ready:\n{before_ready}"
    );
    // containerd tries no plugin a node cannot use (aufs ran `modprobe aufs`), and loads
    // every one it needs (the CRI plugin needs the v1 runtime's tasks service).
    assert!(
        !before_ready.contains("failed to load plugin"),
        "containerd failed to load a plugin:\n{before_ready}"
    );
    // CPU frequency drivers wait until after ready, then are named (on this VM they decline).
    vm.expect("keel: drivers after ready: ", Duration::from_secs(60));
    let late = vm.expect("\n", Duration::from_secs(10));
    assert!(late.contains("acpi_cpufreq"), "{late}");
    vm.expect_seen_or_next("keel-marker: hello from keel", Duration::from_secs(120));
    vm.send("\n");
    vm.vm.powerdown().unwrap();
    // The running container is ended with the rest: nothing keeps /var from unmounting.
    let stopping = vm.expect("powering off", Duration::from_secs(60));
    assert!(!stopping.contains("warning: umount"), "{stopping}");
    assert!(
        vm.vm.wait_timeout(Duration::from_secs(60)).is_some(),
        "the VM did not power off"
    );
    assert_eq!(esp_list(&disk, "/loader/entries"), ["keel-a.conf"]);

    // Second boot from the same disk and firmware variables: the blessed entry is counted
    // again before anything is read from the slot, and blessed again at the gate; /var kept.
    let mut vm = Machine::start("node_ready-boot2", &disk, &dir.join("vm"), keel_run);
    let before_root = vm.expect("switching to", BOOT);
    assert!(
        before_root.contains("boot counted: keel-a.conf -> keel-a+2.conf"),
        "{before_root}"
    );
    // Boot 1 powered off cleanly: DATA's superblock says so, and e2fsck would find nothing.
    let data = vm.expect("boot 2 ", BOOT);
    assert!(
        data.contains(
            "is clean (cleanly unmounted, no errors, no check due): mounted without e2fsck"
        ) && !data.contains("checking it with e2fsck"),
        "{data}"
    );
    let before_ready = vm.expect("keel: ready", BOOT);
    assert!(
        before_ready.contains("blessed keel-a+2.conf -> keel-a.conf"),
        "{before_ready}"
    );
    assert!(
        !before_ready.contains("creating DATA"),
        "DATA must be reused"
    );
    check_timeline(&before_ready);
    vm.expect("keel-marker: hello from keel", Duration::from_secs(120));
    vm.kill();
    assert_eq!(esp_list(&disk, "/loader/entries"), ["keel-a.conf"]);
}

#[test]
fn a_flipped_byte_in_the_root_never_runs() {
    let dir = test_dir("node_verity");
    let (secret, _) = test_key(&dir.join("keys"));
    let out = dir.join("out");
    build(
        &keel_vm_tests::workspace_root().join("profiles/worker.toml"),
        &out,
        &secret,
        None,
        1_700_000_000,
    );
    let disk = vm_disk(&out, &dir, 4 << 30);
    // Corrupt the compressed data of the stage-2 init in KEEL-A: the first thing the node
    // executes from the root.
    let init = std::fs::read(keel_vm_tests::init_binary()).unwrap();
    let at = keel_vm_tests::root_file_block_offset(&out, &init)
        .expect("the init's first block in the root");
    keel_vm_tests::flip_byte(&disk, at);
    let mut vm = Machine::start("node_verity", &disk, &dir.join("vm"), |c| {
        c.no_reboot = true
    });
    // dm-verity reports the block and, with restart_on_corruption, restarts the machine
    // (QEMU exits here because of -no-reboot) before the corrupted code can run.
    let before = vm.expect("is corrupted", BOOT);
    assert!(
        before.contains("verified (key ID"),
        "stage 1 verified the manifest first:\n{before}"
    );
    assert!(
        vm.vm.wait_timeout(Duration::from_secs(60)).is_some(),
        "the node must restart on corruption"
    );
    let log = vm.console_log();
    assert!(log.contains("device-mapper: verity"), "{log}");
    assert!(!log.contains("keel: ready"));
    assert!(
        !log.contains("stage 2"),
        "nothing from the corrupted root may run"
    );
}

/// The `keel: timeline:` line printed before ready: every step of both stages, in start
/// order, and the orders that keep the node safe while stage 2 works in parallel.
fn check_timeline(console: &str) {
    let line = console
        .lines()
        .find_map(|l| l.trim_end().split_once("keel: timeline: ").map(|(_, t)| t))
        .unwrap_or_else(|| panic!("no timeline line before ready:\n{console}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let steps: Vec<(&str, f64, f64)> = words
        .chunks(2)
        .map(|pair| {
            let (start, end) = pair[1].split_once('-').expect(line);
            (
                pair[0],
                start.parse().expect(line),
                end.parse().expect(line),
            )
        })
        .collect();
    let find = |name: &str| {
        *steps
            .iter()
            .find(|s| s.0 == name)
            .unwrap_or_else(|| panic!("no step {name} in {line}"))
    };
    for name in [
        "mounts",
        "modules",
        "disk",
        "esp",
        "verity",
        "handoff",
        "switch",
        "basics",
        "prefetch",
        "state",
        "entries",
        "config",
        "network",
        "var",
        "host",
        "containerd",
        "images",
        "api",
        "role",
        "containers",
        "bless",
    ] {
        let (_, start, end) = find(name);
        assert!(start <= end, "{name} ends before it starts: {line}");
    }
    assert!(
        steps.windows(2).all(|w| w[0].1 <= w[1].1),
        "not in start order: {line}"
    );
    let before = |a: &str, b: &str| {
        assert!(
            find(a).2 <= find(b).1,
            "{a} must end before {b} starts: {line}"
        );
    };
    // Stage 1 hands over, then stage 2; /var is decided before anything writes it; the API
    // knows whether /var is there; the gate comes last.
    before("verity", "switch");
    before("switch", "basics");
    before("state", "var");
    before("var", "host");
    before("host", "containerd");
    before("containerd", "images");
    before("var", "api");
    before("network", "api");
    before("var", "role");
    before("images", "bless");
    before("containers", "bless");
    // containerd's executable is read ahead from the start of stage 2, beside the basics.
    assert!(
        find("prefetch").1 <= find("basics").2,
        "prefetch must start with stage 2, beside the basics: {line}"
    );
    assert_eq!(steps.last().map(|s| s.0), Some("bless"), "{line}");
}
