//! Keel's image builder: profile -> userland -> root tree -> squashfs + dm-verity ->
//! initramfs -> ESP -> GPT disk -> signed manifest -> bundle, SBOM and other formats.
//!
//! Layers, top down: [`cli`] (clap and exit codes only) calls the library modules below it;
//! each library module has its own error type ([`error::Classify`] tells the CLI whether it is
//! bad input), and none calls back up. docs/architecture.md maps the pipeline and the
//! contracts.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod cli;

// The pipeline and the commands' library halves.
pub mod build;
pub mod check;
pub mod cluster;
pub mod context;
pub mod error;
pub mod flash;
pub mod inspect;
pub mod node;
pub mod pxe;
pub mod run;
pub mod sbom;
pub mod secrets;
pub mod verify;

// The steps and formats the pipeline is made of.
pub mod bundle;
pub mod cpio;
pub mod disk;
/// The FAT writer and reader are shared with the node's installer (`keel-fat`).
pub use keel_fat as fat;
pub mod formats;
pub mod in_order;
pub mod init_binary;
pub mod initramfs;
pub mod kernel;
pub mod keys;
pub mod kmod;
pub mod rootfs;
pub mod squashfs;
pub mod tree;
pub mod userland;
pub mod verity;

// Shared plumbing.
pub mod io;
pub mod progress;
pub mod qemu;
