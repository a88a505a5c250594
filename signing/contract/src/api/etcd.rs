//! The etcd endpoints of a control plane node: its view of the etcd members
//! (`GET /v1/etcd/members`) and a consistent snapshot of the database (`GET /v1/etcd/snapshot`,
//! admin only: it holds every Kubernetes secret).

use serde::{Deserialize, Serialize};

/// The content type of a snapshot response: the bytes of etcd's `Maintenance.Snapshot`
/// stream as they are (the bolt database, then its SHA-256), which `etcdctl snapshot restore`
/// takes. Sent chunked: its length is not known before it ends, and a response without its
/// last chunk is an incomplete snapshot.
pub const SNAPSHOT_CONTENT_TYPE: &str = "application/octet-stream";

/// Why a node has no etcd to answer about (409): it is not a control plane.
pub const NOT_A_CONTROL_PLANE: &str =
    "this node is not a control plane: it runs no etcd (ask a control plane node)";

/// How a removal of a member that is not in the list begins (409): a client that retries a
/// removal cut short knows from it that the member is gone.
pub const NOT_AN_ETCD_MEMBER: &str = "no etcd member named";

/// `GET /v1/etcd/members`: the members as the node's local etcd sees them. IDs are etcd's
/// 64-bit member and cluster IDs, as numbers (`etcdctl member list -w json` prints the same);
/// `etcdctl`'s tables show them in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMembers {
    pub cluster_id: u64,
    /// The member the node runs.
    pub member_id: u64,
    /// The leader's member ID; 0 when the member knows of no leader.
    pub leader_id: u64,
    pub raft_term: u64,
    /// This member's health endpoint says it is healthy (it has a leader and can commit).
    pub healthy: bool,
    /// etcd's version, as the member reports it.
    pub version: String,
    pub members: Vec<EtcdMember>,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    pub id: u64,
    /// Empty for a member that was added and has not started yet.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    /// A learner receives the log but does not vote (until promoted).
    pub learner: bool,
}

impl EtcdMembers {
    /// The member with this ID.
    pub fn member(&self, id: u64) -> Option<&EtcdMember> {
        self.members.iter().find(|m| m.id == id)
    }
}
