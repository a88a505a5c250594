//! FAKE kube-apiserver: a test double, because the real kube-apiserver cannot be downloaded
//! on the machines Keel is built and tested on. It stands in for exactly what a Keel control
//! plane asks of its API server at boot (creating the bootstrap token's Secret and the RBAC
//! bindings workers need to join) and checks that contract as the real one would:
//!
//! - TLS with the serving certificate the node's own PKI code derives for the API server
//!   (`pki/apiserver.crt`), and a client certificate required and verified against the
//!   cluster's Kubernetes CA; the client must be in `system:masters` to create these objects.
//! - `GET /readyz`; `POST` of a `Secret` to `/api/v1/namespaces/kube-system/secrets` and of a
//!   `ClusterRoleBinding` to `/apis/rbac.authorization.k8s.io/v1/clusterrolebindings`, each
//!   parsed as the typed Kubernetes object (k8s-openapi); 201 Created, 409 Conflict when the
//!   name exists, 422 (recorded as a violation) when the object breaks the contract.
//!
//! It stores nothing but names, runs no controllers and approves nothing.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use keel_contract::profile::Role;
use keel_contract::secrets::Secrets;
use keel_pki::{self as pki, NodeIdentity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

/// What the fake saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// `Secret/kube-system/bootstrap-token-abcdef`, `ClusterRoleBinding/...`, in creation order.
    pub created: Vec<String>,
    /// `POST`s refused with 409 because the name existed.
    pub conflicts: usize,
    /// Requests that broke the contract, with why.
    pub violations: Vec<String>,
    /// Client certificate subjects (`CN=... O=...`) of every request.
    pub clients: BTreeSet<String>,
    /// `GET /readyz` requests.
    pub readyz: usize,
}

pub struct FakeApiServer {
    pub port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl FakeApiServer {
    /// Listens on 127.0.0.1 (a random port) with the API server certificate a control plane
    /// of `secrets` derives for `endpoint_ip` (how the node reaches it: 10.0.2.2 from a QEMU
    /// guest, 127.0.0.1 from the host). `not_ready_first` readyz calls answer 500, as an API
    /// server still starting does.
    pub fn start(secrets: &Secrets, endpoint_ip: IpAddr, not_ready_first: usize) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake API server");
        let port = listener.local_addr().expect("local address").port();
        let config = server_config(secrets, endpoint_ip, port);
        let token = secrets.bootstrap_token.clone();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        eprintln!("fake-apiserver: a test double for kube-apiserver on 127.0.0.1:{port}");
        std::thread::spawn(move || {
            let mut names = BTreeSet::new();
            for tcp in listener.incoming().flatten() {
                let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)));
                let Ok(conn) = ServerConnection::new(config.clone()) else {
                    continue;
                };
                let mut stream = StreamOwned::new(conn, tcp);
                let Some((method, path, body)) = read_request(&mut stream) else {
                    continue; // e.g. a client refused in the handshake
                };
                let client = client_subject(&stream.conn);
                let mut seen = shared.lock().expect("lock");
                seen.clients.insert(client.clone());
                let (status, reply) = handle(
                    &mut seen,
                    &mut names,
                    (&token.id, &token.secret),
                    &client,
                    (&method, &path, &body),
                    not_ready_first,
                );
                drop(seen);
                let response = keel_http::Response::new(
                    status,
                    keel_http::reason(status),
                    "application/json",
                    reply.into_bytes(),
                );
                let _ = response.write_to(&mut stream);
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
        });
        FakeApiServer { port, seen }
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("lock").clone()
    }
}

fn server_config(secrets: &Secrets, endpoint_ip: IpAddr, port: u16) -> Arc<ServerConfig> {
    let node = secrets.for_role(Role::ControlPlane);
    let identity = NodeIdentity {
        hostname: "fake-apiserver".into(),
        ips: vec![endpoint_ip],
        endpoint: format!("https://{endpoint_ip}:{port}")
            .parse()
            .expect("endpoint"),
        service_cidr: "10.96.0.0/12".parse().expect("cidr"),
        cluster_domain: "cluster.local".into(),
        extra_sans: vec![],
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let files = pki::derive(&node, &identity, now).expect("deriving the API server certificate");
    let file = |name: &str| {
        files
            .iter()
            .find(|f| f.path == name)
            .map(|f| f.bytes.clone())
            .unwrap_or_else(|| panic!("{name} derived"))
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&file("pki/apiserver.crt"))
            .collect::<Result<_, _>>()
            .expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(&file("pki/apiserver.key")).expect("key");
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(secrets.kubernetes_ca.cert.as_bytes()) {
        roots.add(ca.expect("CA certificate")).expect("CA root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("client verifier");
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server certificate");
    Arc::new(config)
}

/// Method, path and body of one HTTP/1.1 request with a Content-Length body (at most
/// 1 MiB: the init's objects are a few hundred bytes).
fn read_request(stream: &mut impl Read) -> Option<(String, String, String)> {
    let (head, early) = keel_http::read_request_head(stream).ok()?;
    let length = head.content_length.unwrap_or(0);
    if length > 1 << 20 || head.headers.has_transfer_encoding() {
        return None;
    }
    let mut body = Vec::new();
    keel_http::Body::new(early, stream, length)
        .read_to_end(&mut body)
        .ok()?;
    Some((head.method, head.target, String::from_utf8(body).ok()?))
}

fn client_subject(conn: &ServerConnection) -> String {
    let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
        return "(none)".into();
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return "(unparsable)".into();
    };
    let subject = parsed.subject();
    let cn: Vec<&str> = subject
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let o: Vec<&str> = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .collect();
    format!("CN={} O={}", cn.join(","), o.join(","))
}

fn status(code: u16, message: &str) -> (u16, String) {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code
    });
    (code, body.to_string())
}

