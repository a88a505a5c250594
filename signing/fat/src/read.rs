//! Reading files back from a FAT filesystem with `fatfs` (for `keel inspect`, `keel verify`
//! and the tests). Writing is [`super::write`]: fatfs 0.3 writes directories `fsck.vfat`
//! rejects.

use std::io::{self, Read, Seek, Write};

use fatfs::{FileSystem, FsOptions};

#[derive(Debug, thiserror::Error)]
pub enum FatReadError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{path}: not an absolute path")]
    BadPath { path: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FatReadError {
    let what = what.into();
    move |source| FatReadError::Io { what, source }
}

fn relative(path: &str) -> Result<&str, FatReadError> {
    path.strip_prefix('/').ok_or_else(|| FatReadError::BadPath {
        path: path.to_owned(),
    })
}

/// Reads a file from a FAT filesystem. `storage` needs `Write` only because fatfs asks for
/// it; nothing is written (wrap a read-only file so that a write fails).
pub fn read_fat_file<S: Read + Write + Seek>(
    storage: S,
    path: &str,
) -> Result<Vec<u8>, FatReadError> {
    let fs = FileSystem::new(storage, FsOptions::new()).map_err(io_err("opening FAT"))?;
    let mut bytes = Vec::new();
    {
        let mut file = fs
            .root_dir()
            .open_file(relative(path)?)
            .map_err(io_err(format!("opening {path}")))?;
        file.read_to_end(&mut bytes)
            .map_err(io_err(format!("reading {path}")))?;
    }
    Ok(bytes)
}

/// Lists the files under `dir` (names only).
pub fn list_fat_dir<S: Read + Write + Seek>(
    storage: S,
    dir: &str,
) -> Result<Vec<String>, FatReadError> {
    let fs = FileSystem::new(storage, FsOptions::new()).map_err(io_err("opening FAT"))?;
    let mut names = Vec::new();
    {
        let rel = relative(dir)?;
        let d = if rel.is_empty() {
            fs.root_dir()
        } else {
            fs.root_dir()
                .open_dir(rel)
                .map_err(io_err(format!("opening {dir}")))?
        };
        for entry in d.iter() {
            let entry = entry.map_err(io_err(format!("listing {dir}")))?;
            let name = entry.file_name();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
    }
    Ok(names)
}
