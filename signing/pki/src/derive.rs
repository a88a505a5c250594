//! What a node makes from its [`NodeSecrets`] at boot: kubeadm's layout under a root such as
//! `/etc/kubernetes`, so that stock kubelet, kube-apiserver, etcd and friends find their files
//! where kubeadm-based docs say they are.
//!
//! Control plane (paths relative to the root):
//!
//! | file | signed by | subject | usage, SANs |
//! |---|---|---|---|
//! | `pki/ca.crt`, `pki/ca.key` | the Kubernetes CA itself | | |
//! | `pki/apiserver.{crt,key}` | Kubernetes CA | CN=kube-apiserver | server; `kubernetes`, `kubernetes.default`, `kubernetes.default.svc`, `kubernetes.default.svc.<domain>`, hostname, `localhost`, the first service IP, the endpoint host, node IPs, 127.0.0.1, `extra_sans` |
//! | `pki/apiserver-kubelet-client.{crt,key}` | Kubernetes CA | CN=kube-apiserver-kubelet-client, O=system:masters | client |
//! | `pki/apiserver-etcd-client.{crt,key}` | etcd CA | CN=kube-apiserver-etcd-client | client |
//! | `pki/front-proxy-ca.{crt,key}` | itself | | |
//! | `pki/front-proxy-client.{crt,key}` | front-proxy CA | CN=front-proxy-client | client |
//! | `pki/sa.key`, `pki/sa.pub` | | | service-account token keys |
//! | `pki/etcd/ca.{crt,key}` | itself | | |
//! | `pki/etcd/server.{crt,key}`, `pki/etcd/peer.{crt,key}` | etcd CA | CN=hostname | server and client; `localhost`, hostname, node IPs, 127.0.0.1, ::1 |
//! | `pki/etcd/healthcheck-client.{crt,key}` | etcd CA | CN=kube-etcd-healthcheck-client | client |
//! | `admin.conf` | Kubernetes CA | CN=kubernetes-admin, O=system:masters | kubeconfig |
//! | `controller-manager.conf` | Kubernetes CA | CN=system:kube-controller-manager | kubeconfig |
//! | `scheduler.conf` | Kubernetes CA | CN=system:kube-scheduler | kubeconfig |
//! | `kubelet.conf` | Kubernetes CA | CN=system:node:hostname, O=system:nodes | kubeconfig |
//!
//! Worker: `pki/ca.crt` and `bootstrap-kubelet.conf` (the bootstrap token; the kubelet gets
//! its own certificate through TLS bootstrapping and writes `kubelet.conf` itself).
//!
//! Every kubeconfig points at the cluster endpoint. Modes: private keys 0600; certificates
//! and `sa.pub` 0644; kubeconfigs 0600, because each one embeds a private key or the bootstrap
//! token (kubeadm writes them 0600 too).

use std::net::IpAddr;
use std::path::{Component, Path};

use super::kubeconfig::Kubeconfig;
use super::{Ca, Leaf, PkiError, Usage, names, push_san, san, secret_err, unix};
use keel_contract::profile::{Endpoint, IpCidr, Role};
use keel_contract::secrets::{CertKey, NodeSecrets};

/// Who the node is, as far as its certificates are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node name (the kubelet registers under it; etcd member certificates carry it).
    pub hostname: String,
    /// The node's addresses (SANs of the API server and etcd certificates).
    pub ips: Vec<IpAddr>,
    /// The cluster's API endpoint: every kubeconfig's server, and a SAN of the API server.
    pub endpoint: Endpoint,
    /// The service network; its first address is the `kubernetes` service's ClusterIP.
    pub service_cidr: IpCidr,
    pub cluster_domain: String,
    /// More API server SANs (`node.kubernetes.extra_sans`): IP addresses or DNS names.
    pub extra_sans: Vec<String>,
}

