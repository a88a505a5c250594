//! Keel's pod network across two nodes in QEMU: a pod on node 1 reaches a pod on node 2 by
//! its pod IP and back, through host-gw routes over the cluster network, and keeps its own
//! address on the way (no masquerading between pods).
//!
//! The two VMs share one L2 segment (QEMU's `-netdev socket,mcast=`, static addresses on the
//! second NIC) and are configured over fw_cfg from one image. The pods are static pods the
//! FAKE kubelet runs through CRI (`vm-tests/fakes/src/bin/fake-kubelet.rs`); each serves a CGI
//! that names the caller's address and its own node, calls the other node's pod, and writes
//! what it got back to the node's console (privileged, `/dev/console` mounted), where the
//! test reads it. The first pod on a fresh node gets `.2` of its range (host-local), so each pod
//! knows its peer's address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use keel_contract::profile::Role;
use keel_vm_tests::cri_node::{PROBE, node_images_with};
use keel_vm_tests::{Machine, free_port, vm_disk, write_file};

const BOOT: Duration = Duration::from_secs(420);

fn pod_to_pod_manifest() -> String {
    let script = r#"node=$(cat /host-hostname)
if [ "$node" = n1 ]; then peer=10.244.2.2; else peer=10.244.1.2; fi
mkdir -p /www/cgi-bin
printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho "pod $REMOTE_ADDR reached $(hostname) on %s"\n' "$node" > /www/cgi-bin/who
chmod +x /www/cgi-bin/who
httpd -p 8080 -h /www
echo "pod-to-pod: $(hostname) up on $node, calling $peer" > /host-console
until timeout 10 wget -q -O - "http://$peer:8080/cgi-bin/who" > /tmp/answer; do sleep 2; done
echo "pod-to-pod: $(cat /tmp/answer)" > /host-console
exec sleep 1000000"#;
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "pod-to-pod", "namespace": "kube-system" },
        "spec": {
            "containers": [{
                "name": "p2p",
                "image": PROBE,
                "command": ["/bin/sh", "-c", script],
                "securityContext": { "privileged": true },
                "volumeMounts": [
                    { "name": "console", "mountPath": "/host-console" },
                    { "name": "hostname", "mountPath": "/host-hostname", "readOnly": true }
                ]
            }],
            "volumes": [
                { "name": "console", "hostPath": { "path": "/dev/console" } },
                { "name": "hostname", "hostPath": { "path": "/etc/hostname" } }
            ]
        }
    })
    .to_string()
}

fn node_profile(name: &str, address: &str, own: &str, peer: &str, peer_pods: &str) -> String {
    format!(
        r#"[node]
role = "controlplane"
hostname = "{name}"

[node.network]
mode = "static"
interface = "eth1"
addresses = ["{address}/24"]

[node.pod_network]
mode = "bridge"
pod_cidr = "{own}"
peers = [{{ address = "{peer}", pod_cidr = "{peer_pods}" }}]
"#
    )
}

#[test]
fn a_pod_on_one_node_reaches_a_pod_on_another_by_pod_ip() {
    let node = node_images_with(
        "pod_network",
        &["1.0.0"],
        &[("pod-to-pod.json", pod_to_pod_manifest())],
    );
    let secrets = keel_contract::secrets::Secrets::from_toml(
        &std::fs::read_to_string(&node.secrets).unwrap(),
    )
    .unwrap();
    let node_secrets = write_file(
        &node.dir,
        "cp.secrets.toml",
        &secrets.for_role(Role::ControlPlane).to_toml().unwrap(),
    );
    let segment = free_port();
    let nodes = [
        (
            "n1",
            "192.168.100.11",
            "10.244.1.0/24",
            "192.168.100.12",
            "10.244.2.0/24",
            "52:54:00:aa:00:01",
        ),
        (
            "n2",
            "192.168.100.12",
            "10.244.2.0/24",
            "192.168.100.11",
            "10.244.1.0/24",
            "52:54:00:aa:00:02",
        ),
    ];
    let mut vms: Vec<Machine> = nodes
        .iter()
        .map(|(name, address, own, peer, peer_pods, mac)| {
            let dir = node.dir.join(name);
            let profile = write_file(
                &dir,
                "profile.toml",
                &node_profile(name, address, own, peer, peer_pods),
            );
            let disk = vm_disk(&node.images[0], &dir, 6 << 30);
            Machine::start(
                &format!("pod_network-{name}"),
                &disk,
                &dir.join("vm"),
                |c| {
                    c.fw_cfg.push(("opt/keel/profile".into(), profile.clone()));
                    c.fw_cfg
                        .push(("opt/keel/secrets".into(), node_secrets.clone()));
                    c.extra_args.extend([
                        "-netdev".into(),
                        format!("socket,id=cluster,mcast=230.0.0.1:{segment},localaddr=127.0.0.1"),
                        "-device".into(),
                        format!("virtio-net-pci,netdev=cluster,mac={mac}"),
                    ]);
                },
            )
        })
        .collect();
    for (vm, (name, ..)) in vms.iter_mut().zip(&nodes) {
        let before = vm.expect("keel: ready", BOOT);
        assert!(
            before.contains(&format!(
                "host-gw routes: 10.244.{}.0/24 via",
                if *name == "n1" { 2 } else { 1 }
            )),
            "{name}: {before}"
        );
    }
    // Each pod saw the other's pod address as the caller: routed, not masqueraded (busybox
    // httpd listens on IPv6 and names IPv4 callers in their mapped form).
    let wants = [
        "pod-to-pod: pod [::ffff:10.244.1.2] reached pod-to-pod-n2 on n2",
        "pod-to-pod: pod [::ffff:10.244.2.2] reached pod-to-pod-n1 on n1",
    ];
    for (vm, want) in vms.iter_mut().zip(wants) {
        vm.expect_seen_or_next(want, Duration::from_secs(300));
    }
    for vm in vms {
        vm.kill();
    }
}
