//! What the CRI tests need around a node: a pod image with real tools (Debian's static
//! busybox and the `cri-relay` test tool), the relay as a host-network static pod, a local
//! registry to pull from, and a privileged host-network "inspector" pod that reads the
//! node's state (links, IPAM leases, mounts, cgroups, files) for the tests' assertions, since
//! the node has no shell.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{
    build, cluster_secrets, derived_profile, fake_kubelet, test_dir, test_key, write_file,
};
use keel_fakes::cri::{ContainerSpec, Cri, PodSpec};

/// The guest port the relay listens on.
pub const RELAY_PORT: u16 = 10010;
/// The baked probe image, as the node's containerd knows it.
pub const PROBE: &str = "keel.local/probe:latest";
/// The test node's pod range (`[node.pod_network]`).
pub const POD_CIDR: &str = "10.244.1.0/24";

/// A control-plane image ready for CRI tests, built in several versions with one key and one
/// cluster's secrets: the fake kubelet as `/usr/bin/kubelet`, the relay static pod, the probe
/// image baked, containerd told to pull from the local registry over plain HTTP, Keel's pod
/// network on [`POD_CIDR`].
pub struct CriNode {
    pub dir: PathBuf,
    pub secrets: PathBuf,
    /// One output directory per version asked for.
    pub images: Vec<PathBuf>,
    /// Holds the probe image as `keel-test/probe:1`.
    pub registry: Registry,
}

pub fn node_images(name: &str, versions: &[&str]) -> CriNode {
    node_images_with(name, versions, &[])
}

/// [`node_images`] with more static pods: (file name, manifest JSON).
pub fn node_images_with(name: &str, versions: &[&str], static_pods: &[(&str, String)]) -> CriNode {
    let dir = test_dir(name);
    let (secrets, _) = cluster_secrets(&dir.join("secrets"));
    let (key, _) = test_key(&dir.join("keys"));
    let layout = probe_image(&dir.join("probe"));
    let registry = Registry::start(&dir.join("registry"));
    registry.push(&layout, "keel-test/probe:1");
    let relay = write_file(&dir, "cri-relay.json", &relay_manifest());
    let registry_host = format!("10.0.2.2:{}", registry.port);
    let hosts = write_file(&dir, "hosts.toml", &registry_hosts_toml(&registry_host));
    let mut extra = format!(
        r#"[image]
secrets = "{secrets}"

[[image.files]]
src = "{kubelet}"
dst = "/usr/bin/kubelet"
mode = "0755"

[[image.files]]
src = "{relay}"
dst = "/etc/kubernetes/manifests/cri-relay.json"
mode = "0644"

[[image.files]]
src = "{hosts}"
dst = "/etc/containerd/certs.d/{registry_host}/hosts.toml"
mode = "0644"

[[image.container_images]]
name = "probe"
layout = "{layout}"
ref = "latest"

[node]
role = "controlplane"
hostname = "cri-node"

[node.pod_network]
mode = "bridge"
pod_cidr = "{POD_CIDR}"
"#,
        secrets = secrets.display(),
        kubelet = fake_kubelet().display(),
        relay = relay.display(),
        hosts = hosts.display(),
        layout = layout.display(),
    );
    for (file, manifest) in static_pods {
        let src = write_file(&dir, file, manifest);
        extra.push_str(&format!(
            "\n[[image.files]]\nsrc = \"{}\"\ndst = \"/etc/kubernetes/manifests/{file}\"\nmode = \"0644\"\n",
            src.display()
        ));
    }
    let profile = derived_profile(&dir.join("profile"), "worker", &extra);
    let images = versions
        .iter()
        .map(|v| {
            let out = dir.join(format!("v{v}"));
            build(&profile, &out, &key, Some(v), 1_700_000_000);
            out
        })
        .collect();
    CriNode {
        dir,
        secrets,
        images,
        registry,
    }
}

