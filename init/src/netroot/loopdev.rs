//! A read-only loop device over the verified `root.img` in RAM, for dm-verity to sit on
//! (`LOOP_CTL_GET_FREE`, then `LOOP_CONFIGURE`, Linux 5.8+).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CONTROL: &str = "/dev/loop-control";
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

#[derive(Debug, thiserror::Error)]
#[error("loop device {path}: {what}: {source}")]
pub struct LoopError {
    path: String,
    what: &'static str,
    source: std::io::Error,
}

fn err(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> LoopError {
    let path = path.display().to_string();
    move |source| LoopError { path, what, source }
}

/// Attaches `file` read-only to a free loop device and returns its node. The device keeps
/// the file (and so its RAM) until detached, also after the file is unlinked.
pub fn attach_read_only(file: &File) -> Result<PathBuf, LoopError> {
    let control_path = Path::new(LOOP_CONTROL);
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(control_path)
        .map_err(err(control_path, "open"))?;
    // SAFETY: a plain ioctl without arguments on a file we own.
    let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    if n < 0 {
        return Err(err(control_path, "LOOP_CTL_GET_FREE")(
            std::io::Error::last_os_error(),
        ));
    }
    let path = PathBuf::from(format!("/dev/loop{n}"));
    let device = OpenOptions::new()
        .read(true)
        .open(&path)
        .map_err(err(&path, "open"))?;
    let mut info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_READ_ONLY,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    for (d, s) in info.lo_file_name.iter_mut().zip(b"root.img") {
        *d = *s;
    }
    let config = LoopConfig {
        fd: u32::try_from(file.as_raw_fd()).unwrap_or(u32::MAX),
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // SAFETY: `config` is a live `struct loop_config` the kernel only reads.
    let rc = unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            LOOP_CONFIGURE as _,
            &config as *const LoopConfig,
        )
    };
    if rc < 0 {
        return Err(err(&path, "LOOP_CONFIGURE")(std::io::Error::last_os_error()));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
