//! The profile schema: what a profile file may contain. Every struct rejects unknown fields.
//! All fields are optional or have defaults so that a base profile (one that others extend)
//! is valid on its own; what a build needs is checked by [`super::validate`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::values::{ByteSize, Endpoint, FileMode, Hostname, ImageName, IpCidr};

/// A Keel profile: how to build an image (`[image]`) and what the node does when it boots
/// (`[node]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Another profile this one builds on, as a path relative to this file. Tables merge key by
    /// key; a value set here (arrays included) replaces the base's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    #[serde(default)]
    pub image: Image,
    #[serde(default)]
    pub node: Node,
}

/// `[image]`: read by the builder only.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Image name: lower-case letters, digits, `-` (default `keel`).
    #[serde(default = "default_name")]
    pub name: ImageName,
    /// OS version (semver). Upgrades only move to higher versions. `keel build --version`
    /// overrides it.
    #[serde(
        default,
        deserialize_with = "version",
        skip_serializing_if = "Option::is_none"
    )]
    pub version: Option<semver::Version>,
    /// CPU architecture. Only `x86_64` is supported.
    #[serde(default)]
    pub arch: Arch,
    /// Where the root filesystem comes from, applied in order.
    #[serde(default)]
    pub userland: Vec<UserlandSource>,
    /// Extra files and directories copied from the build host.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// The kernel: `"auto"` (found in the userland) or `{ path = "...", modules = "..." }`.
    #[serde(default)]
    pub kernel: KernelSpec,
    /// Extra kernel command-line arguments (after Keel's own).
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Size of each root slot partition (KEEL-A, KEEL-B).
    #[serde(default = "default_slot_size")]
    pub slot_size: ByteSize,
    /// Size of the EFI system partition (FAT32, so at least 64MiB).
    #[serde(default = "default_esp_size")]
    pub esp_size: ByteSize,
    /// Size of the STATE partition (FAT32, so at least 64MiB).
    #[serde(default = "default_state_size")]
    pub state_size: ByteSize,
    /// Output formats besides the raw disk: `raw`, `qcow2`, `vhd`, `gce`.
    #[serde(default = "default_formats")]
    pub formats: Vec<OutputFormat>,
    /// The minisign secret key that signs the manifest (`keel key gen`). `keel build --key`
    /// overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<PathBuf>,
    /// More public keys the node trusts for upgrades (key rotation). The signing key's own
    /// public key (`<signing_key>.pub` or `keel.pub` beside it) is always trusted.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    #[serde(default)]
    pub squashfs: Squashfs,
    #[serde(default)]
    pub initramfs: Initramfs,
    /// Container images baked into the root and imported into containerd at boot, so
    /// air-gapped nodes need no registry.
    #[serde(default)]
    pub container_images: Vec<ContainerImage>,
    /// The cluster's secrets file (`keel secrets gen`). The builder writes what the node's
    /// role needs (never a CA key for a worker) into the STATE partition, never into the
    /// root or the manifest. Optional: nodes can get their secrets at boot instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<PathBuf>,
}

impl Default for Image {
    fn default() -> Self {
        Image {
            name: default_name(),
            version: None,
            arch: Arch::default(),
            userland: Vec::new(),
            files: Vec::new(),
            kernel: KernelSpec::default(),
            cmdline: Vec::new(),
            slot_size: default_slot_size(),
            esp_size: default_esp_size(),
            state_size: default_state_size(),
            formats: default_formats(),
            signing_key: None,
            trusted_keys: Vec::new(),
            squashfs: Squashfs::default(),
            initramfs: Initramfs::default(),
            container_images: Vec::new(),
            secrets: None,
        }
    }
}

fn version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<semver::Version>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid version {text:?}: expected a semantic version like \"1.2.0\" ({e})"
        ))
    })
}

