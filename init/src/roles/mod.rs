//! What a node runs for its Kubernetes role, as pure functions of the node profile and a few
//! runtime facts (host name, addresses, where the root is).
//!
//! - Both roles: the kubelet, with its `KubeletConfiguration` in
//!   `/var/lib/kubelet/config.yaml` ([`kubelet`]).
//! - Control plane: etcd as a supervised service ([`etcd`]), and kube-apiserver,
//!   kube-controller-manager and kube-scheduler as static pods the kubelet runs from
//!   `/etc/kubernetes/manifests` ([`static_pods`]).
//!
//! [`plan`] puts them together: the directories and files to write and the services to start,
//! in dependency order. Nothing here touches the system except [`find_binary`] (a `stat`)
//! and [`RolePlan::write`]; the caller decides what a missing binary means for the health gate
//! ([`RolePlan::degraded`]).
//!
//! The certificates and kubeconfigs under `/etc/kubernetes` (kubeadm's layout) are written by
//! the PKI code, not here; this module only names them ([`paths`]).
//!
//! Every file is JSON: static pod manifests and the kubelet configuration are read by YAML
//! parsers, and JSON is YAML, so the init needs no YAML serialiser.

pub mod cluster_bootstrap;
pub mod etcd;
pub mod kubelet;
pub mod labels;
pub mod static_pods;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use keel_contract::profile::{Node, Role};

use crate::supervisor::ServiceSpec;

/// Paths of kubeadm's layout and of the services' state, as seen on the node.
pub mod paths {
    pub const KUBERNETES_DIR: &str = "/etc/kubernetes";
    pub const PKI_DIR: &str = "/etc/kubernetes/pki";
    pub const MANIFESTS_DIR: &str = "/etc/kubernetes/manifests";
    pub const CA_CRT: &str = "/etc/kubernetes/pki/ca.crt";
    pub const CA_KEY: &str = "/etc/kubernetes/pki/ca.key";
    pub const ETCD_CA_CRT: &str = "/etc/kubernetes/pki/etcd/ca.crt";
    pub const ETCD_SERVER_CRT: &str = "/etc/kubernetes/pki/etcd/server.crt";
    pub const ETCD_SERVER_KEY: &str = "/etc/kubernetes/pki/etcd/server.key";
    pub const ETCD_PEER_CRT: &str = "/etc/kubernetes/pki/etcd/peer.crt";
    pub const ETCD_PEER_KEY: &str = "/etc/kubernetes/pki/etcd/peer.key";
    pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
    pub const CONTROLLER_MANAGER_CONF: &str = "/etc/kubernetes/controller-manager.conf";
    pub const SCHEDULER_CONF: &str = "/etc/kubernetes/scheduler.conf";
    /// The control plane kubelet's kubeconfig, with a client certificate for
    /// `system:node:<hostname>` issued by the PKI code.
    pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
    /// A worker's bootstrap kubeconfig (a bootstrap token); the kubelet uses it once to get
    /// its client certificate signed and writes [`WORKER_KUBECONFIG`].
    pub const BOOTSTRAP_KUBELET_CONF: &str = "/etc/kubernetes/bootstrap-kubelet.conf";
    pub const ETCD_DATA_DIR: &str = "/var/lib/etcd";
    pub const KUBELET_DIR: &str = "/var/lib/kubelet";
    pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
    /// Written by the worker kubelet's TLS bootstrapping.
    pub const WORKER_KUBECONFIG: &str = "/var/lib/kubelet/kubeconfig";
    pub const KUBELET_CERT_DIR: &str = "/var/lib/kubelet/pki";
}

/// What the init knows about the node at run time, besides its profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The host name the init set (the profile's, DHCP's or the MAC-derived one). It is the
    /// Kubernetes node name and the etcd member name.
    pub hostname: String,
    /// The node's addresses, as the network configuration left them. The first global IPv4
    /// one is the node IP (else the first global IPv6 one).
    pub ips: Vec<IpAddr>,
    /// Where the root filesystem is: `/` on the node, a directory in tests. Binaries the
    /// profile names are looked up under it; the paths in arguments and files stay absolute.
    pub root: PathBuf,
    /// On a control plane joining a running cluster: the `--initial-cluster` the member that
    /// added it answered ([`crate::etcd_join`]); `None` otherwise.
    pub etcd_joined: Option<Vec<(String, String)>>,
}

