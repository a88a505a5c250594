//! Where [`super::apply`] writes: the ESP and STATE, each mutation one durable step.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::ASIDE;

/// The ESP and STATE as the boot-entry state machine reads and changes them. Paths are
/// relative to the ESP's root (`loader/entries/keel-a.conf`); STATE files are named.
/// Every mutation is durable when it returns: a power cut afterwards keeps it.
pub trait Storage {
    /// File names in an ESP directory (none when it does not exist).
    fn list_esp(&self, dir: &str) -> io::Result<Vec<String>>;
    fn esp_exists(&self, path: &str) -> bool;
    fn read_esp(&self, path: &str) -> io::Result<Vec<u8>>;
    /// `None` when the file does not exist (or STATE is not there).
    fn read_state(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    /// Writes the file aside, syncs it, renames it into place and syncs the directory.
    fn write_esp(&mut self, path: &str, bytes: &[u8]) -> io::Result<()>;
    fn rename_esp(&mut self, from: &str, to: &str) -> io::Result<()>;
    /// Removing a file that is not there is not an error.
    fn remove_esp(&mut self, path: &str) -> io::Result<()>;
    fn write_state(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;
    fn remove_state(&mut self, name: &str) -> io::Result<()>;
}

/// The mounted ESP and STATE.
#[derive(Debug, Clone)]
pub struct DiskStorage {
    pub esp: PathBuf,
    /// `None` in stage 1, which does not mount STATE (the journal reads as idle there, and
    /// nothing in stage 1 writes it).
    pub state: Option<PathBuf>,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

/// Writes `bytes` to `path` through `path` + [`ASIDE`]: synced, renamed, the renamed file and
/// its directory synced (on FAT the renamed file itself must be synced for the rename to
/// reach the disk: the power-cut test found that).
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(ASIDE);
    let aside = PathBuf::from(aside);
    {
        let mut f = std::fs::File::create(&aside)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    crate::sys::rename_durably(&aside, path)
}

impl DiskStorage {
    fn esp_path(&self, path: &str) -> PathBuf {
        self.esp.join(path)
    }

    fn state_path(&self, name: &str) -> io::Result<PathBuf> {
        self.state
            .as_ref()
            .map(|s| s.join(name))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "STATE is not mounted"))
    }
}

impl Storage for DiskStorage {
    fn list_esp(&self, dir: &str) -> io::Result<Vec<String>> {
        match std::fs::read_dir(self.esp_path(dir)) {
            Ok(entries) => Ok(entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn esp_exists(&self, path: &str) -> bool {
        self.esp_path(path).exists()
    }

    fn read_esp(&self, path: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.esp_path(path))
    }

    fn read_state(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(state) = &self.state else {
            return Ok(None);
        };
        match std::fs::read(state.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_esp(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.esp_path(path);
        std::fs::create_dir_all(parent(&path))?;
        write_durably(&path, bytes)
    }

    fn rename_esp(&mut self, from: &str, to: &str) -> io::Result<()> {
        crate::sys::rename_durably(&self.esp_path(from), &self.esp_path(to))
    }

    fn remove_esp(&mut self, path: &str) -> io::Result<()> {
        let path = self.esp_path(path);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(parent(&path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn write_state(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        write_durably(&self.state_path(name)?, bytes)
    }

    fn remove_state(&mut self, name: &str) -> io::Result<()> {
        let path = self.state_path(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(parent(&path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}
