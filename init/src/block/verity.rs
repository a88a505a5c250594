//! The dm-verity table for a slot, from the signed manifest's [`Verity`] parameters.
//!
//! A slot holds the squashfs (data blocks) followed, at `hash_offset`, by what
//! `veritysetup format --hash-offset` writes: one superblock block, then the hash tree. The
//! kernel target does not read the superblock, so the table points it at the block after.

use std::path::Path;

use keel_contract::manifest::Verity;

use super::dm::{self, DmDevice, Target};
use super::{BlockError, Result, Roots, io_err};

/// What the kernel does when a block does not match the hash tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCorruption {
    /// The read fails with EIO (the target's default: no optional arguments). For tests, and
    /// for anything that must not reboot the machine.
    Eio,
    /// The machine restarts (`restart_on_corruption`): on a node, a tampered or rotting root
    /// must not keep running; the boot counter then falls back to the other slot.
    Restart,
}

impl OnCorruption {
    fn optional_args(self) -> &'static str {
        match self {
            OnCorruption::Eio => "",
            OnCorruption::Restart => " 1 restart_on_corruption",
        }
    }
}

fn invalid(reason: impl Into<String>) -> BlockError {
    BlockError::Invalid {
        what: "verity parameters",
        reason: reason.into(),
    }
}

fn check_block_size(what: &str, size: u32) -> Result<()> {
    if size < 512 || !size.is_power_of_two() {
        return Err(invalid(format!(
            "{what} {size} is not a power of two of at least 512"
        )));
    }
    Ok(())
}

/// The single `verity` target covering the slot's data. `data_dev` and `hash_dev` are what
/// the kernel accepts for a device: `MAJOR:MINOR` (see [`dev_spec`]) or a /dev path.
pub fn verity_target(
    data_dev: &str,
    hash_dev: &str,
    v: &Verity,
    on_corruption: OnCorruption,
) -> Result<Target> {
    if v.algorithm != "sha256" {
        return Err(invalid(format!("algorithm {:?}, only sha256", v.algorithm)));
    }
    check_block_size("data block size", v.data_block_size)?;
    check_block_size("hash block size", v.hash_block_size)?;
    if v.data_blocks == 0 {
        return Err(invalid("no data blocks"));
    }
    let hbs = u64::from(v.hash_block_size);
    if !v.hash_offset.is_multiple_of(hbs) {
        return Err(invalid(format!(
            "hash offset {} is not a multiple of the hash block size {hbs}",
            v.hash_offset
        )));
    }
    let data_bytes = v
        .data_blocks
        .checked_mul(u64::from(v.data_block_size))
        .ok_or_else(|| invalid("data size overflows"))?;
    if data_dev == hash_dev && v.hash_offset < data_bytes {
        return Err(invalid(format!(
            "hash offset {} lies inside the {data_bytes} bytes of data",
            v.hash_offset
        )));
    }
    // An empty salt is written "-" in the table.
    let salt = if v.salt.is_empty() {
        "-"
    } else {
        v.salt.as_str()
    };
    if salt != "-" && (salt.len() % 2 != 0 || !salt.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(invalid(format!("salt {salt:?} is not hex")));
    }
    for dev in [data_dev, hash_dev] {
        if dev.is_empty() || dev.contains(char::is_whitespace) {
            return Err(invalid(format!("device {dev:?}")));
        }
    }
    // The superblock takes the first hash block; the tree starts after it.
    let hash_start = v.hash_offset / hbs + 1;
    Ok(Target {
        start: 0,
        length: data_bytes / 512,
        target_type: "verity".into(),
        params: format!(
            "1 {data_dev} {hash_dev} {} {} {} {hash_start} sha256 {} {salt}{}",
            v.data_block_size,
            v.hash_block_size,
            v.data_blocks,
            v.root_hash.to_hex(),
            on_corruption.optional_args()
        ),
    })
}

/// `MAJOR:MINOR` of a block device node. Tables name devices by number so they do not depend
/// on which paths exist in /dev.
pub fn dev_spec(path: &Path) -> Result<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).map_err(io_err("stat", path))?;
    if !meta.file_type().is_block_device() {
        return Err(BlockError::Device {
            path: path.to_path_buf(),
            reason: "not a block device".into(),
        });
    }
    Ok(format!(
        "{}:{}",
        libc::major(meta.rdev()),
        libc::minor(meta.rdev())
    ))
}

/// Maps `slot` (a partition holding data then hash tree) as the read-only verified device
/// `name` and returns its node, `/dev/dm-N`.
pub fn create_verity_root(
    roots: &Roots,
    name: &str,
    uuid: &str,
    slot: &Path,
    v: &Verity,
    on_corruption: OnCorruption,
) -> Result<DmDevice> {
    let dev = dev_spec(slot)?;
    let target = verity_target(&dev, &dev, v, on_corruption)?;
    dm::create_read_only(roots, name, uuid, &[target])
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_contract::manifest::Sha256Digest;

    fn params() -> Verity {
        Verity {
            algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 2048,
            hash_offset: 8 << 20,
            salt: "0a".repeat(32),
            root_hash: Sha256Digest([0xab; 32]),
            uuid: "00000000-0000-0000-0000-000000000000".into(),
        }
    }

    #[test]
    fn table_matches_veritysetup() {
        let t = verity_target("254:2", "254:2", &params(), OnCorruption::Restart).unwrap();
        assert_eq!(
            (t.start, t.length, t.target_type.as_str()),
            (0, 16384, "verity")
        );
        assert_eq!(
            t.params,
            format!(
                "1 254:2 254:2 4096 4096 2048 2049 sha256 {} {} 1 restart_on_corruption",
                "ab".repeat(32),
                "0a".repeat(32)
            )
        );
        let t = verity_target("254:2", "254:2", &params(), OnCorruption::Eio).unwrap();
        assert!(t.params.ends_with(&"0a".repeat(32)), "{}", t.params);
    }

    #[test]
    fn other_block_sizes_and_no_salt() {
        let mut v = params();
        v.data_block_size = 1024;
        v.hash_block_size = 512;
        v.data_blocks = 10;
        v.hash_offset = 10240;
        v.salt = String::new();
        let t = verity_target("a", "b", &v, OnCorruption::Eio).unwrap();
        assert_eq!(t.length, 20);
        assert!(
            t.params.starts_with("1 a b 1024 512 10 21 sha256 "),
            "{}",
            t.params
        );
        assert!(t.params.ends_with(" -"), "{}", t.params);
    }

    #[test]
    fn bad_parameters_are_refused() {
        let bad = |f: &dyn Fn(&mut Verity)| {
            let mut v = params();
            f(&mut v);
            verity_target("1:1", "1:1", &v, OnCorruption::Eio).unwrap_err()
        };
        bad(&|v| v.algorithm = "sha1".into());
        bad(&|v| v.data_block_size = 3000);
        bad(&|v| v.hash_block_size = 256);
        bad(&|v| v.data_blocks = 0);
        bad(&|v| v.hash_offset = 4097);
        bad(&|v| v.hash_offset = 4096);
        bad(&|v| v.salt = "xyz".into());
        assert!(verity_target("1:1", "bad dev", &params(), OnCorruption::Eio).is_err());
    }
}
