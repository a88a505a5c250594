//! Keel's image builder: profile -> userland -> root tree -> squashfs + dm-verity ->
//! initramfs -> ESP -> GPT disk -> signed manifest -> other formats.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod squashfs;
pub mod tree;
pub mod userland;
