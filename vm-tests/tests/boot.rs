//! UEFI boot of the stock image: OVMF -> systemd-boot -> the kernel -> our initramfs -> init,
//! with a second Keel disk in the machine (an old system disk, another build on a stick) that
//! neither captures nor breaks the boot: stage 1 takes its partitions from the disk
//! systemd-boot booted from (`LoaderDevicePartUUID`), not from the first disk carrying the
//! labels. One boot serves both (the suite shares boots where it can).
//!
//! The other disk's build also writes the `pxe` format, and the same test then boots it over
//! the network (issue 14): iPXE in the NIC's ROM, `keel serve`'s files and per-MAC profiles
//! (signed), stage 1 fetching `root.img` into RAM and verifying it before dm-verity.
//! - Machine A (no disk at all) runs from RAM to ready with the host name its MAC's profile
//!   gives.
//! - Machine B (another MAC, a blank NVMe disk) gets a profile with `[node.install]`: it
//!   installs onto the disk through the same installer as a USB stick, sets BootNext, reboots,
//!   and comes up from the disk (no second network boot) with its own host name.
//! - Machine C (no boot disk, a blank NVMe disk) gets `[node.var]`: `/var` goes onto that
//!   disk, and a second boot of the machine finds it there.
//! - A fourth machine is served a `root.img` with one flipped byte, then a truncated one, then
//!   the 1.0.0 build's root: stage 1 must refuse each, naming what did not match, before
//!   anything is attached.
//!
//! Seven network boots beside the disk boot, all of one build.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use keel_builder::pxe::serve::{Server, Site};
use keel_builder::qemu::NetworkBoot;
use keel_vm_tests::{
    Machine, build, derived_profile, extra_disk_args, flip_byte, sign_text, stock_image, test_dir,
    vm_disk,
};

const BOOT: Duration = Duration::from_secs(300);

#[test]
fn ovmf_boots_the_image_into_our_init_from_its_own_disk_beside_another_keel_disk() {
    let (first, public) = stock_image("worker");
    let dir = test_dir("boot");
    // Same profile, same signing key, another version: a validly signed disk whose root hash
    // differs, so the console shows which one booted.
    let secret = public.with_file_name(keel_builder::keys::SECRET_FILE);
    let other = dir.join("other");
    let profile = derived_profile(&dir, "worker", "[image]\nformats = [\"raw\", \"pxe\"]\n");
    let report = build(&profile, &other, &secret, Some("1.0.1"), 1_700_000_000);
    assert_eq!(report.manifest.version, "1.0.1");

    let disk = vm_disk(&first, &dir.join("vm"), 4 << 30);
    let power_on = Instant::now();
    // The other disk is attached after the boot disk, read-only: nothing may write to it.
    // The CPU shows SSSE3 (QEMU's default model does not), so stage 1's accelerated SHA-256
    // can load and dm-verity must take it; the network boot below keeps the default model.
    let mut vm = Machine::start("boot", &disk, &dir.join("vm"), |c| {
        c.extra_args
            .extend(extra_disk_args(&other.join("disk.raw")));
        c.extra_args.extend(["-cpu".into(), "qemu64,+ssse3".into()]);
    });
    // systemd-boot runs the entry by itself (timeout 0) and the kernel prints to ttyS0.
    vm.expect("Linux version", Duration::from_secs(120));
    let before = vm.expect("keel: init ", Duration::from_secs(120));
    if !before.contains("Run /init as init process") {
        vm.fail("the kernel should start our /init");
    }
    vm.expect("booted slot a", Duration::from_secs(60));
    let before = vm.expect("keel-worker 1.0.0 verified", BOOT);
    if !before.contains("boot disk ") {
        vm.fail("stage 1 must say which disk it booted from and why");
    }
    let log = vm.console_log();
    if !log.contains("keel.slot=a keel.roothash=") {
        vm.fail("the BLS entry's options reach the kernel");
    }
    vm.expect("keel: ready", BOOT);
    let disk_boot = power_on.elapsed().as_secs_f64();
    let log = vm.console_log();
    if log.contains("1.0.1") {
        vm.fail("the other disk's version appears on the console");
    }
    // Drivers are loaded by the devices found: none for hardware this VM lacks (the Xen and
    // Hyper-V modules used to fail with "Unknown symbol"), and the virtio disk's by device.
    if log.contains("Unknown symbol") {
        vm.fail("a module for hardware this machine lacks was loaded");
    }
    if !log.contains("for the devices found: ") || !log.contains("virtio_net") {
        vm.fail("stages 1 and 2 say which drivers the devices asked for (the NIC's included)");
    }
    if !log.contains("verity: sha256 using implementation \"sha256-ssse3\"") {
        vm.fail("dm-verity hashes the root with the accelerated SHA-256 stage 1 loaded");
    }
    vm.kill();

    network_boot(
        &other.join("pxe"),
        &dir.join("pxe"),
        (&secret, &public),
        &first,
        disk_boot,
    );
}

