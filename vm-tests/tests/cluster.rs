//! `keel cluster` as a user runs it: three control planes and a worker from the stock image,
//! rootless (QEMU user networking plus a `socket,mcast=` L2), detached, checked with the
//! host's `etcdctl` (an independent client) through each node's forwarded etcd port. The
//! kubelet is the stock image's (none: Kubernetes itself is not exercised here, see the
//! README); etcd, containerd, the network and the node API are real.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keel_vm_tests::{
    build, derived_profile, etcdctl, stock_image, test_dir, workspace_root, write_etcd_admin,
};

const CLUSTER: &str = "kt";

/// The CLI with this test's own state and contexts directories.
struct Cli {
    state_home: PathBuf,
    config: PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_keel-cli"))
            .env("XDG_STATE_HOME", &self.state_home)
            .env("KEEL_CONFIG", &self.config)
            .env_remove("KEEL_CONTEXT")
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "keel {args:?}: {}\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn cluster_dir(&self) -> PathBuf {
        self.state_home.join("keel/clusters").join(CLUSTER)
    }
}

/// Destroys the cluster when the test ends, failed or not: its VMs run detached and would
/// outlive the test.
struct Cleanup<'a>(&'a Cli);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.0.cluster_dir().exists() {
            let _ = self.0.run(&["cluster", "destroy", CLUSTER, "--keep-logs"]);
        }
    }
}

fn qemu_processes_of(dir: &Path) -> usize {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .count()
}

/// The nodes holding the virtual IP, as `keel cluster status` reports it.
fn vip_holders(cli: &Cli) -> Vec<String> {
    let status: serde_json::Value =
        serde_json::from_str(&cli.ok(&["cluster", "status", CLUSTER, "--json"])).unwrap();
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["vip"] == "10.5.0.10")
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect()
}

fn member_id(certs: &Path, port: u16) -> String {
    let status = etcdctl(certs, port, &["endpoint", "status", "-w", "json"]).unwrap();
    let doc: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    doc[0]["Status"]["header"]["member_id"].to_string()
}

/// What the phases of the test share.
struct Ctx<'a> {
    cli: &'a Cli,
    dir: PathBuf,
    /// The etcd CA and admin certificate for the host's etcdctl.
    certs: PathBuf,
    names: Vec<String>,
    /// The control planes' forwarded etcd ports, in node order.
    etcd_ports: Vec<u16>,
}

impl Ctx<'_> {
    fn etcd_port(&self, i: usize) -> u16 {
        self.etcd_ports[i]
    }
}

/// One cluster boot for everything: create, quorum and VIP failover, backups, a control
/// plane added and removed, rolling upgrades (good, then stopped by a rollback), destroy;
/// then the snapshot restored into a new cluster.
#[test]
fn a_three_control_plane_cluster_from_create_to_destroy() {
    let dir = test_dir("cluster");
    let (image, stock_key) = stock_image("worker");
    let cli = Cli {
        state_home: dir.join("state"),
        config: dir.join("keel-config.toml"),
    };
    let _cleanup = Cleanup(&cli);
    let ctx = create_and_check_etcd(&cli, &dir, &image);
    vip_failover_and_rejoin(&ctx);
    let old_cluster_id = backups(&ctx);
    membership(&ctx);
    rolling_upgrades(&ctx, &stock_key.with_file_name("keel.key"));
    // The secrets outlive the cluster, as a real cluster's backup of them would.
    let kept_secrets = dir.join("kept-secrets.toml");
    std::fs::copy(cli.cluster_dir().join("secrets.toml"), &kept_secrets).unwrap();
    destroy(&ctx);
    restore(&ctx, &image, &kept_secrets, old_cluster_id);
}

