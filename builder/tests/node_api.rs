//! The node API end to end: the init's server (keel_init::api) with a fake node behind it,
//! keel's client (keel_builder::node) and the `keel node` CLI in front, test certificates
//! made here with rcgen; and `openssl s_client` as an independent peer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/node_cli.rs"]
mod node_cli;
use node_cli::{conn, run_cli};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_builder::cli::{NodeCommand, NodeConnection};
use keel_builder::node::{ClientCredentials, NodeClient, NodeError, Upload};
use keel_builder::progress::Reporter;
use keel_contract::api::{
    ErrorKind, Request, RollbackReport, ServiceInfo, SlotInfo, Status, UpgradeReport, Version,
};
use keel_init::api::{self as server, ApiError, NodeApi, ServerOptions, ServerTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::{Digest, Sha256};

// --- test PKI -----------------------------------------------------------------------------

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// (certificate PEM, key PEM).
fn leaf(ca: &Ca, cn: &str, dns: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let sans: Vec<String> = dns.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

struct Pki {
    ca: Ca,
    server: (String, String),
    admin: (String, String),
    /// A client certificate from another cluster's CA.
    stranger: (String, String),
    other_ca: Ca,
}

fn pki() -> Pki {
    let ca = new_ca("keel CA");
    let other_ca = new_ca("another keel CA");
    Pki {
        server: leaf(
            &ca,
            "keel-node",
            &["keel-node"],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        admin: leaf(&ca, "admin", &[], ExtendedKeyUsagePurpose::ClientAuth),
        stranger: leaf(&other_ca, "admin", &[], ExtendedKeyUsagePurpose::ClientAuth),
        ca,
        other_ca,
    }
}

impl Pki {
    fn admin_creds(&self) -> ClientCredentials {
        ClientCredentials {
            ca_pem: self.ca.pem.clone(),
            cert_pem: self.admin.0.clone(),
            key_pem: self.admin.1.clone(),
        }
    }
}

// --- the fake node ------------------------------------------------------------------------

/// What an upgrade handler saw: (bytes, sha256, force, reboot), or the body's read error.
type Seen = Result<(u64, Vec<u8>, bool, bool), String>;

#[derive(Default)]
struct Fake {
    calls: AtomicUsize,
    /// One per upgrade call.
    uploads: Mutex<Vec<Seen>>,
    /// Upgrades are refused before their first byte (a node on trial).
    on_trial: std::sync::atomic::AtomicBool,
}

impl Fake {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn hit(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
    fn wait_upload(&self) -> Seen {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(r) = self.uploads.lock().unwrap().pop() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the upgrade handler never finished");
    }
}

fn status() -> Status {
    Status {
        name: "keel-worker".into(),
        version: "1.1.0".into(),
        slot: "a".into(),
        hostname: "worker-1".into(),
        addresses: vec!["10.0.2.15/24".into(), "fe80::1/64".into()],
        slots: vec![
            SlotInfo {
                slot: "a".into(),
                version: Some("1.1.0".into()),
                entry: Some("keel-a.conf".into()),
                booted: true,
                healthy: true,
                invalid: None,
            },
            SlotInfo {
                slot: "b".into(),
                version: Some("1.2.0".into()),
                entry: Some("keel-b+0-3.conf".into()),
                booted: false,
                healthy: false,
                invalid: None,
            },
        ],
        services: vec![ServiceInfo {
            name: "containerd".into(),
            state: "running".into(),
            restarts: 1,
            pid: Some(321),
            message: None,
        }],
        boot: 4,
        rolled_back_from: Some("1.2.0".into()),
        rollback_requested: false,
        quarantined: vec!["1.2.0".into()],
        uptime_secs: 3725,
        degraded: None,
        warnings: vec![],
        timeline: vec![],
        diskless: None,
        ready: true,
        vip: None,
    }
}

impl NodeApi for Fake {
    fn version(&self) -> Version {
        self.hit();
        Version {
            name: "keel-worker".into(),
            version: "1.1.0".into(),
            slot: "a".into(),
            arch: "x86_64".into(),
            keel: "0.1.0".into(),
        }
    }
    fn status(&self) -> Status {
        self.hit();
        status()
    }
    fn logs(&self, service: &str, lines: usize) -> Result<String, ApiError> {
        self.hit();
        if service != "containerd" {
            return Err(ApiError::not_found(format!("no service {service:?}")));
        }
        Ok((1..=lines).map(|i| format!("line {i}\n")).collect())
    }
    fn reboot(&self) -> Result<(), ApiError> {
        self.hit();
        Ok(())
    }
    fn shutdown(&self) -> Result<(), ApiError> {
        self.hit();
        Err(ApiError::unavailable("already shutting down"))
    }
    fn upgrade(
        &self,
        body: &mut dyn Read,
        len: u64,
        force: bool,
        reboot: bool,
    ) -> Result<UpgradeReport, ApiError> {
        self.hit();
        let mut hasher = Sha256::new();
        let mut first = Vec::new();
        let mut buf = vec![0u8; 10_000];
        let mut total = 0u64;
        let result = loop {
            match body.read(&mut buf) {
                Ok(0) => break Ok((total, hasher.clone().finalize().to_vec(), force, reboot)),
                Ok(n) => {
                    if first.len() < 3 {
                        first.extend_from_slice(&buf[..n.min(3)]);
                    }
                    hasher.update(&buf[..n]);
                    total += n as u64;
                }
                Err(e) => break Err(format!("{:?}: {e}", e.kind())),
            }
        };
        self.uploads.lock().unwrap().push(result.clone());
        let (bytes, ..) = result.map_err(ApiError::internal)?;
        assert_eq!(bytes, len);
        if first.starts_with(b"BAD") {
            return Err(ApiError::verification_failed(
                "the update's signature does not verify with any trusted key",
            ));
        }
        if !force {
            return Err(ApiError::conflict(
                "1.0.0 is older than the running 1.1.0 (downgrade refused; --force allows it)",
            ));
        }
        Ok(UpgradeReport {
            from: "1.1.0".into(),
            to: "1.0.0".into(),
            slot: "b".into(),
            bytes,
            reboot,
        })
    }
    fn rollback(&self) -> Result<RollbackReport, ApiError> {
        self.hit();
        Err(ApiError::conflict("slot b holds no bootable version"))
    }
    fn upgrade_admissible(&self, force: bool) -> Result<(), ApiError> {
        if self.on_trial.load(Ordering::SeqCst) && !force {
            return Err(ApiError::unavailable("slot a is on trial"));
        }
        Ok(())
    }
}

fn log(_line: &str) {}

fn options() -> ServerOptions {
    ServerOptions {
        max_connections: 8,
        max_per_peer: 8,
        handshake_timeout: Duration::from_secs(10),
        head_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(10),
    }
}

fn start_with(
    cert: &(String, String),
    client_ca: &str,
    fake: Arc<Fake>,
    opts: ServerOptions,
) -> SocketAddr {
    let tls = ServerTls::from_pem(&cert.0, &cert.1, client_ca).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    server::spawn(listener, tls, fake, log, opts)
        .unwrap()
        .local_addr()
}

fn start(pki: &Pki) -> (SocketAddr, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let addr = start_with(&pki.server, &pki.ca.pem, fake.clone(), options());
    (addr, fake)
}

fn client(addr: SocketAddr, creds: &ClientCredentials) -> NodeClient {
    NodeClient::new(&addr.to_string(), creds).unwrap()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i ^ (i >> 9)) as u8).collect()
}

// --- round trips --------------------------------------------------------------------------

#[test]
fn every_endpoint_round_trips_through_the_client() {
    let pki = pki();
    let (addr, fake) = start(&pki);
    let node = client(addr, &pki.admin_creds());

    assert_eq!(node.version().unwrap().version, "1.1.0");
    assert_eq!(node.status().unwrap(), status());
    assert_eq!(
        node.logs("containerd", 3).unwrap(),
        "line 1\nline 2\nline 3\n"
    );
    assert_eq!(node.reboot().unwrap().message, "rebooting");

    let data = pattern(5 * 1024 * 1024 + 123);
    let seen = Mutex::new(Vec::new());
    let progress = |n: u64| seen.lock().unwrap().push(n);
    let reply = node
        .request(
            &Request::Upgrade {
                force: true,
                reboot: false,
            },
            Some(Upload {
                body: &mut &data[..],
                len: data.len() as u64,
                progress: &progress,
            }),
        )
        .unwrap();
    let report: UpgradeReport = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(report.bytes, data.len() as u64);
    assert!(!report.reboot);
    let (bytes, hash, force, reboot) = fake.wait_upload().unwrap();
    assert_eq!(bytes, data.len() as u64);
    assert_eq!(
        hash,
        Sha256::digest(&data).to_vec(),
        "the upload arrived intact"
    );
    assert!(force && !reboot, "the flags reached the handler");
    let seen = seen.into_inner().unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "progress only grows");
    assert_eq!(seen.last(), Some(&(data.len() as u64)));

    // Through the typed call, with a reporter, and an empty upload.
    let report = node
        .upgrade(&mut &b""[..], 0, true, true, &Reporter::quiet())
        .unwrap();
    assert_eq!((report.bytes, report.reboot), (0, true));
    assert_eq!(fake.wait_upload().unwrap().0, 0);

    // The errors of the rest are the API's, tested below; here they only must arrive.
    assert!(matches!(
        node.shutdown(),
        Err(NodeError::Api { status: 503, .. })
    ));
    assert!(matches!(
        node.rollback(),
        Err(NodeError::Api {
            status: 409,
            kind: Some(ErrorKind::Conflict),
            ..
        })
    ));
    assert_eq!(fake.calls(), 8);
}

fn secrets_file(dir: &Path, creds: &ClientCredentials) -> PathBuf {
    let path = dir.join("secrets.toml");
    let mut doc = toml::Table::new();
    let mut keel_ca = toml::Table::new();
    keel_ca.insert("cert".into(), creds.ca_pem.clone().into());
    let mut admin = toml::Table::new();
    admin.insert("cert".into(), creds.cert_pem.clone().into());
    admin.insert("key".into(), creds.key_pem.clone().into());
    doc.insert("keel_ca".into(), keel_ca.into());
    doc.insert("keel_admin".into(), admin.into());
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    path
}

#[test]
fn the_cli_prints_status_as_a_table_and_as_json() {
    let pki = pki();
    let (addr, _fake) = start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path(), &pki.admin_creds());

    let table = run_cli(NodeCommand::Status {
        conn: conn(addr, &secrets),
        json: false,
    })
    .unwrap();
    assert!(
        table.starts_with("node       worker-1 (keel-worker 1.1.0, slot a)\n"),
        "{table}"
    );
    // When the node's and the operator's certificates end (rcgen's default: 4096).
    assert!(
        table.contains("\nnode cert  valid until 4096-01-01 (")
            && table.contains("\nyour cert  valid until 4096-01-01 ("),
        "{table}"
    );
    assert!(
        table.contains("\nb     1.2.0    keel-b+0-3.conf  no\n"),
        "{table}"
    );
    assert!(
        table.contains("\ncontainerd  running  1         321\n"),
        "{table}"
    );

    let json = run_cli(NodeCommand::Status {
        conn: conn(addr, &secrets),
        json: true,
    })
    .unwrap();
    let parsed: Status = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, status());

    let logs = run_cli(NodeCommand::Logs {
        conn: conn(addr, &secrets),
        service: "containerd".into(),
        lines: 2,
    })
    .unwrap();
    assert_eq!(logs, "line 1\nline 2\n");

    let version = run_cli(NodeCommand::Version {
        conn: conn(addr, &secrets),
        json: false,
    })
    .unwrap();
    assert_eq!(
        version,
        "keel-worker 1.1.0 (x86_64, slot a), keel-init 0.1.0\n"
    );

    let bundle = dir.path().join("update.tar");
    std::fs::write(&bundle, pattern(200_000)).unwrap();
    let upgraded = run_cli(NodeCommand::Upgrade {
        conn: conn(addr, &secrets),
        bundle,
        force: true,
        no_reboot: true,
        json: false,
    })
    .unwrap();
    assert!(
        upgraded.ends_with(": installed 1.0.0 in slot b (was 1.1.0, 195.3 KiB received); boots on the next reboot\n"),
        "{upgraded}"
    );
}

