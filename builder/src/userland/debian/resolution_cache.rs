//! Remembers what apt resolved, so a build whose inputs did not change skips apt.
//!
//! Why: resolving with the host's apt runs it four times (`apt-cache policy`, `apt-cache show`
//! of the exclusions, `apt-get -s install`, `apt-cache show` of the closure), and each run
//! parses the whole package lists again because we give apt no binary cache (ours would mix
//! with the host's). Measured on the stock worker profile: about 5 s of a 33 s release build
//! (`vm-tests/bench/build-vs-tools`), all on one core, before any package is read.
//!
//! The key is a SHA-256 over everything the answer depends on: the profile's Debian source
//! (suite, components, packages, exclusions), apt's whole configuration (`apt-config dump`:
//! directories, architectures, options), the name, size and mtime of every file in apt's
//! lists directory and under its configuration directory (sources, keys, preferences; `apt-get
//! update` rewrites the lists, which changes the key), dpkg's foreign architectures, and the
//! `apt-get` executable's size and mtime. The same key means apt would compute the same
//! closure from the same signed index, so the stored answer is what apt would say now.
//!
//! Trust: an entry is as trusted as the package cache it sits in (the `.deb` files next to it
//! are checked against the SHA-256 sums it records, which came from apt's signed index when
//! the entry was written). An entry must be owned by the user running the build and not be
//! writable by group or others, or it is ignored. Each entry carries a SHA-256 of its key
//! and body, so a flipped byte or a truncated file is a miss (apt runs again and the entry is
//! rewritten), never a wrong answer. Only successful resolutions are stored.
//!
//! Layout, bound and eviction: `DIR/v1/<key hex>.json`, written to a temporary file and
//! renamed into place (concurrent builds see an old entry or a whole new one). At most
//! [`MAX_ENTRIES`] entries (each a few KiB); after a store, the least recently used beyond
//! that are deleted (a hit sets the entry's mtime to now), and so are temporary files older
//! than an hour (a build killed while storing).

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{DebianSource, ResolvedDeb};

/// Bumped whenever the key's inputs or the entry's format change; also the subdirectory.
const FORMAT_VERSION: &str = "v1";
/// The cache's directory under the package cache's `debian/`.
pub const DIR_NAME: &str = "resolved";
/// Entries kept; a profile's source is one entry per state of the host's lists.
pub const MAX_ENTRIES: usize = 32;

/// What one resolution produced: the progress lines apt's run printed (replayed on a hit) and
/// the packages, without their paths (those depend on where the cache is now).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub log: Vec<String>,
    pub packages: Vec<ResolvedDeb>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    /// Hex SHA-256 of the key and the JSON of `resolution`.
    digest: String,
    resolution: Resolution,
}

impl Resolution {
    pub fn new(log: Vec<String>, resolved: &[ResolvedDeb]) -> Self {
        Resolution {
            log,
            packages: resolved.to_vec(),
        }
    }

    /// The packages with their paths in `archives`.
    pub fn resolved(&self, archives: &Path) -> Vec<ResolvedDeb> {
        self.packages
            .iter()
            .map(|p| ResolvedDeb {
                path: archives.join(&p.filename),
                ..p.clone()
            })
            .collect()
    }
}

/// The cache in `dir` (`<package cache>/debian/resolved`).
pub struct ResolutionCache {
    dir: PathBuf,
}