const IPXE_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";

/// `keel serve` for `pxe_dir` (and per-MAC profiles in `configs`), in this process, on a
/// free port of 127.0.0.1 (10.0.2.2 to the guest); returns the bootfile URL.
fn serve(pxe_dir: &Path, configs: Option<&Path>) -> String {
    let site = Site::load(&[pxe_dir.to_path_buf()], configs).unwrap();
    let server = Server::bind(site, "127.0.0.1:0".parse().unwrap()).unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || server.run(Arc::new(|line: &str| eprintln!("serve: {line}"))));
    format!("http://10.0.2.2:{port}/boot.ipxe")
}

const MAC_A: &str = "52:54:00:12:34:0a";
const MAC_B: &str = "52:54:00:12:34:0b";
const MAC_C: &str = "52:54:00:12:34:0c";

/// A network-booted machine: the NIC first in the boot order, `extra` devices after it.
fn network_machine(
    name: &str,
    bootfile: &str,
    mac: &str,
    vm_dir: &Path,
    extra: Vec<String>,
) -> Machine {
    Machine::start(name, Path::new("/nonexistent"), vm_dir, |c| {
        // The root (squashfs and hash tree) lives in RAM beside /var.
        c.memory_mib = 2048;
        c.mac = Some(mac.to_owned());
        c.network_boot = Some(NetworkBoot {
            bootfile: bootfile.to_owned(),
            romfile: PathBuf::from(IPXE_ROM),
        });
        c.extra_args.extend(extra);
    })
}

/// Signed per-MAC profiles, as an operator publishes them with `keel serve --configs`.
fn node_profiles(dir: &Path, key: &Path, public: &Path) -> PathBuf {
    let configs = dir.join("configs");
    let node = |hostname: &str| {
        format!(
            "[node]\nrole = \"worker\"\nhostname = \"{hostname}\"\n\n[node.network]\nmode = \"dhcp\"\n"
        )
    };
    let file = |mac: &str| keel_contract::output::pxe::config_file(&mac.replace(':', "-"));
    sign_text(&configs, &file(MAC_A), &node("pxe-a"), key, public);
    let installing = format!(
        "{}\n[node.install]\ndisk = {{ serial = \"KEEL-PXE-TARGET\" }}\n",
        node("pxe-b")
    );
    sign_text(&configs, &file(MAC_B), &installing, key, public);
    let var_disk = format!(
        "{}\n[node.var]\ndisk = {{ serial = \"KEEL-PXE-VAR\" }}\n",
        node("pxe-c")
    );
    sign_text(&configs, &file(MAC_C), &var_disk, key, public);
    configs
}

