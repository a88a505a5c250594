//! Fixed VHD writer: the disk's bytes followed by a 512-byte footer (Microsoft "Virtual Hard
//! Disk Image Format Specification", version 1.0).
//!
//! The disk is padded to a size that is both a whole number of MiB, which Azure requires, and
//! exactly `cylinders * heads * sectors` of the footer's geometry. The second condition matters
//! because readers disagree on which size field to trust: Hyper-V and Azure use "current size",
//! while Virtual PC, and qemu for images from unknown creators such as ours, use the CHS
//! geometry, which the spec's algorithm usually rounds down. With the two equal, every reader
//! sees the same disk and no data past the geometry is lost. Above the largest geometry
//! (about 127 GiB) readers fall back to current size, so MiB alignment alone suffices there.
//!
//! The padding is written as a hole, as are zero blocks of the image, so the 1-2 GiB file takes
//! little space on the host.

use std::io::{Seek, Write};
use std::path::Path;

use uuid::Uuid;

use super::{ConvertOptions, FormatError, IoContext, OutputFormat, RawImage, Written};
use crate::io::HashingWriter;

const SECTOR: u64 = 512;
const MIB: u64 = 1024 * 1024;
/// 65535 cylinders, 16 heads, 255 sectors per track: the largest geometry a footer can hold.
const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;
/// Hyper-V's documented VHD size limit; Azure's limit for uploaded VHDs is lower still.
const MAX_SIZE: u64 = 2040 * 1024 * MIB;

/// Seconds between the Unix epoch and the VHD epoch, 2000-01-01T00:00:00Z.
const VHD_EPOCH: u64 = 946_684_800;

const FOOTER_LEN: usize = 512;
const CREATOR_APP: &[u8; 4] = b"keel";
/// Fixed rather than the crate version, so output depends on input and options only.
const CREATOR_VERSION: u32 = 0x0001_0000;
/// The spec defines only "Wi2k" and "Mac "; Azure's tooling writes "Wi2k".
const CREATOR_HOST_OS: &[u8; 4] = b"Wi2k";
const DISK_TYPE_FIXED: u32 = 2;

/// Namespace for deriving the footer's unique id from [`ConvertOptions::unique_id_seed`].
const UNIQUE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b65_656c_7668_4400_8000_7665_7273_6964);

pub(super) fn write<W: Write + Seek>(
    image: &RawImage,
    out: &mut HashingWriter<W>,
    dest: &Path,
    opts: &ConvertOptions,
) -> Result<Written, FormatError> {
    let disk_size = disk_size(image.size()).ok_or_else(|| FormatError::TooLarge {
        path: image.path().to_owned(),
        format: OutputFormat::Vhd,
        size: image.size(),
    })?;
    let data_bytes = super::copy_sparse(image, out, disk_size, dest)?;
    out.write_all(&footer(disk_size, opts)).at(dest, "write")?;
    Ok(Written {
        virtual_size: disk_size,
        data_bytes,
    })
}

/// The smallest disk size of at least `raw_size` bytes that is a whole number of MiB and
/// whose CHS geometry describes it exactly (or that is past the largest geometry).
pub(super) fn disk_size(raw_size: u64) -> Option<u64> {
    let mut size = raw_size.max(1).checked_next_multiple_of(MIB)?;
    // Terminates: sizes past MAX_CHS_SECTORS always qualify. In practice it takes at most 255
    // steps, as exact sizes are multiples of 63 MiB (or 255 MiB above ~31 GiB).
    while size <= MAX_SIZE {
        let sectors = size / SECTOR;
        let (c, h, s) = geometry(sectors);
        if sectors >= MAX_CHS_SECTORS || u64::from(c) * u64::from(h) * u64::from(s) == sectors {
            return Some(size);
        }
        size += MIB;
    }
    None
}

/// CHS geometry as the VHD specification's appendix computes it from a sector count.
fn geometry(total_sectors: u64) -> (u16, u8, u8) {
    let total = total_sectors.min(MAX_CHS_SECTORS);
    let (sectors_per_track, heads, cylinders_times_heads);
    if total >= 65535 * 16 * 63 {
        sectors_per_track = 255;
        heads = 16;
        cylinders_times_heads = total / sectors_per_track;
    } else {
        let mut spt = 17;
        let mut cth = total / spt;
        let mut h = cth.div_ceil(1024).max(4);
        if cth >= h * 1024 || h > 16 {
            spt = 31;
            h = 16;
            cth = total / spt;
        }
        if cth >= h * 1024 {
            spt = 63;
            h = 16;
            cth = total / spt;
        }
        sectors_per_track = spt;
        heads = h;
        cylinders_times_heads = cth;
    }
    let cylinders = cylinders_times_heads / heads;
    (
        u16::try_from(cylinders).unwrap_or(u16::MAX),
        u8::try_from(heads).unwrap_or(u8::MAX),
        u8::try_from(sectors_per_track).unwrap_or(u8::MAX),
    )
}

