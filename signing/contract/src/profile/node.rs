//! `[node]`: what the node reads when it boots (its role, network, cluster, Kubernetes and
//! etcd settings, system containers). The builder bakes this section into the initramfs; a
//! node also takes it over fw_cfg, a URL or a config drive. Every value is typed and checked
//! when parsed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::kube::{
    ImageRepository, KubeVersion, LabelValue, NodeLabelKey, PeerUrl, SubjectAltName, Taint,
};
use super::values::{ClusterName, ContainerName, Endpoint, Hostname, InterfaceName, IpCidr};
use crate::names::DnsSubdomain;

/// The name containerd knows a baked image (`image.container_images`) by after the node
/// imported it: the builder bakes it for this name, the node runs it by this name.
pub fn baked_image_ref(name: &str) -> String {
    format!("keel.local/{name}:latest")
}

/// `[node]`: read by the init when the node boots.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// `controlplane` or `worker` (default `worker`).
    #[serde(default)]
    pub role: Role,
    /// The node's host name; default: `keel-` and the last bytes of the first MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub cluster: Cluster,
    /// System containers the node runs through containerd (Talos calls these extension
    /// services).
    #[serde(default)]
    pub containers: Vec<SystemContainer>,
    #[serde(default)]
    pub kubernetes: Kubernetes,
    #[serde(default)]
    pub etcd: Etcd,
    /// Keel's own pod network (bridge, host-local, portmap, host-gw routes), for clusters
    /// without a CNI DaemonSet.
    #[serde(default)]
    pub pod_network: super::pod_network::PodNetwork,
    /// Seconds a boot may take to pass its health gate; past it the node reboots, so that a
    /// version that hangs is rolled back like one that fails (default 300).
    #[serde(default = "default_boot_deadline")]
    pub boot_deadline_secs: u64,
    /// The configuration's generation. A node refuses a profile given at boot whose
    /// generation is lower than the one it applied before (a replayed old, signed profile),
    /// and reads a config drive after its first boot only when the drive's is higher
    /// (default 0).
    #[serde(default)]
    pub config_generation: u64,
    /// The hardware watchdog PID 1 arms and pets (`[node.watchdog]`).
    #[serde(default)]
    pub watchdog: Watchdog,
    /// Install onto an internal disk when booted from an installer medium
    /// (`[node.install]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<super::install::Install>,
    /// A network-booted node's `/var` on a disk of its own (`[node.var]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub var: Option<super::install::VarDisk>,
}

fn default_boot_deadline() -> u64 {
    300
}

impl Default for Node {
    fn default() -> Self {
        Node {
            role: Role::default(),
            hostname: None,
            network: Network::default(),
            cluster: Cluster::default(),
            containers: Vec::new(),
            kubernetes: Kubernetes::default(),
            etcd: Etcd::default(),
            pod_network: Default::default(),
            boot_deadline_secs: default_boot_deadline(),
            config_generation: 0,
            watchdog: Watchdog::default(),
            install: None,
            var: None,
        }
    }
}

/// `[[node.containers]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SystemContainer {
    /// Container and service name: lower-case letters, digits and `-`, starting with a letter.
    pub name: ContainerName,
    /// A baked image's short name (see `image.container_images`) or a full image reference
    /// already present in containerd.
    pub image: String,
    /// Arguments after the image's entrypoint (replacing its default command).
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub restart: RestartPolicy,
}

impl SystemContainer {
    /// The image reference to run: short names are baked images.
    pub fn image_ref(&self) -> String {
        if self.image.contains(['/', ':', '@']) {
            self.image.clone()
        } else {
            baked_image_ref(&self.image)
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    ControlPlane,
    #[default]
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "controlplane",
            Role::Worker => "worker",
        }
    }
}