/// 3 control planes + 1 worker, healthy; the name refused a second time; the context; etcd's
/// members alike from each control plane, a key put through one read through another.
fn create_and_check_etcd<'a>(cli: &'a Cli, dir: &Path, image: &Path) -> Ctx<'a> {
    let image = image.to_string_lossy().into_owned();
    let created = cli.ok(&[
        "cluster",
        "create",
        CLUSTER,
        "--image",
        &image,
        "--controlplanes",
        "3",
        "--workers",
        "1",
        // One vCPU per node (the default is two): four nodes share this machine's two cores
        // with the suite's other lane.
        "--cpus",
        "1",
        "--wait-timeout",
        "1200",
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&created).unwrap();
    let nodes = doc["nodes"].as_array().unwrap();
    let names: Vec<String> = nodes
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["kt-cp-1", "kt-cp-2", "kt-cp-3", "kt-worker-1"]);
    for n in nodes {
        assert_eq!(n["state"], "ready", "{created}");
    }
    let etcd_ports: Vec<u16> = nodes[..3]
        .iter()
        .map(|n| {
            let local = n["etcd"].as_str().unwrap();
            local.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    let etcd_port = |i: usize| etcd_ports[i];

    // The name is taken now.
    let again = cli.run(&["cluster", "create", CLUSTER, "--image", &image]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // The saved context: `keel node` needs no endpoint or secrets.
    let status: serde_json::Value =
        serde_json::from_str(&cli.ok(&["node", "status", "--json"])).unwrap();
    assert_eq!(status["hostname"], "kt-cp-1", "{status}");

    // etcd: three members, seen alike from each; a key written through one member is read
    // through another.
    let secrets: keel_contract::secrets::Secrets = keel_contract::secrets::Secrets::from_toml(
        &std::fs::read_to_string(cli.cluster_dir().join("secrets.toml")).unwrap(),
    )
    .unwrap();
    let certs = dir.join("certs");
    write_etcd_admin(&certs, &secrets);
    for i in 0..3 {
        let list = etcdctl(&certs, etcd_port(i), &["member", "list"]).unwrap();
        for name in &names[..3] {
            let name = name.as_str();
            assert!(list.contains(name), "from {}: {list}", names[i]);
        }
        assert!(list.contains("https://10.5.0.11:2380"), "{list}");
    }
    etcdctl(&certs, etcd_port(0), &["put", "keel/first", "one"]).unwrap();
    let read = etcdctl(
        &certs,
        etcd_port(1),
        &["get", "keel/first", "--print-value-only"],
    )
    .unwrap();
    assert_eq!(read.trim(), "one");

    Ctx {
        cli,
        dir: dir.to_path_buf(),
        certs,
        names,
        etcd_ports,
    }
}

/// The VIP on the etcd leader; the holder killed: the VIP moves, quorum holds; the node
/// started again rejoins as the same member with its data.
fn vip_failover_and_rejoin(ctx: &Ctx) {
    // The virtual IP: exactly one control plane holds it, the etcd leader.
    let holders = vip_holders(ctx.cli);
    assert_eq!(holders.len(), 1, "{holders:?}");
    let victim = holders[0].clone();
    let victim_index = ctx.names.iter().position(|n| *n == victim).unwrap();
    let victim_id = member_id(&ctx.certs, ctx.etcd_port(victim_index));
    let status = etcdctl(
        &ctx.certs,
        ctx.etcd_port(victim_index),
        &["endpoint", "status", "-w", "json"],
    )
    .unwrap();
    assert!(
        status.contains(&format!("\"leader\":{victim_id}")),
        "the holder leads: {status}"
    );
    let survivor = (victim_index + 1) % 3;

    // The holder's QEMU killed: two of three still make a quorum, and another control plane
    // takes the address.
    ctx.cli.ok(&["cluster", "stop", CLUSTER, "--node", &victim]);
    let killed_at = std::time::Instant::now();
    let moved = loop {
        let now = vip_holders(ctx.cli);
        if now.len() == 1 && now[0] != victim {
            break now[0].clone();
        }
        assert!(
            killed_at.elapsed().as_secs() < 120,
            "the VIP did not move: {now:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    eprintln!(
        "cluster bench: VIP moved from {victim} to {moved} {:.1} s after its QEMU was killed",
        killed_at.elapsed().as_secs_f64()
    );
    assert!(
        etcdctl(
            &ctx.certs,
            ctx.etcd_port(victim_index),
            &[
                "get",
                "keel/first",
                "--dial-timeout=3s",
                "--command-timeout=5s"
            ]
        )
        .is_err()
    );
    etcdctl(
        &ctx.certs,
        ctx.etcd_port(survivor),
        &["put", "keel/second", "two"],
    )
    .unwrap();
    let status = ctx.cli.ok(&["cluster", "status", CLUSTER, "--json"]);
    assert!(status.contains("\"state\": \"stopped\""), "{status}");

    // Started again, it rejoins as the same member with its data, and catches up on what
    // was written while it was down (a serializable read answers from its own copy).
    ctx.cli
        .ok(&["cluster", "start", CLUSTER, "--wait-timeout", "900"]);
    assert_eq!(
        member_id(&ctx.certs, ctx.etcd_port(victim_index)),
        victim_id
    );
    let mut caught_up = String::new();
    for _ in 0..30 {
        caught_up = etcdctl(
            &ctx.certs,
            ctx.etcd_port(victim_index),
            &[
                "get",
                "keel/",
                "--prefix",
                "--consistency=s",
                "--print-value-only",
            ],
        )
        .unwrap_or_default();
        if caught_up.contains("two") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    assert_eq!(
        caught_up.split_whitespace().collect::<Vec<_>>(),
        ["one", "two"]
    );
    let console =
        std::fs::read_to_string(ctx.cli.cluster_dir().join(&victim).join("vm/console.log"))
            .unwrap();
    assert!(
        console.contains("boot 2"),
        "{victim} booted again from its own disk"
    );
}

/// Backups through the node API; returns the cluster ID.
fn backups(ctx: &Ctx) -> u64 {
    // Backups through the node API (the context's first node): the members as it sees
    // them, and a snapshot etcd's own tool accepts.
    let members: serde_json::Value =
        serde_json::from_str(&ctx.cli.ok(&["node", "etcd", "members", "--json"])).unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 3, "{members}");
    let snapshot = ctx.dir.join("etcd.snapshot");
    ctx.cli
        .ok(&["node", "etcd", "snapshot", "-o", snapshot.to_str().unwrap()]);
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&snapshot)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    members["cluster_id"].as_u64().unwrap()
}

/// The names of the etcd members and whether any is a learner, as etcdctl (an independent
/// client) lists them through control plane `i`.
fn etcd_member_names(ctx: &Ctx, i: usize) -> (Vec<String>, bool) {
    let list = etcdctl(
        &ctx.certs,
        ctx.etcd_port(i),
        &["member", "list", "-w", "json"],
    )
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(list.trim()).unwrap();
    let members = doc["members"].as_array().unwrap();
    let mut names: Vec<String> = members
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    let learner = members.iter().any(|m| m["isLearner"] == true);
    (names, learner)
}

/// A control plane added to the running cluster joins etcd as a learner, is promoted and
/// serves the data; removed, it leaves etcd's member list, and its VM and disk are gone.
fn membership(ctx: &Ctx) {
    let adding = std::time::Instant::now();
    let added = ctx.cli.run(&[
        "cluster",
        "add",
        CLUSTER,
        "--controlplanes",
        "1",
        "--wait-timeout",
        "900",
    ]);
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(added.status.success(), "keel cluster add: {stderr}");
    eprintln!(
        "cluster bench: kt-cp-4 added (booted, joined as a learner, promoted, cluster healthy) in {:.0} s",
        adding.elapsed().as_secs_f64()
    );
    assert!(
        stderr.contains("warning: 4 control planes"),
        "an even count is warned about: {stderr}"
    );
    let (names, learner) = etcd_member_names(ctx, 0);
    assert_eq!(names, ["kt-cp-1", "kt-cp-2", "kt-cp-3", "kt-cp-4"]);
    assert!(!learner, "promoted: no learner left");
    let status: serde_json::Value =
        serde_json::from_str(&ctx.cli.ok(&["cluster", "status", CLUSTER, "--json"])).unwrap();
    let new_node = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "kt-cp-4")
        .unwrap()
        .clone();
    assert_eq!(new_node["state"], "ready", "{new_node}");
    assert_eq!(new_node["etcd_members"], 4, "{new_node}");
    let port: u16 = new_node["etcd"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Its own copy (a serializable read) has what was written before it joined.
    let read = etcdctl(
        &ctx.certs,
        port,
        &["get", "keel/first", "--consistency=s", "--print-value-only"],
    )
    .unwrap();
    assert_eq!(read.trim(), "one");
    let node_dir = ctx.cli.cluster_dir().join("kt-cp-4");
    let console = std::fs::read_to_string(node_dir.join("vm/console.log")).unwrap();
    assert!(console.contains("as a learner"), "it joined as a learner");
    assert!(
        console.contains("promoted to a voting member"),
        "and was promoted"
    );

    let left: serde_json::Value = serde_json::from_str(
        &ctx.cli
            .ok(&["cluster", "remove", CLUSTER, "--node", "kt-cp-4", "--json"]),
    )
    .unwrap();
    assert_eq!(left["members"].as_array().unwrap().len(), 3, "{left}");
    let (names, _) = etcd_member_names(ctx, 1);
    assert_eq!(names, ["kt-cp-1", "kt-cp-2", "kt-cp-3"]);
    assert!(!node_dir.exists(), "its disk and files are removed");
    assert_eq!(qemu_processes_of(&node_dir), 0);
    let after = ctx.cli.run(&["cluster", "status", CLUSTER]);
    let said = String::from_utf8_lossy(&after.stderr);
    assert!(!said.contains("not healthy"), "{said}");
    // A removal of a node the cluster does not have is refused as bad input.
    let again = ctx
        .cli
        .run(&["cluster", "remove", CLUSTER, "--node", "kt-cp-4"]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
}

/// The snapshot restored into a new cluster of the same name and secrets (etcd's
/// disaster-recovery procedure): the first control plane bootstraps from it, the others join
/// as learners and are promoted; the keys are there and the cluster ID is new.
fn restore(ctx: &Ctx, image: &Path, secrets: &Path, old_cluster_id: u64) {
    let snapshot = ctx.dir.join("etcd.snapshot");
    let started = std::time::Instant::now();
    let created = ctx.cli.ok(&[
        "cluster",
        "create",
        CLUSTER,
        "--image",
        image.to_str().unwrap(),
        "--controlplanes",
        "3",
        "--secrets",
        secrets.to_str().unwrap(),
        "--etcd-snapshot",
        snapshot.to_str().unwrap(),
        // One vCPU per node (the default is two): four nodes share this machine's two cores
        // with the suite's other lane.
        "--cpus",
        "1",
        "--wait-timeout",
        "1200",
        "--json",
    ]);
    eprintln!(
        "cluster bench: 3 control planes restored from a snapshot and healthy in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let doc: serde_json::Value = serde_json::from_str(&created).unwrap();
    let ports: Vec<u16> = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let local = n["etcd"].as_str().unwrap();
            local.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(ports.len(), 3, "{created}");
    // Through the last control plane, which joined the restored one.
    let read = etcdctl(
        &ctx.certs,
        ports[2],
        &["get", "keel/", "--prefix", "--print-value-only"],
    )
    .unwrap();
    assert_eq!(read.split_whitespace().collect::<Vec<_>>(), ["one", "two"]);
    let list = etcdctl(&ctx.certs, ports[0], &["member", "list", "-w", "json"]).unwrap();
    let doc: serde_json::Value = serde_json::from_str(list.trim()).unwrap();
    let new_cluster_id = doc["header"]["cluster_id"].as_u64().unwrap();
    assert_ne!(new_cluster_id, old_cluster_id, "a new cluster ID");
    let members = doc["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{doc}");
    assert!(members.iter().all(|m| m["isLearner"] != true), "{doc}");
    let console =
        std::fs::read_to_string(ctx.cli.cluster_dir().join("kt-cp-1/vm/console.log")).unwrap();
    assert!(console.contains("snapshot restored"), "kt-cp-1 restored it");
    let state_dir = ctx.cli.cluster_dir();
    ctx.cli.ok(&["cluster", "destroy", CLUSTER]);
    assert_eq!(qemu_processes_of(&state_dir), 0);
}

/// A good rollout, then one stopped by a rollback.
fn rolling_upgrades(ctx: &Ctx, key: &Path) {
    // A rolling upgrade to 1.0.1: every node, control planes first, each back ready with
    // the cluster healthy (etcd with every member) before the next; the data stays.
    let ids_before = etcdctl(&ctx.certs, ctx.etcd_port(0), &["member", "list"]).unwrap();
    let v2 = ctx.dir.join("v2");
    build(
        &workspace_root().join("profiles/worker.toml"),
        &v2,
        key,
        Some("1.0.1"),
        1_700_000_000,
    );
    let rollout: serde_json::Value = serde_json::from_str(&ctx.cli.ok(&[
        "cluster",
        "upgrade",
        CLUSTER,
        v2.join("update").to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let upgraded: Vec<(&str, &str, &str)> = rollout
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap(),
                n["from"].as_str().unwrap(),
                n["to"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        upgraded,
        ctx.names
            .iter()
            .map(|n| (n.as_str(), "1.0.0", "1.0.1"))
            .collect::<Vec<_>>()
    );
    for n in rollout.as_array().unwrap() {
        eprintln!(
            "cluster bench: rolling upgrade: {} in {:.0} s",
            n["node"],
            n["seconds"].as_f64().unwrap()
        );
    }
    let status: serde_json::Value =
        serde_json::from_str(&ctx.cli.ok(&["cluster", "status", CLUSTER, "--json"])).unwrap();
    for n in status["nodes"].as_array().unwrap() {
        assert_eq!(n["version"], "1.0.1", "{n}");
    }
    assert_eq!(
        etcdctl(&ctx.certs, ctx.etcd_port(0), &["member", "list"]).unwrap(),
        ids_before
    );
    let read = etcdctl(
        &ctx.certs,
        ctx.etcd_port(2),
        &["get", "keel/second", "--print-value-only"],
    )
    .unwrap();
    assert_eq!(read.trim(), "two");

    // A bundle whose stage 2 exits at once (`/bin/false` where the init's stage 2 is: PID 1
    // ends, the kernel panics and reboots after `panic=10`) stops the rollout at the first
    // node: systemd-boot's counter runs out, the node comes back on 1.0.1 by itself, and no
    // other node is touched.
    let broken = derived_profile(
        &ctx.dir.join("broken"),
        "worker",
        "[[image.files]]\nsrc = \"/bin/false\"\ndst = \"/usr/lib/keel/keel-init\"\nmode = \"0755\"\n",
    );
    let v3 = ctx.dir.join("v3");
    build(&broken, &v3, key, Some("1.0.2"), 1_700_000_000);
    let stopped = ctx.cli.run(&[
        "cluster",
        "upgrade",
        CLUSTER,
        v3.join("update").to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(1), "{said}");
    assert!(
        said.contains("rolling upgrade stopped at kt-cp-1: came back on 1.0.1 instead of 1.0.2"),
        "{said}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&ctx.cli.ok(&["cluster", "status", CLUSTER, "--json"])).unwrap();
    for n in status["nodes"].as_array().unwrap() {
        assert_eq!(n["version"], "1.0.1", "{n}");
        assert_eq!(n["state"], "ready", "{n}");
    }
    let cp1: serde_json::Value =
        serde_json::from_str(&ctx.cli.ok(&["node", "status", "--json"])).unwrap();
    assert_eq!(cp1["rolled_back_from"], "1.0.2", "{cp1}");
}

fn destroy(ctx: &Ctx) {
    // `list` sees the cluster with every node running.
    let list: serde_json::Value =
        serde_json::from_str(&ctx.cli.ok(&["cluster", "list", "--json"])).unwrap();
    assert_eq!(
        list,
        serde_json::json!([{"name": CLUSTER, "nodes": 4, "running": 4}])
    );

    // Destroy: no QEMU left, no disk, no context.
    let state_dir = ctx.cli.cluster_dir();
    ctx.cli.ok(&["cluster", "destroy", CLUSTER]);
    assert_eq!(qemu_processes_of(&state_dir), 0);
    assert!(!state_dir.exists());
    let contexts = ctx.cli.ok(&["context", "list", "--json"]);
    assert!(!contexts.contains(CLUSTER), "{contexts}");
}