// --- errors reach the operator ------------------------------------------------------------

#[test]
fn api_errors_reach_the_cli_as_clear_messages() {
    let pki = pki();
    let (addr, fake) = start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path(), &pki.admin_creds());
    let bundle = dir.path().join("update.tar");
    std::fs::write(&bundle, pattern(300_000)).unwrap();

    let err = run_cli(NodeCommand::Upgrade {
        conn: conn(addr, &secrets),
        bundle: bundle.clone(),
        force: false,
        no_reboot: false,
        json: false,
    })
    .unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert_eq!(
        err.to_string(),
        format!(
            "{addr}: upgrade failed: 1.0.0 is older than the running 1.1.0 (downgrade refused; --force allows it) (HTTP 409 Conflict)"
        )
    );

    let mut bad = b"BAD".to_vec();
    bad.extend(pattern(1000));
    std::fs::write(&bundle, bad).unwrap();
    let err = run_cli(NodeCommand::Upgrade {
        conn: conn(addr, &secrets),
        bundle,
        force: true,
        no_reboot: false,
        json: false,
    })
    .unwrap_err();
    assert!(
        err.to_string().ends_with("upgrade failed: the update's signature does not verify with any trusted key (HTTP 422 Unprocessable Content)"),
        "{err}"
    );

    let err = run_cli(NodeCommand::Logs {
        conn: conn(addr, &secrets),
        service: "kubelet".into(),
        lines: 5,
    })
    .unwrap_err();
    assert_eq!(
        err.exit_code(),
        2,
        "an unknown service is the operator's input"
    );
    assert!(
        err.to_string()
            .contains("no service \"kubelet\" (HTTP 404 Not Found)"),
        "{err}"
    );

    // The real binary: message on stderr, exit code 1.
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "node",
            "rollback",
            "--endpoint",
            &addr.to_string(),
            "--secrets",
        ])
        .arg(&secrets)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "keel: {addr}: rollback failed: slot b holds no bootable version (HTTP 409 Conflict)\n"
        )
    );
    assert!(output.stdout.is_empty());

    // Secrets without the admin key: bad input, before any connection.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[keel_ca]\ncert = \"x\"\n").unwrap();
    let calls = fake.calls();
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["node", "status", "-e", &addr.to_string(), "--secrets"])
        .arg(&broken)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing `keel_admin.cert`"), "{stderr}");
    assert_eq!(fake.calls(), calls);
}

