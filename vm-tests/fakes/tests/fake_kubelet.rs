//! The fake kubelet run against node setups in a temporary directory: good ones (it must
//! serve /healthz), broken ones (it must exit non-zero saying what is wrong), and what
//! keel-init's roles module writes (the contract between the two).
//!
//! The certificates in tests/fixtures/fake-kubelet were made once with `openssl ca` for these
//! tests (P-256 keys; a CA "kubernetes"; node certificates for cp-1 and cp-2, one without the
//! system:nodes group (and a v1 certificate), one from another CA, all valid from 2000 to
//! 2125 whatever the machine's clock says; one that expired in 2001). The keys protect
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_contract::profile::{Node, Role};
use keel_init::roles::{self, NodeFacts};
use serde_json::{Value, json};

const FAKE: &str = env!("CARGO_BIN_EXE_fake-kubelet");

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/fake-kubelet/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path).unwrap()
}

fn b64(data: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, b)| a | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A kubeconfig (JSON) with one cluster, one user and a current context.
fn kubeconfig(server: &str, ca: Option<&str>, user: Value) -> Value {
    let mut cluster = json!({ "server": server });
    if let Some(ca) = ca {
        cluster["certificate-authority-data"] = b64(ca.as_bytes()).into();
    }
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "keel", "cluster": cluster }],
        "contexts": [{ "name": "default", "context": { "cluster": "keel", "user": "node" } }],
        "current-context": "default",
        "users": [{ "name": "node", "user": user }],
    })
}

fn node_user(cert: &str) -> Value {
    json!({
        "client-certificate-data": b64(fixture(&format!("{cert}.crt")).as_bytes()),
        "client-key-data": b64(fixture(&format!("{cert}.key")).as_bytes()),
    })
}

/// A node's files under a temporary root, and the fake's command line for it.
struct Setup {
    root: tempfile::TempDir,
    containerd: Option<UnixListener>,
    port: u16,
    args: Vec<String>,
    any_node_ip: bool,
}

