//! A content-addressed, on-disk cache of compressed data blocks and fragment blocks, so that
//! a rebuild compresses only the blocks whose bytes changed.
//!
//! It memoizes [`Codec::compress`]: the key is the SHA-256 of the cache format version, the
//! zstd library version, the codec and level, the block size and the uncompressed block
//! bytes, so the cached result is exactly what compressing would give and the image stays
//! byte-identical to one written without the cache. Uncompressed images and holes are never
//! cached (nothing to save), nor are metadata blocks (cheap, and they change with any edit).
//!
//! Layout: `DIR/v1/<2 hex>/<62 hex>`, one file per block: a magic, whether the block is
//! stored compressed or as it is (incompressible: no payload), the payload length, and the
//! SHA-256 of key, kind and payload, then the payload. A read checks all of it, so a
//! flipped byte or a truncated file is a miss: the block is compressed again and the entry
//! rewritten, never used. Verifying costs one SHA-256 pass over the compressed bytes per hit
//! (far cheaper than decompressing and comparing); computing the keys costs one SHA-256
//! pass over the image's file data (SHA-NI: well under a second for a worker's 316 MiB).
//!
//! Entries are written to a temporary file in the same directory and renamed into place, so
//! concurrent builds sharing the cache never see a partial entry; there is no fsync (a torn
//! entry after a crash fails its digest and is recompressed). Errors writing the cache are
//! counted and otherwise ignored: the cache can only make a build faster, never fail it.
//!
//! Bound and eviction: at most `max_bytes` of entries (default [`DEFAULT_MAX_BYTES`]).
//! Least recently used goes first: a hit sets the entry's mtime to now (on a cache shared
//! between users, only the owner's hits count), and
//! [`BlockCache::evict`] (run after each image) deletes the entries with the oldest mtimes
//! until the total is within the bound, plus temporary files older than an hour (left by a
//! killed build).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::compress::Codec;

/// Bumped whenever the entry format or the meaning of a key changes. It is also the
/// subdirectory's name, so entries of another version are never read; eviction only sees
/// its own version's directory, so an old one is left for the user to delete.
const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"KEELSQB1";
const HEADER_LEN: usize = 8 + 1 + 4 + 32;
const KIND_COMPRESSED: u8 = 0;
const KIND_AS_IS: u8 = 1;
const TEMP_PREFIX: &str = ".tmp-";
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// The default bound: several stock images' worth of distinct blocks (a worker's root is
/// about 250 MiB compressed).
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// The block cache's directory under the package cache.
pub const DIR_NAME: &str = "squashfs-blocks";

/// What the cache did during one image (counts of data and fragment blocks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Blocks taken from the cache instead of compressed.
    pub hits: u64,
    /// Blocks compressed (and written to the cache).
    pub misses: u64,
    /// Entries found damaged (bad digest, truncated, bad header): recompressed, rewritten.
    pub corrupt: u64,
    /// Entries that could not be written (the build went on without them).
    pub write_errors: u64,
}

/// What [`BlockCache::evict`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Eviction {
    pub entries_removed: u64,
    pub bytes_removed: u64,
    /// Bytes of entries left.
    pub bytes_kept: u64,
}

#[derive(Debug)]
pub struct BlockCache {
    dir: PathBuf,
    max_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    write_errors: AtomicU64,
    temp_counter: AtomicU64,
}

pub(super) type Key = [u8; 32];

impl BlockCache {
    /// A cache in `dir` (created when missing) holding at most `max_bytes` of entries.
    pub fn open(dir: impl AsRef<Path>, max_bytes: u64) -> io::Result<BlockCache> {
        let dir = dir.as_ref().join(format!("v{FORMAT_VERSION}"));
        fs::create_dir_all(&dir)?;
        Ok(BlockCache {
            dir,
            max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            temp_counter: AtomicU64::new(0),
        })
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }

