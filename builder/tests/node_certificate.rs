//! Issue 11, renewal: `keel node renew-certificate` against the init's API server and its
//! real certificate handling (keel_init::api::certificate::Renewal, saving to a STATE
//! directory here), over mutual TLS on loopback. The node behind it is a fake that only
//! answers the version: what is tested is the renewal, which is the init's own code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/node_cli.rs"]
mod node_cli;
use node_cli::{conn, run_cli};

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keel_builder::cli::{NodeCommand, NodeConnection};
use keel_builder::node::{self, ClientCredentials, NodeClient, NodeError};
use keel_contract::api::{
    CertificateReport, NodeCertificate, RollbackReport, Status, UpgradeReport, Version,
};
use keel_contract::profile::Role;
use keel_init::api::certificate::Renewal;
use keel_init::api::{self as server, ApiError, NodeApi, ServerOptions, ServerTls};

const HOST: &str = "node-a";

struct FakeNode {
    renewal: OnceLock<Renewal>,
}

impl NodeApi for FakeNode {
    fn version(&self) -> Version {
        Version {
            name: "keel-worker".into(),
            version: "1.0.0".into(),
            slot: "a".into(),
            arch: "x86_64".into(),
            keel: "0.1.0".into(),
        }
    }
    fn status(&self) -> Status {
        unimplemented!("not asked")
    }
    fn logs(&self, _: &str, _: usize) -> Result<String, ApiError> {
        Err(ApiError::not_found("none"))
    }
    fn reboot(&self) -> Result<(), ApiError> {
        Err(ApiError::unavailable("no"))
    }
    fn shutdown(&self) -> Result<(), ApiError> {
        Err(ApiError::unavailable("no"))
    }
    fn upgrade(
        &self,
        _: &mut dyn std::io::Read,
        _: u64,
        _: bool,
        _: bool,
    ) -> Result<UpgradeReport, ApiError> {
        Err(ApiError::unavailable("no"))
    }
    fn rollback(&self) -> Result<RollbackReport, ApiError> {
        Err(ApiError::unavailable("no"))
    }
    fn renew_certificate(&self, offered: &NodeCertificate) -> Result<CertificateReport, ApiError> {
        self.renewal
            .get()
            .unwrap()
            .renew(offered, rustls::pki_types::UnixTime::now())
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn log(_line: &str) {}

/// A node serving the cluster's shared certificate, its STATE in `state`.
fn start(secrets: &keel_contract::secrets::Secrets, state: &Path) -> SocketAddr {
    let tls = ServerTls::from_pem(
        &secrets.node_api.cert,
        &secrets.node_api.key,
        &secrets.keel_ca.cert,
    )
    .unwrap();
    let fake = Arc::new(FakeNode {
        renewal: OnceLock::new(),
    });
    let _ = fake.renewal.set(Renewal {
        tls: tls.clone(),
        trusted_ca_pem: secrets.keel_ca.cert.clone(),
        hostname: HOST.into(),
        state: state.to_owned(),
        log,
    });
    let options = ServerOptions {
        handshake_timeout: Duration::from_secs(10),
        ..ServerOptions::default()
    };
    server::spawn(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        tls,
        fake,
        log,
        options,
    )
    .unwrap()
    .local_addr()
}

/// The serial of the certificate a new connection is served (through `keel node status`'s
/// own record of it: when it ends), and whether `--node HOST --own-certificate-only` passes.
fn served(addr: SocketAddr, creds: &ClientCredentials) -> (Option<i64>, bool) {
    let node = NodeClient::new(&addr.to_string(), creds).unwrap();
    node.version().unwrap();
    let own = NodeClient::for_node(&addr.to_string(), creds, HOST, true)
        .unwrap()
        .version()
        .is_ok();
    (node.certificate_expiry().node, own)
}

#[test]
fn a_renewed_certificate_is_checked_kept_and_served_on_new_connections() {
    let created = now_secs() - 86_400;
    let secrets = keel_pki::generate("keel", created).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let addr = start(&secrets, &state);
    let cluster_file = dir.path().join("secrets.toml");
    std::fs::write(&cluster_file, secrets.to_toml().unwrap()).unwrap();
    let creds = node::credentials_from_secrets(&cluster_file).unwrap();
    let (first_end, own) = served(addr, &creds);
    assert_eq!(
        first_end,
        Some(keel_pki::not_after_pem(&secrets.node_api.cert).unwrap())
    );
    assert!(!own, "the shared certificate is not the node's own");

    // Refused: another cluster's certificate (400, nothing kept), and a read-only operator.
    let other = keel_pki::generate("keel", now_secs()).unwrap();
    let other_file = dir.path().join("other.toml");
    std::fs::write(&other_file, other.to_toml().unwrap()).unwrap();
    let err = run_cli(NodeCommand::RenewCertificate {
        from: Some(other_file),
        conn: conn(addr, &cluster_file),
        json: false,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("HTTP 400"), "{err}");
    assert!(err.contains("not issued by the keel CA"), "{err}");
    let err = run_cli(NodeCommand::RenewCertificate {
        from: None,
        conn: NodeConnection {
            read_only: true,
            ..conn(addr, &cluster_file)
        },
        json: false,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("HTTP 403"), "{err}");
    assert!(!state.join("api-certificate.toml").exists());
    assert_eq!(served(addr, &creds).0, first_end);

    // `keel secrets renew`, then the shared certificate from it (the --secrets file itself).
    let renewed = keel_pki::renew(&secrets, now_secs()).unwrap();
    std::fs::write(&cluster_file, renewed.to_toml().unwrap()).unwrap();
    let out = run_cli(NodeCommand::RenewCertificate {
        from: None,
        conn: conn(addr, &cluster_file),
        json: false,
    })
    .unwrap();
    assert!(
        out.contains("serves the certificate for keel-node (serial "),
        "{out}"
    );
    let creds = node::credentials_from_secrets(&cluster_file).unwrap();
    let (shared_end, own) = served(addr, &creds);
    assert_eq!(
        shared_end,
        Some(keel_pki::not_after_pem(&renewed.node_api.cert).unwrap())
    );
    assert_ne!(shared_end, first_end);
    assert!(!own);

    // The node's own certificate (`keel secrets node`), as JSON: `--node` now passes with
    // --own-certificate-only, and STATE holds it.
    let mut own_file = renewed.for_role(Role::Worker);
    own_file.node_api = keel_pki::issue_node_api(&renewed, HOST, &[], now_secs()).unwrap();
    let node_file = dir.path().join("node-a.secrets.toml");
    std::fs::write(&node_file, own_file.to_toml().unwrap()).unwrap();
    let out = run_cli(NodeCommand::RenewCertificate {
        from: Some(node_file.clone()),
        conn: conn(addr, &cluster_file),
        json: true,
    })
    .unwrap();
    let report: CertificateReport = serde_json::from_str(&out).unwrap();
    assert_eq!(report.names, [HOST, "keel-node"]);
    assert!(served(addr, &creds).1, "--own-certificate-only passes");
    let kept: NodeCertificate =
        toml::from_str(&std::fs::read_to_string(state.join("api-certificate.toml")).unwrap())
            .unwrap();
    assert_eq!(kept, node::node_certificate_from(&node_file).unwrap());

    // Another node's certificate: refused with what it names.
    let mut b = own_file.clone();
    b.node_api = keel_pki::issue_node_api(&renewed, "node-b", &[], now_secs()).unwrap();
    let client = NodeClient::new(&addr.to_string(), &creds).unwrap();
    let err = client
        .renew_certificate(&NodeCertificate {
            cert: b.node_api.cert,
            key: b.node_api.key,
        })
        .unwrap_err();
    assert!(matches!(err, NodeError::Api { status: 400, .. }), "{err}");
    assert!(err.to_string().contains("node-b, keel-node"), "{err}");
    assert!(served(addr, &creds).1, "still the node's own");
}
