use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use keel_contract::profile::{LoadedProfile, Node, Role};

use super::kubelet::KubeletConfiguration;
use super::*;
use crate::supervisor::Health;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A node section parsed the way the init parses the baked profile.
fn node_from(toml: &str) -> Node {
    LoadedProfile::from_text(Path::new("test.toml"), toml)
        .unwrap()
        .profile
        .node
}

/// A root with the binaries the stock profile names.
fn root_with(binaries: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for b in binaries {
        let path = root.path().join(b.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "#!\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    root
}

fn facts(root: &Path) -> NodeFacts {
    NodeFacts {
        hostname: "cp-1".into(),
        ips: vec![ip("127.0.0.1"), ip("fe80::1"), ip("10.0.0.5")],
        root: root.to_owned(),
        etcd_joined: None,
    }
}

fn controlplane() -> Node {
    node_from(
        r#"
[node]
role = "controlplane"
[node.cluster]
name = "prod"
endpoint = "https://10.0.0.100:6443"
[node.kubernetes]
version = "1.31.4"
image_repository = "registry.example/k8s"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
labels = { "node.kubernetes.io/pool" = "system" }
taints = ["node-role.kubernetes.io/control-plane:NoSchedule"]
"#,
    )
}

fn worker() -> Node {
    node_from(
        r#"
[node]
role = "worker"
[node.kubernetes]
labels = { "example.com/tier" = "edge", zone = "b" }
taints = ["dedicated=gpu:NoSchedule", "spot:PreferNoSchedule"]
"#,
    )
}

fn file<'a>(plan: &'a RolePlan, path: &str) -> &'a RoleFile {
    plan.files
        .iter()
        .find(|f| f.path == Path::new(path))
        .unwrap_or_else(|| panic!("{path} not in the plan"))
}

fn pod(plan: &RolePlan, component: &str) -> Pod {
    let f = file(plan, &format!("/etc/kubernetes/manifests/{component}.yaml"));
    assert_eq!(f.mode, 0o600);
    serde_json::from_slice(&f.contents).unwrap()
}

fn command(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.containers.len(), 1);
    spec.containers[0].command.clone().unwrap()
}

fn has(args: &[String], flag: &str) {
    assert!(
        args.iter().any(|a| a == flag),
        "{flag} missing from {args:#?}"
    );
}

#[test]
fn controlplane_plan() {
    let root = root_with(&["/usr/bin/etcd", "/usr/bin/kubelet"]);
    let plan = plan(&controlplane(), &facts(root.path())).unwrap();
    assert_eq!(plan.role, Role::ControlPlane);
    assert_eq!(plan.node_ip, ip("10.0.0.5"));
    assert!(plan.degraded.is_empty(), "{:?}", plan.degraded);
    let names: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["etcd", "kubelet"], "etcd first");
    assert_eq!(plan.services[1].depends_on, ["etcd"]);
    assert_eq!(
        plan.services[0].health,
        Health::Http {
            port: 2381,
            path: "/health".into()
        }
    );
    assert_eq!(
        plan.services[1].health,
        Health::Http {
            port: 10248,
            path: "/healthz".into()
        }
    );
    let mut paths: Vec<&Path> = plan.files.iter().map(|f| f.path.as_path()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/etc/kubernetes/manifests/kube-apiserver.yaml",
            "/etc/kubernetes/manifests/kube-controller-manager.yaml",
            "/etc/kubernetes/manifests/kube-scheduler.yaml",
            "/var/lib/kubelet/config.yaml",
        ]
        .map(Path::new)
    );
    let etcd_dir = plan
        .dirs
        .iter()
        .find(|d| d.path == Path::new("/var/lib/etcd"))
        .unwrap();
    assert_eq!(etcd_dir.mode, 0o700, "etcd refuses a readable data dir");
    assert!(
        plan.dirs
            .iter()
            .any(|d| d.path == Path::new("/etc/kubernetes/manifests"))
    );
}