/// `[node.network]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    #[serde(default)]
    pub mode: NetworkMode,
    /// Interface to configure (default: the first Ethernet interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<InterfaceName>,
    /// Static addresses with prefix length (static mode only).
    #[serde(default)]
    pub addresses: Vec<IpCidr>,
    /// Default gateway (static mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::IpAddr>,
    /// DNS servers (with DHCP: used in addition to the lease's).
    #[serde(default)]
    pub dns: Vec<std::net::IpAddr>,
    /// More interfaces, each with static addresses and no routes beyond their subnets: a
    /// cluster network beside the interface above (which keeps the default route). When
    /// there are links, the node advertises the first link's first address (etcd, the API
    /// server, the kubelet's `--node-ip`): the cluster's members reach each other there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<StaticLink>,
}

/// `[[node.network.links]]`: one more interface with static addresses.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticLink {
    pub interface: InterfaceName,
    pub addresses: Vec<IpCidr>,
    /// A virtual IPv4 address the control planes share on this link (the API server
    /// endpoint): the one whose etcd member leads holds it and announces it with gratuitous
    /// ARP. Control planes only; inside the link's first address's subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
}

impl Network {
    /// The main interface's part alone (without the links): what the first configuration,
    /// made before the profile was known, can be compared with.
    pub fn without_links(&self) -> Network {
        Network {
            links: Vec::new(),
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Dhcp,
    Static,
}

/// `[node.cluster]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Cluster name (default `keel`): a DNS label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<ClusterName>,
    /// The Kubernetes API endpoint every node talks to: `https://HOST:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
}

/// `[node.kubernetes]`: what the kubelet and the control plane run with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// Kubernetes version: the control-plane images' tag (`v` prepended).
    #[serde(default = "default_k8s_version")]
    pub version: KubeVersion,
    /// Registry and path of the control-plane images.
    #[serde(default = "default_image_repository")]
    pub image_repository: ImageRepository,
    /// The kubelet binary in the root (from the userland or `image.files`).
    #[serde(default = "default_kubelet")]
    pub kubelet: PathBuf,
    #[serde(default = "default_service_cidr")]
    pub service_cidr: IpCidr,
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: IpCidr,
    #[serde(default = "default_cluster_dns")]
    pub cluster_dns: std::net::IpAddr,
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: DnsSubdomain,
    /// Node labels, registered by the kubelet (so only keys it may set).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<NodeLabelKey, LabelValue>,
    /// Node taints, `key=value:Effect` or `key:Effect`.
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// More names and addresses for the API server's certificate.
    #[serde(default)]
    pub extra_sans: Vec<SubjectAltName>,
    /// How long the bootstrap token lets workers join, in hours from when it was made (`keel
    /// secrets gen` or `renew`): kubeadm's `--token-ttl`, 24 by default; 0 never expires. A
    /// control plane gives the token's Secret this expiration and does not create it again
    /// once it has passed.
    #[serde(default = "default_bootstrap_token_ttl_hours")]
    pub bootstrap_token_ttl_hours: u32,
}

impl Default for Kubernetes {
    fn default() -> Self {
        Kubernetes {
            version: default_k8s_version(),
            image_repository: default_image_repository(),
            kubelet: default_kubelet(),
            service_cidr: default_service_cidr(),
            pod_cidr: default_pod_cidr(),
            cluster_dns: default_cluster_dns(),
            cluster_domain: default_cluster_domain(),
            bootstrap_token_ttl_hours: default_bootstrap_token_ttl_hours(),
            labels: Default::default(),
            taints: Vec::new(),
            extra_sans: Vec::new(),
        }
    }
}

fn default_k8s_version() -> KubeVersion {
    KubeVersion::new(1, 31, 4)
}
fn default_image_repository() -> ImageRepository {
    ImageRepository::registry_k8s_io()
}
fn default_kubelet() -> PathBuf {
    PathBuf::from("/usr/bin/kubelet")
}
fn default_service_cidr() -> IpCidr {
    IpCidr {
        addr: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 0)),
        prefix: 12,
    }
}
fn default_pod_cidr() -> IpCidr {
    IpCidr {
        addr: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 0)),
        prefix: 16,
    }
}
fn default_cluster_dns() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 10))
}
/// kubeadm's default token TTL.
pub const DEFAULT_BOOTSTRAP_TOKEN_TTL_HOURS: u32 = 24;