/// One file to write: a path relative to the root (`pki/ca.crt`), its bytes and its mode.
#[derive(Clone, PartialEq, Eq)]
pub struct DerivedFile {
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

impl std::fmt::Debug for DerivedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes may be a private key.
        write!(
            f,
            "DerivedFile({}, {} bytes, {:04o})",
            self.path,
            self.bytes.len(),
            self.mode
        )
    }
}

const PUBLIC: u32 = 0o644;
const PRIVATE: u32 = 0o600;

/// The first usable address of a network (`10.96.0.1` for `10.96.0.0/12`): the `kubernetes`
/// service's ClusterIP. `None` when the network has no room for it (/31, /32, /127, /128).
pub fn first_service_ip(cidr: &IpCidr) -> Option<IpAddr> {
    match cidr.addr {
        IpAddr::V4(a) => {
            let host_bits = 32u32.checked_sub(u32::from(cidr.prefix))?;
            if host_bits < 2 {
                return None;
            }
            let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
            Some(IpAddr::V4((u32::from(a) & mask).wrapping_add(1).into()))
        }
        IpAddr::V6(a) => {
            let host_bits = 128u32.checked_sub(u32::from(cidr.prefix))?;
            if host_bits < 2 {
                return None;
            }
            let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
            Some(IpAddr::V6((u128::from(a) & mask).wrapping_add(1).into()))
        }
    }
}

struct Out(Vec<DerivedFile>);

impl Out {
    fn file(&mut self, path: &str, text: &str, mode: u32) {
        self.0.push(DerivedFile {
            path: path.to_owned(),
            bytes: text.as_bytes().to_vec(),
            mode,
        });
    }
    /// `stem.crt` (0644) and `stem.key` (0600).
    fn pair(&mut self, stem: &str, pair: &CertKey) {
        self.file(&format!("{stem}.crt"), &pair.cert, PUBLIC);
        self.file(&format!("{stem}.key"), &pair.key, PRIVATE);
    }
}

/// The node's files (see the module documentation), as of `now` (unix seconds). No I/O;
/// leaf keys are fresh on every call, so two calls give different (equally valid) files.
pub fn derive(
    secrets: &NodeSecrets,
    id: &NodeIdentity,
    now: u64,
) -> Result<Vec<DerivedFile>, PkiError> {
    let now = unix(now)?;
    let hostname = checked_hostname(id)?;
    let ca_cert = secrets.kubernetes_ca.cert.as_str();
    let kubeconfigs = KubeconfigTarget {
        cluster: secrets.cluster_name.as_str(),
        server: id.endpoint.to_string(),
        ca_cert,
    };
    let mut out = Out(Vec::new());
    out.file("pki/ca.crt", ca_cert, PUBLIC);
    if secrets.role == Role::Worker {
        let conf = Kubeconfig::with_token(
            kubeconfigs.cluster,
            &kubeconfigs.server,
            ca_cert,
            "tls-bootstrap-token-user",
            &secrets.bootstrap_token.token(),
        );
        out.file("bootstrap-kubelet.conf", &conf.to_yaml(), PRIVATE);
        return Ok(out.0);
    }
    let cas = ControlPlaneCas::load(secrets)?;
    out.file("pki/ca.key", cas.kubernetes_key, PRIVATE);
    apiserver_files(&mut out, &cas, id, &hostname, now)?;
    etcd_files(&mut out, &cas, id, &hostname, now)?;
    kubeconfig_files(&mut out, &cas, &kubeconfigs, &hostname, now)?;
    Ok(out.0)
}

/// The node name in lower case, refused unless it is a DNS name (it goes into SANs and
/// `system:node:<name>`); the cluster domain is checked too.
fn checked_hostname(id: &NodeIdentity) -> Result<String, PkiError> {
    let hostname = id.hostname.to_ascii_lowercase();
    if hostname.parse::<IpAddr>().is_ok() || san(&hostname).is_err() {
        return Err(PkiError::Input(format!(
            "invalid hostname {:?}: expected a DNS name",
            id.hostname
        )));
    }
    if id
        .cluster_domain
        .parse::<keel_contract::profile::Hostname>()
        .is_err()
    {
        return Err(PkiError::Input(format!(
            "invalid cluster domain {:?}: expected a DNS name like \"cluster.local\"",
            id.cluster_domain
        )));
    }
    Ok(hostname)
}

