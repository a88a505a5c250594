//! The contracts between Keel's build time and boot time, in one light crate that the builder,
//! the init and the vm-tests all import: minisign keys and signatures, the signed manifest,
//! the profile schema, the disk layout, the boot-entry naming and the update bundle format.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod bundle;
pub mod gpt;
pub mod layout;
pub mod manifest;
pub mod minisign;
pub mod profile;
