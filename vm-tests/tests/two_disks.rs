//! A second Keel disk in the machine (an old system disk, another build on a stick) neither
//! captures nor breaks the boot: stage 1 takes its partitions from the disk systemd-boot
//! booted from (`LoaderDevicePartUUID`), not from the first disk carrying the labels.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use keel_vm_tests::{Machine, build, extra_disk_args, stock_image, test_dir, vm_disk};

const BOOT: Duration = Duration::from_secs(300);

#[test]
fn a_second_keel_disk_of_another_build_neither_captures_nor_breaks_the_boot() {
    let (first, public) = stock_image("worker");
    let dir = test_dir("two_disks");
    // Same profile, same signing key, another version: a validly signed disk whose root hash
    // differs, so the console shows which one booted.
    let secret = public.with_file_name(keel_builder::keys::SECRET_FILE);
    let other = dir.join("other");
    let profile = keel_vm_tests::workspace_root().join("profiles/worker.toml");
    let report = build(&profile, &other, &secret, Some("1.0.1"), 1_700_000_000);
    assert_eq!(report.manifest.version, "1.0.1");

    let disk = vm_disk(&first, &dir.join("vm"), 4 << 30);
    // The other disk is attached after the boot disk, read-only: nothing may write to it.
    let mut vm = Machine::start("two_disks", &disk, &dir.join("vm"), |c| {
        c.extra_args
            .extend(extra_disk_args(&other.join("disk.raw")));
    });
    let before = vm.expect("keel-worker 1.0.0 verified", BOOT);
    if !before.contains("boot disk ") {
        vm.fail("stage 1 must say which disk it booted from and why");
    }
    vm.expect("keel: ready", BOOT);
    let log = vm.console_log();
    if log.contains("1.0.1") {
        vm.fail("the other disk's version appears on the console");
    }
    vm.kill();
}