fn default_name() -> ImageName {
    ImageName::keel()
}
fn default_slot_size() -> ByteSize {
    ByteSize::mib(1024)
}
fn default_esp_size() -> ByteSize {
    ByteSize::mib(256)
}
fn default_state_size() -> ByteSize {
    ByteSize::mib(64)
}
fn default_formats() -> Vec<OutputFormat> {
    vec![OutputFormat::Raw]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    #[default]
    X86_64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// `disk.raw`: always written; what `dd` puts on a USB stick or disk.
    Raw,
    /// `disk.qcow2`: QEMU copy-on-write v3 (QEMU, libvirt, OpenStack).
    Qcow2,
    /// `disk.vhd`: fixed VHD for Azure.
    Vhd,
    /// `disk.tar.gz`: `disk.raw` in a gzip-compressed GNU tar, as Google Compute Engine
    /// imports it.
    Gce,
}

impl OutputFormat {
    pub const ALL: [OutputFormat; 4] = [
        OutputFormat::Raw,
        OutputFormat::Qcow2,
        OutputFormat::Vhd,
        OutputFormat::Gce,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            OutputFormat::Raw => "raw",
            OutputFormat::Qcow2 => "qcow2",
            OutputFormat::Vhd => "vhd",
            OutputFormat::Gce => "gce",
        }
    }

    /// The conventional artifact file name for this format.
    pub const fn file_name(self) -> &'static str {
        match self {
            OutputFormat::Raw => "disk.raw",
            OutputFormat::Qcow2 => "disk.qcow2",
            OutputFormat::Vhd => "disk.vhd",
            OutputFormat::Gce => "disk.tar.gz",
        }
    }
}

impl std::fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Returned by [`OutputFormat::from_str`] for a name that is not a format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown output format {0:?} (expected raw, qcow2, vhd or gce)")]
pub struct UnknownFormat(pub String);

impl std::str::FromStr for OutputFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OutputFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFormat(s.to_owned()))
    }
}

/// One userland source, written as `{ debian = {...} }` or `{ oci = {...} }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum UserlandSource {
    Debian(DebianSource),
    Oci(OciSource),
}

/// Debian packages, resolved and downloaded with the build host's apt.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSource {
    /// A release the host's apt sources know, by codename (`bookworm`) or archive name
    /// (`oldstable`). Its `-updates` and `-security` companions are used too when the host has
    /// them, so the image gets the same security fixes `apt-get upgrade` would.
    pub suite: String,
    /// Packages to install, with their dependencies (recommends excluded).
    pub packages: Vec<String>,
    /// Packages never installed even when something depends on them (no maintainer scripts
    /// run, so e.g. `initramfs-tools` and `perl` are dead weight).
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// An OCI image: a local image layout directory or an oci-archive tar.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OciSource {
    /// An OCI image layout directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<PathBuf>,
    /// An oci-archive tar file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<PathBuf>,
    /// The image's ref name (`org.opencontainers.image.ref.name`); optional when the layout
    /// holds one image.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// A file or directory from the build host placed in the root.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Host path, relative to the profile that names it.
    pub src: PathBuf,
    /// Absolute destination path in the image.
    pub dst: String,
    /// Permission bits (octal string); default: the host file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<FileMode>,
}

