//! The kubelet on both roles: its `KubeletConfiguration` file and its command line.
//!
//! A control plane's kubelet authenticates with `/etc/kubernetes/kubelet.conf` (a client
//! certificate for `system:node:<name>` from the PKI code) and runs the static pods. A worker's
//! kubelet starts from `/etc/kubernetes/bootstrap-kubelet.conf` (a bootstrap token), asks for
//! a client certificate (signed by the controller manager) and writes
//! `/var/lib/kubelet/kubeconfig` pointing at it, which later boots find and use.

use std::net::IpAddr;
use std::time::Duration;

use keel_contract::profile::{Node, Role};
use serde::{Deserialize, Serialize};

use super::{RoleError, labels, paths, service_env};
use crate::supervisor::{Health, Restart, ServiceSpec};

pub const SERVICE: &str = "kubelet";
pub const HEALTHZ_PORT: u16 = 10248;
pub const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
pub const KIND: &str = "KubeletConfiguration";
pub const CONTAINERD_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// The fields of `kubelet.config.k8s.io/v1beta1` `KubeletConfiguration` Keel sets (the type
/// is not in k8s-openapi, which has only the API server's types). Field names are the
/// kubelet's, including its acronyms (`clusterDNS`, `clientCAFile`, `serverTLSBootstrap`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletConfiguration {
    pub api_version: String,
    pub kind: String,
    pub authentication: KubeletAuthentication,
    pub authorization: KubeletAuthorization,
    /// containerd runs with cgroupfs (there is no systemd); the kubelet must agree.
    pub cgroup_driver: String,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub container_runtime_endpoint: String,
    /// Nodes have no swap, but a kubelet that refuses to start because of it would be worse
    /// than one that runs on a machine someone gave swap.
    pub fail_swap_on: bool,
    pub healthz_bind_address: String,
    pub healthz_port: u16,
    pub resolv_conf: String,
    /// Renew the client certificate through the API before it expires.
    pub rotate_certificates: bool,
    /// Ask the API for a serving certificate instead of a self-signed one. Off: nothing
    /// approves kubelet-serving CSRs yet, and without approval `kubectl logs` breaks.
    #[serde(
        rename = "serverTLSBootstrap",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub server_tls_bootstrap: Option<bool>,
    /// The static pods' directory (control planes only: a worker runs no static pods, and a
    /// directory the kubelet runs privileged pods from is one more thing to protect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_pod_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeletAuthentication {
    pub x509: KubeletX509Authentication,
    pub webhook: KubeletWebhookAuthentication,
    pub anonymous: KubeletAnonymousAuthentication,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeletX509Authentication {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletWebhookAuthentication {
    pub enabled: bool,
    #[serde(rename = "cacheTTL", default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeletAnonymousAuthentication {
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeletAuthorization {
    /// `Webhook`: the API server decides (SubjectAccessReview) who may use the kubelet API.
    pub mode: String,
}

/// The kubelet's configuration for this node.
pub fn config(node: &Node) -> KubeletConfiguration {
    let k = &node.kubernetes;
    KubeletConfiguration {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        authentication: KubeletAuthentication {
            x509: KubeletX509Authentication {
                client_ca_file: paths::CA_CRT.into(),
            },
            webhook: KubeletWebhookAuthentication {
                enabled: true,
                cache_ttl: Some("2m0s".into()),
            },
            anonymous: KubeletAnonymousAuthentication { enabled: false },
        },
        authorization: KubeletAuthorization {
            mode: "Webhook".into(),
        },
        cgroup_driver: "cgroupfs".into(),
        cluster_dns: vec![k.cluster_dns.to_string()],
        cluster_domain: k.cluster_domain.to_string(),
        container_runtime_endpoint: CONTAINERD_ENDPOINT.into(),
        fail_swap_on: false,
        // Loopback: only the init's health check reads it.
        healthz_bind_address: "127.0.0.1".into(),
        healthz_port: HEALTHZ_PORT,
        resolv_conf: "/etc/resolv.conf".into(),
        rotate_certificates: true,
        server_tls_bootstrap: None,
        static_pod_path: (node.role == Role::ControlPlane).then(|| paths::MANIFESTS_DIR.into()),
    }
}

/// The kubeconfig the kubelet runs with.
pub fn kubeconfig(role: Role) -> &'static str {
    match role {
        Role::ControlPlane => paths::KUBELET_CONF,
        Role::Worker => paths::WORKER_KUBECONFIG,
    }
}

/// The kubelet's command line: everything else is in the configuration file. `name` is the
/// node name (`--hostname-override`), which the client certificate must name.
pub fn argv(node: &Node, name: &str, node_ip: IpAddr) -> Result<Vec<String>, RoleError> {
    let k = &node.kubernetes;
    let mut argv = vec![
        k.kubelet.display().to_string(),
        format!("--config={}", paths::KUBELET_CONFIG),
        format!("--kubeconfig={}", kubeconfig(node.role)),
    ];
    if node.role == Role::Worker {
        argv.push(format!(
            "--bootstrap-kubeconfig={}",
            paths::BOOTSTRAP_KUBELET_CONF
        ));
    }
    argv.push(format!("--node-ip={node_ip}"));
    argv.push(format!("--hostname-override={name}"));
    if let Some(labels) = labels::labels_flag(&k.labels) {
        argv.push(format!("--node-labels={labels}"));
    }
    if let Some(taints) = labels::taints_flag(&k.taints) {
        argv.push(format!("--register-with-taints={taints}"));
    }
    argv.push(format!("--cert-dir={}", paths::KUBELET_CERT_DIR));
    Ok(argv)
}

/// The kubelet's health: its own `/healthz` on loopback.
pub fn health() -> Health {
    Health::Http {
        port: HEALTHZ_PORT,
        path: "/healthz".into(),
    }
}

/// The supervised service, started after `after` (etcd on a control plane).
pub fn service(argv: Vec<String>, after: &[String]) -> ServiceSpec {
    let mut spec = ServiceSpec::new(SERVICE, &[]);
    spec.argv = argv;
    spec.env = service_env();
    spec.depends_on = after.to_vec();
    spec.health = health();
    spec.restart = Restart::Always;
    // A worker's first start waits for its CSR to be signed before it serves /healthz.
    spec.startup_grace = Duration::from_secs(120);
    spec.stop_timeout = Duration::from_secs(30);
    spec
}
