//! The installer's choices on made-up disks, its sysfs reading on a fake sysfs tree, and a
//! whole install onto a file, checked with sgdisk and fsck.vfat.

use std::path::{Path, PathBuf};

use keel_contract::gpt::Gpt;
use keel_contract::layout::{self, PartitionRole, Slot};
use keel_contract::manifest;
use keel_contract::profile::{DiskIdentity, Install, LoadedProfile};

use super::disks::{self, DiskInfo, Names};
use super::plan::{self, Probe, Refusal};
use super::{source, write};
use crate::block::{Disk, Roots};
use crate::upgrade::tests::{digest, manifest};

fn install(selector: &str, wipe: bool) -> Install {
    let text = format!("[node.install]\ndisk = {selector}\nwipe = {wipe}\n");
    LoadedProfile::from_text(Path::new("p.toml"), &text)
        .unwrap()
        .profile
        .node
        .install
        .unwrap()
}

/// An NVMe disk of `gib` GiB as the inventory reports one (also the var disk's tests').
pub(crate) fn disk(name: &str, serial: &str, gib: u64) -> DiskInfo {
    DiskInfo {
        disk: Disk {
            name: name.into(),
            path: PathBuf::from(format!("/dev/{name}")),
            major: 259,
            minor: 0,
        },
        identity: DiskIdentity {
            serial: Some(serial.into()),
            wwn: None,
            model: Some("QEMU NVMe Ctrl".into()),
            by_id: vec![format!("nvme-QEMU_NVMe_Ctrl_{serial}")],
            size: gib << 30,
        },
        removable: false,
        usb: false,
        partitions: vec![],
        in_use: None,
    }
}

fn blank(_: &DiskInfo) -> Probe {
    Probe {
        blank: true,
        logical_sector: 512,
    }
}

fn choose<'a>(i: &Install, disks: &'a [DiskInfo]) -> Result<&'a DiskInfo, Refusal> {
    plan::choose(i, disks, Some("sda"), &mut blank)
}

#[test]
fn the_selected_disk_is_chosen_and_every_refusal_names_its_reason() {
    let mut stick = disk("sda", "STICK", 4);
    stick.removable = true;
    let disks = vec![stick, disk("nvme0n1", "N1", 20), disk("nvme1n1", "N2", 20)];
    let chosen = choose(&install("{ serial = \"N2\" }", false), &disks).unwrap();
    assert_eq!(chosen.disk.name, "nvme1n1");

    let none = choose(&install("{ serial = \"N9\" }", false), &disks).unwrap_err();
    assert!(matches!(none, Refusal::NoMatch { .. }), "{none}");
    let text = none.to_string();
    assert!(
        text.contains("matches no disk")
            && text.contains("nvme-QEMU_NVMe_Ctrl_N1 (nvme0n1, 20.0 GiB)"),
        "{text}"
    );

    let several = choose(&install("{ min_size = \"10GiB\" }", false), &disks).unwrap_err();
    assert!(several.to_string().contains("matches 2 disks"), "{several}");

    let boot = choose(&install("{ serial = \"STICK\" }", false), &disks).unwrap_err();
    assert!(
        boot.to_string().contains("the disk this node booted from"),
        "{boot}"
    );
    // The boot disk among several matches is still the boot disk: the more dangerous mistake.
    let boot = choose(&install("{ min_size = \"1GiB\" }", true), &disks).unwrap_err();
    assert!(matches!(boot, Refusal::BootDisk { .. }), "{boot}");
}

#[test]
fn disks_in_use_holding_partitions_or_data_are_refused_unless_wiped() {
    let mut used = disk("nvme0n1", "N1", 20);
    used.partitions = vec!["nvme0n1p1".into(), "nvme0n1p2".into()];
    let disks = vec![used.clone()];
    let keep = install("{ serial = \"N1\" }", false);
    let wipe = install("{ serial = \"N1\" }", true);
    let refusal = choose(&keep, &disks).unwrap_err();
    assert!(
        refusal
            .to_string()
            .contains("holds partitions (nvme0n1p1, nvme0n1p2); set wipe = true"),
        "{refusal}"
    );
    assert_eq!(choose(&wipe, &disks).unwrap().disk.name, "nvme0n1");

    used.in_use = Some("nvme0n1p2 is mounted at /mnt".into());
    let mounted = choose(&wipe, std::slice::from_ref(&used)).unwrap_err();
    assert!(
        mounted
            .to_string()
            .contains("is in use: nvme0n1p2 is mounted at /mnt"),
        "{mounted}"
    );

    let data = vec![disk("nvme0n1", "N1", 20)];
    let mut not_blank = |_: &DiskInfo| Probe {
        blank: false,
        logical_sector: 512,
    };
    let r = plan::choose(&keep, &data, Some("sda"), &mut not_blank).unwrap_err();
    assert!(matches!(r, Refusal::NotBlank { .. }), "{r}");
    assert!(plan::choose(&wipe, &data, Some("sda"), &mut not_blank).is_ok());
    let mut four_k = |_: &DiskInfo| Probe {
        blank: true,
        logical_sector: 4096,
    };
    let r = plan::choose(&wipe, &data, Some("sda"), &mut four_k).unwrap_err();
    assert!(r.to_string().contains("4096-byte logical sectors"), "{r}");
}

