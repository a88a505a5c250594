//! Kubernetes roles in QEMU. The kubelet is the FAKE kubelet
//! (`vm-tests/fakes/src/bin/fake-kubelet.rs`): the real one cannot be downloaded on these
//! machines, so what it would read is checked by a test double. etcd, containerd, the certificates and everything else are real.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use keel_builder::cli::{EtcdCommand, NodeCommand, NodeConnection};
use keel_contract::layout::config;
use keel_contract::profile::Role;
use keel_vm_tests::fake_apiserver::FakeApiServer;
use keel_vm_tests::{
    Machine, build, cluster_secrets, config_drive, derived_profile, extra_disk_args, fake_kubelet,
    free_port, sign_text, test_dir, test_key, vm_disk, write_file,
};

const BOOT: Duration = Duration::from_secs(300);

fn etcdctl(dir: &std::path::Path, port: u16, args: &[&str]) -> String {
    keel_vm_tests::etcdctl(dir, port, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a `keel node` command against the node's API as `keel` would.
fn keel_node(command: NodeCommand) -> Result<String, keel_builder::cli::CommandError> {
    let mut out = Vec::new();
    keel_builder::cli::node::run_with(
        command,
        &keel_builder::progress::Reporter::quiet(),
        &keel_builder::node::open_update_file,
        &mut out,
    )?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `keel node etcd`: one voting member named as the node, a snapshot etcdctl reads, and no
/// snapshot for a read-only operator.
fn etcd_through_the_node_api(dir: &std::path::Path, api_port: u16, secrets: &std::path::Path) {
    let conn = |read_only: bool| NodeConnection {
        endpoint: Some(format!("127.0.0.1:{api_port}")),
        secrets: Some(secrets.to_owned()),
        read_only,
        node: None,
        own_certificate_only: false,
    };
    let json = keel_node(NodeCommand::Etcd(EtcdCommand::Members {
        conn: conn(true),
        json: true,
    }))
    .unwrap();
    let members: keel_contract::api::EtcdMembers = serde_json::from_str(&json).unwrap();
    assert_eq!(members.members.len(), 1, "{json}");
    let member = &members.members[0];
    assert_eq!(member.name, "cp1", "{json}");
    assert!(!member.learner, "{json}");
    assert_eq!(members.member_id, member.id, "{json}");
    assert_eq!(members.leader_id, member.id, "{json}");
    assert!(members.healthy, "{json}");

    let file = dir.join("etcd.snapshot");
    let refused = keel_node(NodeCommand::Etcd(EtcdCommand::Snapshot {
        output: file.clone(),
        conn: conn(true),
        json: false,
    }))
    .unwrap_err()
    .to_string();
    assert!(refused.contains("HTTP 403"), "{refused}");
    assert!(!file.exists());
    let saved = keel_node(NodeCommand::Etcd(EtcdCommand::Snapshot {
        output: file.clone(),
        conn: conn(false),
        json: true,
    }))
    .unwrap();
    let report: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(report["bytes"], std::fs::metadata(&file).unwrap().len());
    let status = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&file)
        .output()
        .expect("etcdctl (etcd-client) is installed");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "etcdctl snapshot status: {text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(status["totalKey"].as_u64().unwrap() >= 1, "{status}");
}

/// One generic image (the stock worker profile, plus the fake kubelet) becomes a control
/// plane from a profile and secrets given over QEMU's fw_cfg, serves etcd over TLS to the
/// host's etcdctl, creates the bootstrap token and join RBAC bindings through the cluster
/// endpoint (the FAKE API server, `vm-tests/src/fake_apiserver.rs`, on the host), and keeps
/// its role and its data after a reboot without fw_cfg. Through the node API, `keel node
/// etcd` lists the one member and saves a snapshot etcdctl reads (an admin's; a read-only
/// operator's is refused).
#[test]
fn a_generic_image_becomes_a_control_plane_over_fw_cfg_and_keeps_its_role() {
    let dir = test_dir("roles_controlplane");
    let (secrets_path, secrets) = cluster_secrets(&dir.join("secrets"));
    keel_vm_tests::write_etcd_admin(&dir, &secrets);
    let profile = derived_profile(
        &dir,
        "worker",
        &format!(
            "[[image.files]]\nsrc = \"{}\"\ndst = \"/usr/bin/kubelet\"\nmode = \"0755\"\n",
            fake_kubelet().display()
        ),
    );
    let (key, _) = test_key(&dir.join("keys"));
    let out = dir.join("out");
    build(&profile, &out, &key, None, 1_700_000_000);

    // QEMU's user network shows the host's loopback as 10.0.2.2.
    let api = FakeApiServer::start(&secrets, "10.0.2.2".parse().unwrap(), 2);
    let node_profile = write_file(
        &dir,
        "cp.toml",
        &format!(
            "[node]\nrole = \"controlplane\"\nhostname = \"cp1\"\n\n[node.cluster]\nendpoint = \"https://10.0.2.2:{}\"\n",
            api.port
        ),
    );
    let node_secrets = write_file(
        &dir,
        "cp.secrets.toml",
        &secrets.for_role(Role::ControlPlane).to_toml().unwrap(),
    );
    let disk = vm_disk(&out, &dir, 6 << 30);
    let port = free_port();
    let api_port = free_port();

    let mut vm = Machine::start("roles_controlplane-boot1", &disk, &dir.join("vm"), |c| {
        c.forwards.push((port, 2379));
        c.forwards.push((api_port, keel_contract::api::PORT));
        c.fw_cfg
            .push((config::FW_CFG_PROFILE.into(), node_profile.clone()));
        c.fw_cfg
            .push((config::FW_CFG_SECRETS.into(), node_secrets.clone()));
    });
    let before = vm.expect("keel: ready", BOOT);
    for want in [
        "profile from QEMU fw_cfg opt/keel/profile: role controlplane",
        "role controlplane:",
        "keel: etcd: healthy",
        "fake-kubelet: this is a test double",
        "keel: kubelet: healthy",
    ] {
        assert!(
            before.contains(want),
            "{want:?} missing before ready:\n{before}"
        );
    }
    let health = etcdctl(&dir, port, &["endpoint", "health"]);
    assert!(health.contains("is healthy"), "{health}");
    etcdctl(&dir, port, &["put", "keel-test-key", "written-on-boot-1"]);
    assert!(etcdctl(&dir, port, &["get", "keel-test-key"]).contains("written-on-boot-1"));
    etcd_through_the_node_api(&dir, api_port, &secrets_path);
    let token = &secrets.bootstrap_token.id;
    vm.expect_seen_or_next(
        &format!(
            "cluster bootstrap: bootstrap token {token} and 3 RBAC bindings in place (4 created, 0 already there)"
        ),
        BOOT,
    );
    let seen = api.seen();
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
    assert_eq!(seen.created.len(), 4, "{:?}", seen.created);
    assert!(seen.readyz >= 3, "it waited for readyz: {}", seen.readyz);
    vm.vm.powerdown().unwrap();
    assert!(
        vm.vm.wait_timeout(Duration::from_secs(90)).is_some(),
        "the node did not power off"
    );

    // Second boot, no fw_cfg: the role and secrets come from STATE, the data from /var.
    let mut vm = Machine::start("roles_controlplane-boot2", &disk, &dir.join("vm"), |c| {
        c.forwards.push((port, 2379))
    });
    let before = vm.expect("keel: ready", BOOT);
    assert!(
        before.contains("profile from STATE (applied at an earlier boot): role controlplane"),
        "{before}"
    );
    assert!(before.contains("keel: etcd: healthy"));
    assert!(etcdctl(&dir, port, &["get", "keel-test-key"]).contains("written-on-boot-1"));
    vm.expect_seen_or_next(
        &format!(
            "cluster bootstrap: bootstrap token {} and 3 RBAC bindings in place (0 created, 4 already there)",
            secrets.bootstrap_token.id
        ),
        BOOT,
    );
    let seen = api.seen();
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
    assert_eq!(
        seen.clients.into_iter().collect::<Vec<_>>(),
        ["CN=kubernetes-admin O=system:masters"]
    );
    vm.kill();
}

/// A worker built with the cluster secrets: its STATE partition holds no CA key, and it boots
/// with the kubelet bootstrapping from the token. On a later boot, a config drive (FAT,
/// labelled KEELCFG, as on a USB stick) renames it; the new identity is kept without the drive.
#[test]
fn a_worker_gets_no_ca_key_and_boots_with_a_bootstrap_kubeconfig() {
    let dir = test_dir("roles_worker");
    let (secrets_path, secrets) = cluster_secrets(&dir.join("secrets"));
    let profile = derived_profile(
        &dir,
        "worker",
        &format!(
            "[image]\nsecrets = \"{}\"\n\n[[image.files]]\nsrc = \"{}\"\ndst = \"/usr/bin/kubelet\"\nmode = \"0755\"\n\n[node.cluster]\nendpoint = \"https://10.0.2.2:6443\"\n",
            secrets_path.display(),
            fake_kubelet().display()
        ),
    );
    let (key, public) = test_key(&dir.join("keys"));
    let out = dir.join("out");
    build(&profile, &out, &key, None, 1_700_000_000);

    // Read STATE back from the disk the build wrote.
    let state = keel_vm_tests::state_file(&out.join("disk.raw"), "/secrets.toml")
        .expect("secrets in STATE");
    let state = String::from_utf8(state).unwrap();
    for ca_key in [
        &secrets.kubernetes_ca.key,
        &secrets.etcd_ca.key,
        &secrets.front_proxy_ca.key,
        &secrets.keel_ca.key,
        &secrets.service_account.private,
    ] {
        let body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(
            !state.replace('\n', "").contains(&body),
            "a CA or service-account key is in the worker's STATE"
        );
    }
    assert!(
        state.contains(
            &secrets
                .kubernetes_ca
                .cert
                .lines()
                .nth(1)
                .unwrap()
                .to_owned()
        ),
        "the CA certificate is there"
    );
    let disk_bytes = std::fs::read(out.join("disk.raw")).unwrap();
    let ca_body: String = secrets
        .kubernetes_ca
        .key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !disk_bytes
            .windows(ca_body.len().min(64))
            .any(|w| w == &ca_body.as_bytes()[..ca_body.len().min(64)]),
        "no CA key anywhere on the disk"
    );

    let disk = vm_disk(&out, &dir, 4 << 30);
    let mut vm = Machine::start("roles_worker", &disk, &dir.join("vm"), |_| {});
    let before = vm.expect("keel: ready", BOOT);
    assert!(
        before.contains("profile from the image: role worker"),
        "{before}"
    );
    assert!(
        before.contains("bootstrap"),
        "the fake kubelet checks the bootstrap kubeconfig:\n{before}"
    );
    assert!(before.contains("keel: kubelet: healthy"), "{before}");
    shut_down(vm);

    // A config drive is anyone's who can plug in a disk: its files apply only when signed
    // (`keel sign`) by a key the image trusts (issue 11).
    let drive_profile = "[node]\nrole = \"worker\"\nhostname = \"rack4-node7\"\nconfig_generation = 1\n\n[node.cluster]\nendpoint = \"https://10.0.2.2:6443\"\n";
    let signature = sign_text(
        &dir.join("signed"),
        "profile.toml",
        drive_profile,
        &key,
        &public,
    );
    let drive = config_drive(
        &dir.join("config-drive"),
        &[
            ("profile.toml", drive_profile),
            ("profile.toml.minisig", &signature),
        ],
    );
    let mut vm = Machine::start("roles_worker-config-drive", &disk, &dir.join("vm"), |c| {
        c.extra_args.extend(extra_disk_args(&drive))
    });
    let before = vm.expect("keel: ready", BOOT);
    for want in [
        "profile from config drive /dev/vdb: role worker",
        "hostname rack4-node7",
        "keel: kubelet: healthy",
    ] {
        assert!(before.contains(want), "{want:?} missing:\n{before}");
    }
    shut_down(vm);

    let mut vm = Machine::start("roles_worker-after-drive", &disk, &dir.join("vm"), |_| {});
    let before = vm.expect("keel: ready", BOOT);
    for want in [
        "profile from STATE (applied at an earlier boot): role worker",
        "hostname rack4-node7",
    ] {
        assert!(before.contains(want), "{want:?} missing:\n{before}");
    }
    vm.kill();
}

fn shut_down(mut vm: Machine) {
    vm.vm.powerdown().unwrap();
    assert!(
        vm.vm.wait_timeout(Duration::from_secs(90)).is_some(),
        "the node did not power off"
    );
}
