//! The FAT partitions (the ESP and STATE), shared by the builder (`keel build`, `inspect`,
//! `verify`) and the node's installer, so that both write the same bytes for the same files:
//! [`write`] formats one from a list of entries, reproducibly, into any `Write + Seek` (a
//! window of a disk image or of a block device); [`read`] reads files back with `fatfs`. The
//! two do not depend on each other. [`esp`] is what goes on an ESP.

mod dirent;
pub mod esp;
pub mod read;
pub mod write;

pub use read::{FatReadError, list_fat_dir, read_fat_file};
pub use write::{FatEntry, FatSpec, FatWriteError, fat_time, write_fat};
