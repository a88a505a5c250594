//! The device-mapper ioctl interface (`linux/dm-ioctl.h`, version 4), as libdevmapper uses
//! it, without libdevmapper.
//!
//! Requests are built as plain byte buffers: a `struct dm_ioctl` header (312 bytes) followed,
//! for DM_TABLE_LOAD, by `struct dm_target_spec` entries (40 bytes) each followed by its
//! NUL-terminated parameter string padded to 8 bytes. Encoding and decoding are pure
//! functions with golden-layout tests; the only unsafe code is the ioctl call, which hands the
//! kernel a pointer to a buffer exactly as long as the size written in its header.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BlockError, Result, Roots, io_err};

/// The name the init gives the verified root device.
pub const ROOT_NAME: &str = "keel-root";

pub const DM_IOCTL_SIZE: usize = 312;
pub const TARGET_SPEC_SIZE: usize = 40;
const NAME_LEN: usize = 128;
const UUID_LEN: usize = 129;
const MAX_TYPE_NAME: usize = 16;

const OFF_VERSION: usize = 0;
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_OPEN_COUNT: usize = 24;
const OFF_FLAGS: usize = 28;
const OFF_EVENT_NR: usize = 32;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;
const OFF_UUID: usize = OFF_NAME + NAME_LEN;

/// The interface major version this code speaks. We ask for minor 0: the kernel accepts any
/// request whose minor is not newer than its own, and we use nothing added later.
pub const VERSION: [u32; 3] = [4, 0, 0];

pub const READONLY_FLAG: u32 = 1 << 0;
pub const SUSPEND_FLAG: u32 = 1 << 1;
pub const ACTIVE_PRESENT_FLAG: u32 = 1 << 5;
pub const INACTIVE_PRESENT_FLAG: u32 = 1 << 6;

/// An ioctl command: its number within type 0xfd and its name for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub nr: u8,
    pub name: &'static str,
}

pub const DM_VERSION: Command = Command {
    nr: 0,
    name: "DM_VERSION",
};
pub const DM_DEV_CREATE: Command = Command {
    nr: 3,
    name: "DM_DEV_CREATE",
};
pub const DM_DEV_REMOVE: Command = Command {
    nr: 4,
    name: "DM_DEV_REMOVE",
};
pub const DM_DEV_SUSPEND: Command = Command {
    nr: 6,
    name: "DM_DEV_SUSPEND",
};
pub const DM_DEV_STATUS: Command = Command {
    nr: 7,
    name: "DM_DEV_STATUS",
};
pub const DM_TABLE_LOAD: Command = Command {
    nr: 9,
    name: "DM_TABLE_LOAD",
};

impl Command {
    /// `_IOWR(0xfd, nr, struct dm_ioctl)`. The kernel only looks at the type and number, but
    /// we encode the size as the header does.
    pub const fn request(self) -> u32 {
        (3 << 30) | ((DM_IOCTL_SIZE as u32) << 16) | (0xfd << 8) | self.nr as u32
    }
}

/// One line of a device-mapper table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// In 512-byte sectors.
    pub start: u64,
    pub length: u64,
    pub target_type: String,
    pub params: String,
}

fn invalid(what: &'static str, reason: impl Into<String>) -> BlockError {
    BlockError::Invalid {
        what,
        reason: reason.into(),
    }
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&buf[at..at + 4]);
    u32::from_ne_bytes(a)
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&buf[at..at + 8]);
    u64::from_ne_bytes(a)
}

