//! Google Compute Engine image: a gzip-compressed tar holding one file, `disk.raw`.
//!
//! GCE requires the tar in GNU's "oldgnu" format and recommends storing the disk as a sparse
//! file (`tar --format=oldgnu -S`). We write the same thing GNU tar writes for that command: one
//! old-GNU sparse entry (type `S`) whose header carries the map of data regions, continued in
//! extension blocks when more than four regions are needed, followed by the regions' bytes.
//! Zero blocks of the image are left out of the archive entirely, so neither the compressor
//! nor the importer spends time on gigabytes of zeros. As GNU tar does, the map always ends
//! with a zero-length region at the file size, which is how readers learn the size of a file
//! that ends in a hole, and the archive is padded to GNU tar's 10 KiB record size.
//!
//! The regions come from the block map, so all but the last are multiples of 64 KiB: readers
//! that expect regions to be packed back to back (the `tar` crate) and readers that expect each
//! region padded to 512 bytes (GNU tar) therefore agree.

use std::io::Write;
use std::path::Path;

use flate2::{Compression, GzBuilder};

use super::{ConvertOptions, Extent, FormatError, IoContext, RawImage, Written};

const BLOCK: usize = 512;
/// GNU tar's default blocking factor (20) times the block size.
const RECORD: u64 = 20 * BLOCK as u64;

const NAME: &[u8] = b"disk.raw";
const MODE: u64 = 0o644;
const OWNER: &[u8] = b"root";
const TYPE_GNU_SPARSE: u8 = b'S';
/// "ustar  \0": the old GNU magic and version, which is what makes the format "oldgnu".
const OLDGNU_MAGIC: &[u8; 8] = b"ustar  \0";

/// Sparse map slots in the main header and in each extension block.
const HEADER_SPARSE_SLOTS: usize = 4;
const EXTENSION_SPARSE_SLOTS: usize = 21;

/// gzip's code for Unix; fixed so the header does not vary with the build host.
const GZIP_OS_UNIX: u8 = 3;
/// Level 1: most of a Keel disk is an already compressed squashfs, where higher levels only
/// cost time. On a 2 GiB test image with 500 MiB of half-entropy data, level 6 took 3x as long
/// (23 s against 7 s) for an archive 2.5% smaller.
const GZIP_LEVEL: u32 = 1;

pub(super) fn write<W: Write>(
    image: &RawImage,
    out: &mut W,
    dest: &Path,
    opts: &ConvertOptions,
) -> Result<Written, FormatError> {
    let extents = image.data_extents()?;
    let data_bytes: u64 = extents.iter().map(|e| e.len).sum();

    // mtime 0 means "no timestamp" to gzip; the tar entry carries the real one.
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNIX)
        .write(out, Compression::new(GZIP_LEVEL));

    let headers = sparse_headers(&extents, image.size(), data_bytes, opts.source_date_epoch);
    gz.write_all(&headers).at(dest, "write")?;
    let mut archive_len = headers.len() as u64;
    for &extent in &extents {
        image.copy_extent(extent, &mut gz, dest)?;
        archive_len += extent.len;
    }
    // Pad the member to whole blocks, add the two-block end-of-archive marker and fill the
    // last record.
    let end =
        (archive_len.next_multiple_of(BLOCK as u64) + 2 * BLOCK as u64).next_multiple_of(RECORD);
    let zeros = [0u8; BLOCK];
    let mut left = end - archive_len;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        gz.write_all(&zeros[..n]).at(dest, "write")?;
        left -= n as u64;
    }
    gz.try_finish().at(dest, "write")?;

    Ok(Written {
        virtual_size: image.size(),
        data_bytes,
    })
}

