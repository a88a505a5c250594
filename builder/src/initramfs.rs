//! The initramfs: cpio newc (uncompressed: the kernel unpacks it fastest) holding the init,
//! the kernel modules needed to reach and verify the root, the trusted public keys and an
//! optional baked node profile.

use std::collections::BTreeSet;

use crate::cpio::CpioWriter;
use crate::kmod::{KmodError, ModuleIndex};
use crate::tree::{NodeKind, Tree};

/// Modules stage 1 cannot do without: the root is squashfs under dm-verity and the manifest
/// is read from the FAT ESP (Debian's default FAT charsets: cp437 and ascii).
pub const REQUIRED_MODULES: &[&str] = &["squashfs", "dm_verity", "vfat", "nls_cp437", "nls_ascii"];
/// Taken when the kernel has them as modules: disk drivers for QEMU and clouds (virtio, NVMe,
/// SCSI, Xen, Hyper-V: each loaded only on a machine that has the device), and efivarfs.
pub const OPTIONAL_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "nvme",
    "ahci",
    "xen_blkfront",
    "hv_storvsc",
    // Stage 1 reads which disk systemd-boot booted from in efivarfs.
    keel_contract::layout::efi::EFIVARFS_MODULE,
];

/// The root's hash (SHA-256 with SSSE3, AVX or SHA-NI), loaded by name before the verity
/// target is set up when the kernel has it as a module. dm-verity takes the fastest SHA-256
/// the kernel has when the table is loaded and keeps it for as long as the node runs; without
/// this it is `sha256-generic` on every machine (the kernel log says which). Its aliases are
/// CPU features, which the drivers by device leave out (`cpu:` modaliases are not devices),
/// so it goes in the list: on a CPU without those features it declines (ENODEV) and stage 1
/// names it among the modules not for this machine.
pub const VERITY_HASH_MODULES: &[&str] = &["sha256_ssse3"];

/// With `pxe` among the formats, stage 1 may fetch the root over the network
/// (`keel.root=`): the loop device the verified RAM copy is attached to, and the NIC drivers
/// of VMs and common servers that need no firmware file to come up. Taken when the kernel has
/// them as modules; each driver loads only for its device. Others go in
/// `image.initramfs.modules`.
pub const NETWORK_BOOT_MODULES: &[&str] = &[
    "loop",
    "virtio_net",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "r8169",
];

/// Paths inside the initramfs that the init reads (the contract).
pub use keel_contract::layout::initramfs as paths;
use keel_contract::layout::modules;

/// The profile's node section as it is baked into the initramfs (and handed to a node over
/// fw_cfg by `keel run --profile`): TOML with the `[node]` table only, no build-host paths.
pub fn baked_profile(profile: &keel_contract::profile::Profile) -> String {
    #[derive(serde::Serialize)]
    struct Baked<'a> {
        node: &'a keel_contract::profile::Node,
    }
    toml::to_string(&Baked {
        node: &profile.node,
    })
    .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error(transparent)]
    Module(#[from] KmodError),
    #[error("kernel module file {0} vanished from the tree")]
    MissingModuleFile(String),
    #[error("writing the initramfs: {0}")]
    Io(#[from] std::io::Error),
}

pub struct InitramfsSpec<'a> {
    pub init: &'a [u8],
    pub trusted_keys: &'a str,
    pub profile: Option<&'a str>,
    /// Extra modules from the profile (required).
    pub extra_modules: &'a [String],
    /// The image boots over the network too: [`NETWORK_BOOT_MODULES`].
    pub network_boot: bool,
    pub mtime: u32,
}

#[derive(Debug)]
pub struct Initramfs {
    pub bytes: Vec<u8>,
    /// Module names in load order.
    pub modules: Vec<String>,
}

