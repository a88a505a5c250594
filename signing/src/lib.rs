//! The contracts between Keel's build time and boot time, in one light crate that the builder,
//! the init and the vm-tests all import: minisign keys and signatures, the signed manifest,
//! the profile schema, the disk layout, the boot-entry naming, the update bundle format and
//! the cluster secrets format ([`secrets`]). With the `pki` feature, [`pki`] generates those
//! secrets and derives a node's certificates and kubeconfigs from them.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod bundle;
pub mod gpt;
pub mod layout;
pub mod manifest;
pub mod minisign;
#[cfg(feature = "pki")]
pub mod pki;
pub mod profile;
pub mod secrets;