#[test]
fn apiserver_manifest() {
    let root = root_with(&["/usr/bin/etcd", "/usr/bin/kubelet"]);
    let plan = plan(&controlplane(), &facts(root.path())).unwrap();
    let pod = pod(&plan, "kube-apiserver");
    assert_eq!(pod.metadata.name.as_deref(), Some("kube-apiserver"));
    assert_eq!(pod.metadata.namespace.as_deref(), Some("kube-system"));
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let c = &spec.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example/k8s/kube-apiserver:v1.31.4")
    );
    let args = command(&pod);
    assert_eq!(args[0], "kube-apiserver");
    for flag in [
        "--advertise-address=10.0.0.5",
        "--etcd-servers=https://127.0.0.1:2379",
        "--etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt",
        "--etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt",
        "--etcd-keyfile=/etc/kubernetes/pki/apiserver-etcd-client.key",
        "--service-cluster-ip-range=10.96.0.0/12",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--service-account-key-file=/etc/kubernetes/pki/sa.pub",
        "--service-account-signing-key-file=/etc/kubernetes/pki/sa.key",
        "--client-ca-file=/etc/kubernetes/pki/ca.crt",
        "--tls-cert-file=/etc/kubernetes/pki/apiserver.crt",
        "--tls-private-key-file=/etc/kubernetes/pki/apiserver.key",
        "--kubelet-client-certificate=/etc/kubernetes/pki/apiserver-kubelet-client.crt",
        "--kubelet-client-key=/etc/kubernetes/pki/apiserver-kubelet-client.key",
        "--proxy-client-cert-file=/etc/kubernetes/pki/front-proxy-client.crt",
        "--proxy-client-key-file=/etc/kubernetes/pki/front-proxy-client.key",
        "--requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt",
        "--requestheader-allowed-names=front-proxy-client",
        "--authorization-mode=Node,RBAC",
        "--enable-bootstrap-token-auth=true",
        "--secure-port=6443",
    ] {
        has(&args, flag);
    }
    let live = c
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(live.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(live.path.as_deref(), Some("/livez"));
    assert_eq!(live.scheme.as_deref(), Some("HTTPS"));
    assert_eq!(
        serde_json::to_value(&live.port).unwrap(),
        serde_json::json!(6443)
    );
    let volumes = spec.volumes.as_ref().unwrap();
    let pki = volumes.iter().find(|v| v.name == "k8s-certs").unwrap();
    assert_eq!(pki.host_path.as_ref().unwrap().path, "/etc/kubernetes/pki");
    let mounts = c.volume_mounts.as_ref().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.name == "k8s-certs" && m.mount_path == "/etc/kubernetes/pki")
    );
    // Every mount has its volume.
    for m in mounts {
        assert!(volumes.iter().any(|v| v.name == m.name), "{}", m.name);
    }
}

#[test]
fn apiserver_port_follows_the_endpoint() {
    let mut node = controlplane();
    node.cluster.endpoint = Some("https://api.example:8443".parse().unwrap());
    let pod = static_pods::apiserver(&node, ip("10.0.0.5"));
    has(&command(&pod), "--secure-port=8443");
    let c = &pod.spec.as_ref().unwrap().containers[0];
    let port = &c
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap()
        .port;
    assert_eq!(serde_json::to_value(port).unwrap(), serde_json::json!(8443));
    node.cluster.endpoint = None;
    has(
        &command(&static_pods::apiserver(&node, ip("10.0.0.5"))),
        "--secure-port=6443",
    );
}