pub fn build(
    tree: &Tree,
    index: &ModuleIndex,
    spec: &InitramfsSpec<'_>,
) -> Result<Initramfs, InitramfsError> {
    let mut wanted: Vec<&str> = REQUIRED_MODULES.to_vec();
    wanted.extend(OPTIONAL_MODULES.iter().filter(|m| index.contains(m)));
    wanted.extend(VERITY_HASH_MODULES.iter().filter(|m| index.contains(m)));
    if spec.network_boot {
        wanted.extend(NETWORK_BOOT_MODULES.iter().filter(|m| index.contains(m)));
    }
    wanted.extend(spec.extra_modules.iter().map(String::as_str));
    let order = index.load_order(&wanted)?;

    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for module in &order {
        let path = format!("{}/{}", index.dir, module.rel_path);
        match tree.get(&path).map(|n| &n.kind) {
            Some(NodeKind::File(content)) => files.push((path, content.bytes().to_vec())),
            _ => return Err(InitramfsError::MissingModuleFile(path)),
        }
    }
    // Stage 1 loads the drivers by the devices it finds (modules.alias) and the rest, which
    // no device asks for, from the list.
    let always: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|name| {
            VERITY_HASH_MODULES.contains(name)
                || index
                    .modules
                    .get(&name.replace('-', "_"))
                    .is_some_and(|m| !m.is_driver())
        })
        .collect();
    let load_list: String = index
        .load_order(&always)?
        .iter()
        .map(|m| format!("{}/{}\n", index.dir, m.rel_path))
        .collect();
    let shipped: BTreeSet<&str> = order.iter().map(|m| m.name.as_str()).collect();
    let alias = index.modules_alias(&|m| shipped.contains(m.name.as_str()));
    let dep: String = {
        let mut lines = String::new();
        for module in &order {
            let deps = index.load_order(&[module.name.as_str()])?;
            lines.push_str(&module.rel_path);
            lines.push(':');
            for d in deps.iter().rev().filter(|d| d.name != module.name) {
                lines.push(' ');
                lines.push_str(&d.rel_path);
            }
            lines.push('\n');
        }
        lines
    };
    files.push((format!("{}/{}", index.dir, modules::DEP), dep.into_bytes()));
    files.push((
        format!("{}/{}", index.dir, modules::ALIAS),
        alias.into_bytes(),
    ));
    files.push((paths::MODULES_LOAD.into(), load_list.into_bytes()));
    files.push((
        paths::TRUSTED_KEYS.into(),
        spec.trusted_keys.as_bytes().to_vec(),
    ));
    if let Some(profile) = spec.profile {
        files.push((paths::PROFILE.into(), profile.as_bytes().to_vec()));
    }

    // Parents before children; the fixed mount points first.
    let mut dirs: BTreeSet<String> = [
        "/dev", "/proc", "/sys", "/run", "/sysroot", "/etc", "/usr", "/usr/lib",
    ]
    .map(String::from)
    .into();
    for (path, _) in &files {
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if parent.is_empty() {
                break;
            }
            dirs.insert(parent.to_owned());
            p = parent;
        }
    }
    let mut w = CpioWriter::new(Vec::new(), spec.mtime);
    for dir in &dirs {
        w.dir(dir, 0o755)?;
    }
    w.symlink("/lib", "usr/lib")?;
    // The kernel opens /dev/console for init's stdin/stdout before anything is mounted.
    w.char_device("/dev/console", 0o600, 5, 1)?;
    w.file(paths::INIT, 0o755, spec.init)?;
    for (path, bytes) in &files {
        w.file(path, 0o644, bytes)?;
    }
    let bytes = w.finish()?;
    Ok(Initramfs {
        bytes,
        modules: order.iter().map(|m| m.name.clone()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmod::tests::tree_with_modules;

    /// The contents of `name` in a cpio newc archive.
    fn cpio_file(archive: &[u8], name: &str) -> String {
        let hex = |at: usize| {
            usize::from_str_radix(std::str::from_utf8(&archive[at..at + 8]).unwrap(), 16).unwrap()
        };
        let pad = |n: usize| n.div_ceil(4) * 4;
        let mut at = 0;
        while at + 110 <= archive.len() {
            let (size, name_len) = (hex(at + 54), hex(at + 94));
            let found = &archive[at + 110..at + 110 + name_len - 1];
            let data = pad(at + 110 + name_len);
            if found == name.as_bytes() {
                return String::from_utf8_lossy(&archive[data..data + size]).into_owned();
            }
            at = pad(data + size);
        }
        panic!("{name} not in the archive");
    }

    #[test]
    fn contains_init_keys_and_modules_in_load_order() {
        let tree = tree_with_modules(
            "6.1.0-t",
            &[
                ("kernel/drivers/md/dm-verity.ko", "dm-bufio,dm-mod"),
                ("kernel/drivers/md/dm-bufio.ko", "dm-mod"),
                ("kernel/drivers/md/dm-mod.ko", ""),
                ("kernel/fs/squashfs/squashfs.ko", ""),
                ("kernel/fs/fat/vfat.ko", "fat"),
                ("kernel/fs/fat/fat.ko", ""),
                ("kernel/fs/nls/nls_cp437.ko", ""),
                ("kernel/fs/nls/nls_ascii.ko", ""),
                (
                    "kernel/drivers/block/virtio_blk.ko",
                    "virtio\0alias=virtio:d00000002v*",
                ),
                ("kernel/drivers/virtio/virtio.ko", ""),
                ("kernel/fs/squashfs/not_shipped.ko", "\0alias=pci:v1*"),
                (
                    "kernel/drivers/block/loop.ko",
                    "\0alias=devname:loop-control",
                ),
                (
                    "kernel/drivers/net/virtio_net.ko",
                    "virtio\0alias=virtio:d00000001v*",
                ),
                (
                    "kernel/arch/x86/crypto/sha256-ssse3.ko",
                    "\0alias=cpu:type:x86,ven*fam*mod*:feature:*0089*",
                ),
                (
                    "kernel/arch/x86/crypto/aesni-intel.ko",
                    "\0alias=cpu:type:x86,ven*fam*mod*:feature:*0099*",
                ),
            ],
            &[],
        );
        let index = ModuleIndex::from_tree(&tree, "6.1.0-t").unwrap();
        let spec = InitramfsSpec {
            init: b"\x7fELF init",
            trusted_keys: "keys",
            profile: Some("[node]\n"),
            extra_modules: &[],
            network_boot: false,
            mtime: 5,
        };
        let out = build(&tree, &index, &spec).unwrap();
        assert_eq!(
            out.modules,
            [
                "squashfs",
                "dm_mod",
                "dm_bufio",
                "dm_verity",
                "fat",
                "vfat",
                "nls_cp437",
                "nls_ascii",
                "virtio",
                "virtio_blk",
                "sha256_ssse3"
            ]
        );
        let text = String::from_utf8_lossy(&out.bytes);
        for name in [
            "init\0",
            "dev/console\0",
            "etc/keel/trusted.pub\0",
            "etc/keel/profile.toml\0",
            "usr/lib/modules/6.1.0-t/kernel/drivers/md/dm-verity.ko\0",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        // The drivers are loaded by device (modules.alias), the rest from the list.
        let load = cpio_file(&out.bytes, "etc/keel/modules.load");
        assert!(load.starts_with("/usr/lib/modules/6.1.0-t/kernel/fs/squashfs/squashfs.ko\n/usr/lib/modules/6.1.0-t/kernel/drivers/md/dm-mod.ko\n"), "{load}");
        assert!(!load.contains("virtio"), "{load}");
        // The verity hash is loaded by name although its aliases are CPU features; other
        // CPU-feature modules are not shipped.
        assert!(
            load.contains("/kernel/arch/x86/crypto/sha256-ssse3.ko\n"),
            "{load}"
        );
        assert!(!out.modules.iter().any(|m| m == "aesni_intel"));
        assert_eq!(
            cpio_file(&out.bytes, "usr/lib/modules/6.1.0-t/modules.alias"),
            "alias cpu:type:x86,ven*fam*mod*:feature:*0089* sha256_ssse3\n\
             alias virtio:d00000002v* virtio_blk\n"
        );
        assert_eq!(
            build(&tree, &index, &spec).unwrap().bytes,
            out.bytes,
            "reproducible"
        );
        // A network-boot image also carries the loop device (always loaded) and the NIC
        // drivers the kernel has (by device); a disk-only one does not.
        assert!(!out.modules.iter().any(|m| m == "loop" || m == "virtio_net"));
        let net = build(
            &tree,
            &index,
            &InitramfsSpec {
                network_boot: true,
                ..spec
            },
        )
        .unwrap();
        assert!(net.modules.iter().any(|m| m == "loop"), "{:?}", net.modules);
        assert!(
            net.modules.iter().any(|m| m == "virtio_net"),
            "{:?}",
            net.modules
        );
        let load = cpio_file(&net.bytes, "etc/keel/modules.load");
        assert!(load.contains("loop.ko"), "{load}");
        assert!(!load.contains("virtio_net"), "{load}");
        assert!(
            cpio_file(&net.bytes, "usr/lib/modules/6.1.0-t/modules.alias")
                .contains("alias virtio:d00000001v* virtio_net\n")
        );
        let extra = vec!["not_a_module".to_string()];
        let err = build(
            &tree,
            &index,
            &InitramfsSpec {
                extra_modules: &extra,
                ..spec
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("not_a_module"), "{err}");
    }
}