impl Setup {
    fn new(role: Role) -> Setup {
        let root = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut s = Setup {
            containerd: None,
            port,
            args: Vec::new(),
            any_node_ip: true,
            root,
        };
        s.write("etc/kubernetes/pki/ca.crt", &fixture("ca.crt"));
        std::fs::create_dir_all(s.path("run/containerd")).unwrap();
        std::fs::create_dir_all(s.path("var/lib/kubelet/pki")).unwrap();
        s.containerd = Some(UnixListener::bind(s.path("run/containerd/containerd.sock")).unwrap());
        let mut config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {
                "x509": { "clientCAFile": s.path("etc/kubernetes/pki/ca.crt") },
                "webhook": { "enabled": true },
                "anonymous": { "enabled": false },
            },
            "authorization": { "mode": "Webhook" },
            "cgroupDriver": "cgroupfs",
            "clusterDNS": ["10.96.0.10"],
            "clusterDomain": "cluster.local",
            "containerRuntimeEndpoint":
                format!("unix://{}", s.path("run/containerd/containerd.sock").display()),
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": port,
        });
        let kubeconfig_path;
        let mut args = vec![format!(
            "--config={}",
            s.path("var/lib/kubelet/config.yaml").display()
        )];
        match role {
            Role::ControlPlane => {
                config["staticPodPath"] = s
                    .path("etc/kubernetes/manifests")
                    .display()
                    .to_string()
                    .into();
                s.write(
                    "etc/kubernetes/manifests/kube-scheduler.yaml",
                    &json!({
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": { "name": "kube-scheduler", "namespace": "kube-system" },
                        "spec": { "containers": [
                            { "name": "kube-scheduler", "image": "registry.k8s.io/kube-scheduler:v1.31.4" }
                        ] },
                    })
                    .to_string(),
                );
                kubeconfig_path = s.path("etc/kubernetes/kubelet.conf");
                s.write_json(
                    "etc/kubernetes/kubelet.conf",
                    &kubeconfig(
                        "https://10.0.0.5:6443",
                        Some(&fixture("ca.crt")),
                        node_user("node-cp-1"),
                    ),
                );
                args.push(format!("--kubeconfig={}", kubeconfig_path.display()));
            }
            Role::Worker => {
                kubeconfig_path = s.path("var/lib/kubelet/kubeconfig");
                s.write_json(
                    "etc/kubernetes/bootstrap-kubelet.conf",
                    &kubeconfig(
                        "https://10.0.0.5:6443",
                        Some(&fixture("ca.crt")),
                        json!({ "token": "abcdef.0123456789abcdef" }),
                    ),
                );
                args.push(format!("--kubeconfig={}", kubeconfig_path.display()));
                args.push(format!(
                    "--bootstrap-kubeconfig={}",
                    s.path("etc/kubernetes/bootstrap-kubelet.conf").display()
                ));
            }
        }
        s.write_json("var/lib/kubelet/config.yaml", &config);
        args.extend([
            "--node-ip=10.0.0.5".to_owned(),
            "--hostname-override=cp-1".to_owned(),
            "--node-labels=node.kubernetes.io/pool=system,zone=b".to_owned(),
            "--register-with-taints=node-role.kubernetes.io/control-plane:NoSchedule".to_owned(),
            format!("--cert-dir={}", s.path("var/lib/kubelet/pki").display()),
        ]);
        s.args = args;
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn write(&self, rel: &str, contents: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    fn write_json(&self, rel: &str, value: &Value) {
        self.write(rel, &serde_json::to_string_pretty(value).unwrap());
    }

    fn read_json(&self, rel: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.path(rel)).unwrap()).unwrap()
    }

    /// Changes the kubelet configuration.
    fn config(&self, change: impl FnOnce(&mut Value)) {
        let mut config = self.read_json("var/lib/kubelet/config.yaml");
        change(&mut config);
        self.write_json("var/lib/kubelet/config.yaml", &config);
    }

    /// Replaces (or adds) a flag.
    fn flag(&mut self, flag: &str) {
        let name = flag.split('=').next().unwrap().to_owned();
        self.args
            .retain(|a| a.split('=').next() != Some(name.as_str()));
        self.args.push(flag.to_owned());
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(FAKE);
        // On the build machine: no preflight checks of this host, no container runtime (the
        // QEMU tests run the fake on nodes, where both are checked).
        cmd.args(&self.args)
            .env("FAKE_KUBELET_OFF_NODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.any_node_ip {
            cmd.env("FAKE_KUBELET_ANY_NODE_IP", "1");
        } else {
            cmd.env_remove("FAKE_KUBELET_ANY_NODE_IP");
        }
        cmd
    }

    /// Runs the fake, which must exit non-zero; its stderr.
    fn rejected(&self) -> String {
        let mut child = self.command().spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("the fake accepted a broken setup: {:?}", self.args);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(!status.success());
        assert!(stdout.starts_with("fake-kubelet: this is a test double, not the real kubelet\n"));
        assert!(stderr.starts_with("fake-kubelet: error: "), "{stderr}");
        stderr
    }

    fn rejected_with(&self, expected: &str) {
        let stderr = self.rejected();
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in: {stderr}"
        );
    }

    /// Runs the fake, which must serve `GET /healthz` -> 200 ok; its stdout.
    fn serves(&self) -> String {
        let mut child = self.command().spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let answer = loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                panic!("the fake exited ({status}): {stderr}");
            }
            if let Some(answer) = get(self.port, "/healthz") {
                break answer;
            }
            assert!(
                Instant::now() < deadline,
                "no /healthz on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let other = get(self.port, "/metrics").unwrap_or_default();
        child.kill().unwrap();
        child.wait().unwrap();
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        stdout
    }
}

/// `GET path` over HTTP/1.0, as the init's health check asks.
fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

