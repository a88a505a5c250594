//! Per-service log files with size-based rotation, and the in-memory buffer used until a
//! log directory exists.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::lock;

/// Output kept per service while no log directory is attached.
const PENDING_BYTES: usize = 64 * 1024;
/// After a failed open or write, lines are dropped for this long instead of retrying
/// (and failing) on every line.
const RETRY_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
struct ServiceLog {
    max_size: u64,
    file: Option<File>,
    size: u64,
    pending: VecDeque<Vec<u8>>,
    pending_bytes: usize,
    /// Lines lost (buffer overflow or I/O errors), reported in the file when it works again.
    dropped: u64,
    broken_until: Option<Instant>,
}

struct Inner {
    dir: Option<PathBuf>,
    services: HashMap<String, ServiceLog>,
}

/// One lock for all services: log volume is small, and the lock is never held across
/// anything slower than a local file write.
pub(crate) struct LogStore {
    inner: Mutex<Inner>,
}

impl LogStore {
    pub(crate) fn new() -> LogStore {
        LogStore {
            inner: Mutex::new(Inner {
                dir: None,
                services: HashMap::new(),
            }),
        }
    }

    pub(crate) fn register(&self, service: &str, max_size: u64) {
        let mut inner = lock(&self.inner);
        let log = inner.services.entry(service.to_string()).or_default();
        log.max_size = max_size.max(1);
    }

    /// Switches to `dir` and writes out what was buffered.
    pub(crate) fn attach(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut inner = lock(&self.inner);
        inner.dir = Some(dir.to_path_buf());
        for (name, log) in inner.services.iter_mut() {
            log.file = None;
            log.broken_until = None;
            let pending = std::mem::take(&mut log.pending);
            log.pending_bytes = 0;
            for line in pending {
                log.write(dir, name, &line);
            }
        }
        Ok(())
    }

    /// Appends one line (without its newline).
    /// Closes every log file and keeps later lines in memory (bounded, as before
    /// [`LogStore::attach`]): the log directory's filesystem can then be unmounted.
    pub(crate) fn detach(&self) {
        let mut inner = lock(&self.inner);
        inner.dir = None;
        for log in inner.services.values_mut() {
            log.file = None;
        }
    }

    pub(crate) fn write_line(&self, service: &str, line: &[u8]) {
        let mut inner = lock(&self.inner);
        let Inner { dir, services } = &mut *inner;
        let Some(log) = services.get_mut(service) else {
            return;
        };
        match dir {
            Some(dir) => log.write(dir, service, line),
            None => log.buffer(line),
        }
    }
}

impl ServiceLog {
    fn buffer(&mut self, line: &[u8]) {
        self.pending.push_back(line.to_vec());
        self.pending_bytes += line.len() + 1;
        while self.pending_bytes > PENDING_BYTES {
            let Some(old) = self.pending.pop_front() else {
                break;
            };
            self.pending_bytes -= old.len() + 1;
            self.dropped += 1;
        }
    }

    fn write(&mut self, dir: &Path, name: &str, line: &[u8]) {
        if self.dropped > 0 {
            let note = format!("keel: {} earlier lines were dropped", self.dropped);
            if self.write_raw(dir, name, note.as_bytes()) {
                self.dropped = 0;
            }
        }
        if !self.write_raw(dir, name, line) {
            self.dropped += 1;
        }
    }

    fn write_raw(&mut self, dir: &Path, name: &str, line: &[u8]) -> bool {
        if let Some(until) = self.broken_until {
            if Instant::now() < until {
                return false;
            }
            self.broken_until = None;
        }
        let path = dir.join(format!("{name}.log"));
        let len = line.len() as u64 + 1;
        if self.file.is_none() && !self.reopen(&path) {
            return false;
        }
        // Also applies to a file left over from before a restart of the init.
        if self.size > 0 && self.size + len > self.max_size {
            self.file = None;
            let old = dir.join(format!("{name}.log.1"));
            if std::fs::rename(&path, &old).is_err() {
                // Without rotation the file would only grow: start it over instead.
                let _ = std::fs::remove_file(&path);
            }
            if !self.reopen(&path) {
                return false;
            }
        }
        let Some(file) = self.file.as_mut() else {
            return false;
        };
        let mut record = Vec::with_capacity(line.len() + 1);
        record.extend_from_slice(line);
        record.push(b'\n');
        match file.write_all(&record) {
            Ok(()) => {
                self.size += len;
                true
            }
            Err(_) => {
                self.file = None;
                self.broken_until = Some(Instant::now() + RETRY_AFTER);
                false
            }
        }
    }

    fn reopen(&mut self, path: &Path) -> bool {
        match open(path) {
            Ok((file, size)) => {
                self.file = Some(file);
                self.size = size;
                true
            }
            Err(_) => {
                self.broken_until = Some(Instant::now() + RETRY_AFTER);
                false
            }
        }
    }
}

fn open(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-logfile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn rotates_before_exceeding_the_limit() {
        let dir = temp_dir("rotate");
        let store = LogStore::new();
        store.register("svc", 100);
        store.attach(&dir).unwrap();
        for i in 0..30 {
            store.write_line("svc", format!("line {i:03}").as_bytes()); // 9 bytes each
        }
        let current = std::fs::read_to_string(dir.join("svc.log")).unwrap();
        let old = std::fs::read_to_string(dir.join("svc.log.1")).unwrap();
        assert!(current.len() <= 100 && old.len() <= 100);
        assert!(
            old.len() > 80,
            "rotated file was filled first: {}",
            old.len()
        );
        assert!(current.ends_with("line 029\n"));
        let both = format!("{old}{current}");
        assert!(both.contains("line 018\nline 019\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn detached_logs_hold_no_file_and_keep_lines_for_the_next_attach() {
        let dir = temp_dir("detach");
        let store = LogStore::new();
        store.register("svc", 1 << 20);
        store.attach(&dir).unwrap();
        store.write_line("svc", b"before");
        let open_here = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|target| target.starts_with(&dir))
        };
        assert!(open_here(), "attached: the log file is open");
        store.detach();
        assert!(
            !open_here(),
            "detached: no file in the log directory is open"
        );
        store.write_line("svc", b"while detached");
        let text = std::fs::read_to_string(dir.join("svc.log")).unwrap();
        assert_eq!(text, "before\n");
        store.attach(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join("svc.log")).unwrap();
        assert_eq!(text, "before\nwhile detached\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn buffers_until_attached_and_reports_drops() {
        let dir = temp_dir("buffer");
        let store = LogStore::new();
        store.register("svc", 1 << 30);
        let line = vec![b'x'; 1023];
        for _ in 0..100 {
            store.write_line("svc", &line); // 100 KiB into a 64 KiB buffer
        }
        store.write_line("unknown", b"ignored");
        store.attach(&dir).unwrap();
        store.write_line("svc", b"after");
        let text = std::fs::read_to_string(dir.join("svc.log")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "keel: 36 earlier lines were dropped");
        assert_eq!(lines.len(), 1 + 64 + 1);
        assert_eq!(lines[65], "after");
        assert!(!dir.join("unknown.log").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