#[test]
fn controller_manager_and_scheduler_manifests() {
    let root = root_with(&["/usr/bin/etcd", "/usr/bin/kubelet"]);
    let plan = plan(&controlplane(), &facts(root.path())).unwrap();

    let cm = pod(&plan, "kube-controller-manager");
    let args = command(&cm);
    assert_eq!(args[0], "kube-controller-manager");
    for flag in [
        "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt",
        "--cluster-signing-key-file=/etc/kubernetes/pki/ca.key",
        "--cluster-cidr=10.244.0.0/16",
        "--allocate-node-cidrs=true",
        "--kubeconfig=/etc/kubernetes/controller-manager.conf",
        "--service-account-private-key-file=/etc/kubernetes/pki/sa.key",
        "--root-ca-file=/etc/kubernetes/pki/ca.crt",
        "--cluster-name=prod",
        "--service-cluster-ip-range=10.96.0.0/12",
    ] {
        has(&args, flag);
    }
    let spec = cm.spec.as_ref().unwrap();
    let c = &spec.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example/k8s/kube-controller-manager:v1.31.4")
    );
    let live = c
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(live.path.as_deref(), Some("/healthz"));
    assert_eq!(
        serde_json::to_value(&live.port).unwrap(),
        serde_json::json!(10257)
    );
    let volumes = spec.volumes.as_ref().unwrap();
    assert!(volumes.iter().any(|v| {
        v.host_path.as_ref().unwrap().path == "/etc/kubernetes/controller-manager.conf"
    }));

    let sched = pod(&plan, "kube-scheduler");
    let args = command(&sched);
    assert_eq!(args[0], "kube-scheduler");
    has(&args, "--kubeconfig=/etc/kubernetes/scheduler.conf");
    has(&args, "--leader-elect=true");
    let spec = sched.spec.as_ref().unwrap();
    assert_eq!(spec.host_network, Some(true));
    let live = spec.containers[0]
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        serde_json::to_value(&live.port).unwrap(),
        serde_json::json!(10259)
    );
    assert!(
        spec.volumes
            .as_ref()
            .unwrap()
            .iter()
            .any(|v| { v.host_path.as_ref().unwrap().path == "/etc/kubernetes/scheduler.conf" })
    );
}

#[test]
fn manifests_are_json_with_type_meta() {
    let files = static_pods::manifest_files(&controlplane(), ip("10.0.0.5")).unwrap();
    assert_eq!(files.len(), 3);
    for f in files {
        let value: serde_json::Value = serde_json::from_slice(&f.contents).unwrap();
        assert_eq!(value["apiVersion"], "v1", "{}", f.path.display());
        assert_eq!(value["kind"], "Pod");
        assert!(value.get("status").is_none(), "no status in a manifest");
        // k8s-openapi skips fields it does not know when it deserialises; re-serialising
        // the typed Pod must give back every field, so none is misspelt or misplaced.
        let typed: Pod = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), value);
    }
}

#[test]
fn image_tag_gets_one_v() {
    let mut node = controlplane();
    node.kubernetes.version = "v1.32.0".parse().unwrap();
    node.kubernetes.image_repository = "registry.k8s.io/".parse().unwrap();
    assert_eq!(
        static_pods::image(&node, "kube-scheduler"),
        "registry.k8s.io/kube-scheduler:v1.32.0"
    );
}

fn kubelet_config(plan: &RolePlan) -> KubeletConfiguration {
    let f = file(plan, "/var/lib/kubelet/config.yaml");
    serde_json::from_slice(&f.contents).unwrap()
}

#[test]
fn kubelet_configuration_round_trips() {
    let root = root_with(&["/usr/bin/etcd", "/usr/bin/kubelet"]);
    let plan = plan(&controlplane(), &facts(root.path())).unwrap();
    let config = kubelet_config(&plan);
    assert_eq!(config, kubelet::config(&controlplane()));
    let again: KubeletConfiguration =
        serde_json::from_slice(&serde_json::to_vec(&config).unwrap()).unwrap();
    assert_eq!(again, config);

    // The kubelet's field names, not serde's camelCase of ours.
    let value: serde_json::Value =
        serde_json::from_slice(&file(&plan, "/var/lib/kubelet/config.yaml").contents).unwrap();
    assert_eq!(value["apiVersion"], "kubelet.config.k8s.io/v1beta1");
    assert_eq!(value["kind"], "KubeletConfiguration");
    assert_eq!(value["cgroupDriver"], "cgroupfs");
    assert_eq!(value["clusterDNS"], serde_json::json!(["10.96.0.10"]));
    assert_eq!(value["clusterDomain"], "cluster.local");
    assert_eq!(
        value["authentication"]["x509"]["clientCAFile"],
        "/etc/kubernetes/pki/ca.crt"
    );
    assert_eq!(value["authentication"]["webhook"]["enabled"], true);
    assert_eq!(value["authentication"]["webhook"]["cacheTTL"], "2m0s");
    assert_eq!(value["authentication"]["anonymous"]["enabled"], false);
    assert_eq!(value["authorization"]["mode"], "Webhook");
    assert_eq!(
        value["containerRuntimeEndpoint"],
        "unix:///run/containerd/containerd.sock"
    );
    assert_eq!(value["staticPodPath"], "/etc/kubernetes/manifests");
    assert_eq!(value["healthzBindAddress"], "127.0.0.1");
    assert_eq!(value["healthzPort"], 10248);
    assert_eq!(value["failSwapOn"], false);
    assert_eq!(value["rotateCertificates"], true);
    assert_eq!(value["resolvConf"], "/etc/resolv.conf");
    assert!(value.get("serverTLSBootstrap").is_none());

    let mut with_tls = config.clone();
    with_tls.server_tls_bootstrap = Some(true);
    let value = serde_json::to_value(&with_tls).unwrap();
    assert_eq!(value["serverTLSBootstrap"], true);
    assert_eq!(
        serde_json::from_value::<KubeletConfiguration>(value).unwrap(),
        with_tls
    );
}

