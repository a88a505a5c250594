//! The disk layout and boot-entry naming that the builder writes, the init boots from and the
//! upgrade path rewrites, and every path and name the two sides agree on: the initramfs's
//! files, where the init lives in the root, STATE's files, the boot-time configuration
//! sources and the kernel command line. See docs/architecture.md, "Disk layout" and "Boot
//! flow".

use std::fmt;
use std::str::FromStr;

/// Partition alignment and the first partition's offset.
pub const ALIGNMENT: u64 = 1024 * 1024;
/// The logical sector size Keel's GPT is laid out for (LBAs count these).
pub const SECTOR_SIZE: u64 = 512;

/// The OS name: boot entry titles and os-release's `NAME`.
pub const OS_NAME: &str = "Keel";

/// GPT partition type GUIDs (upper-case textual form, as `sgdisk` prints them).
pub mod type_guid {
    /// EFI System Partition.
    pub const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    /// Discoverable Partitions Specification: root partition, x86-64.
    pub const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
    /// Linux filesystem data (STATE).
    pub const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    /// Discoverable Partitions Specification: variable data partition (`/var`, DATA).
    pub const VAR: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";
}

/// The partitions of a Keel disk, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PartitionRole {
    Esp,
    SlotA,
    SlotB,
    State,
    Data,
}

impl PartitionRole {
    pub const ALL: [PartitionRole; 5] =
        [Self::Esp, Self::SlotA, Self::SlotB, Self::State, Self::Data];

    /// The GPT partition name (label) the init finds partitions by.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Esp => "ESP",
            Self::SlotA => "KEEL-A",
            Self::SlotB => "KEEL-B",
            Self::State => "STATE",
            Self::Data => "DATA",
        }
    }

    /// 1-based partition number.
    pub const fn number(self) -> u32 {
        match self {
            Self::Esp => 1,
            Self::SlotA => 2,
            Self::SlotB => 3,
            Self::State => 4,
            Self::Data => 5,
        }
    }

    pub const fn type_guid(self) -> &'static str {
        match self {
            Self::Esp => type_guid::ESP,
            Self::SlotA | Self::SlotB => type_guid::ROOT_X86_64,
            Self::State => type_guid::LINUX_DATA,
            Self::Data => type_guid::VAR,
        }
    }

    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.label() == label)
    }
}

/// A root slot (`a` or `b` in names, on the command line and in JSON).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub const fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub const fn partition(self) -> PartitionRole {
        match self {
            Slot::A => PartitionRole::SlotA,
            Slot::B => PartitionRole::SlotB,
        }
    }

    /// Directory on the ESP holding this slot's kernel, initramfs and signed manifest.
    pub fn esp_dir(self) -> String {
        format!("{}/{}", esp::SLOTS_DIR, self.letter())
    }
    pub fn kernel_path(self) -> String {
        format!("{}/vmlinuz", self.esp_dir())
    }
    pub fn initramfs_path(self) -> String {
        format!("{}/initramfs", self.esp_dir())
    }
    pub fn manifest_path(self) -> String {
        format!("{}/{}", self.esp_dir(), MANIFEST_FILE)
    }
    pub fn signature_path(self) -> String {
        format!("{}/{}", self.esp_dir(), SIGNATURE_FILE)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.letter())
    }
}

impl From<Slot> for String {
    fn from(slot: Slot) -> String {
        slot.letter().to_owned()
    }
}

impl TryFrom<String> for Slot {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            _ => Err(format!("invalid slot {s:?}: expected a or b")),
        }
    }
}

pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.json.minisig";

/// Paths on the ESP (absolute on the FAT volume; see [`on_volume`] for a mounted one).
pub mod esp {
    pub const BOOTLOADER: &str = "/EFI/BOOT/BOOTX64.EFI";
    pub const LOADER_CONF: &str = "/loader/loader.conf";
    pub const ENTRIES_DIR: &str = "/loader/entries";
    /// Where systemd-boot-efi installs the loader in the userland.
    pub const SYSTEMD_BOOT_IN_USERLAND: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
    /// The FAT volume label (11 bytes, space padded).
    pub const VOLUME_LABEL: [u8; 11] = *b"ESP        ";
    /// Holds a directory per slot: [`super::Slot::esp_dir`].
    pub const SLOTS_DIR: &str = "/keel";
}