// --- who may talk to whom -----------------------------------------------------------------

/// A raw TLS client: `client_cert` None presents no certificate.
fn raw_tls(
    addr: SocketAddr,
    ca_pem: &str,
    client_cert: Option<&(String, String)>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let config = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("keel-node").unwrap())
            .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Sends a request and reads what comes back: Ok(response text) or the TLS error.
fn raw_exchange(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    request: &[u8],
) -> Result<String, std::io::Error> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if !out.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn a_client_without_a_certificate_is_refused_in_the_handshake() {
    let pki = pki();
    let (addr, fake) = start(&pki);
    let mut stream = raw_tls(addr, &pki.ca.pem, None);
    let err = raw_exchange(&mut stream, b"GET /v1/version HTTP/1.1\r\n\r\n").unwrap_err();
    assert!(
        err.to_string().contains("CertificateRequired"),
        "expected the server's certificate_required alert, got {err}"
    );
    // The same client with the admin certificate gets through.
    let mut stream = raw_tls(addr, &pki.ca.pem, Some(&pki.admin));
    let ok = raw_exchange(&mut stream, b"GET /v1/version HTTP/1.1\r\n\r\n").unwrap();
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert_eq!(
        fake.calls(),
        1,
        "only the authenticated request reached the node"
    );
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_in_the_handshake() {
    let pki = pki();
    let (addr, fake) = start(&pki);
    let stranger = ClientCredentials {
        ca_pem: pki.ca.pem.clone(),
        cert_pem: pki.stranger.0.clone(),
        key_pem: pki.stranger.1.clone(),
    };
    let err = client(addr, &stranger).version().unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, NodeError::Connection { .. }), "{message}");
    assert!(
        message.contains("the node refused our client certificate"),
        "{message}"
    );
    // A raw client sees the alert itself.
    let mut stream = raw_tls(addr, &pki.ca.pem, Some(&pki.stranger));
    let err = raw_exchange(&mut stream, b"POST /v1/reboot HTTP/1.1\r\n\r\n").unwrap_err();
    assert!(err.to_string().contains("received fatal alert"), "{err}");
    assert_eq!(fake.calls(), 0, "no handler ran");
}

