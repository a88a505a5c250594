//! The node management API's contract: the port and server name, the endpoints and their
//! query parameters, and the JSON bodies. The init serves it (`keel_init::api`), `keel node`
//! calls it (`keel_builder::node`); both build and parse requests through [`Request`] so the
//! two sides cannot drift apart.
//!
//! HTTP/1.1 over TLS 1.3 with mutual authentication: the node presents a certificate for
//! [`SERVER_NAME`] issued by the cluster's keel CA and accepts only clients whose certificate
//! that CA issued. Errors come back as an HTTP status and an [`ErrorBody`].
//!
//! Its parts: `types` (the JSON bodies), `errors` (statuses and the error body), `role`
//! (what an operator's certificate allows), `routes` (requests and their targets), `etcd`
//! (a control plane's etcd members and snapshots).

mod errors;
mod etcd;
mod role;
mod routes;
#[cfg(test)]
mod tests;
mod types;

pub use errors::{ErrorBody, ErrorKind};
pub use etcd::{
    EtcdMember, EtcdMembers, NOT_A_CONTROL_PLANE, NOT_AN_ETCD_MEMBER, SNAPSHOT_CONTENT_TYPE,
};
pub use role::OperatorRole;
pub use routes::{Method, Request, RouteError, valid_service_name};
pub use types::*;

/// The TCP port every node listens on.
pub const PORT: u16 = 50000;
/// The DNS name in the node's serving certificate, which clients verify whatever address
/// they dialled (nodes are reached by IP, and their addresses change).
pub const SERVER_NAME: &str = "keel-node";

/// Endpoint paths.
pub mod path {
    pub const VERSION: &str = "/v1/version";
    pub const STATUS: &str = "/v1/status";
    /// Followed by the service name: `/v1/logs/containerd?lines=100`.
    pub const LOGS: &str = "/v1/logs/";
    pub const REBOOT: &str = "/v1/reboot";
    pub const SHUTDOWN: &str = "/v1/shutdown";
    pub const UPGRADE: &str = "/v1/upgrade";
    pub const ROLLBACK: &str = "/v1/rollback";
    /// The node's API serving certificate: a renewed one is posted here
    /// ([`NodeCertificate`](super::NodeCertificate)).
    pub const CERTIFICATE: &str = "/v1/certificate";
    /// The members of the node's etcd ([`EtcdMembers`](super::EtcdMembers)).
    pub const ETCD_MEMBERS: &str = "/v1/etcd/members";
    /// A snapshot of the node's etcd, streamed (admin only).
    pub const ETCD_SNAPSHOT: &str = "/v1/etcd/snapshot";
    /// Removes a member from the node's etcd cluster (`?name=MEMBER`, admin only).
    pub const ETCD_REMOVE_MEMBER: &str = "/v1/etcd/members/remove";
}

/// Content types.
pub mod content_type {
    pub const JSON: &str = "application/json";
    pub const TEXT: &str = "text/plain; charset=utf-8";
    /// The upgrade request body: the update stream.
    pub const UPDATE: &str = "application/x-tar";
}

/// `lines` when a logs request gives none.
pub const DEFAULT_LOG_LINES: usize = 100;
/// The most log lines one request may ask for (the node keeps its logs on /var; this bounds
/// the memory a response takes, not what is kept).
pub const MAX_LOG_LINES: usize = 100_000;
