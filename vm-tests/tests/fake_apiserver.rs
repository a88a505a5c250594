//! The init's cluster bootstrap (the bootstrap token's Secret and the join RBAC bindings)
//! against the FAKE kube-apiserver (`vm-tests/src/fake_apiserver.rs`: the real one cannot be
//! downloaded here) over loopback, with the admin kubeconfig the node's PKI code derives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};

use keel_contract::profile::Role;
use keel_contract::secrets::Secrets;
use keel_init::kube_client::{Created, KubeClient};
use keel_init::roles::cluster_bootstrap;
use keel_pki::{self as pki, NodeIdentity};
use keel_vm_tests::fake_apiserver::FakeApiServer;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn secrets() -> Secrets {
    pki::generate("keel", 1_800_000_000).unwrap()
}

/// `admin.conf` as a control plane of `secrets` derives it for an API server at `port`.
fn admin_conf(secrets: &Secrets, port: u16) -> String {
    let identity = NodeIdentity {
        hostname: "cp1".into(),
        ips: vec![LOOPBACK],
        endpoint: format!("https://127.0.0.1:{port}").parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        cluster_domain: "cluster.local".into(),
        extra_sans: vec![],
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let files = pki::derive(&secrets.for_role(Role::ControlPlane), &identity, now).unwrap();
    let file = files.iter().find(|f| f.path == "admin.conf").unwrap();
    String::from_utf8(file.bytes.clone()).unwrap()
}

#[test]
fn a_control_plane_creates_the_join_objects_once_and_finds_them_after() {
    let secrets = secrets();
    let api = FakeApiServer::start(&secrets, LOOPBACK, 1);
    let client = KubeClient::from_kubeconfig(&admin_conf(&secrets, api.port)).unwrap();
    assert!(!client.ready().unwrap(), "the first readyz says not ready");
    assert!(client.ready().unwrap());
    let objects = cluster_bootstrap::objects(&secrets.bootstrap_token).unwrap();
    for o in &objects {
        assert_eq!(
            client.create(o).unwrap(),
            Created::Created,
            "{}",
            o.describe
        );
    }
    for o in &objects {
        assert_eq!(client.create(o).unwrap(), Created::AlreadyThere);
    }
    let seen = api.seen();
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
    assert_eq!(
        seen.created,
        [
            format!(
                "Secret/kube-system/bootstrap-token-{}",
                secrets.bootstrap_token.id
            ),
            "ClusterRoleBinding/kubeadm:kubelet-bootstrap".into(),
            "ClusterRoleBinding/kubeadm:node-autoapprove-bootstrap".into(),
            "ClusterRoleBinding/kubeadm:node-autoapprove-certificate-rotation".into(),
        ]
    );
    assert_eq!(seen.conflicts, 4);
    assert_eq!(
        seen.clients.into_iter().collect::<Vec<_>>(),
        ["CN=kubernetes-admin O=system:masters"]
    );
}

#[test]
fn the_fake_refuses_what_the_real_api_server_would() {
    let secrets = secrets();
    let api = FakeApiServer::start(&secrets, LOOPBACK, 0);

    // A client certificate of another cluster's CA is refused in the handshake (the client
    // trusts this cluster's CA, so it is the server that refuses).
    let other = pki::generate("keel", 1_800_000_000).unwrap();
    let foreign = pki::kubeconfig::Kubeconfig::with_client_cert(
        "keel",
        &format!("https://127.0.0.1:{}", api.port),
        &secrets.kubernetes_ca.cert,
        "kubernetes-admin",
        &other.admin,
    );
    let foreign = KubeClient::from_kubeconfig(&foreign.to_yaml()).unwrap();
    let err = foreign.ready().unwrap_err().to_string();
    assert!(
        err.contains("certificate") || err.contains("alert"),
        "a foreign CA's client must be refused: {err}"
    );
    assert!(api.seen().clients.is_empty());

    // A token Secret for another token breaks the contract.
    let client = KubeClient::from_kubeconfig(&admin_conf(&secrets, api.port)).unwrap();
    let wrong = cluster_bootstrap::objects(&other.bootstrap_token).unwrap();
    let err = client.create(&wrong[0]).unwrap_err();
    assert!(err.contains("HTTP 422"), "{err}");
    assert_eq!(api.seen().violations.len(), 1);
    assert!(api.seen().created.is_empty());
}
