//! `keel cluster`: disposable multi-node clusters of QEMU VMs on one machine, with no root
//! and no KVM. Each node has two NICs: QEMU's user network (DHCP, the default route, host
//! forwards to its node API, etcd and Kubernetes API) and a NIC on the cluster's own L2
//! segment (QEMU `-netdev socket,mcast=`, one multicast group and port per cluster) with a
//! static address. Each node gets its node section and its role's secrets over fw_cfg; the
//! VMs run detached (`-daemonize`) and outlive the command.
//!
//! State lives under `$XDG_STATE_HOME/keel/clusters/NAME` ([`cluster_dir`]):
//!
//! ```text
//! cluster.toml            what was created (State): nodes, ports, image, secrets
//! secrets.toml            generated cluster secrets (unless --secrets named a file)
//! admin.kubeconfig        the Kubernetes admin's kubeconfig for those secrets
//! NODE/disk.raw           the node's disk (a sparse copy of the image)
//! NODE/profile.toml       its node section; NODE/secrets.toml its role's secrets
//! NODE/etcd-snapshot.db   the first control plane's snapshot to restore (--etcd-snapshot)
//! NODE/vm/                QEMU: console.log, qemu.log, qemu.pid, sockets, OVMF variables
//! ```

pub mod create;
pub mod health;
pub mod manage;
pub mod membership;
pub mod plan;
pub mod upgrade;
pub mod vm;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use plan::{NodePlan, Request};

/// In a node's directory: the etcd snapshot it restores (`create --etcd-snapshot`), given
/// to it over fw_cfg.
pub const NODE_ETCD_SNAPSHOT: &str = "etcd-snapshot.db";

/// The state file's name in a cluster's directory.
pub const STATE_FILE: &str = "cluster.toml";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    BadRequest(String),
    #[error("cluster {name:?} already exists ({}): destroy it first", dir.display())]
    Exists { name: String, dir: PathBuf },
    #[error("no cluster named {name:?} (looked in {})", dir.display())]
    Unknown { name: String, dir: PathBuf },
    #[error("{}: {message}", path.display())]
    BadState { path: PathBuf, message: String },
    #[error("no state directory: set XDG_STATE_HOME or HOME")]
    NoHome,
    #[error("planning the cluster: {0}")]
    Plan(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("starting {node}: {why}")]
    Start { node: String, why: String },
    #[error("{node}: {why}")]
    Membership { node: String, why: String },
    #[error("rolling upgrade stopped at {node}: {why}")]
    Upgrade { node: String, why: String },
    #[error("not healthy after {secs} s: {check}")]
    Unhealthy { secs: u64, check: String },
    #[error(transparent)]
    Context(#[from] crate::context::ContextError),
}

impl crate::error::Classify for ClusterError {
    fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ClusterError::BadRequest(_)
                | ClusterError::Exists { .. }
                | ClusterError::Unknown { .. }
                | ClusterError::NoHome
        )
    }
}

pub(crate) fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.to_string();
    move |source| ClusterError::Io { what, source }
}

/// What `create` made, as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub name: String,
    /// The build output directory the disks were copied from.
    pub image: PathBuf,
    /// The cluster secrets file (generated into the cluster directory, or the user's).
    pub secrets: PathBuf,
    /// The cluster L2's UDP port on 230.0.0.1 (with another transport: its first port).
    pub segment_port: u16,
    /// How the nodes' cluster NICs are connected (the multicast group unless a benchmark
    /// chose another).
    #[serde(default, skip_serializing_if = "Segment::is_multicast")]
    pub segment: Segment,
    pub memory_mib: u32,
    pub cpus: u8,
    pub nodes: Vec<NodePlan>,
}

/// QEMU's transports for the cluster L2. Multicast is the product's: one segment for any
/// number of VMs with no hub process. The point-to-point ones join exactly two nodes; they
/// exist for `vm-tests/bench/cluster-l2`, which measured them against it (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Segment {
    /// `-netdev socket,mcast=230.0.0.1:PORT,localaddr=127.0.0.1`.
    #[default]
    Mcast,
    /// `-netdev stream`: a TCP connection on 127.0.0.1, the first node listening.
    Stream,
    /// `-netdev dgram`: UDP datagrams between two ports on 127.0.0.1.
    Dgram,
}

impl Segment {
    pub fn is_multicast(&self) -> bool {
        *self == Segment::Mcast
    }
}

impl std::str::FromStr for Segment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mcast" => Ok(Segment::Mcast),
            "stream" => Ok(Segment::Stream),
            "dgram" => Ok(Segment::Dgram),
            _ => Err(format!("{s:?}: expected mcast, stream or dgram")),
        }
    }
}

/// `$XDG_STATE_HOME/keel/clusters`, else `~/.local/state/keel/clusters`.
pub fn clusters_root() -> Result<PathBuf, ClusterError> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").ok_or(ClusterError::NoHome)?)
            .join(".local/state"),
    };
    Ok(base.join("keel").join("clusters"))
}

pub fn cluster_dir(name: &str) -> Result<PathBuf, ClusterError> {
    Ok(clusters_root()?.join(name))
}

/// Where one node's files are.
pub fn node_dir(cluster: &Path, node: &str) -> PathBuf {
    cluster.join(node)
}

impl State {
    pub fn load(name: &str) -> Result<(PathBuf, State), ClusterError> {
        let dir = cluster_dir(name)?;
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClusterError::Unknown {
                    name: name.to_owned(),
                    dir,
                });
            }
            Err(e) => return Err(io(path.display())(e)),
        };
        let state = toml::from_str(&text).map_err(|e| ClusterError::BadState {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok((dir, state))
    }

    /// Written beside and renamed over, so a reader never sees half of it.
    pub fn save(&self, dir: &Path) -> Result<(), ClusterError> {
        let path = dir.join(STATE_FILE);
        let text = toml::to_string(self).map_err(|e| ClusterError::BadState {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
        std::fs::write(&tmp, text).map_err(io(tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(io(path.display()))
    }

    /// The node API endpoints, `127.0.0.1:PORT`, control planes first.
    pub fn api_endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.api_port))
            .collect()
    }
}

/// The names of the clusters under [`clusters_root`] that have a state file.
pub fn list() -> Result<Vec<String>, ClusterError> {
    let root = clusters_root()?;
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(root.display())(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join(STATE_FILE).is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}