#[test]
fn controlplane_is_accepted() {
    let out = Setup::new(Role::ControlPlane).serves();
    for line in [
        "fake-kubelet: this is a test double, not the real kubelet",
        "fake-kubelet: ok: --node-ip=10.0.0.5",
        "fake-kubelet: ok: config.yaml cgroupDriver=cgroupfs",
        "containerd.sock accepts connections",
        "client certificate CN=system:node:cp-1 O=system:nodes issued by the CA",
        "fake-kubelet: ok: static pod kube-scheduler (kube-scheduler.yaml) registry.k8s.io/kube-scheduler:v1.31.4",
        "fake-kubelet: serving GET /healthz on http://127.0.0.1:",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
}

#[test]
fn worker_bootstrap_is_accepted() {
    let out = Setup::new(Role::Worker).serves();
    assert!(
        out.contains("bootstrap-kubelet.conf: server https://10.0.0.5:6443, CA kubernetes, bootstrap token abcdef.<secret>"),
        "{out}"
    );
    assert!(!out.contains("static pod"));
}

#[test]
fn yaml_kubeconfig_and_ca_file_are_accepted() {
    let s = Setup::new(Role::ControlPlane);
    s.write("etc/kubernetes/node.crt", &fixture("node-cp-1.crt"));
    s.write("etc/kubernetes/node.key", &fixture("node-cp-1.key"));
    s.write(
        "etc/kubernetes/kubelet.conf",
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority: pki/ca.crt\n    server: https://10.0.0.5:6443\n  name: keel\ncontexts:\n- context:\n    cluster: keel\n    user: system:node:cp-1\n  name: system:node:cp-1@keel\ncurrent-context: system:node:cp-1@keel\npreferences: {}\nusers:\n- name: system:node:cp-1\n  user:\n    client-certificate: node.crt\n    client-key: node.key\n",
    );
    let out = s.serves();
    assert!(
        out.contains("client certificate CN=system:node:cp-1"),
        "{out}"
    );
}

#[test]
fn broken_configs_are_rejected() {
    let s = Setup::new(Role::ControlPlane);
    s.config(|c| c["cgroupDriver"] = "systemd".into());
    s.rejected_with("/cgroupDriver is \"systemd\", expected \"cgroupfs\"");

    let s = Setup::new(Role::ControlPlane);
    s.config(|c| c["authentication"]["x509"]["clientCAFile"] = "/nonexistent/ca.crt".into());
    s.rejected_with("clientCAFile /nonexistent/ca.crt");

    let s = Setup::new(Role::ControlPlane);
    s.config(|c| c["authentication"]["anonymous"]["enabled"] = true.into());
    s.rejected_with("/authentication/anonymous/enabled");

    let s = Setup::new(Role::ControlPlane);
    s.config(|c| c["authorization"]["mode"] = "AlwaysAllow".into());
    s.rejected_with("/authorization/mode");

    let s = Setup::new(Role::ControlPlane);
    s.config(|c| c["staticPodPath"] = "/nonexistent/manifests".into());
    s.rejected_with("staticPodPath");

    let s = Setup::new(Role::ControlPlane);
    s.config(|c| c["containerRuntimeEndpoint"] = "tcp://127.0.0.1:1".into());
    s.rejected_with("is not unix://");

    let s = Setup::new(Role::ControlPlane);
    s.config(|c| {
        c.as_object_mut().unwrap().remove("clusterDNS");
    });
    s.rejected_with("clusterDNS");

    let s = Setup::new(Role::ControlPlane);
    s.write(
        "var/lib/kubelet/config.yaml",
        "apiVersion: kubelet.config.k8s.io/v1beta1\n",
    );
    s.rejected_with("not JSON");
}

#[test]
fn containerd_must_answer() {
    let mut s = Setup::new(Role::Worker);
    // The socket file stays, but nothing listens on it.
    drop(s.containerd.take());
    s.rejected_with("cannot connect");
    std::fs::remove_file(s.path("run/containerd/containerd.sock")).unwrap();
    s.rejected_with("containerRuntimeEndpoint");
    s.write("run/containerd/containerd.sock", "");
    s.rejected_with("is not a socket");
}

#[test]
fn broken_static_pods_are_rejected() {
    let s = Setup::new(Role::ControlPlane);
    s.write("etc/kubernetes/manifests/bad.yaml", "kind: Pod\n");
    s.rejected_with("bad.yaml: not JSON");

    let s = Setup::new(Role::ControlPlane);
    s.write_json(
        "etc/kubernetes/manifests/noimage.yaml",
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                "spec": {"containers": [{"name": "x"}]}}),
    );
    s.rejected_with("without a name or an image");

    let s = Setup::new(Role::ControlPlane);
    s.write_json(
        "etc/kubernetes/manifests/deploy.yaml",
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}),
    );
    s.rejected_with("not apiVersion v1, kind Pod");

    // Dot files are skipped, as the kubelet skips them.
    let s = Setup::new(Role::ControlPlane);
    s.write(
        "etc/kubernetes/manifests/.kube-apiserver.yaml.keel-tmp",
        "{",
    );
    s.serves();
}

