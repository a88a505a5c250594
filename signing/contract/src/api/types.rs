//! The JSON bodies of the node API's requests and responses.

use serde::{Deserialize, Serialize};

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The image name (`keel-worker`).
    pub name: String,
    /// The OS version (semver).
    pub version: String,
    /// The booted slot, `a` or `b`.
    pub slot: String,
    pub arch: String,
    /// The init's own version.
    pub keel: String,
}

/// One root slot, as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// `a` or `b`.
    pub slot: String,
    /// The OS version in the slot's signed manifest; `None` for an empty slot.
    pub version: Option<String>,
    /// The slot's boot entry file name on the ESP, which shows systemd-boot's counter:
    /// `keel-b+2-1.conf` (2 tries left, 1 used), `keel-a.conf` (blessed). `None`: no entry.
    pub entry: Option<String>,
    /// The slot the node is running from.
    pub booted: bool,
    /// Blessed: a boot from it passed the health gate. A fresh entry with tries left is not
    /// yet healthy; one with no tries left has failed.
    pub healthy: bool,
    /// Why the slot cannot be booted or rolled back to, when it cannot: an upgrade was
    /// writing it and did not finish, it is empty, a file of it is missing on the ESP, it has
    /// no boot entry. `None`: the slot is complete and has its entry.
    #[serde(default)]
    pub invalid: Option<String>,
}

/// One supervised service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    /// `running`, `starting`, `backoff`, `failed`, `exited`, `stopped`...
    pub state: String,
    pub restarts: u32,
    pub pid: Option<u32>,
    /// Why it is in that state, when that needs saying.
    pub message: Option<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub version: String,
    /// The booted slot.
    pub slot: String,
    pub hostname: String,
    /// With prefix length: `10.0.2.15/24`.
    pub addresses: Vec<String>,
    pub slots: Vec<SlotInfo>,
    pub services: Vec<ServiceInfo>,
    /// This boot's number on this disk (1 for the first).
    pub boot: u64,
    /// The version whose boot failed and made the node fall back to this one, if it did.
    pub rolled_back_from: Option<String>,
    /// The rollback was asked for (`keel node rollback`) rather than forced by a failed boot.
    #[serde(default)]
    pub rollback_requested: bool,
    /// Versions the node refuses to install again (they failed to boot here).
    pub quarantined: Vec<String>,
    pub uptime_secs: u64,
    /// Why the node is up but not doing its job, when it is not: `/var` could not be mounted,
    /// or every boot entry ran out of tries and the node stays up instead of rebooting in a
    /// loop. A degraded node serves this API, does not bless its entry and does not reboot by
    /// itself.
    #[serde(default)]
    pub degraded: Option<String>,
    /// What the node had to work around at this boot and wants an operator to know: a
    /// configuration it refused and the copy it used instead, keys it ignored, a boot
    /// history it could not write.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The init's steps at this boot, stage 1's then stage 2's, in the order they started;
    /// steps that overlap ran in parallel. Empty from a node whose init does not record them.
    #[serde(default)]
    pub timeline: Vec<BootStep>,
    /// Set when the node booted from the network (`keel.root=`) and runs from RAM with no
    /// boot disk: no slots or boot entries, `/var` on tmpfs, upgrades refused. Absent from a
    /// disk-booted node and from nodes older than network boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diskless: Option<Diskless>,
    /// This boot passed the health gate (the ready line): the node does its job. False
    /// while it boots, and on a degraded node.
    #[serde(default)]
    pub ready: bool,
    /// The shared virtual IP (`[[node.network.links]] vip`) while this node holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
}

/// How a diskless node got its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diskless {
    /// The `root.img` URL it booted from.
    pub root_url: String,
    /// The RAM its verified copy of the root holds.
    pub root_ram_bytes: u64,
    /// Fetching and verifying it, in milliseconds.
    pub fetch_ms: u64,
}

/// Why a diskless node refuses an upgrade or a rollback (409).
pub const DISKLESS_UPGRADE: &str = "this node booted from the network and has no disk to write a slot to: a diskless node upgrades by being served a new version and rebooted";

/// One step of the init at this boot: when it started and ended, in milliseconds of
/// `CLOCK_BOOTTIME` (since the kernel started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootStep {
    /// `modules`, `disk`, `var`, `network`, `containerd`...
    pub step: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// The timeline on one line, in seconds since the kernel started, as the console's ready
/// line and `keel node status` show it: `modules 0.40-0.81 disk 0.81-0.95 ...`.
pub fn timeline_line(steps: &[BootStep]) -> String {
    let secs = |ms: u64| format!("{}.{:02}", ms / 1000, (ms % 1000) / 10);
    steps
        .iter()
        .map(|s| format!("{} {}-{}", s.step, secs(s.start_ms), secs(s.end_ms)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `POST /v1/upgrade`: what was installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeReport {
    /// The running version.
    pub from: String,
    /// The version written to the other slot.
    pub to: String,
    /// The slot it went to.
    pub slot: String,
    /// Bytes of update stream received.
    pub bytes: u64,
    /// The node reboots into it now.
    pub reboot: bool,
}

/// `POST /v1/rollback`: the node boots the other slot next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackReport {
    /// The running version.
    pub from: String,
    /// The other slot's version, booted next.
    pub to: String,
    /// The other slot.
    pub slot: String,
    /// The node reboots into it now.
    pub reboot: bool,
}

/// The largest `POST /v1/certificate` body the node reads: a certificate chain and a key
/// are a few kilobytes.
pub const MAX_CERTIFICATE_BODY: u64 = 64 * 1024;

/// `POST /v1/certificate`: a renewed API serving certificate for the node, from the keel CA
/// the node already trusts (`keel secrets renew`'s shared `node_api`, or `keel secrets node`'s
/// own one). Only the serving certificate travels: the keel CA a node trusts is never
/// replaced through the API it guards, and the Kubernetes secrets are not the API's.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertificate {
    /// PEM: the certificate, then any intermediates.
    pub cert: String,
    /// PEM: its private key (PKCS#8).
    pub key: String,
}

impl std::fmt::Debug for NodeCertificate {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCertificate")
            .field("cert", &format_args!("<{} bytes of PEM>", self.cert.len()))
            .field("key", &format_args!("<elided>"))
            .finish()
    }
}

/// `POST /v1/certificate`: what the node now serves, on every new connection and after a
/// reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateReport {
    /// The certificate's DNS names (`keel-node`, and the node's own name when it is its own).
    pub names: Vec<String>,
    /// When it ends (unix seconds).
    pub not_after: i64,
    /// Its serial number, hex.
    pub serial: String,
}

/// `POST /v1/reboot` and `/v1/shutdown`: accepted, the node acts after answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub message: String,
}