#[test]
fn the_client_refuses_a_server_whose_certificate_is_not_for_keel_node() {
    let pki = pki();
    let fake = Arc::new(Fake::default());
    let wrong_name = leaf(
        &pki.ca,
        "node-1",
        &["node-1.example", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let addr = start_with(&wrong_name, &pki.ca.pem, fake.clone(), options());
    let err = client(addr, &pki.admin_creds()).status().unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("the node's certificate is not for keel-node"),
        "{message}"
    );

    // Right name, wrong CA: a node of another cluster.
    let foreign = leaf(
        &pki.other_ca,
        "keel-node",
        &["keel-node"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let addr = start_with(&foreign, &pki.ca.pem, fake.clone(), options());
    let err = client(addr, &pki.admin_creds()).status().unwrap_err();
    assert!(
        err.to_string()
            .contains("not issued by the keel CA in the secrets"),
        "{err}"
    );
    assert_eq!(fake.calls(), 0);
}

#[test]
fn the_server_refuses_a_key_that_is_not_its_certificates() {
    let pki = pki();
    let err = ServerTls::from_pem(&pki.server.0, &pki.admin.1, &pki.ca.pem).unwrap_err();
    assert!(
        err.to_string().contains("the node certificate and key"),
        "{err}"
    );
    let err = ServerTls::from_pem(&pki.server.0, &pki.server.1, "").unwrap_err();
    assert!(err.to_string().contains("the client CA"), "{err}");
}

// --- uploads ------------------------------------------------------------------------------

/// Yields `good` bytes of `data`, then fails or ends as told.
struct Breaking<'a> {
    data: &'a [u8],
    good: usize,
    fail: bool,
}

impl Read for Breaking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.good == 0 {
            return if self.fail {
                Err(std::io::Error::other("disk read error"))
            } else {
                Ok(0)
            };
        }
        let n = buf.len().min(self.good).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.good -= n;
        Ok(n)
    }
}