#[test]
fn broken_kubeconfigs_are_rejected() {
    let cases: &[(Value, &str)] = &[
        (
            kubeconfig(
                "http://10.0.0.5:6443",
                Some(&fixture("ca.crt")),
                node_user("node-cp-1"),
            ),
            "is not an https URL",
        ),
        (
            kubeconfig("https://10.0.0.5:6443", None, node_user("node-cp-1")),
            "no certificate-authority(-data)",
        ),
        (
            kubeconfig(
                "https://10.0.0.5:6443",
                Some(&fixture("ca.crt")),
                node_user("node-cp-2"),
            ),
            "the client certificate is for CN=system:node:cp-2, not system:node:cp-1",
        ),
        (
            kubeconfig(
                "https://10.0.0.5:6443",
                Some(&fixture("ca.crt")),
                node_user("no-group"),
            ),
            "not in group system:nodes",
        ),
        (
            kubeconfig(
                "https://10.0.0.5:6443",
                Some(&fixture("ca.crt")),
                node_user("expired"),
            ),
            "is not valid now",
        ),
        (
            kubeconfig(
                "https://10.0.0.5:6443",
                Some(&fixture("ca.crt")),
                node_user("foreign"),
            ),
            "was not issued by the kubeconfig's CA (CN=kubernetes)",
        ),
        (
            kubeconfig(
                "https://10.0.0.5:6443",
                Some(&fixture("ca.crt")),
                json!({ "client-certificate-data": b64(fixture("node-cp-1.crt").as_bytes()) }),
            ),
            "no client-key(-data)",
        ),
        (
            kubeconfig(
                "https://10.0.0.5:6443",
                Some(&fixture("ca.crt")),
                json!({ "token": "abcdef.0123456789abcdef" }),
            ),
            "no client-certificate(-data)",
        ),
    ];
    for (config, expected) in cases {
        let s = Setup::new(Role::ControlPlane);
        s.write_json("etc/kubernetes/kubelet.conf", config);
        s.rejected_with(expected);
    }

    // A worker needs its kubeconfig or a bootstrap kubeconfig.
    let s = Setup::new(Role::Worker);
    std::fs::remove_file(s.path("etc/kubernetes/bootstrap-kubelet.conf")).unwrap();
    s.rejected_with("neither --kubeconfig");
    let s = Setup::new(Role::Worker);
    s.write_json(
        "etc/kubernetes/bootstrap-kubelet.conf",
        &kubeconfig(
            "https://10.0.0.5:6443",
            Some(&fixture("ca.crt")),
            json!({ "token": "not-a-bootstrap-token" }),
        ),
    );
    s.rejected_with("not a bootstrap token");
}