/// An OCI layout (made with umoci) holding `/bin/busybox` from the host's busybox-static
/// with a link for each applet, and `/cri-relay`.
pub fn probe_image(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let _ = std::fs::remove_dir_all(&layout);
    let _ = std::fs::remove_dir_all(&bundle);
    let image = format!("{}:latest", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["tmp", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("/bin/busybox (busybox-static, see vm-tests/install-host-packages)");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    std::fs::copy(crate::cri_relay(), rootfs.join("cri-relay")).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    layout
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (see vm-tests/install-host-packages)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The relay's static pod: host network, containerd's socket directory mounted, the probe
/// image's `/cri-relay` listening on [`RELAY_PORT`].
pub fn relay_manifest() -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "cri-relay", "namespace": "kube-system" },
        "spec": {
            "hostNetwork": true,
            "containers": [{
                "name": "relay",
                "image": PROBE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/cri-relay", format!("0.0.0.0:{RELAY_PORT}"), "/run/containerd/containerd.sock"],
                "volumeMounts": [{ "name": "containerd", "mountPath": "/run/containerd" }]
            }],
            "volumes": [{ "name": "containerd", "hostPath": { "path": "/run/containerd", "type": "Directory" } }]
        }
    })
    .to_string()
}

/// containerd's `hosts.toml` for a plain-HTTP registry at `host` (`10.0.2.2:PORT`).
pub fn registry_hosts_toml(host: &str) -> String {
    format!(
        "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// Debian's docker-registry on 127.0.0.1 (the guests see it as 10.0.2.2); killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let port = crate::free_port();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (see vm-tests/install-host-packages)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed().as_secs() < 20,
                "the registry did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Registry { child, port }
    }

    /// Pushes an OCI layout's image as `repo:tag` with skopeo.
    pub fn push(&self, layout: &Path, repo: &str) {
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:latest", layout.display()),
            &format!("docker://127.0.0.1:{}/{repo}", self.port),
        ]));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to the node's CRI through the relay's port forward, waiting for the relay pod.
pub fn connect(host_port: u16, timeout: Duration) -> Cri {
    let start = Instant::now();
    loop {
        let attempt = Cri::tcp(&format!("127.0.0.1:{host_port}")).and_then(|mut c| {
            c.version()?;
            Ok(c)
        });
        match attempt {
            Ok(c) => return c,
            Err(e) if start.elapsed() > timeout => panic!("CRI through the relay: {e}"),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// A privileged pod in the host's network and PID namespaces with the node's CNI, log and
/// cgroup directories mounted under `/host`: the tests' eyes on the node.
pub struct Inspector {
    pub pod: String,
    pub container: String,
}

impl Inspector {
    pub fn start(cri: &mut Cri, name: &str) -> Inspector {
        let mut pod = PodSpec::new(name, "keel-test", &format!("{name}-uid"));
        pod.host_network = true;
        pod.host_pid = true;
        pod.privileged = true;
        let mut c = ContainerSpec::new("inspect", PROBE, &["/bin/sleep", "1000000"]);
        c.privileged = true;
        for dir in [
            "/var/lib/cni",
            "/var/log/pods",
            "/opt/cni/bin",
            "/etc/cni/net.d",
            "/usr/lib/cni",
            "/sys/fs/cgroup",
        ] {
            c.mounts.push((dir.into(), format!("/host{dir}"), false));
        }
        let sandbox = pod.sandbox_config();
        let pod_id = cri.run_pod(&sandbox).unwrap();
        let id = cri
            .create_container(&pod_id, &c.config(&pod), &sandbox)
            .unwrap();
        cri.start_container(&id).unwrap();
        cri.wait_container(
            &id,
            k8s_cri::v1::ContainerState::ContainerRunning,
            Duration::from_secs(120),
        )
        .unwrap();
        Inspector {
            pod: pod_id,
            container: id,
        }
    }

    /// Runs `script` with the probe image's sh; its stdout (a non-zero exit fails the test).
    pub fn sh(&self, cri: &mut Cri, script: &str) -> String {
        let (code, out, err) = cri
            .exec_sync(
                &self.container,
                &["/bin/sh", "-c", script],
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(code, 0, "inspector `{script}`: exit {code}: {out}{err}");
        out
    }
}
