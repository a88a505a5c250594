//! Userland sources: Debian packages, OCI images and host files, applied to a [`crate::tree::Tree`].

pub mod deb;
pub mod debian;
pub mod shlibs;
pub mod tar_layer;