/// Where the kernel comes from.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum KernelSpec {
    /// The one kernel in the userland: `/boot/vmlinuz-<kver>` or
    /// `/usr/lib/modules/<kver>/vmlinuz`, with the modules of `/usr/lib/modules/<kver>`.
    #[default]
    Auto,
    /// Host paths: the kernel image and its `lib/modules/<kver>` directory.
    Path {
        path: PathBuf,
        modules: Option<PathBuf>,
    },
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct KernelPathRepr {
    path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modules: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for KernelSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KernelSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"auto\" or a table { path = \"...\", modules = \"...\" }")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<KernelSpec, E> {
                if s == "auto" {
                    Ok(KernelSpec::Auto)
                } else {
                    Err(E::custom(format!(
                        "invalid kernel {s:?}: expected \"auto\" or a table {{ path = \"...\" }}"
                    )))
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<KernelSpec, A::Error> {
                let repr =
                    KernelPathRepr::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(KernelSpec::Path {
                    path: repr.path,
                    modules: repr.modules,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for KernelSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KernelSpec::Auto => s.serialize_str("auto"),
            KernelSpec::Path { path, modules } => KernelPathRepr {
                path: path.clone(),
                modules: modules.clone(),
            }
            .serialize(s),
        }
    }
}

/// `[[image.container_images]]`: an OCI image (layout or oci-archive) baked into the root as
/// `/usr/share/keel/images/<name>.tar` and imported at boot as `keel.local/<name>:latest`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerImage {
    /// Short name: lower-case letters, digits and `-`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<PathBuf>,
    /// Ref name in the layout; optional when it holds one image.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl ContainerImage {
    /// The name containerd knows the image by after the node imported it.
    pub fn containerd_name(name: &str) -> String {
        format!("keel.local/{name}:latest")
    }
}

/// `[image.squashfs]`: the root filesystem's compression.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Squashfs {
    #[serde(default)]
    pub compression: Compression,
    /// zstd level, 1-22 (mksquashfs's default is 15).
    #[serde(default = "default_zstd_level")]
    pub level: u8,
    /// Data block size: a power of two from 4KiB to 1MiB.
    #[serde(default = "default_block_size")]
    pub block_size: ByteSize,
}

impl Default for Squashfs {
    fn default() -> Self {
        Squashfs {
            compression: Compression::default(),
            level: default_zstd_level(),
            block_size: default_block_size(),
        }
    }
}

fn default_zstd_level() -> u8 {
    15
}
fn default_block_size() -> ByteSize {
    ByteSize(128 * 1024)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Zstd,
    None,
}

/// `[image.initramfs]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    /// Kernel modules to add besides the ones Keel needs to reach and verify the root
    /// (their dependencies are added too).
    #[serde(default)]
    pub modules: Vec<String>,
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
        }
    }
}

/// `[[node.containers]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SystemContainer {
    /// Container and service name: lower-case letters, digits and `-`.
    pub name: String,
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
            ContainerImage::containerd_name(&self.image)
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
    pub interface: Option<String>,
    /// Static addresses with prefix length (static mode only).
    #[serde(default)]
    pub addresses: Vec<IpCidr>,
    /// Default gateway (static mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::IpAddr>,
    /// DNS servers (with DHCP: used in addition to the lease's).
    #[serde(default)]
    pub dns: Vec<std::net::IpAddr>,
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
    /// Cluster name (default `keel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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
    pub version: String,
    /// Registry and path of the control-plane images.
    #[serde(default = "default_image_repository")]
    pub image_repository: String,
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
    pub cluster_domain: String,
    /// Node labels, registered by the kubelet.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Node taints, `key=value:Effect` or `key:Effect`.
    #[serde(default)]
    pub taints: Vec<String>,
    /// More names and addresses for the API server's certificate.
    #[serde(default)]
    pub extra_sans: Vec<String>,
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
            labels: Default::default(),
            taints: Vec::new(),
            extra_sans: Vec::new(),
        }
    }
}

fn default_k8s_version() -> String {
    "1.31.4".into()
}
fn default_image_repository() -> String {
    "registry.k8s.io".into()
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
fn default_cluster_domain() -> String {
    "cluster.local".into()
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
}

impl Default for Etcd {
    fn default() -> Self {
        Etcd {
            binary: default_etcd(),
            members: Vec::new(),
        }
    }
}

fn default_etcd() -> PathBuf {
    PathBuf::from("/usr/bin/etcd")
}

/// One etcd member: its name (the node's hostname) and peer URL.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdMember {
    pub name: String,
    /// `https://HOST:2380`.
    pub peer_url: String,
}