/// STATE, the node's own FAT partition (absolute paths on the volume).
pub mod state {
    /// Written by the builder, checked by the node before it trusts the partition as STATE:
    /// [`marker`]'s text.
    pub const MARKER: &str = "/keel-state";
    /// The marker's format version, its first line.
    pub const MARKER_VERSION: u32 = 1;
    /// The profile a node applied (from fw_cfg, a URL or a config drive), kept across boots.
    pub const PROFILE: &str = "/profile.toml";
    /// The node's share of the cluster secrets ([`crate::secrets::NodeSecrets`]), from the
    /// build (`image.secrets`) or given at boot.
    pub const SECRETS: &str = "/secrets.toml";
    /// A renewed API serving certificate pushed through the API (`POST /v1/certificate`),
    /// as TOML `cert` and `key` (PEM). At boot it replaces the secrets' `node_api` while it
    /// still passes the node's checks and is newer than that one.
    pub const API_CERTIFICATE: &str = "/api-certificate.toml";
    /// On an installer medium's STATE: which disk this medium installed onto, and what, so
    /// that a firmware that boots the medium again does not install again (a loop).
    pub const INSTALLED: &str = "/installed.toml";
    /// The FAT volume label (11 bytes, space padded).
    pub const VOLUME_LABEL: [u8; 11] = *b"STATE      ";

    /// The marker file's text: the format version, then the image name.
    pub fn marker(image_name: &str) -> String {
        format!("{MARKER_VERSION}\n{image_name}\n")
    }
}

/// `path` (absolute on a FAT volume: [`esp`], [`state`]) under the directory the volume is
/// mounted on.
pub fn on_volume(mount: &std::path::Path, path: &str) -> std::path::PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// Paths inside the initramfs: the builder writes them, stage 1 reads them.
pub mod initramfs {
    /// The static init, executed by the kernel as PID 1.
    pub const INIT: &str = "/init";
    /// The public keys the manifest must be signed with (minisign public keys, one per line
    /// pair).
    pub const TRUSTED_KEYS: &str = "/etc/keel/trusted.pub";
    /// The profile's `[node]` section, as TOML.
    pub const PROFILE: &str = "/etc/keel/profile.toml";
    /// Module files stage 1 loads on every machine (those no device asks for: squashfs,
    /// dm-verity, FAT...), one absolute path per line, dependencies first. Drivers are loaded
    /// by the devices found ([`modules`]).
    pub const MODULES_LOAD: &str = "/etc/keel/modules.load";
}

/// Kernel module data, in the initramfs and in the root. The builder generates `modules.dep`
/// and `modules.alias` (Debian's kernel packages ship neither: depmod runs at install time);
/// the init loads a driver when a device's sysfs `modalias` matches one of its aliases.
pub mod modules {
    /// `/usr/lib/modules/<release>`: where a kernel release's modules are.
    pub fn dir(release: &str) -> String {
        format!("/usr/lib/modules/{release}")
    }
    /// In [`dir`]: `path: dependencies...` per module, as depmod writes it.
    pub const DEP: &str = "modules.dep";
    /// In [`dir`]: `alias PATTERN MODULE` per line, as depmod writes it (glob patterns).
    pub const ALIAS: &str = "modules.alias";
}

/// EFI variables through efivarfs: systemd-boot's (the Boot Loader Interface), which the node
/// reads, and the firmware boot manager's, which the installer writes so that the next boot
/// comes from the disk it installed. The builder puts the module into the initramfs so that
/// stage 1 can read them.
pub mod efi {
    /// Where efivarfs is mounted.
    pub const EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";
    /// The kernel module providing efivarfs, when the kernel does not have it built in.
    pub const EFIVARFS_MODULE: &str = "efivarfs";
    /// The vendor GUID of systemd-boot's variables; a variable's file in efivarfs is
    /// `<name>-<guid>`.
    pub const LOADER_VENDOR_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
    /// The unique GUID of the partition (the ESP) systemd-boot was loaded from, as UTF-16LE
    /// text: how stage 1 knows its boot disk among several carrying Keel's labels.
    pub const LOADER_DEVICE_PART_UUID: &str = "LoaderDevicePartUUID";
    /// Microseconds from firmware start to the loader handing over to the kernel.
    pub const LOADER_TIME_EXEC_USEC: &str = "LoaderTimeExecUSec";