fn handle(
    seen: &mut Seen,
    names: &mut BTreeSet<String>,
    (token_id, token_secret): (&str, &str),
    client: &str,
    (method, path, body): (&str, &str, &str),
    not_ready_first: usize,
) -> (u16, String) {
    let violation = |seen: &mut Seen, why: String| {
        seen.violations.push(format!("{method} {path}: {why}"));
        status(422, &why)
    };
    match (method, path) {
        ("GET", "/readyz") => {
            seen.readyz += 1;
            if seen.readyz <= not_ready_first {
                (500, "[-]etcd failed: not yet".into())
            } else {
                (200, "ok".into())
            }
        }
        ("POST", _)
            if !client
                .split(" O=")
                .nth(1)
                .unwrap_or("")
                .split(',')
                .any(|o| o == "system:masters") =>
        {
            let why = format!("{client} may not create objects here (not in system:masters)");
            seen.violations.push(why.clone());
            status(403, &why)
        }
        ("POST", "/api/v1/namespaces/kube-system/secrets") => {
            let secret: Secret = match serde_json::from_str(body) {
                Ok(s) => s,
                Err(e) => return violation(seen, format!("not a v1 Secret: {e}")),
            };
            let value = |k: &str| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(k).cloned())
                    .or_else(|| {
                        secret
                            .data
                            .as_ref()
                            .and_then(|d| d.get(k))
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    })
            };
            let name = secret.metadata.name.clone().unwrap_or_default();
            let checks = [
                (
                    name == format!("bootstrap-token-{token_id}"),
                    "name bootstrap-token-<id>",
                ),
                (
                    secret.type_.as_deref() == Some("bootstrap.kubernetes.io/token"),
                    "type bootstrap.kubernetes.io/token",
                ),
                (
                    value("token-id").as_deref() == Some(token_id),
                    "token-id of the cluster's token",
                ),
                (
                    value("token-secret").as_deref() == Some(token_secret),
                    "token-secret of the cluster's token",
                ),
                (
                    value("usage-bootstrap-authentication").as_deref() == Some("true"),
                    "usage-bootstrap-authentication \"true\"",
                ),
                (
                    secret
                        .metadata
                        .namespace
                        .as_deref()
                        .is_none_or(|n| n == "kube-system"),
                    "namespace kube-system",
                ),
            ];
            if let Some((_, want)) = checks.iter().find(|(ok, _)| !ok) {
                return violation(seen, format!("Secret {name}: expected {want}"));
            }
            create(seen, names, format!("Secret/kube-system/{name}"))
        }
        ("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings") => {
            let binding: ClusterRoleBinding = match serde_json::from_str(body) {
                Ok(b) => b,
                Err(e) => return violation(seen, format!("not a ClusterRoleBinding: {e}")),
            };
            let name = binding.metadata.name.clone().unwrap_or_default();
            if name.is_empty() || binding.role_ref.kind != "ClusterRole" {
                return violation(
                    seen,
                    format!("ClusterRoleBinding {name:?}: bad name or roleRef"),
                );
            }
            if binding.subjects.as_ref().is_none_or(Vec::is_empty) {
                return violation(seen, format!("ClusterRoleBinding {name}: no subjects"));
            }
            create(seen, names, format!("ClusterRoleBinding/{name}"))
        }
        _ => status(
            404,
            &format!("the fake API server does not serve {method} {path}"),
        ),
    }
}

fn create(seen: &mut Seen, names: &mut BTreeSet<String>, name: String) -> (u16, String) {
    if names.insert(name.clone()) {
        seen.created.push(name);
        (201, "{}".into())
    } else {
        seen.conflicts += 1;
        status(409, &format!("{name} already exists"))
    }
}
