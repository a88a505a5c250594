//! UEFI boot of the stock image: OVMF -> systemd-boot -> the kernel -> our initramfs -> init,
//! with a second Keel disk in the machine (an old system disk, another build on a stick) that
//! neither captures nor breaks the boot: stage 1 takes its partitions from the disk
//! systemd-boot booted from (`LoaderDevicePartUUID`), not from the first disk carrying the
//! labels. One boot serves both (the suite shares boots where it can).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use keel_vm_tests::{Machine, build, extra_disk_args, stock_image, test_dir, vm_disk};

const BOOT: Duration = Duration::from_secs(300);

#[test]
fn ovmf_boots_the_image_into_our_init_from_its_own_disk_beside_another_keel_disk() {
    let (first, public) = stock_image("worker");
    let dir = test_dir("boot");
    // Same profile, same signing key, another version: a validly signed disk whose root hash
    // differs, so the console shows which one booted.
    let secret = public.with_file_name(keel_builder::keys::SECRET_FILE);
    let other = dir.join("other");
    let profile = keel_vm_tests::workspace_root().join("profiles/worker.toml");
    let report = build(&profile, &other, &secret, Some("1.0.1"), 1_700_000_000);
    assert_eq!(report.manifest.version, "1.0.1");

    let disk = vm_disk(&first, &dir.join("vm"), 4 << 30);
    // The other disk is attached after the boot disk, read-only: nothing may write to it.
    let mut vm = Machine::start("boot", &disk, &dir.join("vm"), |c| {
        c.extra_args
            .extend(extra_disk_args(&other.join("disk.raw")));
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
    vm.kill();
}
