use std::cell::RefCell;
use std::io;

thread_local! {
    /// What the fake kernel has loaded: /sys/module, as `Hardware::is_loaded` sees it.
    static SYS_MODULE: RefCell<BTreeSet<String>> = const { RefCell::new(BTreeSet::new()) };
}

fn in_fake_sys_module(name: &str) -> bool {
    SYS_MODULE.with(|m| m.borrow().contains(name))
}

use super::*;

const DEP: &str = "\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/usb/storage/uas.ko: kernel/drivers/usb/storage/usb-storage.ko
kernel/drivers/usb/storage/usb-storage.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/acpi/button.ko:
kernel/drivers/scsi/hv_storvsc.ko:
kernel/drivers/char/platform_only.ko:
kernel/drivers/cpufreq/acpi-cpufreq.ko:
kernel/drivers/cpufreq/pcc-cpufreq.ko:
";

const ALIAS: &str = "\
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias virtio:d00000001v* virtio_net
alias acpi*:LNXPWRBN:* button
alias vmbus:4acc9b2f6900f34ab76b6fd0be528cda hv_storvsc
alias platform:pcspkr platform_only
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* uas
alias platform:pcspkr pcspkr
alias cpu:type:x86,ven*fam*mod*:feature:*0085* kvm_intel
alias fs-squashfs squashfs
alias acpi*:ACPI0007:* acpi_cpufreq
alias acpi*:PCCA0001:* pcc_cpufreq
";

fn write(root: &Path, dir: &str, alias: &str) {
    let dir = root.join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("modalias"), format!("{alias}\n")).unwrap();
}

fn hardware() -> Hardware {
    let mut hw = Hardware::new(
        ModuleDeps::parse(Path::new("/m"), DEP),
        Aliases::parse(ALIAS),
    );
    hw.is_loaded = |_| false;
    hw
}

#[test]
fn loads_only_what_the_devices_ask_for_in_rounds_with_dependencies_first() {
    let sys = tempfile::tempdir().unwrap();
    let root = sys.path();
    write(
        root,
        "pci0000:00/0000:00:02.0",
        "pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc80i00",
    );
    write(root, "LNXSYSTM:00/LNXPWRBN:00", "acpi:LNXPWRBN:");
    // A USB stick: uas (first by name) brings usb_storage as its dependency; both match.
    write(
        root,
        "usb1/1-1/1-1:1.0",
        "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00",
    );
    write(
        root,
        "system/cpu/cpu0",
        "cpu:type:x86,ven0000fam0006mod003F:feature:,0085",
    );
    let calls = RefCell::new(Vec::new());
    let mut load = |path: &Path| {
        calls.borrow_mut().push(path.display().to_string());
        let name = crate::kmod::name_of(&path.display().to_string());
        SYS_MODULE.with(|m| m.borrow_mut().insert(name));
        // The bus driver binding makes its children appear, as in sysfs.
        if path.ends_with("virtio_pci.ko") {
            write(
                root,
                "pci0000:00/0000:00:02.0/virtio0",
                "virtio:d00000002v00001AF4",
            );
        }
        Ok(())
    };
    let mut hw = hardware();
    hw.is_loaded = in_fake_sys_module;
    let mut loaded = BTreeSet::new();
    let logs = RefCell::new(Vec::new());
    let n = hw.settle(root, &mut loaded, &mut load, &|l| {
        logs.borrow_mut().push(l.to_owned())
    });
    assert_eq!(
        *calls.borrow(),
        [
            "/m/kernel/drivers/acpi/button.ko",
            "/m/kernel/drivers/usb/storage/usb-storage.ko",
            "/m/kernel/drivers/usb/storage/uas.ko",
            "/m/kernel/drivers/virtio/virtio.ko",
            "/m/kernel/drivers/virtio/virtio_pci.ko",
            "/m/kernel/drivers/block/virtio_blk.ko",
        ],
        "no Hyper-V driver, no CPU-feature module; virtio and usb-storage once"
    );
    assert_eq!(n, 6);
    assert_eq!(
        hw.summary(),
        "button, uas, usb_storage, virtio_blk, virtio_pci"
    );
    assert!(logs.borrow().is_empty(), "{:?}", logs.borrow());
    // Nothing new: nothing loaded again.
    assert_eq!(hw.settle(root, &mut loaded, &mut load, &|_| {}), 0);
    assert_eq!(calls.borrow().len(), 6);

    // Stage 2 after stage 1: what the kernel has (here virtio, virtio_pci) is not loaded
    // again nor named; the rest is.
    let mut stage2 = hardware();
    stage2.is_loaded = |name| ["virtio", "virtio_pci", "uas", "usb_storage"].contains(&name);
    calls.borrow_mut().clear();
    stage2.settle(root, &mut BTreeSet::new(), &mut load, &|_| {});
    assert_eq!(
        *calls.borrow(),
        [
            "/m/kernel/drivers/acpi/button.ko",
            "/m/kernel/drivers/block/virtio_blk.ko"
        ]
    );
    assert_eq!(stage2.summary(), "button, virtio_blk");
}