/// A directory to create (or fix the mode of) before the services start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleDir {
    pub path: PathBuf,
    pub mode: u32,
}

/// A file to write before the services start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleFile {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// Whether a binary the role needs is in the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryStatus {
    Found(PathBuf),
    Missing(PathBuf),
    /// Present, but not a regular file with an execute bit.
    NotExecutable(PathBuf),
}

/// Something the role cannot run, so the node runs without it. The caller prints it and
/// decides whether the node is still healthy enough to bless.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Degraded {
    #[error("{what} not found at {}: the role is degraded", .path.display())]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what} at {} is not an executable file: the role is degraded", .path.display())]
    NotExecutable { what: &'static str, path: PathBuf },
}

/// A profile (or facts) the role cannot be built from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("the node has no usable IP address (only loopback or link-local: {0})")]
    NoAddress(String),
    #[error(
        "invalid node name {0:?}: Kubernetes node names are lower-case letters, digits, '-' and '.' (at most 253)"
    )]
    BadNodeName(String),
    #[error("`node.etcd.members`: this node ({name}) is not a member (members: {members})")]
    NotAnEtcdMember { name: String, members: String },
    #[error("`node.etcd.members`: {0}")]
    BadEtcdMember(String),
    #[error("cannot serialise {what}: {why}")]
    Serialise { what: String, why: String },
}

/// What the init writes and runs for the node's role.
#[derive(Debug, Clone)]
pub struct RolePlan {
    pub role: Role,
    /// The address the node advertises (etcd, the API server, the kubelet's `--node-ip`).
    pub node_ip: IpAddr,
    /// Created first, parents before children.
    pub dirs: Vec<RoleDir>,
    pub files: Vec<RoleFile>,
    /// Every service after the ones it depends on (etcd before the kubelet on a control
    /// plane). Dependencies name only services in this list: the caller starts them once
    /// containerd is healthy, in their own supervisor.
    pub services: Vec<ServiceSpec>,
    /// Services left out because their binary is not in the root.
    pub degraded: Vec<Degraded>,
}

/// The role's directories, files and services for this node.
pub fn plan(node: &Node, facts: &NodeFacts) -> Result<RolePlan, RoleError> {
    let name = node_name(&facts.hostname)?;
    let node_ip = node_ip(&facts.ips)?;
    let mut dirs = vec![
        dir(paths::KUBERNETES_DIR, 0o755),
        dir(paths::KUBELET_DIR, 0o700),
        dir(paths::KUBELET_CERT_DIR, 0o700),
    ];
    let mut files = Vec::new();
    let mut services = Vec::new();
    let mut degraded = Vec::new();

    if node.role == Role::ControlPlane {
        // etcd refuses a data directory other users can read.
        dirs.push(dir(paths::ETCD_DATA_DIR, 0o700));
        dirs.push(dir(paths::MANIFESTS_DIR, 0o755));
        files.extend(static_pods::manifest_files(node, node_ip)?);
        let argv = etcd::argv(node, name, node_ip, facts.etcd_joined.as_deref())?;
        match find_binary(&facts.root, &node.etcd.binary).degraded("etcd") {
            None => services.push(etcd::service(argv)),
            Some(d) => degraded.push(d),
        }
    }

    let config = kubelet::config(node);
    files.push(RoleFile {
        path: PathBuf::from(paths::KUBELET_CONFIG),
        contents: to_json("the kubelet configuration", &config)?,
        mode: 0o644,
    });
    let argv = kubelet::argv(node, name, node_ip)?;
    match find_binary(&facts.root, &node.kubernetes.kubelet).degraded("kubelet") {
        None => {
            let after: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
            services.push(kubelet::service(argv, &after));
        }
        Some(d) => degraded.push(d),
    }

    Ok(RolePlan {
        role: node.role,
        node_ip,
        dirs,
        files,
        services,
        degraded,
    })
}