    /// EFI_GLOBAL_VARIABLE, the vendor GUID of the firmware boot manager's variables (UEFI
    /// 2.x, 3.3 "Globally Defined Variables").
    pub const GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
    /// The load options to try, in order: an array of u16 option numbers.
    pub const BOOT_ORDER: &str = "BootOrder";
    /// One option number, tried first on the next boot only (the firmware deletes it).
    pub const BOOT_NEXT: &str = "BootNext";
    /// The option number this boot was started from, set by the firmware.
    pub const BOOT_CURRENT: &str = "BootCurrent";
    /// A load option's name before its number: [`boot_option`].
    pub const BOOT_OPTION_PREFIX: &str = "Boot";

    /// The name of load option `number`: `Boot0003` (four upper-case hex digits, as the
    /// firmware looks them up).
    pub fn boot_option(number: u16) -> String {
        format!("{BOOT_OPTION_PREFIX}{number:04X}")
    }

    /// A variable's file in efivarfs: `<name>-<vendor guid>`.
    pub fn variable_file(name: &str, vendor_guid: &str) -> String {
        format!("{name}-{vendor_guid}")
    }
}

/// Paths in the root filesystem: the builder puts them there, the node relies on them.
pub mod root {
    /// The init in the verified root; stage 1 executes it after switching root.
    pub const INIT: &str = "/usr/lib/keel/keel-init";
    /// Container images baked into the root (`<name>.tar`), imported at boot.
    pub const BAKED_IMAGES_DIR: &str = "/usr/share/keel/images";
    /// Mount points the read-only root must have for the node's partitions.
    pub const ESP_MOUNT: &str = "/efi";
    pub const STATE_MOUNT: &str = "/state";
}

/// Where a node looks for a configuration given at boot, besides [`cmdline::CONFIG`].
pub mod config {
    /// QEMU fw_cfg entries (`keel run --profile/--secrets`; the node reads them under
    /// `/sys/firmware/qemu_fw_cfg/by_name/`).
    pub const FW_CFG_PROFILE: &str = "opt/keel/profile";
    pub const FW_CFG_SECRETS: &str = "opt/keel/secrets";
    /// An etcd snapshot (`keel node etcd snapshot`) a control plane with no etcd data
    /// restores into a new single-member cluster (`keel cluster create --etcd-snapshot`).
    pub const FW_CFG_ETCD_SNAPSHOT: &str = "opt/keel/etcd-snapshot";
    /// The volume label of a config drive (FAT or ISO 9660) and the files on it.
    pub const DRIVE_LABEL: &str = "KEELCFG";
    pub const DRIVE_PROFILE: &str = "profile.toml";
    pub const DRIVE_SECRETS: &str = "secrets.toml";
    /// What is appended to a configuration file's name or URL to find its minisign
    /// signature (`keel sign` writes it): `profile.toml.minisig`, `http://…/n1.toml.minisig`.
    pub const SIGNATURE_SUFFIX: &str = ".minisig";

    /// Where the signature of `file` (a drive file name or a URL) is.
    pub fn signature_of(file: &str) -> String {
        format!("{file}{SIGNATURE_SUFFIX}")
    }
}

/// Fault injection for tests, through QEMU fw_cfg entries only: whoever sets fw_cfg starts
/// the machine and could pull its plug anyway (`init/src/testhooks.rs`).
pub mod test_hooks {
    /// A step's name: the init stops for good before that step (power-cut tests).
    pub const FW_CFG_PAUSE_AT: &str = "opt/keel/test/pause-at";
    /// A boot number: after the ready line of that boot, PID 1's main loop stops (as a hung
    /// PID 1 would), so the watchdog is no longer petted.
    pub const FW_CFG_HANG_AFTER_READY: &str = "opt/keel/test/hang-after-ready";
    /// Where the node reads a fw_cfg entry.
    pub fn fw_cfg_file(name: &str) -> String {
        format!("/sys/firmware/qemu_fw_cfg/by_name/{name}/raw")
    }
}

/// Boot tries a fresh entry gets (systemd-boot Automatic Boot Assessment).
pub const BOOT_TRIES: u32 = 3;
/// Tries a blessed entry gets back at the start of every boot: stage 1 renames `keel-a.conf`
/// to `keel-a+2.conf` before it reads anything from the slot, and the health gate blesses it
/// again. A slot that turns bad after it was blessed then fails at most [`BOOT_TRIES`] times
/// (the boot that re-armed it, then two counted ones) before systemd-boot falls back to the
/// other slot.
pub const REARM_TRIES: u32 = BOOT_TRIES - 1;
/// `sort-key` shared by both slots' entries, so systemd-boot orders them by `version`.
pub const SORT_KEY: &str = "keel";

