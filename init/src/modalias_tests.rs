use super::*;

/// Real lines: `alias=` entries of modules in Debian's linux-image-6.1.0-57-cloud-amd64
/// (6.1.192-3), written as depmod writes modules.alias (`-` in names becomes `_`).
const CLOUD_ALIAS: &str = "\
alias fs-squashfs squashfs
alias virtio:d00000001v* virtio_net
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias devname:mapper/control dm_mod
alias char-major-10-236 dm_mod
alias xenblk xen_blkfront
alias xen:vbd xen_blkfront
alias block-major-202-* xen_blkfront
alias virtio:d00000002v* virtio_blk
alias virtio:d00000004v* virtio_rng
alias virtio:d00000008v* virtio_scsi
alias scsi:t-0x14* sd_mod
alias scsi:t-0x0e* sd_mod
alias scsi:t-0x07* sd_mod
alias scsi:t-0x00* sd_mod
alias block-major-8-* sd_mod
alias vmbus:4acc9b2f6900f34ab76b6fd0be528cda hv_storvsc
alias vmbus:32264132cb86a2449b5c50d1417354f5 hv_storvsc
alias pci:v00008086d00008C81sv*sd*bc*sc*i* ata_piix
alias pci:v*d*sv*sd*bc01sc01i* ata_generic
alias pci:v00008086d*sv*sd*bc01sc01i* ata_generic
alias input:b*v*p*e*-e*k*r*a*m*l*s*f*w* evdev
alias of:N*T*Cqemu,fw-cfg-mmioC* qemu_fw_cfg
alias acpi*:QEMU0002:* qemu_fw_cfg
alias acpi*:LNXPWRBN:* button
alias acpi*:PNP0C0C:* button
alias cpu:type:x86,ven*fam*mod*:feature:*0085* kvm_intel
alias cpu:type:x86,ven*fam*mod*:feature:*0081* crc32_pclmul
";

#[test]
fn real_devices_find_their_drivers_and_no_others() {
    let aliases = Aliases::parse(CLOUD_ALIAS);
    // Modaliases read from the sysfs of a QEMU q35 guest and a cloud VM.
    let cases: &[(&str, &[&str])] = &[
        (
            "pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc80i00",
            &["virtio_pci"],
        ),
        ("virtio:d00000002v00001AF4", &["virtio_blk"]),
        ("virtio:d00000001v00001AF4", &["virtio_net"]),
        ("virtio:d00000004v00001AF4", &["virtio_rng"]),
        ("virtio:d00000013v00001AF4", &[]),
        ("acpi:LNXPWRBN:", &["button"]),
        ("acpi:QEMU0002:", &["qemu_fw_cfg"]),
        ("acpi:PNP0A08:PNP0A03:", &[]),
        ("scsi:t-0x00", &["sd_mod"]),
        ("scsi:t-0x05", &[]),
        ("input:b0019v0000p0001e0000-e0,1,k74,ramlsfw", &["evdev"]),
        // An IDE-class controller of Intel: two patterns of one module match, named once.
        (
            "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80",
            &["ata_generic"],
        ),
        (
            "pci:v00008086d00008C81sv0000sd0000bc01sc01i00",
            &["ata_piix", "ata_generic"],
        ),
        ("platform:pcspkr", &[]),
        // The Xen and Hyper-V drivers (their "Unknown symbol" errors on QEMU) match only
        // their own buses.
        ("xen:vbd", &["xen_blkfront"]),
        ("vmbus:4acc9b2f6900f34ab76b6fd0be528cda", &["hv_storvsc"]),
    ];
    for (modalias, want) in cases {
        assert_eq!(&aliases.modules_for(modalias), want, "{modalias}");
    }
    // Not device aliases: never matched, whatever sysfs says.
    assert!(aliases.modules_for("fs-squashfs").is_empty());
    assert!(aliases.modules_for("devname:mapper/control").is_empty());
}

#[test]
fn cpu_feature_aliases_match_like_modprobe() {
    let aliases = Aliases::parse(CLOUD_ALIAS);
    let cpu = "cpu:type:x86,ven0002fam0019mod0001:feature:,0000,0001,0081,0085,0089";
    assert_eq!(aliases.modules_for(cpu), ["kvm_intel", "crc32_pclmul"]);
    let cpu = "cpu:type:x86,ven0002fam0019mod0001:feature:,0000,0001,0089";
    assert!(aliases.modules_for(cpu).is_empty());
}

#[test]
fn glob_semantics_are_fnmatchs() {
    let yes = [
        ("abc", "abc"),
        ("a*c", "abbbc"),
        ("a*", "a"),
        ("*", ""),
        ("a?c", "abc"),
        ("a[bx]c", "axc"),
        ("a[a-c]d", "abd"),
        ("a[!x]c", "abc"),
        ("a[^x]c", "abc"),
        ("a[]]c", "a]c"),
        ("a[-]c", "a-c"),
        ("a[b", "a[b"),
        ("*b*b*", "abxbx"),
        (
            "pci:v*d*sv*sd*bc01sc06i01*",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",
        ),
    ];
    for (p, t) in yes {
        assert!(
            glob_match(p.as_bytes(), t.as_bytes()),
            "{p} should match {t}"
        );
    }
    let no = [
        ("abc", "abcd"),
        ("abc", "ab"),
        ("a?c", "ac"),
        ("a[bx]c", "ayc"),
        ("a[!x]c", "axc"),
        ("a[a-c]d", "aed"),
        ("*b*b*", "abx"),
        (
            "pci:v*d*sv*sd*bc01sc06i01*",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc08i02",
        ),
    ];
    for (p, t) in no {
        assert!(
            !glob_match(p.as_bytes(), t.as_bytes()),
            "{p} should not match {t}"
        );
    }
}

#[test]
fn modaliases_are_read_from_a_sysfs_tree_without_following_links() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let dev = root.join("pci0000:00/0000:00:02.0");
    std::fs::create_dir_all(dev.join("virtio0")).unwrap();
    std::fs::write(
        dev.join("modalias"),
        "pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc80i00\n",
    )
    .unwrap();
    std::fs::write(dev.join("virtio0/modalias"), "virtio:d00000002v00001AF4\n").unwrap();
    std::fs::write(dev.join("virtio0/uevent"), "MODALIAS=x\n").unwrap();
    // A link back up (like `subsystem`/`driver` in sysfs) must not be walked.
    std::os::unix::fs::symlink(root, dev.join("virtio0/subsystem")).unwrap();
    std::fs::create_dir_all(root.join("platform/empty")).unwrap();
    std::fs::write(root.join("platform/empty/modalias"), "\n").unwrap();
    let found: Vec<String> = device_modaliases(root).into_iter().collect();
    assert_eq!(
        found,
        [
            "pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc80i00",
            "virtio:d00000002v00001AF4"
        ]
    );
    assert!(device_modaliases(&root.join("absent")).is_empty());
}