/// A source that counts what is read from it.
struct Counting<'a> {
    data: &'a [u8],
    read: usize,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.read);
        buf[..n].copy_from_slice(&self.data[self.read..self.read + n]);
        self.read += n;
        Ok(n)
    }
}

/// A refusal the node knows before the body (on trial, busy) comes back instead of the 100
/// the client waits for: no byte of the image is sent, so it is never pushed into a closing
/// connection whose reset would lose the answer (issue 10's trial-boot test saw a broken pipe).
#[test]
fn a_refusal_before_the_body_arrives_before_any_byte_is_sent() {
    let pki = pki();
    let (addr, fake) = start(&pki);
    fake.on_trial.store(true, Ordering::SeqCst);
    let node = client(addr, &pki.admin_creds());
    let data = pattern(64 * 1024 * 1024);
    let mut source = Counting {
        data: &data,
        read: 0,
    };
    let err = node
        .upgrade(
            &mut source,
            data.len() as u64,
            false,
            false,
            &Reporter::quiet(),
        )
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("503") && message.contains("on trial"),
        "{message}"
    );
    assert_eq!(source.read, 0, "the client sent part of the image");
    assert!(fake.uploads.lock().unwrap().is_empty());
    // Forced, the same node takes the whole upload after its 100.
    let mut source = Counting {
        data: &data[..1024 * 1024],
        read: 0,
    };
    let _ = node.upgrade(&mut source, 1024 * 1024, true, false, &Reporter::quiet());
    let (bytes, ..) = fake.wait_upload().unwrap();
    assert_eq!(bytes, 1024 * 1024);
}

#[test]
fn an_upload_cut_halfway_is_an_error_for_the_handler() {
    let pki = pki();
    let (addr, fake) = start(&pki);
    let node = client(addr, &pki.admin_creds());
    let data = pattern(4 * 1024 * 1024);
    for fail in [false, true] {
        let mut source = Breaking {
            data: &data,
            good: data.len() / 2,
            fail,
        };
        let err = node
            .upgrade(
                &mut source,
                data.len() as u64,
                true,
                false,
                &Reporter::quiet(),
            )
            .unwrap_err();
        let message = err.to_string();
        if fail {
            assert!(message.contains("disk read error"), "{message}");
        } else {
            assert!(
                message.contains("the update ended after 2097152 of 4194304 bytes"),
                "{message}"
            );
        }
        let seen = fake.wait_upload().unwrap_err();
        assert!(seen.starts_with("UnexpectedEof"), "{seen}");
        assert!(seen.contains("of 4194304 bytes"), "{seen}");
    }
}

#[test]
fn oversize_headers_and_chunked_bodies_are_refused_over_tls() {
    let pki = pki();
    let (addr, fake) = start(&pki);
    let mut request = b"GET /v1/status HTTP/1.1\r\nHost: keel-node\r\nX-Padding: ".to_vec();
    request.resize(40 * 1024, b'x');
    request.extend_from_slice(b"\r\n\r\n");
    let mut stream = raw_tls(addr, &pki.ca.pem, Some(&pki.admin));
    let response = raw_exchange(&mut stream, &request).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{response}"
    );

    let mut stream = raw_tls(addr, &pki.ca.pem, Some(&pki.admin));
    let response = raw_exchange(
        &mut stream,
        b"POST /v1/upgrade HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    )
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 411 "), "{response}");
    assert_eq!(fake.calls(), 0);
}