fn footer(disk_size: u64, opts: &ConvertOptions) -> [u8; FOOTER_LEN] {
    let mut f = [0u8; FOOTER_LEN];
    let mut put = |at: usize, bytes: &[u8]| f[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, b"conectix");
    // Features: the "reserved" bit, which the spec says must always be set.
    put(8, &2u32.to_be_bytes());
    put(12, &0x0001_0000u32.to_be_bytes());
    // Data offset: fixed disks have no dynamic header.
    put(16, &u64::MAX.to_be_bytes());
    let timestamp = opts.source_date_epoch.saturating_sub(VHD_EPOCH);
    put(
        24,
        &u32::try_from(timestamp).unwrap_or(u32::MAX).to_be_bytes(),
    );
    put(28, CREATOR_APP);
    put(32, &CREATOR_VERSION.to_be_bytes());
    put(36, CREATOR_HOST_OS);
    put(40, &disk_size.to_be_bytes()); // original size
    put(48, &disk_size.to_be_bytes()); // current size
    let (c, h, s) = geometry(disk_size / SECTOR);
    put(56, &c.to_be_bytes());
    put(58, &[h, s]);
    put(60, &DISK_TYPE_FIXED.to_be_bytes());
    // 64: checksum, filled in below.
    let id = Uuid::new_v5(&UNIQUE_ID_NAMESPACE, &opts.unique_id_seed);
    put(68, id.as_bytes());
    // 84: saved state: no. 85..512: reserved, zero.
    let sum = f
        .iter()
        .fold(0u32, |acc, &b| acc.wrapping_add(u32::from(b)));
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_the_spec_examples() {
        // Values from an independent transcription of the spec's algorithm.
        assert_eq!(geometry(MIB * 64 / SECTOR), (963, 8, 17));
        assert_eq!(geometry(MIB * 1024 / SECTOR), (2080, 16, 63));
        assert_eq!(geometry(2 * 1024 * MIB / SECTOR), (4161, 16, 63));
        assert_eq!(geometry(u64::MAX), (65535, 16, 255));
    }

    #[test]
    fn disk_size_is_mib_aligned_and_chs_exact() {
        for raw in [
            1,
            MIB,
            64 * MIB + 1536,
            1024 * MIB,
            2 * 1024 * MIB - 4096,
            40 * 1024 * MIB,
            200 * 1024 * MIB + 7,
        ] {
            let size = disk_size(raw).unwrap();
            assert!(size >= raw, "{raw}");
            assert_eq!(size % MIB, 0, "{raw}");
            let sectors = size / SECTOR;
            let (c, h, s) = geometry(sectors);
            let chs = u64::from(c) * u64::from(h) * u64::from(s);
            assert!(
                chs == sectors || sectors >= MAX_CHS_SECTORS,
                "{raw}: {size}"
            );
            // The smallest such size: nothing below it qualifies.
            let mut smaller = size - MIB;
            while smaller >= raw && smaller > 0 {
                let (c, h, s) = geometry(smaller / SECTOR);
                assert_ne!(u64::from(c) * u64::from(h) * u64::from(s), smaller / SECTOR);
                smaller -= MIB;
            }
        }
        assert_eq!(disk_size(MAX_SIZE + 1), None);
    }

    #[test]
    fn footer_checksum_and_fields() {
        let opts = ConvertOptions {
            source_date_epoch: VHD_EPOCH + 1000,
            unique_id_seed: [7; 16],
            private: false,
        };
        let f = footer(63 * MIB, &opts);
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(u32::from_be_bytes(f[24..28].try_into().unwrap()), 1000);
        let stored = u32::from_be_bytes(f[64..68].try_into().unwrap());
        let mut zeroed = f;
        zeroed[64..68].fill(0);
        let sum: u32 = zeroed.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(stored, !sum);
        // Timestamps before 2000 clamp instead of wrapping.
        let early = footer(
            63 * MIB,
            &ConvertOptions {
                source_date_epoch: 0,
                ..opts
            },
        );
        assert_eq!(&early[24..28], &[0; 4]);
    }
}