/// An image's layout as its manifest records it: ESP, slot A, slot B, STATE.
fn image_disk() -> manifest::Disk {
    let mut offset = 1 << 20;
    let mut partitions = Vec::new();
    for (i, role) in PartitionRole::ALL.into_iter().take(4).enumerate() {
        // FAT32 volumes need at least 65525 clusters.
        let size = match role {
            PartitionRole::Esp | PartitionRole::State => 48 << 20,
            _ => 4 << 20,
        };
        partitions.push(manifest::Partition {
            number: role.number(),
            label: role.label().into(),
            type_guid: role.type_guid().into(),
            guid: uuid::Uuid::from_u128(10 + i as u128).to_string(),
            offset,
            size,
            content: None,
        });
        offset += size;
    }
    manifest::Disk {
        size: offset + (1 << 20),
        guid: uuid::Uuid::from_u128(1).to_string(),
        partitions,
    }
}

fn table_for(disk: &manifest::Disk, size: u64) -> Gpt {
    let mut n = 100u128;
    plan::target_table(disk, size, &mut || {
        n += 1;
        uuid::Uuid::from_u128(n)
    })
    .unwrap()
}

#[test]
fn the_target_table_is_the_manifests_layout_under_fresh_guids() {
    let image = image_disk();
    let size = 1u64 << 30;
    let t = table_for(&image, size);
    assert_eq!(t.total_sectors, size / 512);
    assert_eq!(t.partitions.len(), 4);
    for (new, old) in t.partitions.iter().zip(&image.partitions) {
        assert_eq!(
            (new.offset(), new.size(), new.name.as_str()),
            (old.offset, old.size, old.label.as_str())
        );
        assert_eq!(
            new.type_guid.to_string().to_uppercase(),
            old.type_guid.to_uppercase()
        );
        assert_ne!(new.guid.to_string(), old.guid);
    }
    assert!(
        plan::holds_keel(&t),
        "a table of the image's partitions is Keel's"
    );
    let mut fresh = || uuid::Uuid::from_u128(7);
    let small = plan::target_table(&image, 20 << 20, &mut fresh).unwrap_err();
    assert!(small.to_string().contains("needs at least"), "{small}");
    let mut odd = image.clone();
    odd.partitions[1].size += 1;
    let err = plan::target_table(&odd, size, &mut fresh).unwrap_err();
    assert!(err.to_string().contains("KEEL-A is not whole"), "{err}");
    let mut partial = image;
    partial
        .partitions
        .retain(|p| p.label != PartitionRole::State.label());
    let err = plan::target_table(&partial, size, &mut fresh).unwrap_err();
    assert!(err.to_string().contains("no STATE"), "{err}");
    let mut other = Gpt::new(uuid::Uuid::from_u128(2), size / 512).unwrap();
    other.partitions = t.partitions[..3].to_vec();
    assert!(
        !plan::holds_keel(&other),
        "three of Keel's four partitions are not Keel's table"
    );
}

/// The running image as the installer reads it, from an ESP directory laid out as a node's.
fn image_from(esp: &Path, slot: Slot, m: &manifest::Manifest, payload: &Path) -> source::Image {
    let read = |path: &str| {
        let on_volume = layout::on_volume(esp, path);
        source::BootFile {
            origin: on_volume.display().to_string(),
            bytes: std::fs::read(&on_volume).unwrap_or_default(),
        }
    };
    source::Image {
        manifest: m.clone(),
        manifest_bytes: b"{manifest}".to_vec(),
        signature: b"sig".to_vec(),
        kernel: read(&slot.kernel_path()),
        initramfs: read(&slot.initramfs_path()),
        bootloader: read(layout::esp::BOOTLOADER),
        payload: payload.to_path_buf(),
    }
}

