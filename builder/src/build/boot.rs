//! The boot chain's files from the userland: the kernel and its modules, systemd-boot, the
//! root made bootable (the init, os-release, mount points), and the initramfs.

use keel_contract::layout;
use keel_contract::profile::Image;

use super::{BuildError, prepare::Prepared};
use crate::initramfs::Initramfs;
use crate::kernel::Kernel;
use crate::kmod::ModuleIndex;
use crate::progress::{Reporter, human_bytes};
use crate::tree::{NodeKind, Tree};

/// What boots: the kernel, its module index and the boot loader.
pub(super) struct BootFiles {
    pub kernel: Kernel,
    pub index: ModuleIndex,
    pub bootloader: Vec<u8>,
}

/// Finds the kernel (and its modules) and systemd-boot in the userland.
pub(super) fn locate(
    tree: &mut Tree,
    image: &Image,
    rep: &Reporter,
) -> Result<BootFiles, BuildError> {
    let phase = rep.phase("kernel", None);
    let kernel = crate::kernel::locate(tree, &image.kernel)?;
    let index = ModuleIndex::from_tree(tree, &kernel.release)?;
    let bootloader = match tree
        .get(layout::esp::SYSTEMD_BOOT_IN_USERLAND)
        .map(|n| &n.kind)
    {
        Some(NodeKind::File(c)) => c.bytes().to_vec(),
        _ => {
            return Err(BuildError::Input(format!(
                "systemd-boot not found at {} in the userland: add the systemd-boot-efi package",
                layout::esp::SYSTEMD_BOOT_IN_USERLAND
            )));
        }
    };
    phase.finish(&format!(
        "{} ({} modules)",
        kernel.release,
        index.modules.len()
    ));
    Ok(BootFiles {
        kernel,
        index,
        bootloader,
    })
}

/// Makes the tree a bootable root: the init for stage 2, os-release, mount points, module
/// dependency data and the profile's host files.
pub(super) fn finish_root(
    tree: &mut Tree,
    prepared: &Prepared,
    boot: &BootFiles,
    version: &str,
    mtime: u32,
) -> Result<(), BuildError> {
    let image = &prepared.loaded.profile.image;
    crate::rootfs::finish(
        tree,
        &crate::rootfs::RootfsSpec {
            image_name: image.name.as_str(),
            version,
            init: &prepared.init,
            kernel_release: &boot.kernel.release,
            modules_dep: boot.index.modules_dep(),
            modules_alias: boot.index.modules_alias(&|_| true),
            files: &image.files,
            source_date_epoch: mtime,
        },
    )?;
    Ok(())
}

/// The initramfs: the init, stage 1's modules, the trusted keys and the baked node profile.
pub(super) fn initramfs(
    tree: &Tree,
    prepared: &Prepared,
    boot: &BootFiles,
    mtime: u32,
    rep: &Reporter,
) -> Result<Initramfs, BuildError> {
    let phase = rep.phase("initramfs", None);
    let baked = crate::initramfs::baked_profile(&prepared.loaded.profile);
    let trusted_text = prepared.trusted.to_file_string();
    let initramfs = crate::initramfs::build(
        tree,
        &boot.index,
        &crate::initramfs::InitramfsSpec {
            init: &prepared.init,
            trusted_keys: &trusted_text,
            profile: Some(&baked),
            extra_modules: &prepared.loaded.profile.image.initramfs.modules,
            network_boot: prepared
                .loaded
                .profile
                .image
                .formats
                .contains(&keel_contract::profile::OutputFormat::Pxe),
            mtime,
        },
    )?;
    phase.finish(&format!(
        "{} ({} modules)",
        human_bytes(initramfs.bytes.len() as u64),
        initramfs.modules.len()
    ));
    Ok(initramfs)
}
