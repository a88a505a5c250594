//! The upload stream: the bundle's five parts as one plain tar, produced while it is read.
//!
//! Nothing is staged: each entry is a header block built in memory, then the part's bytes
//! (the manifest and signature from memory, as verified when the bundle was opened; the
//! kernel, initramfs and payload straight from their blobs, checked against their digests as
//! they pass), then zero padding; two zero blocks end the archive. A blob that turns out to
//! differ from its descriptor makes the stream fail rather than end, so a damaged bundle
//! cannot look like a complete upload.

use std::collections::VecDeque;
use std::io::{self, Cursor, Read};

use keel_contract::bundle::{self, Part, TAR_BLOCK};

use super::{Bundle, BundleError, BundleReader};

enum Segment {
    Memory(Cursor<Vec<u8>>),
    Blob(Box<BundleReader>),
    Zeros(u64),
}

/// A `Read` over the upload stream; [`upload_stream`] says how long it is.
pub struct UploadStream {
    segments: VecDeque<Segment>,
}

impl Read for UploadStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while let Some(segment) = self.segments.front_mut() {
            let n = match segment {
                Segment::Memory(cursor) => cursor.read(buf)?,
                Segment::Blob(reader) => reader.read(buf)?,
                Segment::Zeros(left) => {
                    let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    buf[..n].fill(0);
                    *left -= n as u64;
                    n
                }
            };
            if n > 0 {
                return Ok(n);
            }
            // A blob reader ends only after its size and digest were found right.
            self.segments.pop_front();
        }
        Ok(0)
    }
}

/// One ustar header block: a regular file, mode 0644, owned by 0:0, time 0 (the stream is a
/// function of the bundle alone). The tar crate writes sizes of 8 GiB and more in GNU's
/// base-256 form, which GNU tar reads.
fn header(name: &str, size: u64) -> io::Result<Vec<u8>> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    Ok(h.as_bytes().to_vec())
}

fn padding(size: u64) -> u64 {
    size.div_ceil(TAR_BLOCK) * TAR_BLOCK - size
}

/// The tar stream an upgrade sends to a node, and its exact length in bytes (for a
/// Content-Length, and for the node to know when the payload ends).
pub fn upload_stream(b: &Bundle) -> Result<(UploadStream, u64), BundleError> {
    let mut segments = VecDeque::new();
    let mut sizes = [0u64; 5];
    for part in Part::ALL {
        let size = b.part(part).size;
        sizes[part.index()] = size;
        let head = header(part.entry_name(), size).map_err(|source| BundleError::Io {
            path: b.location().to_path_buf(),
            what: format!("tar header for {}", part.entry_name()),
            source,
        })?;
        segments.push_back(Segment::Memory(Cursor::new(head)));
        match part {
            Part::Manifest => segments.push_back(Segment::Memory(Cursor::new(b.manifest.clone()))),
            Part::Signature => {
                segments.push_back(Segment::Memory(Cursor::new(b.signature.clone())))
            }
            Part::Kernel | Part::Initramfs | Part::Payload => {
                segments.push_back(Segment::Blob(Box::new(b.open_part(part)?)))
            }
        }
        segments.push_back(Segment::Zeros(padding(size)));
    }
    segments.push_back(Segment::Zeros(2 * TAR_BLOCK));
    Ok((UploadStream { segments }, bundle::upload_stream_len(sizes)))
}