/// The entry header and its sparse extension blocks.
fn sparse_headers(extents: &[Extent], real_size: u64, data_bytes: u64, mtime: u64) -> Vec<u8> {
    let mut map: Vec<(u64, u64)> = extents.iter().map(|e| (e.offset, e.len)).collect();
    map.push((real_size, 0));

    let mut header = [0u8; BLOCK];
    header[..NAME.len()].copy_from_slice(NAME);
    put_number(&mut header[100..108], MODE);
    put_number(&mut header[108..116], 0); // uid
    put_number(&mut header[116..124], 0); // gid
    put_number(&mut header[124..136], data_bytes);
    put_number(&mut header[136..148], mtime);
    header[156] = TYPE_GNU_SPARSE;
    header[257..265].copy_from_slice(OLDGNU_MAGIC);
    header[265..265 + OWNER.len()].copy_from_slice(OWNER); // uname
    header[297..297 + OWNER.len()].copy_from_slice(OWNER); // gname
    let (first, rest) = map.split_at(map.len().min(HEADER_SPARSE_SLOTS));
    put_sparse(&mut header[386..482], first);
    header[482] = u8::from(!rest.is_empty());
    put_number(&mut header[483..495], real_size);
    put_checksum(&mut header);

    let mut out = header.to_vec();
    let mut chunks = rest.chunks(EXTENSION_SPARSE_SLOTS).peekable();
    while let Some(chunk) = chunks.next() {
        let mut ext = [0u8; BLOCK];
        put_sparse(&mut ext[..504], chunk);
        ext[504] = u8::from(chunks.peek().is_some());
        out.extend_from_slice(&ext);
    }
    out
}

fn put_sparse(slots: &mut [u8], map: &[(u64, u64)]) {
    for (slot, &(offset, len)) in slots.chunks_exact_mut(24).zip(map) {
        put_number(&mut slot[..12], offset);
        put_number(&mut slot[12..], len);
    }
}

/// Writes `value` as GNU tar does: zero-padded octal and a NUL when it fits, otherwise GNU's
/// base-256 form (high bit set, big-endian binary), which GNU tar reads in every numeric
/// field and which disks of 8 GiB and more need for their sizes and offsets.
fn put_number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let octal = format!("{value:0digits$o}");
    if octal.len() == digits {
        field[..digits].copy_from_slice(octal.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        let bytes = value.to_be_bytes();
        let at = field.len() - bytes.len();
        field[at..].copy_from_slice(&bytes);
        field[0] |= 0x80;
    }
}

/// The checksum is the byte sum of the header with its own field read as spaces, stored as
/// six octal digits, a NUL and a space.
fn put_checksum(header: &mut [u8; BLOCK]) {
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    let field = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(field.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_switch_to_base_256_when_octal_overflows() {
        let mut f = [0u8; 12];
        put_number(&mut f, 0o777);
        assert_eq!(&f, b"00000000777\0");
        put_number(&mut f, (1 << 33) - 1);
        assert_eq!(&f, b"77777777777\0");
        put_number(&mut f, 1 << 33);
        assert_eq!(f, [0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
        let mut mode = [0u8; 8];
        put_number(&mut mode, 0o644);
        assert_eq!(&mode, b"0000644\0");
    }

    #[test]
    fn long_maps_continue_in_extension_blocks() {
        let extents: Vec<Extent> = (0..30)
            .map(|i| Extent {
                offset: i * 2 * 65536,
                len: 65536,
            })
            .collect();
        let headers = sparse_headers(&extents, 60 * 65536, 30 * 65536, 0);
        // 31 map entries: 4 in the header, 21 in the first extension, 6 in the second.
        assert_eq!(headers.len(), 3 * BLOCK);
        assert_eq!(headers[482], 1);
        assert_eq!(headers[BLOCK + 504], 1);
        assert_eq!(headers[2 * BLOCK + 504], 0);
        // The last entry marks the end of the file.
        let last = &headers[2 * BLOCK + 5 * 24..2 * BLOCK + 6 * 24];
        assert_eq!(&last[..12], format!("{:011o}\0", 60 * 65536).as_bytes());
        assert_eq!(&last[12..], b"00000000000\0");
    }
}