#[test]
fn connections_over_the_cap_are_closed_on_accept() {
    let pki = pki();
    let fake = Arc::new(Fake::default());
    let opts = ServerOptions {
        max_connections: 2,
        head_timeout: Duration::from_secs(30),
        ..options()
    };
    let addr = start_with(&pki.server, &pki.ca.pem, fake.clone(), opts);
    let node = client(addr, &pki.admin_creds());
    // Two clients of the keel CA past their handshakes hold both places (the server waits
    // for their request heads); unlike unfinished handshakes, they are not displaced.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut stream = raw_tls(addr, &pki.ca.pem, Some(&pki.admin));
            while stream.conn.is_handshaking() {
                stream.conn.complete_io(&mut stream.sock).unwrap();
            }
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let err = node.version().unwrap_err();
    assert!(matches!(err, NodeError::Connection { .. }), "{err}");
    drop(held);
    // Their threads see the close and give the places back.
    let start = Instant::now();
    loop {
        match node.version() {
            Ok(v) => {
                assert_eq!(v.slot, "a");
                break;
            }
            Err(e) if start.elapsed() > Duration::from_secs(10) => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

// --- openssl as the peer ------------------------------------------------------------------

fn s_client(addr: SocketAddr, dir: &Path, with_cert: bool) -> (bool, String, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "keel-node", "-verify_hostname", "keel-node"])
        .args(["-verify_return_error", "-quiet", "-CAfile"])
        .arg(dir.join("ca.pem"));
    if with_cert {
        cmd.arg("-cert")
            .arg(dir.join("c.pem"))
            .arg("-key")
            .arg(dir.join("k.pem"));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`openssl` not found: apt-get install -y openssl");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"GET /v1/version HTTP/1.1\r\nHost: keel-node\r\n\r\n")
        .unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn openssl_s_client_needs_a_client_certificate() {
    let pki = pki();
    let (addr, fake) = start(&pki);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca.pem).unwrap();
    std::fs::write(dir.path().join("c.pem"), &pki.admin.0).unwrap();
    std::fs::write(dir.path().join("k.pem"), &pki.admin.1).unwrap();

    let (_, stdout, stderr) = s_client(addr, dir.path(), false);
    assert!(!stdout.contains("HTTP/1.1"), "{stdout}");
    assert!(
        stderr.contains("certificate required"),
        "expected the certificate_required alert: {stderr}"
    );
    assert_eq!(fake.calls(), 0);

    let (ok, stdout, stderr) = s_client(addr, dir.path(), true);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("HTTP/1.1 200 OK\r\n"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("\"version\":\"1.1.0\""), "{stdout}");
    assert_eq!(fake.calls(), 1);

    // And openssl, verifying against the CA and the name, accepts the node's certificate:
    // `-verify_return_error` would have failed the run above otherwise. The stranger's
    // certificate is refused by the node.
    std::fs::write(dir.path().join("c.pem"), &pki.stranger.0).unwrap();
    std::fs::write(dir.path().join("k.pem"), &pki.stranger.1).unwrap();
    let (_, stdout, stderr) = s_client(addr, dir.path(), true);
    assert!(!stdout.contains("HTTP/1.1"), "{stdout}");
    assert!(stderr.contains("alert"), "{stderr}");
    assert_eq!(fake.calls(), 1);
}

// --- under abuse --------------------------------------------------------------------------

/// A TCP connection to `dst` from the loopback address `src` (another peer, as far as the
/// server can tell), or None if the connect did not complete within 3 s.
fn connect_from(src: std::net::Ipv4Addr, dst: SocketAddr) -> Option<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(dst) = dst else {
        panic!("IPv4 only")
    };
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; the TcpStream takes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let stream = TcpStream::from_raw_fd(fd);
        // A blocking connect honours the send timeout on Linux.
        stream
            .set_write_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let local = sin(src, 0);
        let rc = libc::bind(fd, (&raw const local).cast(), len);
        assert_eq!(rc, 0, "bind {src}: {}", std::io::Error::last_os_error());
        let remote = sin(*dst.ip(), dst.port());
        let rc = libc::connect(fd, (&raw const remote).cast(), len);
        (rc == 0).then_some(stream)
    }
}

/// A console as slow as a serial one under a flood (and slower): 50 ms a line.
fn slow_console(_line: &str) {
    std::thread::sleep(Duration::from_millis(50));
}

#[test]
fn operators_are_served_while_idle_and_garbage_connections_are_held_open() {
    let pki = pki();
    let fake = Arc::new(Fake::default());
    let tls = ServerTls::from_pem(&pki.server.0, &pki.server.1, &pki.ca.pem).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // The limits a node runs with.
    let addr = server::spawn(
        listener,
        tls,
        fake.clone(),
        slow_console,
        ServerOptions::default(),
    )
    .unwrap()
    .local_addr();
    let attacker = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let mut held = Vec::new();
    for _ in 0..200 {
        held.extend(connect_from(attacker, addr));
    }
    for _ in 0..200 {
        if let Some(mut garbage) = connect_from(attacker, addr) {
            let _ = garbage.write_all(b"GET / HTTP/1.0\r\n\r\nnot a TLS record at all\r\n");
            held.push(garbage);
        }
    }
    // Another peer, the operator, is answered while all of them are still open.
    let node = client(addr, &pki.admin_creds());
    assert_eq!(node.status().unwrap(), status());
    assert_eq!(node.version().unwrap().version, "1.1.0");
    assert!(
        held.len() >= 100,
        "the attacker got only {} connections",
        held.len()
    );
    drop(held);
}