#[test]
fn a_missing_driver_is_a_clear_line_once_and_not_an_error() {
    let sys = tempfile::tempdir().unwrap();
    let root = sys.path();
    // virtio_net has an alias but no module in this image's modules.dep.
    write(root, "virtio1", "virtio:d00000001v00001AF4");
    write(root, "virtio2", "virtio:d00000001v00001AF4 ");
    // The module is listed but its file is gone.
    write(root, "vmbus/x", "vmbus:4acc9b2f6900f34ab76b6fd0be528cda");
    // ENODEV: the driver is not for this device: quiet. (pcspkr, blacklisted by Debian,
    // is not even tried: it is not in modules.dep, which would be a line.)
    write(root, "platform/pcspkr", "platform:pcspkr");
    let mut load = |path: &Path| {
        let errno = if path.ends_with("hv_storvsc.ko") {
            libc::ENOENT
        } else {
            libc::ENODEV
        };
        Err(sys::SysError {
            what: format!("open {}", path.display()),
            source: io::Error::from_raw_os_error(errno),
        })
    };
    let logs = RefCell::new(Vec::new());
    let mut hw = hardware();
    let n = hw.settle(root, &mut BTreeSet::new(), &mut load, &|l| {
        logs.borrow_mut().push(l.to_owned())
    });
    assert_eq!(n, 0);
    let logs = logs.into_inner();
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(
        logs[0].starts_with(
            "driver hv_storvsc for vmbus:4acc9b2f6900f34ab76b6fd0be528cda is not in this image"
        ),
        "{logs:?}"
    );
    assert!(
        logs[1].starts_with("driver virtio_net for virtio:d00000001v00001AF4 is not in this image (not in modules.dep)"),
        "{logs:?}"
    );
    assert_eq!(hw.summary(), "none");
    assert!(hw.declined.contains("platform_only"));
}

#[test]
fn frequency_scaling_drivers_wait_until_after_ready_and_a_decline_is_named() {
    let sys = tempfile::tempdir().unwrap();
    let root = sys.path();
    write(root, "LNXSYSTM:00/LNXPWRBN:00", "acpi:LNXPWRBN:");
    write(root, "LNXSYSTM:00/ACPI0007:00", "acpi:ACPI0007:");
    write(root, "LNXSYSTM:00/PCCA0001:00", "acpi:PCCA0001:");
    let calls = RefCell::new(Vec::new());
    let mut load = |path: &Path| {
        calls.borrow_mut().push(path.display().to_string());
        match path.ends_with("pcc-cpufreq.ko") {
            // Declined: not for this machine, as on a VM.
            true => Err(sys::SysError {
                what: format!("load module {}", path.display()),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            }),
            false => Ok(()),
        }
    };
    let mut hw = hardware();
    let n = hw.settle(root, &mut BTreeSet::new(), &mut load, &|_| {});
    assert_eq!(n, 1);
    assert_eq!(*calls.borrow(), ["/m/kernel/drivers/acpi/button.ko"]);
    let late = hw.take_after_ready();
    let names: Vec<&str> = late.0.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(names, ["acpi_cpufreq", "pcc_cpufreq"]);
    // A second scan does not set them aside again, nor load them.
    assert_eq!(hw.settle(root, &mut BTreeSet::new(), &mut load, &|_| {}), 0);
    assert!(hw.take_after_ready().0.is_empty());
    assert_eq!(calls.borrow().len(), 1);

    let logs = RefCell::new(Vec::new());
    let n = load_after_ready(&late, &mut BTreeSet::new(), |_| false, &mut load, &|l| {
        logs.borrow_mut().push(l.to_owned())
    });
    assert_eq!(n, 1);
    assert_eq!(
        *logs.borrow(),
        ["drivers after ready: loaded acpi_cpufreq; not for this machine pcc_cpufreq"]
    );
    // Already in the kernel: not loaded again.
    calls.borrow_mut().clear();
    load_after_ready(&late, &mut BTreeSet::new(), |_| true, &mut load, &|_| {});
    assert!(calls.borrow().is_empty());
}
