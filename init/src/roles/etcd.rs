//! etcd on a control plane: Debian's etcd-server (3.4) as a supervised service, TLS with client
//! certificates on both the client (2379) and the peer (2380) port, kubeadm's certificate
//! paths.
//!
//! The health check uses the plain-HTTP metrics listener on 127.0.0.1:2381: etcd 3.4 serves
//! `/health` there too, and the TLS client port would demand a client certificate the
//! supervisor's checker does not have.

use std::net::IpAddr;
use std::time::Duration;

use keel_contract::profile::Node;

use super::{RoleError, https_url, paths, service_env};
use crate::supervisor::{Health, Restart, ServiceSpec};

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
/// Plain HTTP on loopback only: `/metrics` and `/health`, no data.
pub const METRICS_PORT: u16 = 2381;
pub const SERVICE: &str = "etcd";

/// etcd's command line (etcd 3.4 flags). `name` is the node name, which is also this node's
/// member name in `node.etcd.members`.
/// `joined`: the member list a running member gave this node when it added it
/// ([`crate::etcd_join`]); `None` bootstraps a new cluster from the profile's members.
pub fn argv(
    node: &Node,
    name: &str,
    node_ip: IpAddr,
    joined: Option<&[(String, String)]>,
) -> Result<Vec<String>, RoleError> {
    let members = match joined {
        Some(members) => members.to_vec(),
        None => initial_cluster(node, name, node_ip)?,
    };
    let own_peer_url = own_peer_url(node, name, node_ip)?;
    let initial_cluster: Vec<String> = members.iter().map(|(n, u)| format!("{n}={u}")).collect();
    // Read only when the data directory is empty; later boots reuse the member's data.
    let state = if joined.is_some() { "existing" } else { "new" };
    let token = node.cluster.name.as_deref().unwrap_or("keel");
    let flags = [
        ("name", name.to_owned()),
        ("data-dir", paths::ETCD_DATA_DIR.to_owned()),
        // Every address: the local API server dials loopback, the other control planes'
        // dial the node IP, and a host forward reaches the node on its other interface (a
        // cluster's user-network NIC). Client certificates guard every one.
        (
            "listen-client-urls",
            https_url(any_address(node_ip), CLIENT_PORT),
        ),
        ("advertise-client-urls", https_url(node_ip, CLIENT_PORT)),
        ("listen-peer-urls", https_url(node_ip, PEER_PORT)),
        // Must equal this member's URL in --initial-cluster, or etcd refuses to start.
        ("initial-advertise-peer-urls", own_peer_url),
        ("initial-cluster", initial_cluster.join(",")),
        ("initial-cluster-state", state.to_owned()),
        // Members of two clusters bootstrapping on one network cannot join each other.
        ("initial-cluster-token", token.to_owned()),
        ("cert-file", paths::ETCD_SERVER_CRT.to_owned()),
        ("key-file", paths::ETCD_SERVER_KEY.to_owned()),
        ("trusted-ca-file", paths::ETCD_CA_CRT.to_owned()),
        ("client-cert-auth", "true".to_owned()),
        ("peer-cert-file", paths::ETCD_PEER_CRT.to_owned()),
        ("peer-key-file", paths::ETCD_PEER_KEY.to_owned()),
        ("peer-trusted-ca-file", paths::ETCD_CA_CRT.to_owned()),
        ("peer-client-cert-auth", "true".to_owned()),
        (
            "listen-metrics-urls",
            format!("http://127.0.0.1:{METRICS_PORT}"),
        ),
        // kubeadm's value; 3.4's default (100000) keeps far more entries in memory.
        ("snapshot-count", "10000".to_owned()),
        // 3.4 defaults to the deprecated capnslog logger; zap to stderr goes to the
        // supervisor's log capture (there is no journald to detect).
        ("logger", "zap".to_owned()),
        ("log-outputs", "stderr".to_owned()),
    ];
    let mut argv = vec![node.etcd.binary.display().to_string()];
    argv.extend(flags.into_iter().map(|(k, v)| format!("--{k}={v}")));
    Ok(argv)
}