/// What every kubeconfig points at.
struct KubeconfigTarget<'a> {
    cluster: &'a str,
    server: String,
    ca_cert: &'a str,
}

/// The CAs a control plane signs with, from its share of the secrets.
struct ControlPlaneCas<'a> {
    kubernetes: Ca,
    kubernetes_key: &'a str,
    etcd: Ca,
    etcd_pair: &'a CertKey,
    front_proxy: Ca,
    front_proxy_pair: &'a CertKey,
    service_account: &'a keel_contract::secrets::ServiceAccountKey,
}

impl<'a> ControlPlaneCas<'a> {
    fn load(secrets: &'a NodeSecrets) -> Result<Self, PkiError> {
        let missing = |field: &str| secret_err(field, "missing: a control plane needs it");
        let kubernetes_key = secrets
            .kubernetes_ca
            .key
            .as_deref()
            .ok_or_else(|| missing("kubernetes_ca.key"))?;
        let etcd_pair = secrets.etcd_ca.as_ref().ok_or_else(|| missing("etcd_ca"))?;
        let front_proxy_pair = secrets
            .front_proxy_ca
            .as_ref()
            .ok_or_else(|| missing("front_proxy_ca"))?;
        let service_account = secrets
            .service_account
            .as_ref()
            .ok_or_else(|| missing("service_account"))?;
        Ok(ControlPlaneCas {
            kubernetes: Ca::load("kubernetes_ca", &secrets.kubernetes_ca.cert, kubernetes_key)?,
            kubernetes_key,
            etcd: Ca::load("etcd_ca", &etcd_pair.cert, &etcd_pair.key)?,
            etcd_pair,
            front_proxy: Ca::load(
                "front_proxy_ca",
                &front_proxy_pair.cert,
                &front_proxy_pair.key,
            )?,
            front_proxy_pair,
            service_account,
        })
    }
}