/// loader.conf: `default` is a glob so that an entry that ran out of tries falls back to the
/// other slot (an exact id would keep booting it); no menu; no command-line editing.
pub fn loader_conf() -> String {
    "default keel-*\ntimeout 0\neditor no\nconsole-mode keep\n".to_owned()
}

/// The boot counter in an entry's file name: `keel-a+2-1.conf` has 2 tries left, 1 used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootCounter {
    pub left: u32,
    pub done: Option<u32>,
}

/// A parsed entry file name: `keel-<slot>[+LEFT[-DONE]].conf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryName {
    pub slot: Slot,
    /// `None` once blessed.
    pub counter: Option<BootCounter>,
}

impl EntryName {
    /// A fresh entry, as the builder and the upgrade path write it.
    pub fn fresh(slot: Slot) -> Self {
        EntryName {
            slot,
            counter: Some(BootCounter {
                left: BOOT_TRIES,
                done: None,
            }),
        }
    }

    /// The blessed name (no counter).
    pub fn blessed(slot: Slot) -> Self {
        EntryName {
            slot,
            counter: None,
        }
    }

    /// A blessed entry counted again at the start of a boot (see [`REARM_TRIES`]).
    pub fn rearmed(slot: Slot) -> Self {
        EntryName {
            slot,
            counter: Some(BootCounter {
                left: REARM_TRIES,
                done: None,
            }),
        }
    }

    /// An entry out of tries, as `keel node rollback` leaves the running one: systemd-boot
    /// sorts it last.
    pub fn demoted(slot: Slot) -> Self {
        EntryName {
            slot,
            counter: Some(BootCounter {
                left: 0,
                done: Some(BOOT_TRIES),
            }),
        }
    }

    pub fn is_blessed(&self) -> bool {
        self.counter.is_none()
    }

    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("keel-{}.conf", self.slot),
            Some(BootCounter { left, done: None }) => format!("keel-{}+{left}.conf", self.slot),
            Some(BootCounter {
                left,
                done: Some(d),
            }) => format!("keel-{}+{left}-{d}.conf", self.slot),
        }
    }

    pub fn parse(file_name: &str) -> Option<Self> {
        let stem = file_name.strip_prefix("keel-")?.strip_suffix(".conf")?;
        let (slot, counter) = match stem.split_once('+') {
            None => (stem, None),
            Some((slot, counter)) => {
                let (left, done) = match counter.split_once('-') {
                    None => (counter.parse().ok()?, None),
                    Some((l, d)) => (l.parse().ok()?, Some(d.parse().ok()?)),
                };
                (slot, Some(BootCounter { left, done }))
            }
        };
        Some(EntryName {
            slot: slot.parse().ok()?,
            counter,
        })
    }

    /// True when systemd-boot will sort this entry last (no tries left).
    pub fn exhausted(&self) -> bool {
        matches!(self.counter, Some(BootCounter { left: 0, .. }))
    }
}

/// Kernel command-line keys Keel sets.
pub mod cmdline {
    /// `keel.slot=a|b`: which slot this entry boots.
    pub const SLOT: &str = "keel.slot";
    /// `keel.roothash=<hex>`: the dm-verity root hash, cross-checked against the signed
    /// manifest.
    pub const ROOTHASH: &str = "keel.roothash";
    /// `keel.config=http://...`: a URL the node fetches its profile from (set by the
    /// profile's `image.cmdline`, not by Keel).
    pub const CONFIG: &str = "keel.config";
    /// `keel.root=http://...`: a network boot's root, the slot payload
    /// ([`crate::output::pxe::ROOT`]) fetched by stage 1 instead of a slot on a disk; the
    /// signed manifest and its signature are beside it. There is no `keel.slot=` then.
    pub const ROOT: &str = "keel.root";

    /// Finds `key=value` on a command line (the last occurrence wins, as the kernel does).
    pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
        cmdline
            .split_ascii_whitespace()
            .filter_map(|arg| arg.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .next_back()
    }
}

/// What every boot of an image carries after where its root is (`keel.slot=` on a disk,
/// `keel.root=` over the network): the root hash, then the profile's `image.cmdline`.
fn root_options(root_hash: &str, extra: &[String]) -> Vec<String> {
    let mut options = vec![format!("{}={}", cmdline::ROOTHASH, root_hash)];
    options.extend(extra.iter().cloned());
    options
}

