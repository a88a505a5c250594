//! UEFI boot of the stock image: OVMF -> systemd-boot -> the kernel -> our initramfs -> init.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use keel_vm_tests::{Machine, stock_image, test_dir, vm_disk};

#[test]
fn ovmf_boots_the_image_into_our_init() {
    let (out, _) = stock_image("worker");
    let dir = test_dir("boot_first_line");
    let disk = vm_disk(&out, &dir, 4 << 30);
    let mut vm = Machine::start("boot_first_line", &disk, &dir, |_| {});
    // systemd-boot runs the entry by itself (timeout 0) and the kernel prints to ttyS0.
    vm.expect("Linux version", Duration::from_secs(120));
    let before = vm.expect("keel: init ", Duration::from_secs(120));
    assert!(
        before.contains("Run /init as init process"),
        "the kernel should start our /init"
    );
    vm.expect("booted slot a", Duration::from_secs(30));
    let log = vm.console_log();
    assert!(
        log.contains("keel.slot=a keel.roothash="),
        "the BLS entry's options reach the kernel:\n{log}"
    );
    vm.kill();
}