fn network_boot(
    pxe_dir: &Path,
    dir: &Path,
    (key, public): (&Path, &Path),
    other_build: &Path,
    disk_boot: f64,
) {
    let configs = node_profiles(dir, key, public);
    let bootfile = serve(pxe_dir, Some(&configs));
    let started = Instant::now();
    let mut vm = network_machine("pxe", &bootfile, MAC_A, &dir.join("vm"), vec![]);
    vm.expect("network boot: http://10.0.2.2:", Duration::from_secs(240));
    let fetched = vm.expect("keel-worker 1.0.1 verified", BOOT);
    if !fetched.contains("network: DHCP lease") || !fetched.contains("root.img: ") {
        vm.fail("stage 1 brings up DHCP and shows the fetch's progress");
    }
    let line = vm.expect(" MiB of RAM on /dev/loop", Duration::from_secs(10));
    vm.expect("keel: ready", BOOT);
    vm.expect("(pxe-a)", Duration::from_secs(60));
    let log = vm.console_log();
    for needed in [
        "diskless (root from http://10.0.2.2:",
        "/var on tmpfs",
        "upgrades: off: this node booted from the network",
        "profile from http://10.0.2.2:",
        "/configs/52-54-00-12-34-0a.toml",
    ] {
        if !log.contains(needed) {
            vm.fail(&format!("stage 2 of a diskless node says {needed:?}"));
        }
    }
    if log.contains("keel.slot=") || log.contains("boot disk ") {
        vm.fail("a network boot has no slot and no boot disk");
    }
    // QEMU's default CPU has no SSSE3: the accelerated SHA-256 declines and the modules line
    // names it among those not for this machine.
    let declined = log.lines().any(|l| {
        l.contains("modules loaded:")
            && l.contains("not for this machine: ")
            && l.contains("sha256_ssse3")
    });
    if !declined || !log.contains("verity: sha256 using implementation \"sha256-generic\"") {
        vm.fail("without SSSE3 stage 1 names sha256_ssse3 as not for this machine");
    }
    // Read by vm-tests/bench/pxe-vs-disk (not an assertion).
    let network = started.elapsed().as_secs_f64();
    let ready_line = log
        .lines()
        .find(|l| l.contains("keel: ready: keel-worker 1.0.1"))
        .unwrap_or_default();
    eprintln!(
        "pxe bench: power-on to ready over the network {network:.1} s, from a disk {disk_boot:.1} s (the disk boot of the same profile, version 1.0.0, in this test); ratio {:.2}; {}; at ready: {}",
        network / disk_boot,
        line.lines()
            .last()
            .and_then(|l| l.split_once("root.img "))
            .map_or("no fetch line".to_owned(), |(_, r)| format!(
                "root.img {} MiB of RAM",
                r.trim()
            )),
        ready_line
            .split_once("memory in use ")
            .map_or("memory not reported", |(_, m)| m.trim())
    );
    vm.kill();

    install_over_the_network(&bootfile, dir);
    var_on_a_disk(&bootfile, dir);
    tampered_roots(pxe_dir, dir, other_build);
}

/// Machine B: its profile installs onto the blank NVMe disk; the next boot is the disk's.
fn install_over_the_network(bootfile: &str, dir: &Path) {
    let target = dir.join("target.raw");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    // bootindex 2: OVMF connects only the devices in QEMU's boot order, and BootNext must
    // name a disk it connected (see the metal install test).
    let nvme = vec![
        "-drive".to_owned(),
        format!("if=none,id=target,format=raw,file={}", target.display()),
        "-device".to_owned(),
        "nvme,drive=target,serial=KEEL-PXE-TARGET,bootindex=2".to_owned(),
    ];
    let mut vm = network_machine(
        "pxe-install",
        bootfile,
        MAC_B,
        &dir.join("vm-install"),
        nvme,
    );
    vm.expect("install: booted from the network", BOOT);
    vm.expect(
        "install: onto nvme-QEMU_NVMe_Ctrl_KEEL-PXE-TARGET",
        Duration::from_secs(60),
    );
    let fetched = vm.expect("it matches the signed manifest", Duration::from_secs(900));
    if !fetched.contains("/vmlinuz") || !fetched.contains("/initramfs") {
        vm.fail("the installer fetches the kernel and initramfs from the server it booted from");
    }
    vm.expect("install: the firmware boots Boot", Duration::from_secs(300));
    vm.expect("install: done; rebooting", Duration::from_secs(60));
    let after = vm.expect("keel: ready: keel-worker 1.0.1 slot a", BOOT);
    if !after.contains("boot disk /dev/nvme0n1") {
        vm.fail("the firmware booted the network again instead of the installed disk");
    }
    vm.expect("(pxe-b)", Duration::from_secs(60));
    let log = vm.console_log();
    if log.matches("network boot: http://").count() != 1 {
        vm.fail("the installed node came up through PXE a second time");
    }
    if !log.contains("an installed disk: nothing to install") {
        vm.fail("the installed node knows it is installed");
    }
    vm.kill();
    let _ = std::fs::remove_file(&target);
}