/// Copies `s` into a fixed, NUL-terminated field of `len` bytes.
fn put_str(buf: &mut [u8], at: usize, len: usize, s: &str, what: &'static str) -> Result<()> {
    if s.len() >= len {
        return Err(invalid(
            what,
            format!("{s:?} is longer than {} bytes", len - 1),
        ));
    }
    if s.bytes().any(|b| b == 0) {
        return Err(invalid(what, format!("{s:?} contains a NUL byte")));
    }
    buf[at..at + s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

fn get_str(buf: &[u8], at: usize, len: usize) -> String {
    let field = &buf[at..at + len];
    let end = field.iter().position(|&b| b == 0).unwrap_or(len);
    String::from_utf8_lossy(&field[..end]).into_owned()
}

const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Builds a request: header, then `targets` (only DM_TABLE_LOAD sends any). `name` selects the
/// device; `uuid` is only meaningful for DM_DEV_CREATE. `room` adds bytes after the request
/// for commands whose reply is longer than the header (none of ours).
pub fn encode(
    name: &str,
    uuid: Option<&str>,
    flags: u32,
    targets: &[Target],
    room: usize,
) -> Result<Vec<u8>> {
    if name.contains('/') {
        return Err(invalid(
            "device-mapper name",
            format!("{name:?} contains '/'"),
        ));
    }
    let mut specs = Vec::new();
    for t in targets {
        if t.params.bytes().any(|b| b == 0) {
            return Err(invalid("table parameters", "contain a NUL byte"));
        }
        // The parameters start right after the spec; the next spec must start 8-byte aligned
        // (the kernel reads it as a struct with u64 fields).
        let len = align8(TARGET_SPEC_SIZE + t.params.len() + 1);
        let mut spec = vec![0u8; len];
        put_u64(&mut spec, 0, t.start);
        put_u64(&mut spec, 8, t.length);
        // status (offset 16) is output only.
        let next = u32::try_from(len).map_err(|_| invalid("table parameters", "too long"))?;
        put_u32(&mut spec, 20, next);
        put_str(&mut spec, 24, MAX_TYPE_NAME, &t.target_type, "target type")?;
        spec[TARGET_SPEC_SIZE..TARGET_SPEC_SIZE + t.params.len()]
            .copy_from_slice(t.params.as_bytes());
        specs.extend(spec);
    }
    let size = DM_IOCTL_SIZE + specs.len() + room;
    let data_size = u32::try_from(size).map_err(|_| invalid("table", "too large"))?;
    let target_count =
        u32::try_from(targets.len()).map_err(|_| invalid("table", "too many targets"))?;
    let mut buf = vec![0u8; size];
    for (i, v) in VERSION.iter().enumerate() {
        put_u32(&mut buf, OFF_VERSION + 4 * i, *v);
    }
    put_u32(&mut buf, OFF_DATA_SIZE, data_size);
    put_u32(&mut buf, OFF_DATA_START, DM_IOCTL_SIZE as u32);
    put_u32(&mut buf, OFF_TARGET_COUNT, target_count);
    put_u32(&mut buf, OFF_FLAGS, flags);
    put_str(&mut buf, OFF_NAME, NAME_LEN, name, "device-mapper name")?;
    if let Some(uuid) = uuid {
        put_str(&mut buf, OFF_UUID, UUID_LEN, uuid, "device-mapper uuid")?;
    }
    buf[DM_IOCTL_SIZE..DM_IOCTL_SIZE + specs.len()].copy_from_slice(&specs);
    Ok(buf)
}

/// The header fields the kernel fills in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub version: [u32; 3],
    pub data_size: u32,
    pub target_count: u32,
    pub open_count: i32,
    pub flags: u32,
    pub event_nr: u32,
    /// `huge_encode_dev` of the device number; see [`decode_dev`].
    pub dev: u64,
    pub name: String,
    pub uuid: String,
}

pub fn decode(buf: &[u8]) -> std::result::Result<Reply, String> {
    if buf.len() < DM_IOCTL_SIZE {
        return Err(format!(
            "reply of {} bytes is shorter than struct dm_ioctl",
            buf.len()
        ));
    }
    Ok(Reply {
        version: [get_u32(buf, 0), get_u32(buf, 4), get_u32(buf, 8)],
        data_size: get_u32(buf, OFF_DATA_SIZE),
        target_count: get_u32(buf, OFF_TARGET_COUNT),
        open_count: get_u32(buf, OFF_OPEN_COUNT) as i32,
        flags: get_u32(buf, OFF_FLAGS),
        event_nr: get_u32(buf, OFF_EVENT_NR),
        dev: get_u64(buf, OFF_DEV),
        name: get_str(buf, OFF_NAME, NAME_LEN),
        uuid: get_str(buf, OFF_UUID, UUID_LEN),
    })
}

/// Splits the kernel's `huge_encode_dev` (= `new_encode_dev`): minor bits 0-7 in bits 0-7,
/// major in bits 8-19, minor bits 8-19 in bits 20-31.
pub const fn decode_dev(dev: u64) -> (u32, u32) {
    let dev = dev as u32;
    let major = (dev & 0xf_ff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xf_ff00);
    (major, minor)
}

/// What an errno usually means for each ioctl; the kernel's own words go to its log only.
fn hint(cmd: Command, errno: Option<i32>) -> &'static str {
    match (cmd.nr, errno) {
        (_, Some(libc::EPERM) | Some(libc::EACCES)) => "device-mapper needs CAP_SYS_ADMIN",
        (_, Some(libc::ENOTTY)) => "not a device-mapper control device",
        (0, Some(libc::EINVAL)) => "the kernel's device-mapper interface is not version 4",
        (3, Some(libc::EBUSY)) => "a device with this name or uuid already exists",
        (4, Some(libc::EBUSY)) => "the device is still open",
        (4 | 6 | 7 | 9, Some(libc::ENXIO)) => "no device-mapper device has this name",
        (9, Some(libc::ENOMEM)) => "the kernel could not allocate the table",
        (9, Some(_)) => {
            "the kernel rejected the table; its reason is in the kernel log \
             (\"device-mapper: table: ...\"): check the target is built in and its parameters"
        }
        (6, Some(libc::EINVAL)) => "the device has no table to activate",
        _ => "",
    }
}

