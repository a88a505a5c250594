//! What an ESP holds, defined once for the builder (`disk.raw`) and the node's installer (an
//! internal disk written from a running node): systemd-boot and its configuration, one slot's
//! boot entry with a fresh counter, and that slot's kernel, initramfs and signed manifest.

use keel_contract::layout::{self, BootEntry, EntryName};
use sha2::{Digest, Sha256};

use crate::FatEntry;

/// One slot's files on the ESP.
pub struct SlotFiles {
    pub kernel: Vec<u8>,
    pub initramfs: Vec<u8>,
    pub manifest: Vec<u8>,
    pub signature: Vec<u8>,
}

/// The ESP's entries for a disk whose one bootable slot is `entry.slot`.
pub fn entries(bootloader: Vec<u8>, entry: &BootEntry, files: SlotFiles) -> Vec<FatEntry> {
    let slot = entry.slot;
    vec![
        FatEntry::Dir("/EFI".into()),
        FatEntry::Dir("/EFI/BOOT".into()),
        FatEntry::File(layout::esp::BOOTLOADER.into(), bootloader),
        FatEntry::Dir("/loader".into()),
        FatEntry::File(
            layout::esp::LOADER_CONF.into(),
            layout::loader_conf().into_bytes(),
        ),
        FatEntry::Dir(layout::esp::ENTRIES_DIR.into()),
        FatEntry::File(
            format!(
                "{}/{}",
                layout::esp::ENTRIES_DIR,
                EntryName::fresh(slot).file_name()
            ),
            entry.render().into_bytes(),
        ),
        FatEntry::Dir(layout::esp::SLOTS_DIR.into()),
        FatEntry::Dir(slot.esp_dir()),
        FatEntry::File(slot.kernel_path(), files.kernel),
        FatEntry::File(slot.initramfs_path(), files.initramfs),
        FatEntry::File(slot.manifest_path(), files.manifest),
        FatEntry::File(slot.signature_path(), files.signature),
    ]
}

/// A FAT volume id derived from the disk GUID and the partition's label, so that a disk's
/// volumes are reproducible and two disks' differ.
pub fn volume_id(disk_guid: &[u8; 16], label: &str) -> u32 {
    let digest = Sha256::digest([disk_guid.as_slice(), label.as_bytes()].concat());
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}
