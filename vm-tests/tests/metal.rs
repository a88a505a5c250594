//! The bare-metal image (`profiles/metal.toml`: Debian's generic kernel) boots to ready with
//! its disk on each controller of real machines QEMU has: NVMe, SATA (q35's AHCI), a USB
//! stick (xHCI + usb-storage), virtio-scsi and virtio-blk; on the NIC e1000e with DHCP. One
//! image, one boot per controller, in sequence; each VM is stopped as soon as it is ready.
//! Stages 1 and 2 must load the controller's and the NIC's drivers by device and nothing for
//! hardware the VM lacks.
//!
//! The virtio-blk boot also has QEMU's i6300esb watchdog: PID 1 arms it, and when its
//! main loop hangs after the ready line (a test hook given over fw_cfg), the watchdog resets
//! the machine, which boots again with its boot number moved on.
//!
//! The same image also installs itself from a USB stick onto an NVMe disk (`metal/install.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "metal/install.rs"]
mod install;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use keel_builder::qemu::DiskBus;
use keel_contract::layout::test_hooks;
use keel_vm_tests::{Machine, build, derived_profile, test_dir, test_key, vm_disk, write_file};

const READY: Duration = Duration::from_secs(400);

/// The drivers stage 1 (for the disk) and stage 2 (for the NIC) must name.
fn drivers(bus: DiskBus) -> &'static [&'static str] {
    match bus {
        DiskBus::Nvme => &["nvme"],
        DiskBus::Sata => &["ahci"],
        DiskBus::Usb => &["xhci_pci", "usb_storage"],
        DiskBus::VirtioScsi => &["virtio_scsi", "sd_mod"],
        DiskBus::VirtioBlk => &["virtio_blk"],
    }
}

/// The metal image, built once for the tests of this file.
struct Metal {
    dir: PathBuf,
    out: PathBuf,
}

fn metal() -> &'static Metal {
    static METAL: OnceLock<Metal> = OnceLock::new();
    METAL.get_or_init(|| {
        let dir = test_dir("metal");
        let (secret, _public) = test_key(&dir.join("keys"));
        let out = dir.join("out");
        // zstd level 1: the generic kernel's root takes ~9 minutes at the stock level 15
        // here. A short watchdog timeout keeps the hang below short.
        let profile = derived_profile(
            &dir,
            "metal",
            "[image.squashfs]\nlevel = 1\n[node.watchdog]\ntimeout_secs = 10\n",
        );
        let report = build(&profile, &out, &secret, None, 1_700_000_000);
        assert!(
            report.manifest.kernel.release.ends_with("-amd64")
                && !report.manifest.kernel.release.contains("cloud"),
            "the generic kernel: {}",
            report.manifest.kernel.release
        );
        Metal { dir, out }
    })
}

#[test]
fn the_metal_image_boots_from_nvme_sata_usb_virtio_scsi_and_virtio_blk() {
    let Metal { dir, out } = metal();
    let disk = vm_disk(out, &dir.join("disk"), 4 << 30);
    let mut timings = Vec::new();
    let mut boot = 0;
    for bus in DiskBus::ALL {
        let started = Instant::now();
        boot += 1;
        let watchdog = bus == DiskBus::VirtioBlk;
        let hang = write_file(dir, "hang-after-ready", &boot.to_string());
        let name = format!("metal-{}", bus.name());
        // virtio-blk keeps the default virtio NIC (virtio_net from the root, by device).
        let nic = if bus == DiskBus::VirtioBlk {
            "virtio-net-pci"
        } else {
            "e1000e"
        };
        let mut vm = Machine::start(&name, &disk, &dir.join(&name), |c| {
            c.disk_bus = bus;
            c.nic_model = nic.to_owned();
            if watchdog {
                c.extra_args
                    .extend(["-device".to_owned(), "i6300esb".to_owned()]);
                c.fw_cfg
                    .push((test_hooks::FW_CFG_HANG_AFTER_READY.to_owned(), hang.clone()));
            }
        });
        vm.expect("keel: ready: keel-metal", READY);
        vm.expect(&format!(", boot {boot};"), Duration::from_secs(5));
        if watchdog {
            hung_pid1_is_reset_by_the_watchdog(&mut vm, boot);
            boot += 1;
        }
        let log = vm.console_log();
        vm.kill();
        let stage1 = log
            .lines()
            .find(|l| l.contains("modules loaded:") && l.contains("for the devices found"))
            .unwrap_or_else(|| panic!("{name}: no stage 1 module line"));
        for driver in drivers(bus) {
            assert!(
                stage1.contains(driver),
                "{name}: stage 1 loaded no {driver}: {stage1}"
            );
        }
        let nic_driver = if nic == "e1000e" {
            "e1000e"
        } else {
            "virtio_net"
        };
        assert!(
            log.lines()
                .any(|l| l.contains("loaded for the devices found") && l.contains(nic_driver)),
            "{name}: stage 2 did not load {nic_driver}"
        );
        assert!(
            !log.contains("Unknown symbol"),
            "{name}: a module for absent hardware"
        );
        assert!(
            log.contains("network: DHCP lease 10.0.2.15"),
            "{name}: no DHCP lease on the console"
        );
        timings.push(format!(
            "{} {:.0}s",
            bus.name(),
            started.elapsed().as_secs_f64()
        ));
    }
    eprintln!("metal boots: {}", timings.join(", "));
}

/// PID 1 armed the i6300esb, its main loop hangs after the ready line (the test hook), the
/// pets stop, and the hardware resets the machine: the next boot comes up with the boot
/// number moved on, and does not hang (the hook names one boot).
fn hung_pid1_is_reset_by_the_watchdog(vm: &mut Machine, boot: usize) {
    let log = vm.console_log();
    let armed = log
        .lines()
        .find(|l| l.contains("watchdog: armed"))
        .unwrap_or_else(|| panic!("no watchdog armed:\n{log}"));
    assert!(armed.contains("10 s timeout"), "{armed}");
    vm.expect(
        "test hook: PID 1's main loop hangs",
        Duration::from_secs(30),
    );
    vm.expect("no longer petting", Duration::from_secs(60));
    vm.expect(&format!(", boot {};", boot + 1), READY);
}
