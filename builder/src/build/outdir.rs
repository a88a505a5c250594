//! The output directory: built in a temporary directory beside the destination and renamed
//! into place at the end, so an interrupted or failed build leaves no half-written OUTDIR.
//! The temporary directory is owner-only (0700) from its creation: a build with secrets
//! writes them there, and a killed build leaves it behind. It becomes 0755 when it is
//! renamed into place (files holding secrets stay 0600).

use std::path::{Path, PathBuf};

use std::os::unix::fs::PermissionsExt;

use super::{BuildError, io_at};

/// While the build runs: nobody else may look in.
const STAGING_MODE: u32 = 0o700;
/// The finished output directory: its files are meant to be shared.
const FINISHED_MODE: u32 = 0o755;

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
            .permissions(std::fs::Permissions::from_mode(STAGING_MODE))
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
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(FINISHED_MODE))
            .map_err(io_at(&temp))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn staging_is_owner_only_and_the_result_is_shared() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let out = OutputDir::create(&dest).unwrap();
        assert!(
            out.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".out.partial-")
        );
        assert_eq!(mode(out.path()), 0o700);
        out.write("manifest.json", b"{}").unwrap();
        let done = out.commit().unwrap();
        assert_eq!(done, dest);
        assert_eq!(mode(&dest), 0o755);
        assert_eq!(std::fs::read(dest.join("manifest.json")).unwrap(), b"{}");
    }
}