/// A network boot's kernel command line: what a slot's boot entry carries, with
/// `keel.root=<root_url>` instead of `keel.slot=` (there is no slot).
pub fn network_boot_options(root_url: &str, root_hash: &str, extra: &[String]) -> Vec<String> {
    let mut options = vec![format!("{}={}", cmdline::ROOT, root_url)];
    options.extend(root_options(root_hash, extra));
    options
}

/// A BLS Type #1 entry for one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    pub slot: Slot,
    pub version: String,
    pub options: Vec<String>,
}

impl BootEntry {
    /// The kernel command line: Keel's own arguments first, then the profile's.
    pub fn new(slot: Slot, version: &str, root_hash: &str, extra: &[String]) -> Self {
        let mut options = vec![format!("{}={}", cmdline::SLOT, slot)];
        options.extend(root_options(root_hash, extra));
        BootEntry {
            slot,
            version: version.to_owned(),
            options,
        }
    }

    pub fn render(&self) -> String {
        format!(
            "title {name} {version} ({slot})\nversion {version}\nsort-key {SORT_KEY}\nlinux {kernel}\ninitrd {initrd}\noptions {options}\n",
            name = OS_NAME,
            version = self.version,
            slot = self.slot,
            kernel = self.slot.kernel_path(),
            initrd = self.slot.initramfs_path(),
            options = self.options.join(" "),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_option_names_are_four_upper_case_hex_digits() {
        assert_eq!(efi::boot_option(3), "Boot0003");
        assert_eq!(efi::boot_option(0xabcd), "BootABCD");
        assert_eq!(
            efi::variable_file(efi::BOOT_ORDER, efi::GLOBAL_GUID),
            "BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c"
        );
    }

    #[test]
    fn entry_names_round_trip() {
        for name in [
            "keel-a+3.conf",
            "keel-b+2-1.conf",
            "keel-a+0-3.conf",
            "keel-b.conf",
        ] {
            assert_eq!(EntryName::parse(name).unwrap().file_name(), name);
        }
        assert_eq!(EntryName::fresh(Slot::A).file_name(), "keel-a+3.conf");
        assert_eq!(EntryName::rearmed(Slot::B).file_name(), "keel-b+2.conf");
        assert_eq!(EntryName::demoted(Slot::A).file_name(), "keel-a+0-3.conf");
        assert!(EntryName::demoted(Slot::A).exhausted());
        assert!(EntryName::blessed(Slot::A).is_blessed());
        assert_eq!(serde_json::to_string(&Slot::B).unwrap(), "\"b\"");
        assert_eq!(serde_json::from_str::<Slot>("\"a\"").unwrap(), Slot::A);
        assert!(serde_json::from_str::<Slot>("\"c\"").is_err());
        assert!(EntryName::parse("keel-a+0-3.conf").unwrap().exhausted());
        assert!(!EntryName::parse("keel-a+1-2.conf").unwrap().exhausted());
        for bad in ["keel-c+3.conf", "keel-a+x.conf", "other.conf", "keel-a+3"] {
            assert!(EntryName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn cmdline_lookup_takes_the_last_value() {
        let line = "initrd=\\keel\\a\\initramfs keel.slot=a quiet keel.slot=b";
        assert_eq!(cmdline::get(line, cmdline::SLOT), Some("b"));
        assert_eq!(cmdline::get(line, cmdline::ROOTHASH), None);
    }

    #[test]
    fn network_boot_carries_the_entry_options_without_a_slot() {
        let extra = ["console=ttyS0".to_owned()];
        let entry = BootEntry::new(Slot::A, "1.0.0", "ab12", &extra);
        let net = network_boot_options("http://h/root.img", "ab12", &extra);
        assert_eq!(net[0], "keel.root=http://h/root.img");
        assert_eq!(net[1..], entry.options[1..]);
        assert_eq!(cmdline::get(&net.join(" "), cmdline::SLOT), None);
    }

    #[test]
    fn entry_renders_bls_fields() {
        let e = BootEntry::new(Slot::B, "1.2.0", "ab12", &["console=ttyS0".into()]);
        let text = e.render();
        assert!(text.starts_with("title Keel 1.2.0 (b)\n"), "{text}");
        assert!(text.contains("\nversion 1.2.0\n"));
        assert!(text.contains("\nsort-key keel\n"));
        assert!(text.contains("\nlinux /keel/b/vmlinuz\n"));
        assert!(text.contains("\noptions keel.slot=b keel.roothash=ab12 console=ttyS0\n"));
    }
}
