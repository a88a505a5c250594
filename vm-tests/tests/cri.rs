//! Pods through CRI on a Keel node in QEMU, as a kubelet runs them. The kubelet itself is the
//! FAKE kubelet (`vm-tests/fakes/src/bin/fake-kubelet.rs`: the real one cannot be downloaded
//! here); it runs the kubeadm preflight checks on the node and its static pods through CRI, one of
//! which relays containerd's socket to a QEMU port forward. Everything else is real:
//! containerd's CRI plugin, runc, the CNI plugins, iptables/nftables, cgroup v2, and this
//! test's CRI client (`k8s-cri`, the calls the kubelet makes).
//!
//! One node boots three times (its first boot, a reboot, an A/B upgrade):
//! - preflight: every kubeadm check that applies passes (the fake prints one line each);
//! - one pod: an image pulled from a registry through CRI, a sandbox with an IP from the
//!   node's pod range (CNI ADD), its marker read back from the CRI log file, ExecSync, egress
//!   through the pod network's masquerading, a hostPort through portmap;
//! - a memory limit: cgroup v2 `memory.max` and `cpu.max` hold the limits, and the container
//!   that allocates past its limit is OOM-killed with CRI reporting `OOMKilled`;
//! - cleanup: after StopPodSandbox/RemovePodSandbox (CNI DEL) no veth, IPAM lease or mount of
//!   the pod is left;
//! - a CNI DaemonSet's install: a plugin written to /opt/cni/bin and a configuration to
//!   /etc/cni/net.d are used by the next pod, and survive a reboot and an A/B upgrade.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use k8s_cri::v1::ContainerState;
use keel_builder::node::{NodeClient, credentials_from_secrets};
use keel_builder::progress::Reporter;
use keel_contract::profile::IpCidr;
use keel_fakes::cri::{ContainerSpec, Cri, PodSpec};
use keel_vm_tests::cri_node::{Inspector, POD_CIDR, PROBE, RELAY_PORT, connect, node_images};
use keel_vm_tests::{Machine, free_port, vm_disk};

const BOOT: Duration = Duration::from_secs(420);
const DAEMONSET_CIDR: &str = "10.99.0.0/24";
const HOST_PORT: u16 = 30080;

/// kubeadm's checks (and the kubelet's own needs) the fake prints as passed on a node.
const PREFLIGHT_OK: &[&str] = &[
    "IsPrivilegedUser",
    "Swap",
    "FileExisting-conntrack",
    "FileExisting-ip",
    "FileExisting-iptables",
    "FileExisting-mount",
    "FileExisting-nsenter",
    "FileExisting-ebtables",
    "FileExisting-ethtool",
    "FileExisting-tc",
    "FileContent--proc-sys-net-ipv4-ip_forward",
    "FileContent--proc-sys-net-bridge-bridge-nf-call-iptables",
    "FileContent--proc-sys-net-ipv6-conf-default-forwarding",
    "SystemVerification",
    "Hostname",
    "Port-10250",
    "KernelDefaults",
    "Modules",
    "KernelLog",
    "MachineID",
    "MountPropagation",
    "Iptables",
    "Nftables",
    "Conntrack",
    "Ipset",
    "CNIDirs",
];
/// Warnings the table in docs/kubelet-host.md explains (tools Keel does not ship).
const PREFLIGHT_WARNINGS_ALLOWED: &[&str] = &[
    "FileExisting-socat",
    "FileExisting-touch",
    "optional CONFIG_AUFS_FS",
];

/// A tiny HTTP server on the host's loopback (10.0.2.2 for the guest): pods' egress target.
fn host_http_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 2048];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn http_get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let cidr: IpCidr = cidr.parse().unwrap();
    ip.parse().is_ok_and(|ip| cidr.contains(ip))
}

/// Runs a pod with one container and waits until it runs: (pod id, container id, pod IP).
fn run_pod(cri: &mut Cri, pod: &PodSpec, c: &ContainerSpec) -> (String, String, String) {
    let sandbox = pod.sandbox_config();
    let pod_id = cri.run_pod(&sandbox).unwrap();
    let id = cri
        .create_container(&pod_id, &c.config(pod), &sandbox)
        .unwrap();
    cri.start_container(&id).unwrap();
    cri.wait_container(
        &id,
        ContainerState::ContainerRunning,
        Duration::from_secs(120),
    )
    .unwrap();
    let ip = cri
        .pod_status(&pod_id)
        .unwrap()
        .network
        .map(|n| n.ip)
        .unwrap_or_default();
    (pod_id, id, ip)
}

fn remove_pod(cri: &mut Cri, pod_id: &str) {
    cri.stop_pod(pod_id).unwrap();
    cri.remove_pod(pod_id).unwrap();
}

