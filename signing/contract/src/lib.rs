//! The contracts between Keel's build time and boot time, in one light crate that the builder,
//! the init and the vm-tests all import. Each module is one agreement:
//!
//! - [`profile`]: the profile schema and its typed values (checked when deserialised);
//! - [`names`]: the one DNS-name rule every name in a profile follows;
//! - [`manifest`]: the signed image manifest;
//! - [`output`]: the files `keel build` writes into its output directory;
//! - [`layout`]: the disk layout, the ESP's paths, boot entries and their counters, the
//!   kernel command line, STATE's files, the initramfs's paths and where the init lives;
//! - [`gpt`]: the GUID partition table both sides read and write;
//! - [`bundle`]: the update bundle (an OCI layout) and the upload stream;
//! - [`api`]: the node API's paths and JSON types;
//! - [`secrets`]: the cluster secrets file and a node's share of it.
//!
//! Keys and signatures are in `keel-minisign`; generating secrets and deriving certificates
//! from them in `keel-pki`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod bundle;
pub mod gpt;
pub mod layout;
pub mod manifest;
pub mod names;
pub mod output;
pub mod profile;
pub mod secrets;