impl ResolutionCache {
    pub fn new(debian_cache: &Path) -> Self {
        ResolutionCache {
            dir: debian_cache.join(DIR_NAME).join(FORMAT_VERSION),
        }
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The stored resolution for `key`, if there is a whole, intact one this user wrote.
    pub fn load(&self, key: &str) -> Option<Resolution> {
        let path = self.entry_path(key);
        let meta = fs::metadata(&path).ok()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid || meta.mode() & 0o022 != 0 {
            return None;
        }
        let entry: Entry = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
        if entry.key != key || entry.digest != digest(key, &entry.resolution)? {
            return None;
        }
        // Least recently used goes first when evicting.
        let _ = fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Some(entry.resolution)
    }

    /// Stores `resolution` under `key`, then evicts beyond [`MAX_ENTRIES`]. Failing to write
    /// only costs the next build apt's time, so the error is returned for a log line, no more.
    pub fn store(&self, key: &str, resolution: &Resolution) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let entry = Entry {
            key: key.to_owned(),
            digest: digest(key, resolution).unwrap_or_default(),
            resolution: resolution.clone(),
        };
        let mut temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(&self.dir)?;
        temp.write_all(&serde_json::to_vec(&entry)?)?;
        temp.persist(self.entry_path(key)).map_err(|e| e.error)?;
        self.evict()
    }

    fn evict(&self) -> std::io::Result<()> {
        remove_stale_temporaries(&self.dir);
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if entries.len() <= MAX_ENTRIES {
            return Ok(());
        }
        entries.sort();
        let excess = entries.len() - MAX_ENTRIES;
        for (_, path) in entries.into_iter().take(excess) {
            let _ = fs::remove_file(path);
        }
        Ok(())
    }
}

/// Temporary files older than an hour were left by a build that was killed while storing.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(read) = fs::read_dir(dir) else { return };
    for entry in read.filter_map(Result::ok) {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        if stale && entry.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn digest(key: &str, resolution: &Resolution) -> Option<String> {
    let body = serde_json::to_vec(resolution).ok()?;
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0]);
    h.update(&body);
    Some(hex::encode(h.finalize()))
}

/// The key for resolving `src` with the host's apt as it is now, or `None` when apt's
/// configuration cannot be read (then nothing is cached and apt runs as before).
pub fn key(src: &DebianSource) -> Option<String> {
    let dump = Command::new("apt-config")
        .arg("dump")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?
        .stdout;
    let config = String::from_utf8_lossy(&dump);
    let mut h = Sha256::new();
    let mut add = |label: &str, bytes: &[u8]| {
        h.update(label.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    add("format", FORMAT_VERSION.as_bytes());
    add("source", &serde_json::to_vec(src).ok()?);
    add("apt-config", &dump);
    for dir in [
        apt_dir(&config, &["Dir", "Dir::State", "Dir::State::lists"]),
        apt_dir(&config, &["Dir", "Dir::Etc"]),
    ] {
        add("tree", fingerprint_tree(&dir).as_bytes());
    }
    // dpkg's foreign architectures (apt asks `dpkg --print-foreign-architectures`).
    let status = apt_dir(&config, &["Dir", "Dir::State::status"]);
    let arch = status.with_file_name("arch");
    add("dpkg-arch", &fs::read(arch).unwrap_or_default());
    add("apt-get", fingerprint_program("apt-get").as_bytes());
    Some(hex::encode(h.finalize()))
}

/// The value of `name` in `apt-config dump` output (`Name "value";`).
fn config_value<'a>(dump: &'a str, name: &str) -> Option<&'a str> {
    dump.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(" \"")?;
        rest.strip_suffix("\";")
    })
}

/// Joins apt's nested directory options the way apt does: each is relative to the one before
/// unless it is absolute.
fn apt_dir(dump: &str, names: &[&str]) -> PathBuf {
    let mut path = PathBuf::from("/");
    for name in names {
        if let Some(value) = config_value(dump, name) {
            path.push(value);
        }
    }
    path
}

/// Name, size and mtime of every file under `dir` (sorted), as text.
fn fingerprint_tree(dir: &Path) -> String {
    let mut lines = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(read) = fs::read_dir(&d) else { continue };
        for entry in read.filter_map(Result::ok) {
            let path = entry.path();
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else {
                lines.push(format!(
                    "{} {} {}.{}",
                    path.display(),
                    meta.len(),
                    meta.mtime(),
                    meta.mtime_nsec()
                ));
            }
        }
    }
    lines.sort();
    lines.join("\n")
}

