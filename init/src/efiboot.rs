//! Makes the firmware boot a disk next: a `Boot####` load option for the boot loader on the
//! disk's ESP, first in `BootOrder`, and `BootNext` set to it, written through efivarfs.
//!
//! Formats from the UEFI specification 2.x: 3.1.3 "Load Options" (EFI_LOAD_OPTION), 10.3.5.1
//! "Hard Drive" and 10.3.5.4 "File Path" media device path nodes. An efivarfs file is the
//! variable's u32 attributes followed by its data.
//!
//! Everything is read and checked before the first write, so a variable this module cannot
//! parse is reported and left as it was, with nothing else changed.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use keel_contract::layout::{efi, esp};

/// Where a disk's ESP is, as the firmware's device path needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspLocation {
    /// 1-based GPT partition number.
    pub partition_number: u32,
    /// First LBA of the partition.
    pub start_lba: u64,
    /// Size of the partition in LBAs.
    pub size_lba: u64,
    /// The partition's unique GUID (not its type GUID).
    pub partition_guid: uuid::Uuid,
}

#[derive(Debug, thiserror::Error)]
pub enum EfiBootError {
    #[error("reading EFI variable {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing EFI variable {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("EFI variable {}: {what}", .path.display())]
    Malformed { path: PathBuf, what: String },
    #[error("listing EFI variables in {}: {source}", .dir.display())]
    List {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("no free Boot#### number (0000-FFFF) in {}", .dir.display())]
    NoFreeNumber { dir: PathBuf },
    #[error("boot option {description:?}: {what}")]
    LoadOption { description: String, what: String },
}

/// LOAD_OPTION_ACTIVE: the boot manager may try the option.
const LOAD_OPTION_ACTIVE: u32 = 1;
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS, what the specification gives
/// `Boot####`, `BootOrder` and `BootNext`.
const VARIABLE_ATTRIBUTES: u32 = 0x7;
/// Media device path type, its Hard Drive and File Path subtypes; End Entire Device Path.
const MEDIA: u8 = 0x04;
const MEDIA_HARD_DRIVE: u8 = 0x01;
const MEDIA_FILE_PATH: u8 = 0x04;
const END: [u8; 4] = [0x7f, 0xff, 0x04, 0x00];
/// Hard Drive node: partition format GPT, signature type GUID.
const MBR_TYPE_GPT: u8 = 0x02;
const SIGNATURE_TYPE_GUID: u8 = 0x02;
/// `FS_IMMUTABLE_FL` (linux/fs.h): efivarfs sets it on variables that are not well-known
/// standard ones, and anyone may have set it with chattr.
const FS_IMMUTABLE_FL: libc::c_int = 0x10;

/// Creates (or reuses an identical) `Boot####` load option `description` for the boot loader
/// ([`esp::BOOTLOADER`]) on that partition, puts it first in `BootOrder` (without duplicates)
/// and sets `BootNext` to it. Returns the option's number.
///
/// A `BootOrder` of odd length is an error and nothing is written: rewriting a variable this
/// module cannot read whole would drop what the firmware meant by it.
pub fn boot_next_into(
    efivars: &Path,
    esp: &EspLocation,
    description: &str,
) -> Result<u16, EfiBootError> {
    let option = load_option(esp, description)?;
    let options = existing_options(efivars)?;
    let order_path = variable_path(efivars, efi::BOOT_ORDER);
    let order = read_boot_order(&order_path)?;

    let reused = options
        .iter()
        .find(|o| o.data.as_deref() == Some(option.as_slice()))
        .map(|o| o.number);
    let number = match reused {
        Some(n) => n,
        None => {
            let taken: BTreeSet<u16> = options.iter().map(|o| o.number).collect();
            let n = (0..=u16::MAX).find(|n| !taken.contains(n)).ok_or_else(|| {
                EfiBootError::NoFreeNumber {
                    dir: efivars.to_owned(),
                }
            })?;
            write_variable(&variable_path(efivars, &efi::boot_option(n)), &option)?;
            n
        }
    };

    let new_order = order_first(order.as_deref().unwrap_or_default(), number);
    // Flash has few write cycles: a BootOrder that is already right is not written again.
    if order.as_ref() != Some(&new_order) {
        write_variable(&order_path, &u16_array(&new_order))?;
    }
    write_variable(
        &variable_path(efivars, efi::BOOT_NEXT),
        &number.to_le_bytes(),
    )?;
    Ok(number)
}

