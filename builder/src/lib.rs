//! Keel's image builder: profile -> userland -> root tree -> squashfs + dm-verity ->
//! initramfs -> ESP -> GPT disk -> signed manifest -> other formats.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod build;
pub mod bundle;
pub mod cli;
pub mod commands;
pub mod cpio;
pub mod disk;
pub mod esp;
pub mod fat32;
pub mod formats;
pub mod init_binary;
pub mod initramfs;
pub mod inspect;
pub mod io;
pub mod kernel;
pub mod keys;
pub mod kmod;
pub mod node;
pub mod progress;
pub mod qemu;
pub mod rootfs;
pub mod run;
pub mod secrets;
pub mod squashfs;
pub mod tree;
pub mod userland;
pub mod verify;
pub mod verity;