#[test]
fn by_id_names_follow_udev() {
    let names = |kernel, usb, vendor, model, serial, wwn| {
        disks::by_id_names(&Names {
            kernel,
            usb,
            vendor,
            model,
            serial,
            wwn,
            nsid: Some("1"),
            lun: Some("0:0"),
        })
    };
    assert_eq!(
        names(
            "nvme0n1",
            false,
            None,
            Some("QEMU NVMe Ctrl"),
            Some("KEEL1"),
            Some("eui.0011")
        ),
        [
            "nvme-QEMU_NVMe_Ctrl_KEEL1",
            "nvme-QEMU_NVMe_Ctrl_KEEL1_1",
            "nvme-eui.0011"
        ]
    );
    assert_eq!(
        names("vda", false, None, None, Some("disk-1"), None),
        ["virtio-disk-1"]
    );
    assert_eq!(
        names(
            "sda",
            false,
            Some("ATA     "),
            Some("QEMU HARDDISK"),
            Some("QM00001"),
            Some("naa.5000C500A1B2C3D4")
        ),
        ["ata-QEMU_HARDDISK_QM00001", "wwn-0x5000c500a1b2c3d4"]
    );
    assert_eq!(
        names(
            "sdb",
            true,
            Some("QEMU"),
            Some("QEMU HARDDISK"),
            Some("1-0000:00:02.0-1"),
            None
        ),
        ["usb-QEMU_QEMU_HARDDISK_1-0000:00:02.0-1-0:0"]
    );
    assert_eq!(disks::udev_clean("  Samsung SSD/980  "), "Samsung_SSD_980");
}

/// A sysfs tree as the kernel lays it out for an NVMe disk with a mounted partition and a
/// removable USB stick.
#[test]
fn the_inventory_reads_identity_removability_and_use_from_sysfs() {
    let root = tempfile::tempdir().unwrap();
    let sys = root.path().join("sys");
    let devices = sys.join("devices/pci0000:00");
    let mk = |dir: &Path, files: &[(&str, &str)]| {
        std::fs::create_dir_all(dir).unwrap();
        for (f, text) in files {
            std::fs::write(dir.join(f), text).unwrap();
        }
    };
    let nvme = devices.join("0000:00:04.0/nvme/nvme0/nvme0n1");
    mk(
        &nvme,
        &[
            (
                "uevent",
                "MAJOR=259\nMINOR=0\nDEVNAME=nvme0n1\nDEVTYPE=disk\n",
            ),
            ("size", "41943040\n"),
            ("removable", "0\n"),
            ("nsid", "1\n"),
        ],
    );
    mk(
        &nvme.join("nvme0n1p1"),
        &[(
            "uevent",
            "MAJOR=259\nMINOR=1\nDEVNAME=nvme0n1p1\nDEVTYPE=partition\nPARTN=1\n",
        )],
    );
    mk(&nvme.join("holders"), &[]);
    mk(
        &devices.join("0000:00:04.0/nvme/nvme0"),
        &[("model", "QEMU NVMe Ctrl  \n"), ("serial", "KEEL1 \n")],
    );
    std::os::unix::fs::symlink("../../nvme0", nvme.join("device")).unwrap();
    let usb = devices.join("0000:00:02.0/usb1/1-1");
    mk(&usb, &[("idVendor", "46f4\n"), ("serial", "STICK-7\n")]);
    let scsi = usb.join("1-1:1.0/host0/target0:0:0/0:0:0:0");
    mk(
        &scsi,
        &[("vendor", "QEMU    \n"), ("model", "QEMU HARDDISK   \n")],
    );
    let sda = scsi.join("block/sda");
    mk(
        &sda,
        &[
            ("uevent", "MAJOR=8\nMINOR=0\nDEVNAME=sda\nDEVTYPE=disk\n"),
            ("size", "8388608\n"),
            ("removable", "1\n"),
        ],
    );
    std::os::unix::fs::symlink("../../../0:0:0:0", sda.join("device")).unwrap();
    let class = sys.join("class/block");
    std::fs::create_dir_all(&class).unwrap();
    for dir in [&nvme, &nvme.join("nvme0n1p1"), &sda] {
        std::os::unix::fs::symlink(dir, class.join(dir.file_name().unwrap())).unwrap();
    }
    let roots = Roots {
        sys,
        dev: root.path().join("dev"),
    };
    let mountinfo = "36 25 259:1 / /mnt rw,relatime - ext4 /dev/nvme0n1p1 rw\n";
    let found = disks::inventory(&roots, mountinfo).unwrap();
    let by_name = |n: &str| found.iter().find(|d| d.disk.name == n).unwrap();
    let n = by_name("nvme0n1");
    assert_eq!(n.identity.serial.as_deref(), Some("KEEL1"));
    assert_eq!(n.identity.size, 20 << 30);
    assert_eq!(n.identity.by_id[0], "nvme-QEMU_NVMe_Ctrl_KEEL1");
    assert_eq!(n.partitions, ["nvme0n1p1"]);
    assert_eq!(n.in_use.as_deref(), Some("nvme0n1p1 is mounted at /mnt"));
    assert!(!n.removable && !n.usb);
    let s = by_name("sda");
    assert!(s.removable && s.usb && s.in_use.is_none());
    assert_eq!(s.identity.serial.as_deref(), Some("STICK-7"));
    assert_eq!(s.identity.by_id, ["usb-QEMU_QEMU_HARDDISK_STICK-7-0:0"]);
}