    /// [`Codec::compress`] of `data`, from the cache when it holds a sound entry.
    pub(super) fn compress(
        &self,
        codec: Codec,
        block_size: u32,
        data: &[u8],
    ) -> io::Result<Option<Vec<u8>>> {
        let key = key(codec, block_size, data);
        let path = self.entry_path(&key);
        match read_entry(&path, &key) {
            Lookup::Hit(result) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(result);
            }
            Lookup::Missing => {}
            Lookup::Corrupt => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let result = codec.compress(data)?;
        if self.write_entry(&path, &key, result.as_deref()).is_err() {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        Ok(result)
    }

    pub(super) fn entry_path(&self, key: &Key) -> PathBuf {
        let name = hex::encode(key);
        self.dir.join(&name[..2]).join(&name[2..])
    }

    fn write_entry(&self, path: &Path, key: &Key, compressed: Option<&[u8]>) -> io::Result<()> {
        let (kind, payload) = match compressed {
            Some(bytes) => (KIND_COMPRESSED, bytes),
            None => (KIND_AS_IS, &[][..]),
        };
        let mut entry = Vec::with_capacity(HEADER_LEN + payload.len());
        entry.extend_from_slice(MAGIC);
        entry.push(kind);
        entry.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        entry.extend_from_slice(&entry_digest(key, kind, payload));
        entry.extend_from_slice(payload);
        let parent = path.parent().ok_or_else(|| io::Error::other("no parent"))?;
        let temp = parent.join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            self.temp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let written = create_in(parent, &temp).and_then(|mut f| f.write_all(&entry));
        match written.and_then(|()| fs::rename(&temp, path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Deletes least recently used entries until the cache is within its bound, and stale
    /// temporary files. Entries other builds delete meanwhile are skipped.
    pub fn evict(&self) -> io::Result<Eviction> {
        let mut entries = Vec::new();
        let mut total = 0u64;
        let now = SystemTime::now();
        for shard in fs::read_dir(&self.dir)? {
            let shard = shard?.path();
            let Ok(files) = fs::read_dir(&shard) else {
                continue;
            };
            for file in files.flatten() {
                let Ok(meta) = file.metadata() else { continue };
                let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                if file.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    if now.duration_since(mtime).is_ok_and(|age| age > STALE_TEMP) {
                        let _ = fs::remove_file(file.path());
                    }
                    continue;
                }
                total += meta.len();
                entries.push((mtime, meta.len(), file.path()));
            }
        }
        let mut report = Eviction::default();
        if total > self.max_bytes {
            entries.sort();
            for (_, len, path) in entries {
                if total <= self.max_bytes {
                    break;
                }
                if fs::remove_file(&path).is_ok() {
                    report.entries_removed += 1;
                    report.bytes_removed += len;
                }
                total -= len;
            }
        }
        report.bytes_kept = total;
        Ok(report)
    }
}

fn create_in(parent: &Path, temp: &Path) -> io::Result<File> {
    match File::create(temp) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(parent)?;
            File::create(temp)
        }
        other => other,
    }
}

/// Everything that decides the compressed bytes of a block.
fn key(codec: Codec, block_size: u32, data: &[u8]) -> Key {
    let (codec_id, level) = match codec {
        Codec::None => (0u8, 0i32),
        Codec::Zstd(level) => (1u8, level),
    };
    let mut h = Sha256::new();
    h.update(b"keel squashfs block\0");
    h.update(FORMAT_VERSION.to_le_bytes());
    h.update(zstd::zstd_safe::version_number().to_le_bytes());
    h.update([codec_id]);
    h.update(level.to_le_bytes());
    h.update(block_size.to_le_bytes());
    h.update((data.len() as u64).to_le_bytes());
    h.update(data);
    h.finalize().into()
}

fn entry_digest(key: &Key, kind: u8, payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(key);
    h.update([kind]);
    h.update(payload);
    h.finalize().into()
}

enum Lookup {
    Hit(Option<Vec<u8>>),
    Missing,
    Corrupt,
}

fn read_entry(path: &Path, key: &Key) -> Lookup {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Missing,
        Err(_) => return Lookup::Corrupt,
    };
    let mut entry = Vec::new();
    if file.read_to_end(&mut entry).is_err() {
        return Lookup::Corrupt;
    }
    let Some(result) = parse_entry(&entry, key) else {
        return Lookup::Corrupt;
    };
    // Least recently used eviction goes by mtime; a failure only makes the entry look older.
    let _ = file.set_modified(SystemTime::now());
    Lookup::Hit(result)
}

fn parse_entry(entry: &[u8], key: &Key) -> Option<Option<Vec<u8>>> {
    let (header, payload) = entry.split_at_checked(HEADER_LEN)?;
    let (magic, rest) = header.split_at(MAGIC.len());
    let kind = rest[0];
    let len = u32::from_le_bytes(rest[1..5].try_into().ok()?) as usize;
    let digest = &rest[5..];
    if magic != MAGIC
        || payload.len() != len
        || digest != entry_digest(key, kind, payload)
        || (kind == KIND_AS_IS && len != 0)
    {
        return None;
    }
    match kind {
        KIND_COMPRESSED => Some(Some(payload.to_vec())),
        KIND_AS_IS => Some(None),
        _ => None,
    }
}