/// The same from one address: behind QEMU's user network (and any NAT) the operator and the
/// attacker are one peer, so a cap per peer alone would lock the operator out. A connection
/// that has not finished its handshake gives its place to a newer one.
#[test]
fn operators_behind_the_attackers_address_are_served_too() {
    let pki = pki();
    let fake = Arc::new(Fake::default());
    let tls = ServerTls::from_pem(&pki.server.0, &pki.server.1, &pki.ca.pem).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // A node's limits, but handshake deadlines far beyond the test, so that only a place given
    // up by an unfinished handshake can let the operator in.
    let opts = ServerOptions {
        handshake_timeout: Duration::from_secs(600),
        head_timeout: Duration::from_secs(600),
        ..ServerOptions::default()
    };
    let addr = server::spawn(listener, tls, fake.clone(), slow_console, opts)
        .unwrap()
        .local_addr();
    let mut held = Vec::new();
    for _ in 0..200 {
        held.extend(TcpStream::connect(addr).ok());
    }
    for _ in 0..200 {
        if let Ok(mut garbage) = TcpStream::connect(addr) {
            let _ = garbage.write_all(b"GET / HTTP/1.0\r\n\r\nnot a TLS record at all\r\n");
            held.push(garbage);
        }
    }
    let node = client(addr, &pki.admin_creds());
    assert_eq!(node.status().unwrap(), status());
    assert_eq!(node.version().unwrap().version, "1.1.0");
    drop(held);
}