/// A whole install onto a file: the payload matches, the tables pass sgdisk's check, both
/// FAT volumes pass fsck.vfat and hold what they should.
#[test]
fn an_install_onto_a_file_is_a_disk_that_independent_tools_accept() {
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
    let (kernel, initramfs, loader) = (
        b"kernel".to_vec(),
        b"initramfs".to_vec(),
        b"loader".to_vec(),
    );
    let mut m = manifest("1.2.0", "keel", &kernel, &initramfs, &payload);
    m.bootloader = digest(&loader);
    let esp = dir.path().join("esp");
    let slot_dir = layout::on_volume(&esp, &Slot::B.esp_dir());
    std::fs::create_dir_all(&slot_dir).unwrap();
    std::fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    std::fs::write(layout::on_volume(&esp, layout::esp::BOOTLOADER), &loader).unwrap();
    std::fs::write(layout::on_volume(&esp, &Slot::B.kernel_path()), &kernel).unwrap();
    std::fs::write(
        layout::on_volume(&esp, &Slot::B.initramfs_path()),
        &initramfs,
    )
    .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("history")).unwrap();
    // No marker: a diskless node's state directory never was a STATE volume; the installer
    // writes the builder's marker.
    std::fs::write(state.join("secrets.toml"), "token = 1\n").unwrap();
    std::fs::write(state.join("history/boots"), "3\n").unwrap();
    std::fs::write(state.join("installed.toml"), "version = \"old\"\n").unwrap();
    let slot_dev = dir.path().join("slot");
    std::fs::write(&slot_dev, &payload).unwrap();
    let target = dir.path().join("disk.img");
    let size = 1u64 << 30;
    std::fs::File::create(&target)
        .unwrap()
        .set_len(size)
        .unwrap();
    m.disk = image_disk();
    let table = table_for(&m.disk, size);
    let image = image_from(&esp, Slot::B, &m, &slot_dev);
    let source = write::Source {
        image: &image,
        state: &state,
    };
    let lines = std::cell::RefCell::new(Vec::new());
    write::install(&target, &table, &source, &|l| {
        lines.borrow_mut().push(l.to_owned())
    })
    .unwrap();
    assert!(
        lines
            .borrow()
            .iter()
            .any(|l| l.contains("matches the signed manifest"))
    );

    let out = std::process::Command::new("sgdisk")
        .arg("-v")
        .arg(&target)
        .output()
        .expect("sgdisk (gdisk) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No problems found"), "{text}");
    let bytes = std::fs::read(&target).unwrap();
    let part = |role: PartitionRole| table.find(role.label()).unwrap().1.clone();
    let a = part(PartitionRole::SlotA);
    assert_eq!(
        &bytes[a.offset() as usize..a.offset() as usize + payload.len()],
        &payload[..]
    );
    for (role, want) in [
        (
            PartitionRole::Esp,
            vec![
                ("/loader/entries/keel-a+3.conf", None),
                ("/keel/a/vmlinuz", Some(&kernel[..])),
                ("/EFI/BOOT/BOOTX64.EFI", Some(&loader[..])),
                ("/keel/a/manifest.json", Some(&b"{manifest}"[..])),
            ],
        ),
        (
            PartitionRole::State,
            vec![
                ("/keel-state", Some(&b"1\nkeel\n"[..])),
                ("/history/boots", Some(&b"3\n"[..])),
            ],
        ),
    ] {
        let p = part(role);
        let volume = &bytes[p.offset() as usize..(p.offset() + p.size()) as usize];
        let image = dir.path().join(role.label());
        std::fs::write(&image, volume).unwrap();
        let fsck = std::process::Command::new("fsck.vfat")
            .args(["-n", "-v"])
            .arg(&image)
            .output()
            .expect("fsck.vfat (dosfstools) is installed");
        assert!(
            fsck.status.success(),
            "{}: {}",
            role.label(),
            String::from_utf8_lossy(&fsck.stdout)
        );
        for (path, content) in want {
            let got = keel_fat::read_fat_file(std::io::Cursor::new(volume.to_vec()), path).unwrap();
            if let Some(c) = content {
                assert_eq!(got, c, "{path}");
            }
        }
    }
    let entry = keel_fat::read_fat_file(
        std::io::Cursor::new(bytes[part(PartitionRole::Esp).offset() as usize..].to_vec()),
        "/loader/entries/keel-a+3.conf",
    )
    .unwrap();
    let entry = String::from_utf8(entry).unwrap();
    assert!(
        entry.contains("options keel.slot=a keel.roothash=0707"),
        "{entry}"
    );
    let state = part(PartitionRole::State);
    let state_volume = std::io::Cursor::new(
        bytes[state.offset() as usize..(state.offset() + state.size()) as usize].to_vec(),
    );
    assert!(
        keel_fat::read_fat_file(state_volume, "/installed.toml").is_err(),
        "the medium's record stays behind"
    );
}