/// An open `/dev/mapper/control`.
pub struct Control {
    file: File,
    path: PathBuf,
}

impl Control {
    pub fn open(roots: &Roots) -> Result<Control> {
        let path = roots.dev.join("mapper/control");
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::NotFound {
                    BlockError::Device {
                        path: path.clone(),
                        reason: "missing: this kernel has no device-mapper \
                                 (CONFIG_BLK_DEV_DM) or /dev is not devtmpfs"
                            .into(),
                    }
                } else {
                    io_err("open", &path)(source)
                }
            })?;
        Ok(Control { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs one ioctl on `buf` (from [`encode`]) and decodes the reply header.
    pub fn call(&self, cmd: Command, target: &str, buf: &mut [u8]) -> Result<Reply> {
        // The kernel reads data_size from the header and copies that many bytes in and out;
        // it must never exceed the buffer.
        if buf.len() < DM_IOCTL_SIZE || get_u32(buf, OFF_DATA_SIZE) as usize != buf.len() {
            return Err(invalid(
                "device-mapper request",
                "header size does not match buffer",
            ));
        }
        // SAFETY: the pointer is valid for reads and writes of buf.len() bytes, which is the
        // data_size the kernel will use; nothing else aliases buf during the call.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                cmd.request() as libc::Ioctl,
                buf.as_mut_ptr(),
            )
        };
        if rc < 0 {
            let source = io::Error::last_os_error();
            return Err(BlockError::Ioctl {
                ioctl: cmd.name,
                target: target.to_owned(),
                hint: hint(cmd, source.raw_os_error()),
                source,
            });
        }
        decode(buf).map_err(|reason| BlockError::BadReply {
            ioctl: cmd.name,
            target: target.to_owned(),
            reason,
        })
    }

    fn simple(&self, cmd: Command, name: &str, uuid: Option<&str>, flags: u32) -> Result<Reply> {
        let mut buf = encode(name, uuid, flags, &[], 0)?;
        self.call(cmd, name, &mut buf)
    }

    /// The kernel's interface version; fails unless the major is ours.
    pub fn version(&self) -> Result<[u32; 3]> {
        let reply = self.simple(DM_VERSION, "", None, 0)?;
        if reply.version[0] != VERSION[0] {
            return Err(BlockError::BadReply {
                ioctl: DM_VERSION.name,
                target: self.path.display().to_string(),
                reason: format!("kernel speaks version {:?}, we need 4.x", reply.version),
            });
        }
        Ok(reply.version)
    }

    /// Creates an empty device (no table yet).
    pub fn create(&self, name: &str, uuid: &str) -> Result<Reply> {
        self.simple(DM_DEV_CREATE, name, Some(uuid), 0)
    }

    /// Loads `targets` as the device's inactive table; `flags` carries READONLY_FLAG.
    pub fn load_table(&self, name: &str, flags: u32, targets: &[Target]) -> Result<Reply> {
        let mut buf = encode(name, None, flags, targets, 0)?;
        self.call(DM_TABLE_LOAD, name, &mut buf)
    }

    /// Swaps in the loaded table and lets I/O through (DM_DEV_SUSPEND without SUSPEND_FLAG).
    pub fn resume(&self, name: &str) -> Result<Reply> {
        self.simple(DM_DEV_SUSPEND, name, None, 0)
    }

    /// The device's status, or `None` if there is no device of that name.
    pub fn status(&self, name: &str) -> Result<Option<Reply>> {
        match self.simple(DM_DEV_STATUS, name, None, 0) {
            Ok(reply) => Ok(Some(reply)),
            Err(BlockError::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::ENXIO) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes a device. Retries briefly on EBUSY: something that probed the new device
    /// (blkid, a racing reader) may hold it open for a moment.
    pub fn remove(&self, name: &str) -> Result<()> {
        let mut tries = 0;
        loop {
            match self.simple(DM_DEV_REMOVE, name, None, 0) {
                Ok(_) => return Ok(()),
                Err(BlockError::Ioctl { ref source, .. })
                    if source.raw_os_error() == Some(libc::EBUSY) && tries < 20 =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// An active device-mapper device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmDevice {
    pub name: String,
    pub major: u32,
    pub minor: u32,
    /// `/dev/dm-<minor>`, which devtmpfs creates (the `/dev/mapper/<name>` link is udev's).
    pub path: PathBuf,
}

/// Creates device `name` with a read-only table of `targets` and activates it. On any failure
/// after the device exists it is removed again, so a retry does not hit EBUSY.
pub fn create_read_only(
    roots: &Roots,
    name: &str,
    uuid: &str,
    targets: &[Target],
) -> Result<DmDevice> {
    let control = Control::open(roots)?;
    control.version()?;
    control.create(name, uuid)?;
    let activate = || -> Result<DmDevice> {
        control.load_table(name, READONLY_FLAG, targets)?;
        let reply = control.resume(name)?;
        if reply.flags & ACTIVE_PRESENT_FLAG == 0 {
            return Err(BlockError::BadReply {
                ioctl: DM_DEV_SUSPEND.name,
                target: name.to_owned(),
                reason: "the device has no active table after resume".into(),
            });
        }
        let (major, minor) = decode_dev(reply.dev);
        let path = roots.dev.join(format!("dm-{minor}"));
        super::sysfs::wait_for_node(roots, &path, Duration::from_secs(5))?;
        Ok(DmDevice {
            name: name.to_owned(),
            major,
            minor,
            path,
        })
    };
    match activate() {
        Ok(device) => Ok(device),
        Err(e) => {
            // The first error is the one worth reporting; a failed cleanup is secondary.
            let _ = control.remove(name);
            Err(e)
        }
    }
}

/// Removes device `name`.
pub fn remove(roots: &Roots, name: &str) -> Result<()> {
    Control::open(roots)?.remove(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_header() {
        // Values from strace of dmsetup/veritysetup.
        assert_eq!(DM_VERSION.request(), 0xc138_fd00);
        assert_eq!(DM_DEV_CREATE.request(), 0xc138_fd03);
        assert_eq!(DM_DEV_REMOVE.request(), 0xc138_fd04);
        assert_eq!(DM_DEV_SUSPEND.request(), 0xc138_fd06);
        assert_eq!(DM_DEV_STATUS.request(), 0xc138_fd07);
        assert_eq!(DM_TABLE_LOAD.request(), 0xc138_fd09);
    }

    #[test]
    fn header_layout_is_golden() {
        let buf = encode("keel-root", Some("KEEL-1"), READONLY_FLAG, &[], 0).unwrap();
        assert_eq!(buf.len(), 312);
        let mut want = vec![0u8; 312];
        want[0..12].copy_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        want[12..16].copy_from_slice(&[0x38, 0x01, 0, 0]); // data_size 312
        want[16..20].copy_from_slice(&[0x38, 0x01, 0, 0]); // data_start 312
        want[28] = 1; // flags
        want[48..57].copy_from_slice(b"keel-root");
        want[176..182].copy_from_slice(b"KEEL-1");
        assert_eq!(buf, want);
    }

    #[test]
    fn table_load_layout_is_golden() {
        let target = Target {
            start: 0,
            length: 16384,
            target_type: "verity".into(),
            params: "1 7:0 7:0 4096 4096 2048 2049 sha256 ab cd".into(),
        };
        let buf = encode("keel-root", None, READONLY_FLAG, &[target], 0).unwrap();
        // 42 parameter bytes + NUL after the 40-byte spec: 83, padded to 88.
        assert_eq!(buf.len(), 312 + 88);
        assert_eq!(&buf[12..16], &400u32.to_ne_bytes());
        assert_eq!(&buf[16..20], &312u32.to_ne_bytes());
        assert_eq!(&buf[20..24], &1u32.to_ne_bytes()); // target_count
        let spec = &buf[312..];
        assert_eq!(&spec[0..8], &0u64.to_ne_bytes());
        assert_eq!(&spec[8..16], &16384u64.to_ne_bytes());
        assert_eq!(&spec[16..20], &[0, 0, 0, 0]); // status
        assert_eq!(&spec[20..24], &88u32.to_ne_bytes()); // next
        assert_eq!(&spec[24..40], b"verity\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(&spec[40..82], b"1 7:0 7:0 4096 4096 2048 2049 sha256 ab cd");
        assert_eq!(&spec[82..88], &[0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn params_are_nul_terminated_even_when_already_aligned() {
        // 40 + 7 + 1 = 48: aligned, and the NUL fits exactly.
        let t = |params: &str| Target {
            start: 0,
            length: 1,
            target_type: "linear".into(),
            params: params.into(),
        };
        let buf = encode("x", None, 0, &[t("7:0 123")], 0).unwrap();
        assert_eq!(buf.len() - 312, 48);
        assert_eq!(buf[312 + 47], 0);
        // 40 + 8 + 1 = 49: padded to 56.
        let buf = encode("x", None, 0, &[t("7:0 1234"), t("7:0 1")], 0).unwrap();
        assert_eq!(&buf[312 + 20..312 + 24], &56u32.to_ne_bytes());
        assert_eq!(&buf[312 + 56..312 + 64], &0u64.to_ne_bytes()); // second spec's start
        assert_eq!(buf.len(), 312 + 56 + 48);
    }

    #[test]
    fn bad_names_are_refused_before_the_kernel_sees_them() {
        assert!(encode(&"n".repeat(127), None, 0, &[], 0).is_ok());
        let e = encode(&"n".repeat(128), None, 0, &[], 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("longer than 127 bytes"), "{e}");
        assert!(encode("a/b", None, 0, &[], 0).is_err());
        assert!(encode("a\0b", None, 0, &[], 0).is_err());
        assert!(encode("a", Some(&"u".repeat(129)), 0, &[], 0).is_err());
        let t = Target {
            start: 0,
            length: 1,
            target_type: "a-very-long-target".into(),
            params: String::new(),
        };
        assert!(encode("a", None, 0, &[t], 0).is_err());
    }

    #[test]
    fn replies_decode_and_dev_numbers_split_like_the_kernel() {
        let mut buf = encode("keel-root", Some("U"), 0, &[], 0).unwrap();
        buf[0..4].copy_from_slice(&4u32.to_ne_bytes());
        buf[4..8].copy_from_slice(&48u32.to_ne_bytes());
        buf[28..32].copy_from_slice(&(ACTIVE_PRESENT_FLAG | READONLY_FLAG).to_ne_bytes());
        // new_encode_dev(MKDEV(253, 0x12345)): (0x45) | (253 << 8) | (0x12300 << 12)
        let dev: u64 = 0x45 | (253 << 8) | (0x12300 << 12);
        buf[40..48].copy_from_slice(&dev.to_ne_bytes());
        let reply = decode(&buf).unwrap();
        assert_eq!(reply.version, [4, 48, 0]);
        assert_eq!(reply.flags, ACTIVE_PRESENT_FLAG | READONLY_FLAG);
        assert_eq!(
            (reply.name.as_str(), reply.uuid.as_str()),
            ("keel-root", "U")
        );
        assert_eq!(decode_dev(reply.dev), (253, 0x12345));
        assert_eq!(decode_dev(253 << 8), (253, 0));
        assert_eq!(decode_dev((254 << 8) | 7), (254, 7));
        assert!(decode(&buf[..311]).is_err());
    }

    #[test]
    fn a_missing_control_device_says_so() {
        let roots = Roots {
            sys: "/nonexistent/sys".into(),
            dev: "/nonexistent/dev".into(),
        };
        let e = create_read_only(&roots, "keel-root", "u", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/dev/mapper/control") && e.contains("device-mapper"),
            "{e}"
        );
    }
}