fn preflight(console: &str) {
    for name in PREFLIGHT_OK {
        assert!(
            console.contains(&format!("fake-kubelet: preflight ok: {name}: ")),
            "preflight check {name} did not pass:\n{console}"
        );
    }
    let warnings: Vec<&str> = console
        .lines()
        .filter_map(|l| l.split("fake-kubelet: preflight warning: ").nth(1))
        .collect();
    for w in &warnings {
        assert!(
            PREFLIGHT_WARNINGS_ALLOWED.iter().any(|a| w.contains(a)),
            "unexpected preflight warning {w:?}"
        );
    }
    assert!(!console.contains("fake-kubelet: error"), "{console}");
}

/// One pod: pulled image, pod IP in the node's range, the CRI log, ExecSync, egress, hostPort.
fn one_pod(cri: &mut Cri, inspector: &Inspector, registry: u16, hostport_fwd: u16) {
    let image = format!("10.0.2.2:{registry}/keel-test/probe:1");
    assert!(cri.image_id(&image).unwrap().is_none());
    let image_ref = cri.pull(&image).unwrap();
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    assert!(cri.image_id(&image).unwrap().is_some());

    let egress = host_http_server("keel-host-hello");
    let pod = PodSpec::new("one", "default", "one-uid");
    let mut sandbox = pod.sandbox_config();
    sandbox.port_mappings = vec![k8s_cri::v1::PortMapping {
        protocol: k8s_cri::v1::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: i32::from(HOST_PORT),
        host_ip: String::new(),
    }];
    let pod_id = cri.run_pod(&sandbox).unwrap();
    let c = ContainerSpec::new(
        "marker",
        &image,
        &[
            "/bin/sh",
            "-c",
            "echo keel-pod-marker from $(hostname); mkdir -p /www; echo keel-hostport-ok > /www/index.html; exec httpd -f -p 8080 -h /www",
        ],
    );
    let id = cri
        .create_container(&pod_id, &c.config(&pod), &sandbox)
        .unwrap();
    cri.start_container(&id).unwrap();
    cri.wait_container(
        &id,
        ContainerState::ContainerRunning,
        Duration::from_secs(120),
    )
    .unwrap();
    let ip = cri.pod_status(&pod_id).unwrap().network.unwrap().ip;
    assert!(in_cidr(&ip, POD_CIDR), "pod IP {ip} not in {POD_CIDR}");

    // The kubelet reads container logs from the file CRI names: <log dir>/<log path>.
    let log = format!("/host{}/marker/0.log", pod.log_directory());
    let mut text = String::new();
    for _ in 0..60 {
        text = inspector.sh(cri, &format!("cat {log} 2>/dev/null || true"));
        if text.contains("keel-pod-marker") {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        text.lines()
            .any(|l| l.contains(" stdout F keel-pod-marker from one")),
        "CRI log {log}: {text:?}"
    );

    let (code, out, _) = cri
        .exec_sync(
            &id,
            &["ip", "-4", "addr", "show", "eth0"],
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.contains(&format!("inet {ip}/24")), "{out}");
    let (code, out, err) = cri
        .exec_sync(
            &id,
            &[
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://10.0.2.2:{egress}/"),
            ],
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(
        (code, out.as_str()),
        (0, "keel-host-hello"),
        "egress: {err}"
    );
    let answer = (0..30)
        .find_map(|_| {
            let a = http_get(hostport_fwd).filter(|a| a.contains("keel-hostport-ok"));
            if a.is_none() {
                std::thread::sleep(Duration::from_secs(1));
            }
            a
        })
        .unwrap_or_else(|| panic!("hostPort {HOST_PORT} never answered"));
    assert!(answer.starts_with("HTTP/1."), "{answer}");
    cleanup(cri, inspector, &pod_id, &id, &ip);
}

/// Cleanup: the veth, the lease and the mounts are there before, and gone after.
fn cleanup(cri: &mut Cri, inspector: &Inspector, pod_id: &str, id: &str, ip: &str) {
    let (_, iflink, _) = cri
        .exec_sync(
            id,
            &["cat", "/sys/class/net/eth0/iflink"],
            Duration::from_secs(30),
        )
        .unwrap();
    let iflink = iflink.trim().to_owned();
    let links = inspector.sh(cri, "ip link show");
    let veth = links
        .lines()
        .find(|l| l.starts_with(&format!("{iflink}: ")))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|n| n.split('@').next())
        .unwrap_or_else(|| panic!("no host link {iflink}:\n{links}"))
        .to_owned();
    assert!(veth.starts_with("veth"), "{veth}");
    let lease = format!("/host/var/lib/cni/networks/keel/{ip}");
    inspector.sh(cri, &format!("test -f {lease}"));
    let count = |cri: &mut Cri, patterns: &[&str]| -> u32 {
        let args: Vec<String> = patterns.iter().map(|p| format!("-e '{p}'")).collect();
        let script = format!("grep -c {} /proc/1/mountinfo || true", args.join(" "));
        inspector.sh(cri, &script).trim().parse().unwrap()
    };
    let pod_mounts = [pod_id, id];
    assert!(
        count(cri, &pod_mounts) >= 2,
        "the pod's mounts (shm, rootfs) in the host's table"
    );
    // The only pod with a network namespace of its own so far.
    assert_eq!(
        count(cri, &["/netns/cni-"]),
        1,
        "the pod's network namespace"
    );

    remove_pod(cri, pod_id);
    let links = inspector.sh(cri, "ip link show");
    assert!(
        !links.contains(&format!(" {veth}@")),
        "veth {veth} left:\n{links}"
    );
    inspector.sh(cri, &format!("test ! -e {lease}"));
    assert_eq!(count(cri, &pod_mounts), 0, "mounts of the pod left");
    assert_eq!(count(cri, &["/netns/cni-"]), 0, "network namespace left");
    assert!(
        cri.pods_with_labels(&[("io.kubernetes.pod.name", "one")])
            .unwrap()
            .is_empty()
    );
}

/// A memory limit and a CPU quota: the cgroup holds both; past the limit, OOMKilled.
fn memory_limit(cri: &mut Cri, inspector: &Inspector) {
    let pod = PodSpec::new("hog", "default", "hog-uid");
    let mut c = ContainerSpec::new(
        "hog",
        PROBE,
        &[
            "/bin/sh",
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.2; done; exec dd if=/dev/zero of=/dev/null bs=64M count=1",
        ],
    );
    c.memory_limit = 32 << 20;
    c.cpu_limit_millis = 500;
    let (pod_id, id, _) = run_pod(cri, &pod, &c);
    let read = |cri: &mut Cri, file: &str| {
        let (code, out, err) = cri
            .exec_sync(
                &id,
                &["cat", &format!("/sys/fs/cgroup/{file}")],
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(code, 0, "{err}");
        out.trim().to_owned()
    };
    assert_eq!(read(cri, "memory.max"), "33554432");
    assert_eq!(read(cri, "cpu.max"), "50000 100000");
    // The same values seen from the host, in the cgroup the kubelet's parent names.
    let host = inspector.sh(
        cri,
        &format!(
            "cat /host/sys/fs/cgroup/kubepods/pod{}/{id}/memory.max",
            pod.uid
        ),
    );
    assert_eq!(host.trim(), "33554432");
    let (code, _, err) = cri
        .exec_sync(&id, &["touch", "/tmp/go"], Duration::from_secs(30))
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let status = cri
        .wait_container(
            &id,
            ContainerState::ContainerExited,
            Duration::from_secs(120),
        )
        .unwrap();
    assert_eq!(
        (status.reason.as_str(), status.exit_code),
        ("OOMKilled", 137),
        "{status:?}"
    );
    remove_pod(cri, &pod_id);
}

/// What a CNI DaemonSet does: copy its plugin to /opt/cni/bin and its configuration to
/// /etc/cni/net.d from a host-network pod with both mounted.
fn daemonset_install(cri: &mut Cri) {
    let mut pod = PodSpec::new("cni-installer", "kube-system", "cni-installer-uid");
    pod.host_network = true;
    let conf = format!(
        r#"{{"cniVersion":"0.4.0","name":"keel-test","plugins":[{{"type":"keel-test-bridge","bridge":"ktest0","isGateway":true,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{DAEMONSET_CIDR}"}}]]}}}}]}}"#
    );
    let script = format!(
        "cp /shipped/bridge /host/opt/cni/bin/keel-test-bridge.tmp && mv /host/opt/cni/bin/keel-test-bridge.tmp /host/opt/cni/bin/keel-test-bridge && echo '{conf}' > /host/etc/cni/net.d/.50-keel-test.tmp && mv /host/etc/cni/net.d/.50-keel-test.tmp /host/etc/cni/net.d/50-keel-test.conflist && echo installed"
    );
    let mut c = ContainerSpec::new("install", PROBE, &["/bin/sh", "-c", &script]);
    c.mounts = vec![
        ("/usr/lib/cni".into(), "/shipped".into(), true),
        ("/opt/cni/bin".into(), "/host/opt/cni/bin".into(), false),
        ("/etc/cni/net.d".into(), "/host/etc/cni/net.d".into(), false),
    ];
    let sandbox = pod.sandbox_config();
    let pod_id = cri.run_pod(&sandbox).unwrap();
    let id = cri
        .create_container(&pod_id, &c.config(&pod), &sandbox)
        .unwrap();
    cri.start_container(&id).unwrap();
    let status = cri
        .wait_container(
            &id,
            ContainerState::ContainerExited,
            Duration::from_secs(120),
        )
        .unwrap();
    assert_eq!(status.exit_code, 0, "{status:?}");
    remove_pod(cri, &pod_id);
}

/// The next pod gets its address from the DaemonSet's network, through its plugin.
fn uses_daemonset_network(cri: &mut Cri, inspector: &Inspector, name: &str) {
    let files = inspector.sh(
        cri,
        "ls /host/opt/cni/bin/keel-test-bridge /host/opt/cni/bin/bridge /host/etc/cni/net.d/50-keel-test.conflist",
    );
    assert_eq!(files.lines().count(), 3, "{files}");
    let pod = PodSpec::new(name, "default", &format!("{name}-uid"));
    let c = ContainerSpec::new("sleep", PROBE, &["/bin/sleep", "100000"]);
    // containerd reloads /etc/cni/net.d when it changes; give it a moment.
    let mut last = String::new();
    for _ in 0..20 {
        let (pod_id, _, ip) = run_pod(cri, &pod, &c);
        remove_pod(cri, &pod_id);
        if in_cidr(&ip, DAEMONSET_CIDR) {
            return;
        }
        last = ip;
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("pod {name} got {last}, not an address of the DaemonSet's {DAEMONSET_CIDR}");
}

fn upgrade(client: &NodeClient, bundle: &Path) {
    let mut update = keel_builder::node::open_update_file(bundle).unwrap();
    client
        .upgrade(
            &mut update.reader,
            update.len,
            false,
            true,
            &Reporter::quiet(),
        )
        .unwrap();
}

#[test]
fn pods_run_through_cri_with_limits_cleanup_and_cni_that_survives_reboot_and_upgrade() {
    let node = node_images("cri", &["1.0.0", "1.1.0"]);
    let creds = credentials_from_secrets(&node.secrets).unwrap();
    let disk = vm_disk(&node.images[0], &node.dir, 8 << 30);
    let (relay, api, hostport) = (free_port(), free_port(), free_port());
    let start = |name: &str| {
        Machine::start(name, &disk, &node.dir.join("vm"), |c| {
            c.memory_mib = 1536;
            c.forwards.push((relay, RELAY_PORT));
            c.forwards.push((api, keel_contract::api::PORT));
            c.forwards.push((hostport, HOST_PORT));
        })
    };

    let mut vm = start("cri-boot1");
    let console = vm.expect("keel: ready: keel-worker 1.0.0", BOOT);
    for want in [
        "pod network: bridge keel0, pods 10.244.1.0/24",
        "pod sandbox image keel.local/pause:catatonit imported",
        "fake-kubelet: ok: CRI Version: containerd",
        "fake-kubelet: ok: CRI Status: RuntimeReady=true, NetworkReady=true",
        "static pod kube-apiserver-cri-node not started: image registry.k8s.io/kube-apiserver:v1.31.4 not present",
        "fake-kubelet: ok: static pod cri-relay-cri-node running through CRI",
    ] {
        assert!(
            console.contains(want),
            "{want:?} missing before ready:\n{console}"
        );
    }
    preflight(&console);

    let mut cri = connect(relay, Duration::from_secs(120));
    let version = cri.version().unwrap();
    assert_eq!(version.runtime_name, "containerd");
    let inspector = Inspector::start(&mut cri, "inspector");
    one_pod(&mut cri, &inspector, node.registry.port, hostport);
    memory_limit(&mut cri, &inspector);
    let links = inspector.sh(&mut cri, "ip link show");
    assert!(
        !links.contains(": veth"),
        "veths left after every pod is gone:\n{links}"
    );
    daemonset_install(&mut cri);
    uses_daemonset_network(&mut cri, &inspector, "after-install");
    drop(cri);
    vm.vm.powerdown().unwrap();
    assert!(
        vm.vm.wait_timeout(Duration::from_secs(120)).is_some(),
        "no power-off"
    );

    // A reboot: the DaemonSet's plugin and configuration are still there and still used.
    let mut vm = start("cri-boot2");
    vm.expect("keel: ready: keel-worker 1.0.0", BOOT);
    let mut cri = connect(relay, Duration::from_secs(180));
    let inspector = Inspector::start(&mut cri, "inspector2");
    uses_daemonset_network(&mut cri, &inspector, "after-reboot");
    drop(cri);

    // An A/B upgrade: the same on the new slot.
    let client = NodeClient::new(&format!("127.0.0.1:{api}"), &creds).unwrap();
    upgrade(&client, &node.images[1].join("update"));
    vm.expect("keel: ready: keel-worker 1.1.0 slot b", BOOT);
    let mut cri = connect(relay, Duration::from_secs(180));
    let inspector = Inspector::start(&mut cri, "inspector3");
    uses_daemonset_network(&mut cri, &inspector, "after-upgrade");
    vm.kill();
}
