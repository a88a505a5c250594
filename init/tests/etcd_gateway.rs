//! The node-side etcd client (`keel_init::etcd_client`) against a real etcd serving with the
//! certificates the PKI derives for a control plane, with client certificates required, as
//! the init runs it: the member list matches etcdctl's, and a snapshot taken through the
//! client is one `etcdctl snapshot status` reads and `etcdctl snapshot restore` restores,
//! with the key put before it. etcd and etcdctl must be installed
//! (vm-tests/install-host-packages): without them this test fails, it is never skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use keel_contract::profile::Role;
use keel_init::etcd_client::{EtcdClient, EtcdEndpoint};
use keel_pki::{NodeIdentity, derive, generate, write_files};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills an etcd this test started (by its own child handle) however the test ends.
struct Etcd {
    child: std::process::Child,
    log: PathBuf,
}

impl Etcd {
    fn start(dir: &Path, name: &str, args: &[String]) -> Etcd {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("/usr/bin/etcd")
            .args(args)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("/usr/bin/etcd is installed (vm-tests/install-host-packages: etcd-server)");
        Etcd { child, log }
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcdctl(args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--dial-timeout=3s", "--command-timeout=10s"])
        .args(args)
        .output()
        .expect("etcdctl is installed (vm-tests/install-host-packages: etcd-client)")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "etcdctl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, etcd: &Etcd, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} never came:\n{}",
            etcd.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn members_and_a_snapshot_through_the_gateway_of_a_real_etcd() {
    let secrets = generate("keel", now()).unwrap();
    let id = NodeIdentity {
        hostname: "cp-1".into(),
        ips: vec!["127.0.0.1".parse().unwrap()],
        endpoint: "https://127.0.0.1:6443".parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        cluster_domain: "cluster.local".into(),
        extra_sans: vec![],
    };
    let files = derive(&secrets.for_role(Role::ControlPlane), &id, now()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("etc-kubernetes");
    write_files(&root, &files).unwrap();
    let p = |rel: &str| root.join(rel).to_str().unwrap().to_owned();
    let (client, peer, metrics) = (free_port(), free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("https://127.0.0.1:{peer}");
    let etcd = Etcd::start(
        dir.path(),
        "etcd",
        &[
            "--name=cp-1".into(),
            format!("--data-dir={}", dir.path().join("data").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=cp-1={peer_url}"),
            format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"),
            format!("--cert-file={}", p("pki/etcd/server.crt")),
            format!("--key-file={}", p("pki/etcd/server.key")),
            format!("--trusted-ca-file={}", p("pki/etcd/ca.crt")),
            "--client-cert-auth".into(),
            format!("--peer-cert-file={}", p("pki/etcd/peer.crt")),
            format!("--peer-key-file={}", p("pki/etcd/peer.key")),
            format!("--peer-trusted-ca-file={}", p("pki/etcd/ca.crt")),
            "--peer-client-cert-auth".into(),
        ],
    );
    // What the init uses: the API server's etcd client certificate.
    let endpoint = EtcdEndpoint {
        client: SocketAddr::from(([127, 0, 0, 1], client)),
        metrics: SocketAddr::from(([127, 0, 0, 1], metrics)),
        ca: p("pki/etcd/ca.crt").into(),
        cert: p("pki/apiserver-etcd-client.crt").into(),
        key: p("pki/apiserver-etcd-client.key").into(),
    };
    let etcd_client = EtcdClient::new(endpoint).unwrap();
    wait_until("etcd's health", &etcd, || etcd_client.healthy());
    let tls = [
        format!("--endpoints={client_url}"),
        format!("--cacert={}", p("pki/etcd/ca.crt")),
        format!("--cert={}", p("pki/apiserver-etcd-client.crt")),
        format!("--key={}", p("pki/apiserver-etcd-client.key")),
    ];
    let ctl = |args: &[&str]| {
        let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        etcdctl(&all)
    };

    let members = etcd_client.members().unwrap();
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&["member", "list", "-w", "json"]))).unwrap();
    let theirs: Vec<(u64, String)> = listed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["ID"].as_u64().unwrap(),
                m["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let ours: Vec<(u64, String)> = members
        .members
        .iter()
        .map(|m| (m.id, m.name.clone()))
        .collect();
    assert_eq!(ours, theirs);
    assert_eq!(
        members.cluster_id,
        listed["header"]["cluster_id"].as_u64().unwrap()
    );
    assert_eq!(members.member_id, theirs[0].0);
    assert_eq!(
        members.leader_id, members.member_id,
        "a single member leads"
    );
    assert!(members.raft_term >= 1);
    assert!(members.healthy);
    assert!(!members.members[0].learner);
    assert_eq!(members.members[0].client_urls, [client_url.as_str()]);

    ok(&ctl(&["put", "/keel/backup", "restored"]));
    let snapshot = dir.path().join("snapshot.db");
    let mut source = etcd_client.snapshot().unwrap();
    let mut file = std::fs::File::create(&snapshot).unwrap();
    let bytes = std::io::copy(&mut source, &mut file).unwrap();
    drop(file);
    assert!(bytes > 4096, "{bytes} bytes");
    let status: serde_json::Value = serde_json::from_str(&ok(&etcdctl(&[
        "snapshot",
        "status",
        snapshot.to_str().unwrap(),
        "-w",
        "json",
    ])))
    .unwrap();
    assert!(status["totalKey"].as_u64().unwrap() >= 1, "{status}");

    // A learner shows as one (added after the snapshot, which it is not part of).
    let learner_peer = format!("https://127.0.0.1:{}", free_port());
    ok(&ctl(&[
        "member",
        "add",
        "learner-1",
        "--learner",
        &format!("--peer-urls={learner_peer}"),
    ]));
    let members = etcd_client.members().unwrap();
    assert_eq!(members.members.len(), 2);
    let learner = members.members.iter().find(|m| m.learner).unwrap();
    assert_eq!(learner.peer_urls, [learner_peer]);
    assert!(
        learner.name.is_empty(),
        "a learner that never started has no name"
    );
    drop(etcd);

    // The snapshot restores, as a node restores one (`etcd_restore`, with etcdctl), into a
    // new single-member cluster that has the key and a cluster ID of its own.
    let original_cluster = members.cluster_id;
    let (client2, peer2) = (free_port(), free_port());
    let peer2_url = format!("http://127.0.0.1:{peer2}");
    let restored = dir.path().join("restored");
    let run = |argv: &[String]| {
        let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    keel_init::etcd_restore::restore(
        &snapshot,
        &dir.path().join("scratch"),
        &restored,
        "cp-1",
        &peer2_url,
        &keel_init::etcd_restore::restored_token("keel", now()),
        &run,
    )
    .unwrap();
    assert!(restored.join("member/snap/db").is_file());
    assert!(
        !dir.path().join("scratch/etcd-restore.db").exists(),
        "the copy is gone"
    );
    assert!(
        !dir.path().join("restored.restore").exists(),
        "the staging is gone"
    );
    // A cut snapshot is refused by etcdctl's hash check, and leaves no data directory.
    let cut = dir.path().join("cut.db");
    let bytes = std::fs::read(&snapshot).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let refused = dir.path().join("refused");
    assert!(
        keel_init::etcd_restore::restore(
            &cut,
            &dir.path().join("scratch"),
            &refused,
            "cp-1",
            &peer2_url,
            "t",
            &run,
        )
        .is_err()
    );
    assert!(!refused.join("member").exists());
    let client2_url = format!("http://127.0.0.1:{client2}");
    let second = Etcd::start(
        dir.path(),
        "restored",
        &[
            "--name=cp-1".into(),
            format!("--data-dir={}", restored.display()),
            format!("--listen-client-urls={client2_url}"),
            format!("--advertise-client-urls={client2_url}"),
            format!("--listen-peer-urls={peer2_url}"),
            format!("--initial-advertise-peer-urls={peer2_url}"),
            format!("--initial-cluster=cp-1={peer2_url}"),
        ],
    );
    let get = || {
        etcdctl(&[
            &format!("--endpoints={client2_url}"),
            "get",
            "/keel/backup",
            "--print-value-only",
        ])
    };
    wait_until("the restored etcd", &second, || get().status.success());
    assert_eq!(ok(&get()).trim(), "restored");
    let status: serde_json::Value = serde_json::from_str(&ok(&etcdctl(&[
        &format!("--endpoints={client2_url}"),
        "endpoint",
        "status",
        "-w",
        "json",
    ])))
    .unwrap();
    let restored_cluster = status[0]["Status"]["header"]["cluster_id"]
        .as_u64()
        .unwrap();
    assert_ne!(restored_cluster, original_cluster, "a new cluster ID");
}

/// One member's ports and data directory, and its command line with the control plane's
/// certificates (`pki`: the written `/etc/kubernetes`).
struct MemberPorts {
    name: &'static str,
    client: u16,
    peer: u16,
    metrics: u16,
}

impl MemberPorts {
    fn new(name: &'static str) -> Self {
        MemberPorts {
            name,
            client: free_port(),
            peer: free_port(),
            metrics: free_port(),
        }
    }
    fn peer_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer)
    }
    fn endpoint(&self, pki: &Path) -> EtcdEndpoint {
        EtcdEndpoint {
            client: SocketAddr::from(([127, 0, 0, 1], self.client)),
            metrics: SocketAddr::from(([127, 0, 0, 1], self.metrics)),
            ca: pki.join("pki/etcd/ca.crt"),
            cert: pki.join("pki/apiserver-etcd-client.crt"),
            key: pki.join("pki/apiserver-etcd-client.key"),
        }
    }
    fn args(&self, dir: &Path, pki: &Path, cluster: &str, state: &str) -> Vec<String> {
        let p = |rel: &str| pki.join(rel).display().to_string();
        let client_url = format!("https://127.0.0.1:{}", self.client);
        vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", dir.join(self.name).display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={}", self.peer_url()),
            format!("--initial-advertise-peer-urls={}", self.peer_url()),
            format!("--initial-cluster={cluster}"),
            format!("--initial-cluster-state={state}"),
            format!("--listen-metrics-urls=http://127.0.0.1:{}", self.metrics),
            format!("--cert-file={}", p("pki/etcd/server.crt")),
            format!("--key-file={}", p("pki/etcd/server.key")),
            format!("--trusted-ca-file={}", p("pki/etcd/ca.crt")),
            "--client-cert-auth".into(),
            format!("--peer-cert-file={}", p("pki/etcd/peer.crt")),
            format!("--peer-key-file={}", p("pki/etcd/peer.key")),
            format!("--peer-trusted-ca-file={}", p("pki/etcd/ca.crt")),
            "--peer-client-cert-auth".into(),
        ]
    }
}

/// `node.etcd.join` against real etcd: the client adds a learner through a running member,
/// the learner starts with the `--initial-cluster` the init computes from that answer
/// (`initial-cluster-state=existing`), is promoted once etcd allows, and is removed again;
/// etcdctl (an independent client) checks each step.
#[test]
fn a_learner_joins_through_a_running_member_is_promoted_and_removed() {
    use keel_init::etcd_join::{self, Membership};
    let secrets = generate("keel", now()).unwrap();
    let id = NodeIdentity {
        hostname: "cp-1".into(),
        ips: vec!["127.0.0.1".parse().unwrap()],
        endpoint: "https://127.0.0.1:6443".parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        cluster_domain: "cluster.local".into(),
        extra_sans: vec![],
    };
    let files = derive(&secrets.for_role(Role::ControlPlane), &id, now()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("etc-kubernetes");
    write_files(&pki, &files).unwrap();
    let first = MemberPorts::new("cp-1");
    let second = MemberPorts::new("cp-2");
    let first_etcd = Etcd::start(
        dir.path(),
        first.name,
        &first.args(
            dir.path(),
            &pki,
            &format!("cp-1={}", first.peer_url()),
            "new",
        ),
    );
    let through_first = EtcdClient::new(first.endpoint(&pki)).unwrap();
    wait_until("the first member's health", &first_etcd, || {
        through_first.healthy()
    });

    let members = through_first.member_list().unwrap();
    assert_eq!(
        etcd_join::membership(&members, &second.peer_url()),
        Membership::Absent
    );
    let (new_id, members) = through_first.member_add(&second.peer_url(), true).unwrap();
    assert_eq!(
        etcd_join::membership(&members, &second.peer_url()),
        Membership::Added(new_id)
    );
    let cluster: Vec<String> = etcd_join::initial_cluster(&members, new_id, second.name)
        .iter()
        .map(|(n, u)| format!("{n}={u}"))
        .collect();
    let second_etcd = Etcd::start(
        dir.path(),
        second.name,
        &second.args(dir.path(), &pki, &cluster.join(","), "existing"),
    );

    let ctl_list = || -> serde_json::Value {
        let out = etcdctl(&[
            &format!("--endpoints=https://127.0.0.1:{}", first.client),
            &format!("--cacert={}", pki.join("pki/etcd/ca.crt").display()),
            &format!(
                "--cert={}",
                pki.join("pki/apiserver-etcd-client.crt").display()
            ),
            &format!(
                "--key={}",
                pki.join("pki/apiserver-etcd-client.key").display()
            ),
            "member",
            "list",
            "-w",
            "json",
        ]);
        serde_json::from_str(&ok(&out)).unwrap()
    };
    // etcd refuses the promotion until the learner has caught up: retried, as the init does.
    let start = Instant::now();
    while let Err(e) = through_first.member_promote(new_id) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never promoted: {e}\n{}",
            second_etcd.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let listed = ctl_list();
    let members = listed["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{listed}");
    assert!(
        members
            .iter()
            .all(|m| m.get("isLearner").is_none_or(|l| l == false)),
        "{listed}"
    );
    let joined = members
        .iter()
        .find(|m| m["ID"].as_u64() == Some(new_id))
        .unwrap();
    assert_eq!(joined["name"], "cp-2", "{listed}");
    assert_eq!(
        etcd_join::membership(&through_first.member_list().unwrap(), &second.peer_url()),
        Membership::Started(new_id)
    );

    // Removing it, as the node API does: never the answering member itself.
    let view = through_first.members().unwrap();
    assert!(etcd_join::member_to_remove(&view, "cp-1").is_err());
    let id = etcd_join::member_to_remove(&view, "cp-2").unwrap();
    assert_eq!(id, new_id);
    // etcd refuses ("unhealthy cluster") while a member joined less than 5 s ago.
    let start = Instant::now();
    while let Err(e) = through_first.member_remove(id) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never removed: {e}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let listed = ctl_list();
    let names: Vec<&str> = listed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cp-1"], "{listed}");
    drop(second_etcd);
}