/// A boot file that does not match the signed manifest stops the install before the tables
/// are written: the disk stays without a partition table.
#[test]
fn a_boot_file_that_differs_from_the_manifest_leaves_no_table() {
    let dir = tempfile::tempdir().unwrap();
    let payload = vec![5u8; 1 << 20];
    let m = manifest("1.2.0", "keel", b"kernel", b"initramfs", &payload);
    let esp = dir.path().join("esp");
    std::fs::create_dir_all(layout::on_volume(&esp, &Slot::A.esp_dir())).unwrap();
    std::fs::write(
        layout::on_volume(&esp, &Slot::A.kernel_path()),
        b"kernel, tampered",
    )
    .unwrap();
    let slot_dev = dir.path().join("slot");
    std::fs::write(&slot_dev, &payload).unwrap();
    let target = dir.path().join("disk.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let table = table_for(&image_disk(), 1 << 30);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let image = image_from(&esp, Slot::A, &m, &slot_dev);
    let source = write::Source {
        image: &image,
        state: &state,
    };
    let err = write::install(&target, &table, &source, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("vmlinuz"), "{err}");
    let head = std::fs::read(&target).unwrap();
    assert!(
        head[..1 << 20].iter().all(|&b| b == 0),
        "no partition table was written"
    );
}

/// A medium that installed onto a disk which now holds partitions refuses to install again
/// (the firmware booted the medium instead of the disk); the same medium in another machine,
/// or before the disk was written, installs.
#[test]
fn a_medium_does_not_install_twice_onto_the_same_disk() {
    let state = tempfile::tempdir().unwrap();
    let mut installed = disk("nvme0n1", "N1", 20);
    let other = disk("nvme0n1", "N7", 20);
    assert!(super::already_installed(state.path(), std::slice::from_ref(&installed)).is_none());
    let record = super::Record {
        version: "keel-metal 1.0.0".into(),
        disk: installed.describe(),
        serial: Some("N1".into()),
        by_id: installed.identity.by_id.clone(),
    };
    std::fs::write(
        state.path().join("installed.toml"),
        toml::to_string(&record).unwrap(),
    )
    .unwrap();
    assert!(
        super::already_installed(state.path(), std::slice::from_ref(&installed)).is_none(),
        "the disk holds no partitions: an install that did not finish, or a wiped disk"
    );
    installed.partitions = vec!["nvme0n1p1".into()];
    let refusal = super::already_installed(state.path(), &[installed]).unwrap();
    assert!(
        refusal
            .to_string()
            .contains("already installed keel-metal 1.0.0 onto nvme-QEMU_NVMe_Ctrl_N1"),
        "{refusal}"
    );
    let mut elsewhere = other;
    elsewhere.partitions = vec!["nvme0n1p1".into()];
    assert!(
        super::already_installed(state.path(), &[elsewhere]).is_none(),
        "another machine's disk"
    );
}