/// Machine C: diskless, but its profile puts `/var` on a blank NVMe disk; a second boot finds
/// it there (the boot history on `/var` counts boot 2).
fn var_on_a_disk(bootfile: &str, dir: &Path) {
    let var_disk = dir.join("var.raw");
    std::fs::File::create(&var_disk)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let nvme = || {
        vec![
            "-drive".to_owned(),
            format!("if=none,id=var,format=raw,file={}", var_disk.display()),
            "-device".to_owned(),
            "nvme,drive=var,serial=KEEL-PXE-VAR".to_owned(),
        ]
    };
    let vm_dir = dir.join("vm-var");
    let mut vm = network_machine("pxe-var", bootfile, MAC_C, &vm_dir, nvme());
    let before = vm.expect("keel: ready: keel-worker 1.0.1 slot a, boot 1", BOOT);
    if !before.contains("/var: a new partition table with DATA on nvme-QEMU_NVMe_Ctrl_KEEL-PXE-VAR")
        || !before.contains("/var on /dev/nvme0n1p1")
    {
        vm.fail("a blank disk named by [node.var] gets DATA and becomes /var");
    }
    vm.expect("(pxe-c)", Duration::from_secs(60));
    vm.kill();
    let out = std::process::Command::new("sgdisk")
        .arg("-p")
        .arg("-v")
        .arg(&var_disk)
        .output()
        .expect("sgdisk is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("No problems found") && text.contains("DATA"),
        "{text}"
    );
    let mut vm = network_machine("pxe-var-again", bootfile, MAC_C, &vm_dir, nvme());
    let before = vm.expect("keel: ready: keel-worker 1.0.1 slot a, boot 2", BOOT);
    if before.contains("a new partition table") || before.contains("formatting") {
        vm.fail("the second boot must use /var as it is");
    }
    if !before.contains("boot 2 of this /var disk") {
        vm.fail("the boot history on a /var disk counts on");
    }
    vm.kill();
    let _ = std::fs::remove_file(&var_disk);
}

/// The same files with a `root.img` that is not the signed one, three ways, one machine: the
/// server's file is swapped while the refused node waits to reboot (`keel serve` opens it per
/// request). Each must be refused by stage 1 with a line naming what did not match, before
/// anything is attached.
fn tampered_roots(pxe_dir: &Path, dir: &Path, other_build: &Path) {
    let tampered = dir.join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    for entry in std::fs::read_dir(pxe_dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tampered.join(entry.file_name())).unwrap();
    }
    let root = tampered.join(keel_contract::output::pxe::ROOT);
    let good = std::fs::read(&root).unwrap();
    flip_byte(&root, good.len() as u64 / 2);
    let bootfile = serve(&tampered, None);
    let mut vm = network_machine(
        "pxe-tampered",
        &bootfile,
        MAC_A,
        &dir.join("vm-tampered"),
        vec![],
    );
    let before = vm.expect("the signed manifest's slot_payload has", BOOT);
    if !before.contains("SHA-256") {
        vm.fail("the refusal names the SHA-256 that did not match");
    }
    vm.expect("rebooting in", Duration::from_secs(30));
    // Truncated: half of it.
    std::fs::write(&root, &good[..good.len() / 2]).unwrap();
    let before = vm.expect("the signed manifest's slot_payload is", BOOT);
    if !before.contains(&format!("announces {} bytes", good.len() / 2)) {
        vm.fail("the refusal of a truncated root.img names its size");
    }
    vm.expect("rebooting in", Duration::from_secs(30));
    // Another build's root: the 1.0.0 disk's slot A, exactly its signed payload.
    std::fs::write(&root, slot_payload(other_build)).unwrap();
    vm.expect("network boot: http://10.0.2.2:", BOOT);
    let refused = vm.expect("rebooting in", BOOT);
    if !refused.contains("slot_payload") {
        vm.fail("a root.img from another build is refused against the signed slot_payload");
    }
    let log = vm.console_log();
    if log.contains("switching to") || log.contains("loop0") {
        vm.fail("nothing of a root.img that did not verify may be attached or mounted");
    }
    vm.kill();
    let _ = std::fs::remove_dir_all(&tampered);
}

/// The slot payload of the build in `out`: KEEL-A's signed bytes in its `disk.raw`.
fn slot_payload(out: &Path) -> Vec<u8> {
    let manifest = std::fs::read(out.join(keel_contract::output::MANIFEST)).unwrap();
    let manifest = keel_contract::manifest::Manifest::from_json(&manifest).unwrap();
    let slot = manifest
        .disk
        .partitions
        .iter()
        .find(|p| p.label == keel_contract::layout::PartitionRole::SlotA.label())
        .unwrap();
    let disk = std::fs::File::open(out.join(keel_contract::output::DISK)).unwrap();
    let mut bytes = vec![0u8; manifest.slot_payload.size as usize];
    std::os::unix::fs::FileExt::read_exact_at(&disk, &mut bytes, slot.offset).unwrap();
    bytes
}