#[test]
fn controlplane_kubelet_argv() {
    let root = root_with(&["/usr/bin/etcd", "/usr/bin/kubelet"]);
    let plan = plan(&controlplane(), &facts(root.path())).unwrap();
    assert_eq!(
        plan.services[1].argv,
        [
            "/usr/bin/kubelet",
            "--config=/var/lib/kubelet/config.yaml",
            "--kubeconfig=/etc/kubernetes/kubelet.conf",
            "--node-ip=10.0.0.5",
            "--hostname-override=cp-1",
            "--node-labels=node.kubernetes.io/pool=system",
            "--register-with-taints=node-role.kubernetes.io/control-plane:NoSchedule",
            "--cert-dir=/var/lib/kubelet/pki",
        ]
    );
}

#[test]
fn worker_plan() {
    let root = root_with(&["/usr/bin/kubelet"]);
    let mut facts = facts(root.path());
    facts.hostname = "worker-1".into();
    let plan = plan(&worker(), &facts).unwrap();
    assert_eq!(plan.role, Role::Worker);
    assert!(plan.degraded.is_empty());
    assert_eq!(plan.services.len(), 1, "the kubelet only");
    let kubelet = &plan.services[0];
    assert!(kubelet.depends_on.is_empty());
    assert_eq!(
        kubelet.argv,
        [
            "/usr/bin/kubelet",
            "--config=/var/lib/kubelet/config.yaml",
            "--kubeconfig=/var/lib/kubelet/kubeconfig",
            "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
            "--node-ip=10.0.0.5",
            "--hostname-override=worker-1",
            "--node-labels=example.com/tier=edge,zone=b",
            "--register-with-taints=dedicated=gpu:NoSchedule,spot:PreferNoSchedule",
            "--cert-dir=/var/lib/kubelet/pki",
        ]
    );
    let files: Vec<&PathBuf> = plan.files.iter().map(|f| &f.path).collect();
    assert_eq!(files, [Path::new("/var/lib/kubelet/config.yaml")]);
    let config = kubelet_config(&plan);
    assert_eq!(config.static_pod_path, None, "workers run no static pods");
    assert!(
        !plan
            .dirs
            .iter()
            .any(|d| d.path.starts_with("/var/lib/etcd"))
    );
}

#[test]
fn missing_kubelet_is_reported() {
    let root = root_with(&["/usr/bin/etcd"]);
    let plan = plan(&controlplane(), &facts(root.path())).unwrap();
    let names: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["etcd"]);
    assert_eq!(
        plan.degraded,
        [Degraded::Missing {
            what: "kubelet",
            path: "/usr/bin/kubelet".into()
        }]
    );
    assert_eq!(
        plan.degraded[0].to_string(),
        "kubelet not found at /usr/bin/kubelet: the role is degraded"
    );
    // Its configuration is still written: a kubelet added later finds it.
    file(&plan, "/var/lib/kubelet/config.yaml");

    // A worker without a kubelet runs nothing.
    let plan = super::plan(&worker(), &facts(root.path())).unwrap();
    assert!(plan.services.is_empty());
    assert_eq!(plan.degraded.len(), 1);
}