fn fingerprint_program(name: &str) -> String {
    let path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file());
    match path.and_then(|p| fs::metadata(&p).ok().map(|m| (p, m))) {
        Some((p, m)) => format!(
            "{} {} {}.{}",
            p.display(),
            m.len(),
            m.mtime(),
            m.mtime_nsec()
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Resolution {
        Resolution {
            log: vec!["debian: using suites bookworm (main)".into()],
            packages: vec![ResolvedDeb {
                package: "runc".into(),
                version: "1.1.5+ds1-1".into(),
                architecture: "amd64".into(),
                filename: "runc_1.1.5+ds1-1_amd64.deb".into(),
                sha256: "ab".repeat(32),
                size: 42,
                path: PathBuf::new(),
            }],
        }
    }

    #[test]
    fn stored_resolution_comes_back_with_paths_in_the_archives() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResolutionCache::new(dir.path());
        assert!(cache.load("k1").is_none());
        cache.store("k1", &sample()).unwrap();
        let back = cache.load("k1").unwrap();
        assert_eq!(back, sample());
        let debs = back.resolved(Path::new("/a"));
        assert_eq!(debs[0].path, Path::new("/a/runc_1.1.5+ds1-1_amd64.deb"));
        assert!(cache.load("k2").is_none());
    }

    #[test]
    fn flipped_or_truncated_entries_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResolutionCache::new(dir.path());
        cache.store("k", &sample()).unwrap();
        let path = cache.entry_path("k");
        let good = fs::read(&path).unwrap();
        // A changed digit of the size: still valid JSON, so only the digest can catch it.
        let text = String::from_utf8(good.clone()).unwrap();
        fs::write(&path, text.replace("\"size\":42", "\"size\":43")).unwrap();
        assert!(cache.load("k").is_none());
        fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert!(cache.load("k").is_none());
        fs::write(&path, &good).unwrap();
        assert!(cache.load("k").is_some());
    }

    #[test]
    fn group_writable_entries_are_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = ResolutionCache::new(dir.path());
        cache.store("k", &sample()).unwrap();
        let path = cache.entry_path("k");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o664)).unwrap();
        assert!(cache.load("k").is_none());
    }

    #[test]
    fn eviction_keeps_the_most_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResolutionCache::new(dir.path());
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        for i in 0..MAX_ENTRIES {
            cache.store(&format!("k{i}"), &sample()).unwrap();
            let f = fs::File::options()
                .write(true)
                .open(cache.entry_path(&format!("k{i}")))
                .unwrap();
            f.set_modified(old + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        // k0 is the oldest, but a hit makes it the newest: k1 goes instead.
        assert!(cache.load("k0").is_some());
        cache.store("new", &sample()).unwrap();
        assert!(cache.entry_path("k0").exists());
        assert!(!cache.entry_path("k1").exists());
        assert!(cache.entry_path("new").exists());
    }

    #[test]
    fn apt_directories_join_like_apt() {
        let dump = "Dir \"/\";\nDir::State \"var/lib/apt\";\nDir::State::lists \"lists/\";\n\
                    Dir::State::status \"/var/lib/dpkg/status\";\n";
        assert_eq!(
            apt_dir(dump, &["Dir", "Dir::State", "Dir::State::lists"]),
            Path::new("/var/lib/apt/lists/")
        );
        assert_eq!(
            apt_dir(dump, &["Dir", "Dir::State::status"]),
            Path::new("/var/lib/dpkg/status")
        );
    }

    #[test]
    fn a_changed_list_file_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Packages"), "a").unwrap();
        let before = fingerprint_tree(dir.path());
        fs::write(dir.path().join("Packages"), "ab").unwrap();
        assert_ne!(before, fingerprint_tree(dir.path()));
    }
}