impl BinaryStatus {
    /// What a missing or unusable binary (`what`: its service) means for the role.
    pub fn degraded(self, what: &'static str) -> Option<Degraded> {
        match self {
            BinaryStatus::Found(_) => None,
            BinaryStatus::Missing(path) => Some(Degraded::Missing { what, path }),
            BinaryStatus::NotExecutable(path) => Some(Degraded::NotExecutable { what, path }),
        }
    }
}

/// Looks `path` (absolute, as on the node) up under `root`.
pub fn find_binary(root: &Path, path: &Path) -> BinaryStatus {
    let relative = path.strip_prefix("/").unwrap_or(path);
    match std::fs::metadata(root.join(relative)) {
        Err(_) => BinaryStatus::Missing(path.to_owned()),
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
            BinaryStatus::Found(path.to_owned())
        }
        Ok(_) => BinaryStatus::NotExecutable(path.to_owned()),
    }
}

/// The node name: the host name, which Kubernetes requires to be a lower-case DNS subdomain
/// (the kubelet's client certificate names it as `system:node:<name>`).
pub fn node_name(hostname: &str) -> Result<&str, RoleError> {
    match keel_contract::names::subdomain_problem(hostname) {
        None => Ok(hostname),
        Some(_) => Err(RoleError::BadNodeName(hostname.to_owned())),
    }
}

/// The node IP: the first global IPv4 address, else the first global IPv6 one. Loopback,
/// link-local and unspecified addresses are never advertised.
pub fn node_ip(ips: &[IpAddr]) -> Result<IpAddr, RoleError> {
    let usable = |ip: &&IpAddr| match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    };
    ips.iter()
        .filter(usable)
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.iter().find(usable))
        .copied()
        .ok_or_else(|| {
            let all: Vec<String> = ips.iter().map(ToString::to_string).collect();
            RoleError::NoAddress(if all.is_empty() {
                "none".into()
            } else {
                all.join(", ")
            })
        })
}

/// `https://IP:port`, with brackets around IPv6 addresses.
pub(crate) fn https_url(ip: IpAddr, port: u16) -> String {
    format!("https://{}", std::net::SocketAddr::new(ip, port))
}

/// The environment of the role's services: the init's `PATH` and a home directory; nothing
/// else is inherited.
pub(crate) fn service_env() -> Vec<(String, String)> {
    vec![
        ("PATH".into(), crate::PATH.into()),
        ("HOME".into(), "/root".into()),
    ]
}

pub(crate) fn to_json<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, RoleError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| RoleError::Serialise {
        what: what.to_owned(),
        why: e.to_string(),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn dir(path: &str, mode: u32) -> RoleDir {
    RoleDir {
        path: PathBuf::from(path),
        mode,
    }
}

impl RolePlan {
    /// Creates the directories (fixing the mode of existing ones: etcd checks its data
    /// directory's) and writes the files under `root` (`/` on the node). Each file is written
    /// beside its destination and renamed over it, so a reader (the kubelet watching the
    /// manifest directory) never sees half a file.
    pub fn write(&self, root: &Path) -> std::io::Result<()> {
        let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        let context = |what: &str, p: &Path, e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
        };
        for d in &self.dirs {
            let path = under(&d.path);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(d.mode)
                .create(&path)
                .map_err(|e| context("mkdir", &path, e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(d.mode))
                .map_err(|e| context("chmod", &path, e))?;
        }
        for f in &self.files {
            let path = under(&f.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| context("mkdir", parent, e))?;
            }
            // A dot file: the kubelet reads every other file in the manifest directory as a
            // pod, and would see a half-written one or the same pod twice.
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let tmp = path.with_file_name(format!(".{name}.keel-tmp"));
            let write = || -> std::io::Result<()> {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(f.mode)
                    .open(&tmp)?;
                file.set_permissions(std::fs::Permissions::from_mode(f.mode))?;
                file.write_all(&f.contents)?;
                file.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            write().map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                context("write", &path, e)
            })?;
        }
        Ok(())
    }
}