/// `BootCurrent`, if the firmware set it (for status and logs).
pub fn boot_current(efivars: &Path) -> Option<u16> {
    let bytes = std::fs::read(variable_path(efivars, efi::BOOT_CURRENT)).ok()?;
    match bytes.as_slice() {
        [_, _, _, _, lo, hi] => Some(u16::from_le_bytes([*lo, *hi])),
        _ => None,
    }
}

/// The EFI_LOAD_OPTION that boots [`esp::BOOTLOADER`] from `esp`: attributes, the device
/// path's length, the description (UTF-16LE, NUL-terminated), the device path; no optional
/// data.
pub fn load_option(esp: &EspLocation, description: &str) -> Result<Vec<u8>, EfiBootError> {
    let bad = |what: &str| EfiBootError::LoadOption {
        description: description.to_owned(),
        what: what.to_owned(),
    };
    if description.is_empty() || description.contains('\0') {
        return Err(bad("must be non-empty, without NUL"));
    }
    let path = device_path(esp);
    let path_len = u16::try_from(path.len()).map_err(|_| bad("device path too long"))?;
    let mut option = Vec::with_capacity(6 + 2 * description.len() + 2 + path.len());
    option.extend(LOAD_OPTION_ACTIVE.to_le_bytes());
    option.extend(path_len.to_le_bytes());
    option.extend(utf16z(description));
    option.extend(path);
    Ok(option)
}

/// Hard Drive node, File Path node, End Entire Device Path.
fn device_path(esp: &EspLocation) -> Vec<u8> {
    let mut hard_drive = Vec::with_capacity(38);
    hard_drive.extend(esp.partition_number.to_le_bytes());
    hard_drive.extend(esp.start_lba.to_le_bytes());
    hard_drive.extend(esp.size_lba.to_le_bytes());
    // EFI_GUID's layout: the first three fields little-endian, the last eight bytes as written.
    hard_drive.extend(esp.partition_guid.to_bytes_le());
    hard_drive.extend([MBR_TYPE_GPT, SIGNATURE_TYPE_GUID]);

    let file = utf16z(&esp::BOOTLOADER.replace('/', "\\"));
    let mut path = node(MEDIA, MEDIA_HARD_DRIVE, &hard_drive);
    path.extend(node(MEDIA, MEDIA_FILE_PATH, &file));
    path.extend(END);
    path
}

/// A device path node: type, subtype, u16 length of the whole node, then `body`. A body
/// too long for the length field makes the whole path too long, which [`load_option`] refuses.
fn node(kind: u8, subtype: u8, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + body.len()).unwrap_or(u16::MAX);
    let mut node = vec![kind, subtype];
    node.extend(len.to_le_bytes());
    node.extend(body);
    node
}

fn utf16z(text: &str) -> Vec<u8> {
    text.encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect()
}

fn u16_array(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `first`, then `order` without it and without repeats.
fn order_first(order: &[u16], first: u16) -> Vec<u16> {
    let mut seen = BTreeSet::new();
    std::iter::once(first)
        .chain(order.iter().copied())
        .filter(|n| seen.insert(*n))
        .collect()
}

fn variable_path(efivars: &Path, name: &str) -> PathBuf {
    efivars.join(efi::variable_file(name, efi::GLOBAL_GUID))
}

/// A `Boot####` variable already there.
struct ExistingOption {
    number: u16,
    /// `None` when it cannot be read: its number is taken all the same, but it cannot be
    /// compared.
    data: Option<Vec<u8>>,
}

/// Every `Boot####` in `efivars`, by number.
fn existing_options(efivars: &Path) -> Result<Vec<ExistingOption>, EfiBootError> {
    let list_error = |source| EfiBootError::List {
        dir: efivars.to_owned(),
        source,
    };
    let mut options = Vec::new();
    for entry in std::fs::read_dir(efivars).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        let Some(number) = entry.file_name().to_str().and_then(option_number) else {
            continue;
        };
        let data = std::fs::read(entry.path())
            .ok()
            .and_then(|bytes| bytes.get(4..).map(<[u8]>::to_vec));
        options.push(ExistingOption { number, data });
    }
    options.sort_by_key(|o| o.number);
    Ok(options)
}

