//! The control plane's static pods: kube-apiserver, kube-controller-manager and
//! kube-scheduler, as kubeadm writes them (same flags, certificate paths, probes and
//! volumes), built as typed `k8s-openapi` objects and written as JSON to
//! `/etc/kubernetes/manifests`, where the kubelet runs them from.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, HostPathVolumeSource, Pod, PodSecurityContext, PodSpec, Probe,
    ResourceRequirements, SeccompProfile, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keel_contract::profile::Node;

use super::{RoleError, RoleFile, etcd, paths, to_json};

pub const APISERVER: &str = "kube-apiserver";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub const SCHEDULER: &str = "kube-scheduler";
/// The API server's port when the profile names no endpoint.
pub const DEFAULT_SECURE_PORT: u16 = 6443;
pub const CONTROLLER_MANAGER_PORT: u16 = 10257;
pub const SCHEDULER_PORT: u16 = 10259;
/// The priority of the `system-node-critical` class. Set besides the class name because
/// static pods do not pass the admission plugin that would resolve it.
const NODE_CRITICAL_PRIORITY: i32 = 2_000_001_000;
const PKI_VOLUME: &str = "k8s-certs";
const CA_CERTS_VOLUME: &str = "ca-certs";
const KUBECONFIG_VOLUME: &str = "kubeconfig";

/// The manifest files, mode 0600 like kubeadm's (they name key files).
pub fn manifest_files(node: &Node, node_ip: IpAddr) -> Result<Vec<RoleFile>, RoleError> {
    [
        apiserver(node, node_ip),
        controller_manager(node),
        scheduler(node),
    ]
    .iter()
    .map(|pod| {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        Ok(RoleFile {
            path: PathBuf::from(manifest_path(name)),
            contents: to_json(&format!("the {name} manifest"), pod)?,
            mode: 0o600,
        })
    })
    .collect()
}

/// `/etc/kubernetes/manifests/<component>.yaml`.
pub fn manifest_path(component: &str) -> String {
    format!("{}/{component}.yaml", paths::MANIFESTS_DIR)
}

/// `<image_repository>/<component>:v<version>`.
pub fn image(node: &Node, component: &str) -> String {
    let k = &node.kubernetes;
    format!("{}/{component}:{}", k.image_repository, k.version.tag())
}

/// The API server's port: the cluster endpoint's, else 6443.
pub fn secure_port(node: &Node) -> u16 {
    node.cluster
        .endpoint
        .as_ref()
        .map_or(DEFAULT_SECURE_PORT, |e| e.port)
}

fn pki(file: &str) -> String {
    format!("{}/{file}", paths::PKI_DIR)
}

fn flags(pairs: Vec<(&str, String)>) -> Vec<String> {
    pairs
        .into_iter()
        .map(|(k, v)| format!("--{k}={v}"))
        .collect()
}