#[test]
fn missing_etcd_leaves_the_kubelet_without_the_dependency() {
    let root = root_with(&["/usr/bin/kubelet"]);
    let plan = plan(&controlplane(), &facts(root.path())).unwrap();
    assert_eq!(plan.services.len(), 1);
    assert!(plan.services[0].depends_on.is_empty());
    assert_eq!(
        plan.degraded[0].to_string(),
        "etcd not found at /usr/bin/etcd: the role is degraded"
    );
}

#[test]
fn unexecutable_binary_is_reported() {
    let root = root_with(&[]);
    std::fs::create_dir_all(root.path().join("usr/bin/kubelet")).unwrap();
    assert_eq!(
        find_binary(root.path(), Path::new("/usr/bin/kubelet")),
        BinaryStatus::NotExecutable("/usr/bin/kubelet".into())
    );
    let plan = plan(&worker(), &facts(root.path())).unwrap();
    assert!(
        plan.degraded[0]
            .to_string()
            .contains("not an executable file")
    );
}

#[test]
fn the_node_ip_is_global() {
    assert_eq!(
        node_ip(&[ip("fd00::5"), ip("10.0.0.5")]).unwrap(),
        ip("10.0.0.5"),
        "IPv4 first"
    );
    assert_eq!(
        node_ip(&[ip("::1"), ip("fe80::1"), ip("fd00::5")]).unwrap(),
        ip("fd00::5")
    );
    let err = node_ip(&[ip("127.0.0.1"), ip("169.254.1.1")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the node has no usable IP address (only loopback or link-local: 127.0.0.1, 169.254.1.1)"
    );
    assert!(node_ip(&[]).unwrap_err().to_string().contains("none"));
}

#[test]
fn node_names_are_dns_subdomains() {
    assert_eq!(node_name("cp-1.example").unwrap(), "cp-1.example");
    for bad in ["CP-1", "cp_1", "-cp", "cp-", "", "a..b"] {
        assert!(
            matches!(node_name(bad), Err(RoleError::BadNodeName(_))),
            "{bad}"
        );
    }
    let root = root_with(&["/usr/bin/kubelet"]);
    let mut facts = facts(root.path());
    facts.hostname = "Worker_1".into();
    assert!(plan(&worker(), &facts).is_err());
}

/// Labels and taints the kubelet would refuse cannot reach the plan: the profile refuses
/// them when it is parsed, with the position of the value.
#[test]
fn bad_labels_are_refused_before_the_plan() {
    for (text, words) in [
        (
            "[node.kubernetes]\nlabels = { \"node-role.kubernetes.io/worker\" = \"\" }\n",
            "test.toml:2:12",
        ),
        ("[node.kubernetes]\ntaints = [\"gpu\"]\n", "test.toml:2:11"),
    ] {
        let err = LoadedProfile::from_text(Path::new("test.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(words), "{err}");
    }
}

#[test]
fn write_creates_dirs_and_files_with_modes() {
    let root = root_with(&["/usr/bin/etcd", "/usr/bin/kubelet"]);
    let plan = plan(&controlplane(), &facts(root.path())).unwrap();
    let out = tempfile::tempdir().unwrap();
    // An existing data directory with a mode etcd would refuse gets fixed.
    std::fs::create_dir_all(out.path().join("var/lib/etcd")).unwrap();
    std::fs::set_permissions(
        out.path().join("var/lib/etcd"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    plan.write(out.path()).unwrap();
    plan.write(out.path()).unwrap(); // again, over the first
    let mode = |p: &str| {
        std::fs::metadata(out.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("var/lib/etcd"), 0o700);
    assert_eq!(mode("var/lib/kubelet"), 0o700);
    assert_eq!(mode("etc/kubernetes/manifests/kube-apiserver.yaml"), 0o600);
    assert_eq!(mode("var/lib/kubelet/config.yaml"), 0o644);
    let written = std::fs::read(out.path().join("var/lib/kubelet/config.yaml")).unwrap();
    assert_eq!(
        written,
        file(&plan, "/var/lib/kubelet/config.yaml").contents
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.path().join("etc/kubernetes/manifests"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