/// Every name a client may dial the API server by.
fn apiserver_sans(id: &NodeIdentity, hostname: &str) -> Result<Vec<rcgen::SanType>, PkiError> {
    let mut sans = Vec::new();
    for name in [
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        format!("kubernetes.default.svc.{}", id.cluster_domain),
        hostname.to_owned(),
        "localhost".to_owned(),
    ] {
        push_san(&mut sans, san(&name)?);
    }
    let service_ip = first_service_ip(&id.service_cidr).ok_or_else(|| {
        PkiError::Input(format!(
            "service network {} has no room for the kubernetes service address",
            id.service_cidr
        ))
    })?;
    push_san(&mut sans, rcgen::SanType::IpAddress(service_ip));
    push_san(&mut sans, san(&id.endpoint.host)?);
    for ip in &id.ips {
        push_san(&mut sans, rcgen::SanType::IpAddress(*ip));
    }
    push_san(&mut sans, rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    for extra in &id.extra_sans {
        push_san(&mut sans, san(extra)?);
    }
    Ok(sans)
}

/// The API server's serving certificate, its clients of the kubelets and etcd, the front
/// proxy and the service-account keys.
fn apiserver_files(
    out: &mut Out,
    cas: &ControlPlaneCas<'_>,
    id: &NodeIdentity,
    hostname: &str,
    now: i64,
) -> Result<(), PkiError> {
    let server = Leaf {
        purpose: "apiserver",
        cn: "kube-apiserver",
        org: None,
        usage: Usage::Server,
        sans: apiserver_sans(id, hostname)?,
    };
    out.pair("pki/apiserver", &cas.kubernetes.issue(&server, now)?);
    let kubelet_client = Leaf::client(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        Some(names::MASTERS),
    );
    out.pair(
        "pki/apiserver-kubelet-client",
        &cas.kubernetes.issue(&kubelet_client, now)?,
    );
    let etcd_client = Leaf::client("apiserver-etcd-client", "kube-apiserver-etcd-client", None);
    out.pair(
        "pki/apiserver-etcd-client",
        &cas.etcd.issue(&etcd_client, now)?,
    );
    out.pair("pki/front-proxy-ca", cas.front_proxy_pair);
    let proxy_client = Leaf::client("front-proxy-client", "front-proxy-client", None);
    out.pair(
        "pki/front-proxy-client",
        &cas.front_proxy.issue(&proxy_client, now)?,
    );
    out.file("pki/sa.key", &cas.service_account.private, PRIVATE);
    out.file("pki/sa.pub", &cas.service_account.public, PUBLIC);
    Ok(())
}

/// etcd's CA, its server and peer certificates (clients dial it on localhost or the node's
/// addresses, peers by address) and the health-check client.
fn etcd_files(
    out: &mut Out,
    cas: &ControlPlaneCas<'_>,
    id: &NodeIdentity,
    hostname: &str,
    now: i64,
) -> Result<(), PkiError> {
    out.pair("pki/etcd/ca", cas.etcd_pair);
    let mut sans = Vec::new();
    push_san(&mut sans, san("localhost")?);
    push_san(&mut sans, san(hostname)?);
    for ip in &id.ips {
        push_san(&mut sans, rcgen::SanType::IpAddress(*ip));
    }
    push_san(&mut sans, rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    push_san(
        &mut sans,
        rcgen::SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
    );
    for (stem, purpose) in [
        ("pki/etcd/server", "etcd-server"),
        ("pki/etcd/peer", "etcd-peer"),
    ] {
        let leaf = Leaf {
            purpose,
            cn: hostname,
            org: None,
            usage: Usage::ServerAndClient,
            sans: sans.clone(),
        };
        out.pair(stem, &cas.etcd.issue(&leaf, now)?);
    }
    let health = Leaf::client(
        "etcd-healthcheck-client",
        "kube-etcd-healthcheck-client",
        None,
    );
    out.pair(
        "pki/etcd/healthcheck-client",
        &cas.etcd.issue(&health, now)?,
    );
    Ok(())
}

/// The kubeconfigs: each a client certificate of the Kubernetes CA.
fn kubeconfig_files(
    out: &mut Out,
    cas: &ControlPlaneCas<'_>,
    target: &KubeconfigTarget<'_>,
    hostname: &str,
    now: i64,
) -> Result<(), PkiError> {
    let node_cn = format!("system:node:{hostname}");
    for (file, cn, org) in [
        ("admin.conf", "kubernetes-admin", Some(names::MASTERS)),
        (
            "controller-manager.conf",
            "system:kube-controller-manager",
            None,
        ),
        ("scheduler.conf", "system:kube-scheduler", None),
        ("kubelet.conf", node_cn.as_str(), Some("system:nodes")),
    ] {
        // The file name is the certificate's purpose (its serial number's input).
        let client = cas.kubernetes.issue(&Leaf::client(file, cn, org), now)?;
        let conf = Kubeconfig::with_client_cert(
            target.cluster,
            &target.server,
            target.ca_cert,
            cn,
            &client,
        );
        out.file(file, &conf.to_yaml(), PRIVATE);
    }
    Ok(())
}

/// Writes derived files under `root`: missing directories are created (0755), each file is
/// written beside its destination and renamed over it, so a reader never sees half a key and
/// an existing file's looser mode never survives.
pub fn write_files(root: &Path, files: &[DerivedFile]) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PkiError::Io { path, source }
    };
    for f in files {
        let rel = Path::new(&f.path);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(PkiError::Input(format!(
                "{}: expected a relative path without `..`",
                f.path
            )));
        }
        let dest = root.join(rel);
        let dir = dest.parent().unwrap_or(root);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io(dir))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp"));
        // A leftover from an interrupted write would make create_new fail.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // The umask may have narrowed the mode given to open; set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(f.mode))
            .map_err(io(&tmp))?;
        file.write_all(&f.bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    }
    Ok(())
}
