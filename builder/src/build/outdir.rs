//! The output directory: built in a temporary directory beside the destination and renamed
//! into place at the end, so an interrupted or failed build leaves no half-written OUTDIR.

use std::path::{Path, PathBuf};

use super::{BuildError, io_at};

pub struct OutputDir {
    temp: tempfile::TempDir,
    dest: PathBuf,
}

fn tree_size(dir: &Path) -> Result<u64, BuildError> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(io_at(&path))?;
        total += if meta.is_dir() {
            tree_size(&path)?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

impl OutputDir {
    pub fn create(dest: &Path) -> Result<Self, BuildError> {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io_at(&parent))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        // A build killed before it could clean up leaves its partial directory behind; the
        // next build of the same OUTDIR removes it. (Two concurrent builds into one OUTDIR are
        // not supported.)
        let stale = [format!(".{name}.partial-"), format!(".{name}.old-")];
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for entry in entries.flatten() {
                let file_name = entry.file_name().to_string_lossy().into_owned();
                if stale.iter().any(|p| file_name.starts_with(p.as_str())) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}.partial-"))
            .tempdir_in(&parent)
            .map_err(io_at(&parent))?;
        Ok(OutputDir {
            temp,
            dest: dest.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), BuildError> {
        use std::io::Write;
        let path = self.temp.path().join(name);
        let mut file = std::fs::File::create(&path).map_err(io_at(&path))?;
        file.write_all(bytes).map_err(io_at(&path))?;
        file.sync_all().map_err(io_at(&path))
    }

    /// File names and sizes, sorted; a directory (the update bundle) is listed as `name/`
    /// with the size of everything in it.
    pub fn list(&self) -> Result<Vec<(String, u64)>, BuildError> {
        let dir = self.temp.path();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
            let entry = entry.map_err(io_at(dir))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(io_at(&path))?;
            let mut name = entry.file_name().to_string_lossy().into_owned();
            let size = if meta.is_dir() {
                name.push('/');
                tree_size(&path)?
            } else {
                meta.len()
            };
            files.push((name, size));
        }
        files.sort();
        Ok(files)
    }

    /// Moves the finished directory into place, replacing an earlier build there.
    pub fn commit(self) -> Result<PathBuf, BuildError> {
        let temp = self.temp.keep();
        let dest = self.dest;
        if let Ok(dir) = std::fs::File::open(&temp) {
            let _ = dir.sync_all();
        }
        if dest.exists() {
            let old = temp.with_file_name(format!(
                ".{}.old-{}",
                dest.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                std::process::id()
            ));
            std::fs::rename(&dest, &old).map_err(io_at(&dest))?;
            std::fs::rename(&temp, &dest).map_err(io_at(&dest))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&temp, &dest).map_err(io_at(&dest))?;
        }
        Ok(dest)
    }
}