#[test]
fn broken_flags_are_rejected() {
    let mut s = Setup::new(Role::Worker);
    s.flag("--container-runtime=remote");
    s.rejected_with("unknown flag --container-runtime");

    let mut s = Setup::new(Role::Worker);
    s.args.retain(|a| !a.starts_with("--config="));
    s.rejected_with("--config is required");

    let mut s = Setup::new(Role::Worker);
    s.flag("--node-ip=127.0.0.1");
    s.rejected_with("loopback");

    let mut s = Setup::new(Role::Worker);
    s.flag("--node-labels=node-role.kubernetes.io/worker=");
    s.rejected_with("unknown 'kubernetes.io' or 'k8s.io' label");

    let mut s = Setup::new(Role::Worker);
    s.flag("--register-with-taints=dedicated=gpu");
    s.rejected_with("--register-with-taints");

    let mut s = Setup::new(Role::Worker);
    s.flag("--hostname-override=CP_1");
    s.rejected_with("--hostname-override");

    // Without the test override, the node IP must be one of this machine's addresses;
    // 192.0.2.1 (TEST-NET-1, RFC 5737) never is.
    let mut s = Setup::new(Role::Worker);
    s.any_node_ip = false;
    s.flag("--node-ip=192.0.2.1");
    s.rejected_with("not an address of this machine");
}

/// keel-init's plan for a node, with its absolute paths moved under the setup's root (the
/// only change: the fake sees what the init writes).
fn contract(role: Role) -> String {
    let s = Setup::new(role);
    let binaries = tempfile::tempdir().unwrap();
    for b in ["usr/bin/kubelet", "usr/bin/etcd"] {
        let path = binaries.path().join(b);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut node = Node {
        role,
        ..Node::default()
    };
    node.kubernetes.labels.insert(
        "node.kubernetes.io/pool".parse().unwrap(),
        "system".parse().unwrap(),
    );
    node.kubernetes.taints = vec!["dedicated=infra:NoSchedule".parse().unwrap()];
    let facts = NodeFacts {
        hostname: "cp-1".into(),
        ips: vec!["10.0.0.5".parse::<IpAddr>().unwrap()],
        root: binaries.path().to_owned(),
        etcd_joined: None,
    };
    let plan = roles::plan(&node, &facts).unwrap();
    assert!(plan.degraded.is_empty());
    // The setup's own files stand in for the PKI's (CA, kubeconfigs) and containerd; the
    // plan's replace the setup's configuration and manifests.
    let _ = std::fs::remove_file(s.path("etc/kubernetes/manifests/kube-scheduler.yaml"));
    plan.write(s.root.path()).unwrap();
    let root = s.root.path().display().to_string();
    let relocate = |text: &str| {
        ["/etc/kubernetes", "/run/containerd", "/var/lib/kubelet"]
            .iter()
            .fold(text.to_owned(), |t, p| t.replace(p, &format!("{root}{p}")))
    };
    let config = std::fs::read_to_string(s.path("var/lib/kubelet/config.yaml")).unwrap();
    let mut config: Value = serde_json::from_str(&relocate(&config)).unwrap();
    assert_eq!(config["healthzPort"], 10248);
    config["healthzPort"] = s.port.into();
    s.write_json("var/lib/kubelet/config.yaml", &config);

    let kubelet = plan.services.iter().find(|s| s.name == "kubelet").unwrap();
    let mut run = s;
    run.args = kubelet.argv[1..].iter().map(|a| relocate(a)).collect();
    assert!(Path::new(&run.args[0]["--config=".len()..]).exists());
    run.serves()
}

#[test]
fn accepts_what_the_init_writes_for_a_controlplane() {
    let out = contract(Role::ControlPlane);
    for component in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        assert!(
            out.contains(&format!("fake-kubelet: ok: static pod {component} ({component}.yaml) registry.k8s.io/{component}:v1.31.4")),
            "{component} not in:\n{out}"
        );
    }
    assert!(
        out.contains("--register-with-taints=dedicated=infra:NoSchedule"),
        "{out}"
    );
}

#[test]
fn accepts_what_the_init_writes_for_a_worker() {
    let out = contract(Role::Worker);
    assert!(out.contains("bootstrap token"), "{out}");
    assert!(
        out.contains("--node-labels=node.kubernetes.io/pool=system"),
        "{out}"
    );
}
