//! Userland sources: Debian packages, OCI images and host files, applied to a [`crate::tree::Tree`].

pub mod oci;
pub mod tar_layer;