pub fn apiserver(node: &Node, node_ip: IpAddr) -> Pod {
    let k = &node.kubernetes;
    let port = secure_port(node);
    let mut command = vec![APISERVER.to_owned()];
    command.extend(flags(vec![
        ("advertise-address", node_ip.to_string()),
        ("allow-privileged", "true".into()),
        ("authorization-mode", "Node,RBAC".into()),
        ("client-ca-file", paths::CA_CRT.into()),
        ("enable-admission-plugins", "NodeRestriction".into()),
        // Workers join with bootstrap tokens (bootstrap-kubelet.conf).
        ("enable-bootstrap-token-auth", "true".into()),
        ("etcd-cafile", paths::ETCD_CA_CRT.into()),
        ("etcd-certfile", pki("apiserver-etcd-client.crt")),
        ("etcd-keyfile", pki("apiserver-etcd-client.key")),
        (
            "etcd-servers",
            format!("https://127.0.0.1:{}", etcd::CLIENT_PORT),
        ),
        (
            "kubelet-client-certificate",
            pki("apiserver-kubelet-client.crt"),
        ),
        ("kubelet-client-key", pki("apiserver-kubelet-client.key")),
        (
            "kubelet-preferred-address-types",
            "InternalIP,ExternalIP,Hostname".into(),
        ),
        ("proxy-client-cert-file", pki("front-proxy-client.crt")),
        ("proxy-client-key-file", pki("front-proxy-client.key")),
        ("requestheader-allowed-names", "front-proxy-client".into()),
        ("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
        (
            "requestheader-extra-headers-prefix",
            "X-Remote-Extra-".into(),
        ),
        ("requestheader-group-headers", "X-Remote-Group".into()),
        ("requestheader-username-headers", "X-Remote-User".into()),
        ("secure-port", port.to_string()),
        (
            "service-account-issuer",
            format!("https://kubernetes.default.svc.{}", k.cluster_domain),
        ),
        ("service-account-key-file", pki("sa.pub")),
        ("service-account-signing-key-file", pki("sa.key")),
        ("service-cluster-ip-range", k.service_cidr.to_string()),
        ("tls-cert-file", pki("apiserver.crt")),
        ("tls-private-key-file", pki("apiserver.key")),
    ]));
    let https = |path: &str| HTTPGetAction {
        // The API server listens on every address; loopback survives a changed node IP.
        host: Some("127.0.0.1".into()),
        path: Some(path.into()),
        port: IntOrString::Int(port.into()),
        scheme: Some("HTTPS".into()),
        ..Default::default()
    };
    let container = Container {
        liveness_probe: Some(probe(https("/livez"), 8, 10)),
        readiness_probe: Some(Probe {
            http_get: Some(https("/readyz")),
            failure_threshold: Some(3),
            period_seconds: Some(1),
            timeout_seconds: Some(15),
            ..Default::default()
        }),
        startup_probe: Some(probe(https("/livez"), 24, 10)),
        volume_mounts: Some(vec![
            mount(CA_CERTS_VOLUME, "/etc/ssl/certs"),
            mount(PKI_VOLUME, paths::PKI_DIR),
        ]),
        ..container(node, APISERVER, command, "250m")
    };
    pod(
        APISERVER,
        container,
        vec![
            host_path(CA_CERTS_VOLUME, "/etc/ssl/certs", "DirectoryOrCreate"),
            host_path(PKI_VOLUME, paths::PKI_DIR, "DirectoryOrCreate"),
        ],
    )
}

pub fn controller_manager(node: &Node) -> Pod {
    let k = &node.kubernetes;
    let kubeconfig = paths::CONTROLLER_MANAGER_CONF;
    let mut command = vec![CONTROLLER_MANAGER.to_owned()];
    command.extend(flags(vec![
        // Pod CIDRs per node from cluster-cidr, for CNI plugins that use node.spec.podCIDR.
        ("allocate-node-cidrs", "true".into()),
        ("authentication-kubeconfig", kubeconfig.into()),
        ("authorization-kubeconfig", kubeconfig.into()),
        ("bind-address", "127.0.0.1".into()),
        ("client-ca-file", paths::CA_CRT.into()),
        ("cluster-cidr", k.pod_cidr.to_string()),
        ("cluster-name", cluster_name(node).into()),
        // Signs the CSRs of bootstrapping kubelets with the cluster CA, so their client
        // certificates are trusted by the API server's --client-ca-file.
        ("cluster-signing-cert-file", paths::CA_CRT.into()),
        ("cluster-signing-key-file", paths::CA_KEY.into()),
        // bootstrapsigner and tokencleaner are off by default; bootstrap tokens need them.
        ("controllers", "*,bootstrapsigner,tokencleaner".into()),
        ("kubeconfig", kubeconfig.into()),
        ("leader-elect", "true".into()),
        ("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
        ("root-ca-file", paths::CA_CRT.into()),
        ("service-account-private-key-file", pki("sa.key")),
        ("service-cluster-ip-range", k.service_cidr.to_string()),
        ("use-service-account-credentials", "true".into()),
    ]));
    let container = Container {
        liveness_probe: Some(probe(healthz(CONTROLLER_MANAGER_PORT), 8, 10)),
        startup_probe: Some(probe(healthz(CONTROLLER_MANAGER_PORT), 24, 10)),
        volume_mounts: Some(vec![
            mount(CA_CERTS_VOLUME, "/etc/ssl/certs"),
            mount(PKI_VOLUME, paths::PKI_DIR),
            mount(KUBECONFIG_VOLUME, kubeconfig),
        ]),
        ..container(node, CONTROLLER_MANAGER, command, "200m")
    };
    pod(
        CONTROLLER_MANAGER,
        container,
        vec![
            host_path(CA_CERTS_VOLUME, "/etc/ssl/certs", "DirectoryOrCreate"),
            host_path(PKI_VOLUME, paths::PKI_DIR, "DirectoryOrCreate"),
            host_path(KUBECONFIG_VOLUME, kubeconfig, "FileOrCreate"),
        ],
    )
}

pub fn scheduler(node: &Node) -> Pod {
    let kubeconfig = paths::SCHEDULER_CONF;
    let mut command = vec![SCHEDULER.to_owned()];
    command.extend(flags(vec![
        ("authentication-kubeconfig", kubeconfig.into()),
        ("authorization-kubeconfig", kubeconfig.into()),
        ("bind-address", "127.0.0.1".into()),
        ("kubeconfig", kubeconfig.into()),
        ("leader-elect", "true".into()),
    ]));
    let container = Container {
        liveness_probe: Some(probe(healthz(SCHEDULER_PORT), 8, 10)),
        startup_probe: Some(probe(healthz(SCHEDULER_PORT), 24, 10)),
        volume_mounts: Some(vec![mount(KUBECONFIG_VOLUME, kubeconfig)]),
        ..container(node, SCHEDULER, command, "100m")
    };
    pod(
        SCHEDULER,
        container,
        vec![host_path(KUBECONFIG_VOLUME, kubeconfig, "FileOrCreate")],
    )
}

fn cluster_name(node: &Node) -> &str {
    node.cluster.name.as_deref().unwrap_or("keel")
}

/// `GET https://127.0.0.1:<port>/healthz`: the components serve it on their secure port,
/// bound to loopback.
fn healthz(port: u16) -> HTTPGetAction {
    HTTPGetAction {
        host: Some("127.0.0.1".into()),
        path: Some("/healthz".into()),
        port: IntOrString::Int(port.into()),
        scheme: Some("HTTPS".into()),
        ..Default::default()
    }
}

/// kubeadm's probe timings: 10 s after start, every 10 s, 15 s timeout.
fn probe(get: HTTPGetAction, failure_threshold: i32, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(get),
        failure_threshold: Some(failure_threshold),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        timeout_seconds: Some(15),
        ..Default::default()
    }
}

fn container(node: &Node, name: &str, command: Vec<String>, cpu: &str) -> Container {
    Container {
        name: name.to_owned(),
        image: Some(image(node, name)),
        // Air-gapped nodes have the images baked in; never pull what is there.
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(command),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".to_owned(), Quantity(cpu.into()))])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn host_path(volume: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: volume.to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_owned(),
            type_: Some(kind.to_owned()),
        }),
        ..Default::default()
    }
}

fn pod(name: &str, container: Container, volumes: Vec<Volume>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("kube-system".into()),
            labels: Some(BTreeMap::from([
                ("component".to_owned(), name.to_owned()),
                ("tier".to_owned(), "control-plane".to_owned()),
            ])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            host_network: Some(true),
            priority: Some(NODE_CRITICAL_PRIORITY),
            priority_class_name: Some("system-node-critical".into()),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    }
}
