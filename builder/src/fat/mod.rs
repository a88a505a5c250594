//! The FAT partitions (the ESP and STATE): [`write`] formats one from a list of entries,
//! reproducibly and in place inside the disk image (through [`crate::io::Window`]);
//! [`read`] reads files back with `fatfs`. The two do not depend on each other.

mod dirent;
pub mod read;
pub mod write;

pub use read::{FatReadError, list_fat_dir, read_fat_file};
pub use write::{FatEntry, FatSpec, FatWriteError, fat_time, write_fat};
