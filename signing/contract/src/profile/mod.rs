//! The profile: a TOML file that says how to build an image and what the node does.
//!
//! ```toml
//! extends = "base.toml"
//!
//! [image]
//! name = "keel-worker"
//! version = "1.0.0"
//!
//! [[image.userland]]
//! debian = { suite = "bookworm", packages = ["linux-image-cloud-amd64", "containerd"] }
//!
//! [node]
//! role = "worker"
//! ```
//!
//! Loading checks each file against the schema (unknown keys, types, value syntax: errors
//! carry line and column), merges the `extends` chain, then checks the rules that need the
//! whole profile. See [`schema`] for every field.

pub mod install;
pub mod kube;
mod load;
pub mod node;
pub mod pod_network;
pub mod schema;
mod validate;
pub mod values;

pub use install::{DiskIdentity, DiskSelector, Install, VarDisk};
pub use kube::{
    ImageRepository, KubeVersion, LabelKey, LabelValue, NodeLabelKey, PeerUrl, SubjectAltName,
    Taint, TaintEffect,
};
pub use load::{Diagnostic, Layer, LoadedProfile, ProfileError};
pub use pod_network::{PodNetwork, PodNetworkMode, PodNetworkPeer};
pub use schema::*;
pub use validate::{
    MIN_ESP_SIZE, MIN_SLOT_SIZE, MIN_STATE_SIZE, Problem, RESERVED_CMDLINE_KEYS, validate,
    validate_node,
};
pub use values::{
    ByteSize, ClusterName, ContainerName, Endpoint, FileMode, Hostname, ImageName, InterfaceName,
    IpCidr,
};

#[cfg(test)]
mod tests;