fn default_bootstrap_token_ttl_hours() -> u32 {
    DEFAULT_BOOTSTRAP_TOKEN_TTL_HOURS
}

fn default_cluster_domain() -> DnsSubdomain {
    DnsSubdomain::cluster_local()
}

/// `[node.etcd]` (control plane).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    /// The etcd binary in the root.
    #[serde(default = "default_etcd")]
    pub binary: PathBuf,
    /// The cluster's members, this node included. Empty: a single member, this node.
    #[serde(default)]
    pub members: Vec<EtcdMember>,
    /// This control plane joins the running cluster of the other `members` instead of
    /// bootstrapping a new one with them: on its first boot (an empty data directory) it asks
    /// a member to add it as a learner, starts etcd with the cluster it was given, and is
    /// promoted to a voting member once it has caught up (etcd's runtime reconfiguration).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join: bool,
}

impl Default for Etcd {
    fn default() -> Self {
        Etcd {
            binary: default_etcd(),
            members: Vec::new(),
            join: false,
        }
    }
}

fn default_etcd() -> PathBuf {
    PathBuf::from("/usr/bin/etcd")
}

/// One etcd member: its name (the node's host name) and peer URL.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdMember {
    pub name: DnsSubdomain,
    /// `https://HOST:2380`.
    pub peer_url: PeerUrl,
}

/// `[node.watchdog]`: PID 1 arms the machine's hardware watchdog when it has one and pets it
/// while its main loop runs, so that a node whose kernel or PID 1 hangs is reset by the
/// hardware and its boot counter moves on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    /// Arm a watchdog when the machine has one (default true). A machine without one is not
    /// an error: the node says so on the console.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Seconds without a pet before the hardware resets the machine (default 60).
    #[serde(default)]
    pub timeout_secs: WatchdogTimeout,
    /// Which device, like `"watchdog1"` (default: the lowest-numbered one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<WatchdogDevice>,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            enabled: true,
            timeout_secs: WatchdogTimeout::default(),
            device: None,
        }
    }
}

/// A watchdog timeout: 10 to 600 seconds. Below 10 a slow boot under emulation could miss a
/// pet; above 600 a hung node stays hung for ten minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct WatchdogTimeout(u32);

impl WatchdogTimeout {
    pub const MIN: u32 = 10;
    pub const MAX: u32 = 600;
    pub fn new(secs: u32) -> Result<Self, String> {
        if (Self::MIN..=Self::MAX).contains(&secs) {
            Ok(WatchdogTimeout(secs))
        } else {
            Err(format!(
                "{secs} is out of range: expected {} to {} seconds",
                Self::MIN,
                Self::MAX
            ))
        }
    }
    pub const fn secs(self) -> u32 {
        self.0
    }
}

impl Default for WatchdogTimeout {
    fn default() -> Self {
        WatchdogTimeout(60)
    }
}

impl<'de> Deserialize<'de> for WatchdogTimeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let secs = u32::deserialize(d)?;
        WatchdogTimeout::new(secs).map_err(serde::de::Error::custom)
    }
}

/// A watchdog device's name under `/dev` and `/sys/class/watchdog`: `watchdog` and a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct WatchdogDevice(String);

impl WatchdogDevice {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for WatchdogDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let number = s.strip_prefix("watchdog").unwrap_or("");
        if !number.is_empty() && number.len() <= 4 && number.bytes().all(|b| b.is_ascii_digit()) {
            Ok(WatchdogDevice(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a watchdog device: expected \"watchdog\" and a number, like \"watchdog0\""
            ))
        }
    }
}

impl<'de> Deserialize<'de> for WatchdogDevice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