#[test]
fn a_connection_that_never_starts_its_handshake_gives_its_place_back() {
    let pki = pki();
    let fake = Arc::new(Fake::default());
    let opts = ServerOptions {
        max_connections: 1,
        handshake_timeout: Duration::from_millis(300),
        head_timeout: Duration::from_secs(60),
        ..options()
    };
    let addr = start_with(&pki.server, &pki.ca.pem, fake.clone(), opts);
    let node = client(addr, &pki.admin_creds());
    // Holds the only place, and is never closed by this side.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server closes it at the handshake deadline, long before the head's.
    let mut nothing = Vec::new();
    let _ = idle.read_to_end(&mut nothing);
    assert!(nothing.is_empty());
    let start = Instant::now();
    loop {
        match node.version() {
            Ok(v) => break assert_eq!(v.slot, "a"),
            Err(e) if start.elapsed() > Duration::from_secs(20) => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

// --- roles --------------------------------------------------------------------------------

#[test]
fn a_read_only_operator_reads_but_gets_403_on_changes() {
    // The certificates `keel secrets gen` issues, and a node serving its node_api one.
    let secrets = keel_pki::generate("keel", now_secs()).unwrap();
    let fake = Arc::new(Fake::default());
    let serving = (secrets.node_api.cert.clone(), secrets.node_api.key.clone());
    let addr = start_with(&serving, &secrets.keel_ca.cert, fake.clone(), options());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.toml");
    std::fs::write(&file, secrets.to_toml().unwrap()).unwrap();
    let read_only = |addr: SocketAddr| NodeConnection {
        read_only: true,
        ..conn(addr, &file)
    };

    let table = run_cli(NodeCommand::Status {
        conn: read_only(addr),
        json: false,
    })
    .unwrap();
    assert!(table.contains("worker-1"), "{table}");
    let update = dir.path().join("update.tar");
    std::fs::write(&update, b"BAD update").unwrap();
    let err = run_cli(NodeCommand::Upgrade {
        conn: read_only(addr),
        bundle: update.clone(),
        force: true,
        no_reboot: true,
        json: false,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("HTTP 403 Forbidden"), "{err}");
    assert!(
        err.contains("a read-only operator certificate may not POST /v1/upgrade"),
        "{err}"
    );
    for command in [
        NodeCommand::Reboot {
            conn: read_only(addr),
        },
        NodeCommand::Rollback {
            conn: read_only(addr),
            json: false,
        },
    ] {
        let err = run_cli(command).unwrap_err().to_string();
        assert!(err.contains("HTTP 403 Forbidden"), "{err}");
    }
    assert_eq!(fake.calls(), 1, "only the status reached the node");
    // curl (OpenSSL) with the read-only certificate: the same 403, and status for it.
    let ro = secrets.keel_read_only.clone().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &secrets.keel_ca.cert).unwrap();
    std::fs::write(dir.path().join("ro.pem"), &ro.cert).unwrap();
    std::fs::write(dir.path().join("ro.key"), &ro.key).unwrap();
    let curl = |method: &str, path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-X", method, "-w", "\n%{http_code}"])
            .arg("--resolve")
            .arg(format!("keel-node:{}:127.0.0.1", addr.port()))
            .arg("--cacert")
            .arg(dir.path().join("ca.pem"))
            .arg("--cert")
            .arg(dir.path().join("ro.pem"))
            .arg("--key")
            .arg(dir.path().join("ro.key"))
            .arg(format!("https://keel-node:{}{path}", addr.port()))
            .output()
            .expect("`curl` not found: apt-get install -y curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let reboot = curl("POST", "/v1/reboot");
    assert!(reboot.ends_with("\n403"), "{reboot}");
    assert!(reboot.contains("may not POST /v1/reboot"), "{reboot}");
    assert!(curl("GET", "/v1/version").ends_with("\n200"));
    assert_eq!(
        fake.calls(),
        2,
        "the status and curl's version reached the node"
    );

    // The admin certificate from the same file still may (the fake refuses a BAD update).
    let err = run_cli(NodeCommand::Upgrade {
        conn: conn(addr, &file),
        bundle: update,
        force: true,
        no_reboot: true,
        json: false,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("HTTP 422"), "{err}");
    // And an admin certificate from before roles (no O) is an admin.
    let legacy = pki();
    let addr = start_with(&legacy.server, &legacy.ca.pem, fake.clone(), options());
    assert_eq!(
        client(addr, &legacy.admin_creds())
            .reboot()
            .unwrap()
            .message,
        "rebooting"
    );
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// --- per-node certificates ----------------------------------------------------------------

#[test]
fn one_nodes_certificate_cannot_pass_for_another_with_node() {
    let secrets = keel_pki::generate("keel", now_secs()).unwrap();
    let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let issue = |name: &str, ip: std::net::IpAddr| {
        let c = keel_pki::issue_node_api(&secrets, name, &[ip], now_secs()).unwrap();
        (c.cert, c.key)
    };
    let fake = Arc::new(Fake::default());
    let node_a = start_with(
        &issue("node-a", loopback),
        &secrets.keel_ca.cert,
        fake.clone(),
        options(),
    );
    let creds = ClientCredentials {
        ca_pem: secrets.keel_ca.cert.clone(),
        cert_pem: secrets.keel_admin.cert.clone(),
        key_pem: secrets.keel_admin.key.clone(),
    };
    let as_node = |addr: SocketAddr, name: &str, own_only: bool| {
        NodeClient::for_node(&addr.to_string(), &creds, name, own_only)
            .unwrap()
            .version()
    };
    // Node A's certificate, where node B was meant: refused, with the names it has.
    let err = as_node(node_a, "node-b", false).unwrap_err().to_string();
    assert!(
        err.contains("the node's certificate is not for node-b: it names node-a, keel-node"),
        "{err}"
    );
    assert_eq!(as_node(node_a, "node-a", true).unwrap().slot, "a");
    // Without --node, any certificate of the cluster's nodes is accepted, as before.
    assert_eq!(client(node_a, &creds).version().unwrap().slot, "a");

    // The right name at an address the certificate does not list.
    let elsewhere = start_with(
        &issue("node-a", "10.1.2.3".parse().unwrap()),
        &secrets.keel_ca.cert,
        fake.clone(),
        options(),
    );
    let err = as_node(elsewhere, "node-a", false).unwrap_err().to_string();
    assert!(
        err.contains("is for node-a at 10.1.2.3, not at 127.0.0.1"),
        "{err}"
    );

    // The shared certificate: accepted for any name, unless --own-certificate-only.
    let shared = start_with(
        &(secrets.node_api.cert.clone(), secrets.node_api.key.clone()),
        &secrets.keel_ca.cert,
        fake.clone(),
        options(),
    );
    assert_eq!(as_node(shared, "node-b", false).unwrap().slot, "a");
    let err = as_node(shared, "node-b", true).unwrap_err().to_string();
    assert!(
        err.contains("presented the shared keel-node certificate"),
        "{err}"
    );

    // Through the CLI.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.toml");
    std::fs::write(&file, secrets.to_toml().unwrap()).unwrap();
    let err = run_cli(NodeCommand::Version {
        conn: NodeConnection {
            node: Some("node-b".into()),
            ..conn(node_a, &file)
        },
        json: false,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("not for node-b"), "{err}");
    assert_eq!(
        fake.calls(),
        3,
        "only the accepted connections reached the node"
    );
}