/// This member's peer URL: the profile's for its name, else the node IP's.
pub fn own_peer_url(node: &Node, name: &str, node_ip: IpAddr) -> Result<String, RoleError> {
    Ok(initial_cluster(node, name, node_ip)?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, url)| url)
        .unwrap_or_else(|| https_url(node_ip, PEER_PORT)))
}

/// The wildcard address of `ip`'s family (`[::]` also takes IPv4 on Linux, but not on a
/// kernel booted with IPv6 off).
fn any_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// The members as (name, peer URL): the profile's, or this node alone. Checks that this node
/// is one of them (etcd would exit with "couldn't find local name in the initial cluster")
/// and that names are unique. Names are DNS names and peer URLs https, from the profile's
/// types.
pub fn initial_cluster(
    node: &Node,
    name: &str,
    node_ip: IpAddr,
) -> Result<Vec<(String, String)>, RoleError> {
    if node.etcd.members.is_empty() {
        return Ok(vec![(name.to_owned(), https_url(node_ip, PEER_PORT))]);
    }
    let mut members: Vec<(String, String)> = Vec::new();
    for m in &node.etcd.members {
        if members.iter().any(|(n, _)| n == m.name.as_str()) {
            return Err(RoleError::BadEtcdMember(format!(
                "member {:?} is listed twice",
                m.name.as_str()
            )));
        }
        members.push((m.name.to_string(), m.peer_url.to_string()));
    }
    if !members.iter().any(|(n, _)| n == name) {
        return Err(RoleError::NotAnEtcdMember {
            name: name.to_owned(),
            members: members
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(members)
}

/// etcd's health: `/health` on the loopback metrics listener, which answers 200 only while
/// the member has a leader (so it fails until a multi-member cluster has quorum).
pub fn health() -> Health {
    Health::Http {
        port: METRICS_PORT,
        path: "/health".into(),
    }
}

/// The supervised service.
pub fn service(argv: Vec<String>) -> ServiceSpec {
    let mut spec = ServiceSpec::new(SERVICE, &[]);
    spec.argv = argv;
    spec.env = service_env();
    spec.health = health();
    spec.restart = Restart::Always;
    // A member waits for its peers before it has a leader and answers /health.
    spec.startup_grace = Duration::from_secs(120);
    // etcd flushes its WAL and hands leadership over on SIGTERM.
    spec.stop_timeout = Duration::from_secs(30);
    spec
}

#[cfg(test)]
mod tests {
    use keel_contract::profile::{EtcdMember, PeerUrl};

    use super::*;

    /// Every flag of etcd 3.4.23 (Debian 12's etcd-server), from `etcd --help`.
    const ETCD_34_FLAGS: &str = "--name --data-dir --wal-dir --snapshot-count --heartbeat-interval --election-timeout --initial-election-tick-advance --listen-peer-urls --listen-client-urls --max-snapshots --max-wals --quota-backend-bytes --backend-batch-interval --backend-batch-limit --max-txn-ops --max-request-bytes --max-concurrent-streams --grpc-keepalive-min-time --grpc-keepalive-interval --grpc-keepalive-timeout --initial-advertise-peer-urls --initial-cluster --initial-cluster-state --initial-cluster-token --advertise-client-urls --discovery --discovery-fallback --discovery-proxy --discovery-srv --discovery-srv-name --strict-reconfig-check --pre-vote --auto-compaction-retention --auto-compaction-mode --enable-v2 --cert-file --key-file --client-cert-auth --client-crl-file --client-cert-allowed-hostname --trusted-ca-file --auto-tls --peer-cert-file --peer-key-file --peer-client-cert-auth --peer-trusted-ca-file --peer-cert-allowed-cn --peer-cert-allowed-hostname --peer-auto-tls --peer-crl-file --cipher-suites --cors --host-whitelist --auth-token --bcrypt-cost --auth-token-ttl --enable-pprof --metrics --listen-metrics-urls --logger --log-outputs --log-level --proxy --proxy-failure-wait --proxy-refresh-interval --proxy-dial-timeout --proxy-write-timeout --proxy-read-timeout --experimental-initial-corrupt-check --experimental-corrupt-check-time --experimental-enable-v2v3 --experimental-backend-bbolt-freelist-type --experimental-enable-lease-checkpoint --experimental-compaction-batch-limit --experimental-peer-skip-client-san-verification --experimental-watch-progress-notify-interval --experimental-warning-apply-duration --force-new-cluster --debug --log-package-levels";

    fn cp() -> Node {
        Node {
            role: keel_contract::profile::Role::ControlPlane,
            ..Node::default()
        }
    }

    fn flag<'a>(argv: &'a [String], name: &str) -> &'a str {
        let prefix = format!("--{name}=");
        let hits: Vec<&str> = argv
            .iter()
            .filter_map(|a| a.strip_prefix(&prefix))
            .collect();
        assert_eq!(hits.len(), 1, "--{name} once in {argv:?}");
        hits[0]
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn single_member() {
        let argv = argv(&cp(), "cp-1", ip("10.0.0.5"), None).unwrap();
        assert_eq!(argv[0], "/usr/bin/etcd");
        assert_eq!(flag(&argv, "name"), "cp-1");
        assert_eq!(flag(&argv, "data-dir"), "/var/lib/etcd");
        assert_eq!(flag(&argv, "initial-cluster"), "cp-1=https://10.0.0.5:2380");
        assert_eq!(
            flag(&argv, "initial-advertise-peer-urls"),
            "https://10.0.0.5:2380"
        );
        assert_eq!(flag(&argv, "listen-client-urls"), "https://0.0.0.0:2379");
        assert_eq!(
            flag(&argv, "advertise-client-urls"),
            "https://10.0.0.5:2379"
        );
        assert_eq!(flag(&argv, "listen-peer-urls"), "https://10.0.0.5:2380");
        assert_eq!(flag(&argv, "client-cert-auth"), "true");
        assert_eq!(flag(&argv, "peer-client-cert-auth"), "true");
        assert_eq!(
            flag(&argv, "cert-file"),
            "/etc/kubernetes/pki/etcd/server.crt"
        );
        assert_eq!(
            flag(&argv, "key-file"),
            "/etc/kubernetes/pki/etcd/server.key"
        );
        assert_eq!(
            flag(&argv, "trusted-ca-file"),
            "/etc/kubernetes/pki/etcd/ca.crt"
        );
        assert_eq!(
            flag(&argv, "peer-cert-file"),
            "/etc/kubernetes/pki/etcd/peer.crt"
        );
        assert_eq!(
            flag(&argv, "peer-key-file"),
            "/etc/kubernetes/pki/etcd/peer.key"
        );
        assert_eq!(
            flag(&argv, "peer-trusted-ca-file"),
            "/etc/kubernetes/pki/etcd/ca.crt"
        );
        assert_eq!(flag(&argv, "listen-metrics-urls"), "http://127.0.0.1:2381");
        assert_eq!(flag(&argv, "initial-cluster-token"), "keel");
        assert_eq!(
            health(),
            Health::Http {
                port: 2381,
                path: "/health".into()
            }
        );
    }

    #[test]
    fn only_etcd_34_flags() {
        let known: Vec<&str> = ETCD_34_FLAGS.split(' ').collect();
        for arg in argv(&cp(), "cp-1", ip("10.0.0.5"), None)
            .unwrap()
            .iter()
            .skip(1)
        {
            let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
            assert!(known.contains(&name), "{name} is not an etcd 3.4 flag");
        }
    }

    #[test]
    fn three_members() {
        let mut node = cp();
        node.cluster.name = Some("prod".parse().unwrap());
        node.etcd.members = ["cp-1", "cp-2", "cp-3"]
            .iter()
            .enumerate()
            .map(|(i, n)| EtcdMember {
                name: n.parse().unwrap(),
                peer_url: format!("https://10.0.0.{}:2380", 11 + i).parse().unwrap(),
            })
            .collect();
        let argv = argv(&node, "cp-2", ip("10.0.0.12"), None).unwrap();
        assert_eq!(
            flag(&argv, "initial-cluster"),
            "cp-1=https://10.0.0.11:2380,cp-2=https://10.0.0.12:2380,cp-3=https://10.0.0.13:2380"
        );
        assert_eq!(
            flag(&argv, "initial-advertise-peer-urls"),
            "https://10.0.0.12:2380"
        );
        assert_eq!(flag(&argv, "name"), "cp-2");
        assert_eq!(flag(&argv, "initial-cluster-token"), "prod");
        assert_eq!(flag(&argv, "listen-peer-urls"), "https://10.0.0.12:2380");

        // This node must be one of the members.
        let err = super::argv(&node, "cp-4", ip("10.0.0.14"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`node.etcd.members`: this node (cp-4) is not a member (members: cp-1, cp-2, cp-3)"
        );
        // Peers talk TLS only: a profile cannot even hold another URL.
        assert!("http://10.0.0.11:2380".parse::<PeerUrl>().is_err());
        node.etcd.members[0] = node.etcd.members[1].clone();
        let err = super::argv(&node, "cp-2", ip("10.0.0.12"), None).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn a_joining_member_starts_existing_with_the_cluster_it_was_given() {
        let mut node = cp();
        node.etcd.join = true;
        node.etcd.members = ["cp-1", "cp-4"]
            .iter()
            .zip([11, 14])
            .map(|(n, host)| EtcdMember {
                name: n.parse().unwrap(),
                peer_url: format!("https://10.0.0.{host}:2380").parse().unwrap(),
            })
            .collect();
        let given = [
            ("cp-1".to_owned(), "https://10.0.0.11:2380".to_owned()),
            ("cp-2".to_owned(), "https://10.0.0.12:2380".to_owned()),
            ("cp-4".to_owned(), "https://10.0.0.14:2380".to_owned()),
        ];
        let argv = argv(&node, "cp-4", ip("10.0.0.14"), Some(&given)).unwrap();
        assert_eq!(flag(&argv, "initial-cluster-state"), "existing");
        assert_eq!(
            flag(&argv, "initial-cluster"),
            "cp-1=https://10.0.0.11:2380,cp-2=https://10.0.0.12:2380,cp-4=https://10.0.0.14:2380"
        );
        assert_eq!(
            flag(&argv, "initial-advertise-peer-urls"),
            "https://10.0.0.14:2380"
        );
        let fresh = argv_new(&node);
        assert_eq!(flag(&fresh, "initial-cluster-state"), "new");
    }

    fn argv_new(node: &Node) -> Vec<String> {
        argv(node, "cp-4", ip("10.0.0.14"), None).unwrap()
    }

    #[test]
    fn ipv6_urls_have_brackets() {
        let argv = argv(&cp(), "cp-1", ip("fd00::5"), None).unwrap();
        assert_eq!(
            flag(&argv, "initial-cluster"),
            "cp-1=https://[fd00::5]:2380"
        );
        assert_eq!(flag(&argv, "listen-client-urls"), "https://[::]:2379");
    }

    #[test]
    fn service_spec() {
        let spec = service(argv(&cp(), "cp-1", ip("10.0.0.5"), None).unwrap());
        assert_eq!(spec.name, "etcd");
        assert_eq!(spec.health, health());
        assert!(spec.depends_on.is_empty());
        assert!(spec.env.iter().any(|(k, _)| k == "PATH"));
    }
}