/// The number of a `Boot####-<global guid>` file: exactly four upper-case hex digits, as
/// the firmware names them (`Boot000a` is another, unused, variable).
fn option_number(file_name: &str) -> Option<u16> {
    let suffix = format!("-{}", efi::GLOBAL_GUID);
    let hex = file_name
        .strip_suffix(&suffix)?
        .strip_prefix(efi::BOOT_OPTION_PREFIX)?;
    let valid = hex.len() == 4
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    if !valid {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// `BootOrder`'s numbers; `None` when there is no such variable.
fn read_boot_order(path: &Path) -> Result<Option<Vec<u16>>, EfiBootError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(EfiBootError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let malformed = |what: String| EfiBootError::Malformed {
        path: path.to_owned(),
        what,
    };
    let data = bytes.get(4..).ok_or_else(|| {
        malformed(format!(
            "{} bytes, shorter than its attributes",
            bytes.len()
        ))
    })?;
    if data.len() % 2 != 0 {
        return Err(malformed(format!(
            "{} bytes of data, expected an array of u16 (an even length)",
            data.len()
        )));
    }
    let order = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Ok(Some(order))
}

/// Writes a variable: attributes and data in one write(2), as efivarfs requires, after
/// clearing the immutable flag an existing variable may have (and putting it back).
fn write_variable(path: &Path, data: &[u8]) -> Result<(), EfiBootError> {
    let write_error = |source| EfiBootError::Write {
        path: path.to_owned(),
        source,
    };
    let immutable = clear_immutable(path).map_err(write_error)?;
    let mut content = VARIABLE_ATTRIBUTES.to_le_bytes().to_vec();
    content.extend(data);
    // No O_TRUNC (as systemd): efivarfs replaces the whole variable on a write anyway.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(write_error)?;
    let written = file.write(&content).map_err(write_error)?;
    if written != content.len() {
        return Err(write_error(std::io::Error::other(format!(
            "wrote {written} of {} bytes",
            content.len()
        ))));
    }
    // On efivarfs the size is now the new variable's; only a plain directory (tests) keeps
    // the tail of a longer old content.
    let len = file.metadata().map_err(write_error)?.len();
    if len > content.len() as u64 {
        file.set_len(content.len() as u64).map_err(write_error)?;
    }
    if let Some(flags) = immutable {
        // The flag only guards against an accidental rm; the variable is written either way.
        let _ = set_flags(&file, flags);
    }
    Ok(())
}

/// Clears `FS_IMMUTABLE_FL` on `path` if it is set; returns the flags to put back. `None`
/// when the file does not exist, the flag was not set, or the filesystem has no flags.
fn clear_immutable(path: &Path) -> std::io::Result<Option<libc::c_int>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let flags = match get_flags(&file) {
        Ok(flags) => flags,
        Err(e) if no_flags(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(None);
    }
    set_flags(&file, flags & !FS_IMMUTABLE_FL)?;
    Ok(Some(flags))
}

/// The errors of a filesystem that has no inode flags.
fn no_flags(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL)
    )
}

fn get_flags(file: &File) -> std::io::Result<libc::c_int> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int (the kernel's size, whatever the request's
    // encoding says) into `flags`, which lives across the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(flags)
}

fn set_flags(file: &File, flags: libc::c_int) -> std::io::Result<()> {
    let mut flags = flags;
    // SAFETY: FS_IOC_SETFLAGS reads one int from `flags`, which lives across the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &mut flags) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
#[path = "efiboot_tests.rs"]
mod tests;
