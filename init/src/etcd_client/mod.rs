//! The init's client of its local etcd, for the node API's etcd endpoints: the member list
//! and a snapshot, through etcd's gRPC gateway (HTTP/JSON on the client port, so PID 1 needs
//! no gRPC stack), with the API server's etcd client certificate (etcd requires one). Health
//! comes from etcd's plain-HTTP metrics listener on the loopback.
//!
//! One request per connection, blocking, over rustls and keel-http like the init's
//! Kubernetes client ([`crate::kube_client`]).

pub mod gateway;
#[cfg(test)]
mod tests;

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel_contract::api::EtcdMembers;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::api::tls;
use crate::roles::{etcd, paths};
use gateway::{GatewayError, MaintenanceStatus, MemberList, SnapshotDecoder};

/// Answers to the member list and the status are small; more is not etcd's.
const MAX_RESPONSE: u64 = 4 << 20;
/// The longest wait for a connection, or for any one read or write.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The API server's client certificate for etcd, which the PKI code writes on a control
/// plane beside the etcd CA ([`paths::ETCD_CA_CRT`]).
pub const CLIENT_CRT: &str = "/etc/kubernetes/pki/apiserver-etcd-client.crt";
pub const CLIENT_KEY: &str = "/etc/kubernetes/pki/apiserver-etcd-client.key";

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("etcd's client TLS: {0}")]
    Tls(String),
    #[error("etcd at {endpoint}, {doing}: {source}")]
    Io {
        endpoint: SocketAddr,
        doing: &'static str,
        source: std::io::Error,
    },
    #[error("etcd at {endpoint}, {doing}: malformed HTTP response: {message}")]
    Http {
        endpoint: SocketAddr,
        doing: &'static str,
        message: String,
    },
    #[error("etcd at {endpoint}, {doing}: HTTP {status}: {body}")]
    Status {
        endpoint: SocketAddr,
        doing: &'static str,
        status: u16,
        body: String,
    },
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

/// Where the local etcd is, and the certificate files to reach it with.
#[derive(Debug, Clone)]
pub struct EtcdEndpoint {
    /// The client port (TLS): `127.0.0.1:2379` on a node.
    pub client: SocketAddr,
    /// The metrics listener (plain HTTP, `/health`): `127.0.0.1:2381` on a node.
    pub metrics: SocketAddr,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdEndpoint {
    /// The node's own etcd, as the control plane role runs it.
    pub fn local() -> Self {
        let loopback = std::net::Ipv4Addr::LOCALHOST.into();
        EtcdEndpoint {
            client: SocketAddr::new(loopback, etcd::CLIENT_PORT),
            metrics: SocketAddr::new(loopback, etcd::METRICS_PORT),
            ca: paths::ETCD_CA_CRT.into(),
            cert: CLIENT_CRT.into(),
            key: CLIENT_KEY.into(),
        }
    }

    /// Another member's client port (`client`), with this node's certificate files. Its
    /// metrics listener is loopback-only there, so [`EtcdClient::healthy`] says no.
    pub fn remote(client: SocketAddr) -> Self {
        EtcdEndpoint {
            client,
            ..EtcdEndpoint::local()
        }
    }
}

/// A connection's reader after the response head: the head's status and the body as a
/// stream (de-chunked), owning the connection.
struct Reply {
    status: u16,
    body: Box<dyn Read + Send>,
}

pub struct EtcdClient {
    endpoint: EtcdEndpoint,
    config: Arc<ClientConfig>,
}

fn read_text(path: &Path) -> Result<String, EtcdError> {
    std::fs::read_to_string(path).map_err(|source| EtcdError::Read {
        path: path.to_owned(),
        source,
    })
}

impl EtcdClient {
    /// Reads the CA and the client certificate (they are read again for each client, so a
    /// renewed certificate is used at the next request).
    pub fn new(endpoint: EtcdEndpoint) -> Result<Self, EtcdError> {
        let tls_err = |e: tls::TlsError| EtcdError::Tls(e.to_string());
        let mut roots = RootCertStore::empty();
        for cert in tls::certs_from_pem("etcd's CA", &read_text(&endpoint.ca)?).map_err(tls_err)? {
            roots
                .add(cert)
                .map_err(|e| EtcdError::Tls(format!("etcd's CA: {e}")))?;
        }
        let chain = tls::certs_from_pem("the etcd client certificate", &read_text(&endpoint.cert)?)
            .map_err(tls_err)?;
        let key = tls::key_from_pem("the etcd client key", &read_text(&endpoint.key)?)
            .map_err(tls_err)?;
        let config = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| EtcdError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| EtcdError::Tls(format!("the etcd client certificate and key: {e}")))?;
        Ok(EtcdClient {
            endpoint,
            config: Arc::new(config),
        })
    }

    /// The members as this member sees them, with its leader, term and health.
    pub fn members(&self) -> Result<EtcdMembers, EtcdError> {
        let list: MemberList = gateway::parse(
            "member list",
            &self.call("listing the members", "/v3/cluster/member/list")?,
        )?;
        let status: MaintenanceStatus = gateway::parse(
            "status",
            &self.call("asking for its status", "/v3/maintenance/status")?,
        )?;
        Ok(gateway::members_view(list, status, self.healthy()))
    }

    /// The member list alone (a learner answers it too; it refuses the status).
    pub fn member_list(&self) -> Result<Vec<keel_contract::api::EtcdMember>, EtcdError> {
        let list: MemberList = gateway::parse(
            "member list",
            &self.call("listing the members", "/v3/cluster/member/list")?,
        )?;
        Ok(list.into_members())
    }

    /// Adds a member with `peer_url` (as a learner: it does not vote, so the quorum does not
    /// grow until it has caught up). Returns its ID and the members, it included.
    pub fn member_add(
        &self,
        peer_url: &str,
        learner: bool,
    ) -> Result<(u64, Vec<keel_contract::api::EtcdMember>), EtcdError> {
        let body = gateway::member_add_request(peer_url, learner);
        let added: gateway::MemberAdded = gateway::parse(
            "member add",
            &self.call_with("adding a member", "/v3/cluster/member/add", &body)?,
        )?;
        Ok(added.into_parts())
    }

    /// Promotes a learner to a voting member; etcd refuses until it has caught up.
    pub fn member_promote(&self, id: u64) -> Result<(), EtcdError> {
        let body = gateway::member_id_request(id);
        let doing = "promoting a learner";
        gateway::parse::<serde_json::Value>(
            "member promote",
            &self.call_with(doing, "/v3/cluster/member/promote", &body)?,
        )?;
        Ok(())
    }

    /// Takes a member out of the cluster.
    pub fn member_remove(&self, id: u64) -> Result<(), EtcdError> {
        let body = gateway::member_id_request(id);
        gateway::parse::<serde_json::Value>(
            "member remove",
            &self.call_with("removing a member", "/v3/cluster/member/remove", &body)?,
        )?;
        Ok(())
    }

    /// A consistent snapshot, as the bytes etcd streams (the database, then its SHA-256).
    /// A failure before the first byte is an error here; one after it is an error from the
    /// reader, which never ends as if the snapshot were complete.
    pub fn snapshot(&self) -> Result<Box<dyn Read + Send>, EtcdError> {
        let doing = "taking a snapshot";
        let reply = self.post(doing, "/v3/maintenance/snapshot", b"{}")?;
        if reply.status != 200 {
            return Err(self.status_error(doing, reply));
        }
        Ok(Box::new(SnapshotDecoder::new(BufReader::with_capacity(
            64 * 1024,
            reply.body,
        ))))
    }

    /// Whether the member's `/health` says it is healthy; no answer is not healthy.
    pub fn healthy(&self) -> bool {
        let ask = || -> io::Result<Vec<u8>> {
            let mut tcp = TcpStream::connect_timeout(&self.endpoint.metrics, TIMEOUT)?;
            tcp.set_read_timeout(Some(TIMEOUT))?;
            tcp.set_write_timeout(Some(TIMEOUT))?;
            let host = self.endpoint.metrics.to_string();
            let head = keel_http::request_head(
                "GET",
                "/health",
                &[("Host", &host), ("Connection", "close")],
            )?;
            tcp.write_all(&head)?;
            let (head, early) = keel_http::read_response_head(&mut tcp)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            if head.status != 200 {
                return Ok(Vec::new());
            }
            keel_http::read_body(&head, early, &mut tcp, MAX_RESPONSE)
        };
        ask().is_ok_and(|body| gateway::healthy(&body))
    }

    /// A unary gateway call with an empty request.
    fn call(&self, doing: &'static str, path: &str) -> Result<Vec<u8>, EtcdError> {
        self.call_with(doing, path, b"{}")
    }

    /// A unary gateway call: its whole body when etcd answered 200.
    fn call_with(
        &self,
        doing: &'static str,
        path: &str,
        request: &[u8],
    ) -> Result<Vec<u8>, EtcdError> {
        let reply = self.post(doing, path, request)?;
        if reply.status != 200 {
            return Err(self.status_error(doing, reply));
        }
        let mut body = Vec::new();
        reply
            .body
            .take(MAX_RESPONSE + 1)
            .read_to_end(&mut body)
            .map_err(|source| self.io_error(doing, source))?;
        if body.len() as u64 > MAX_RESPONSE {
            return Err(EtcdError::Http {
                endpoint: self.endpoint.client,
                doing,
                message: format!("a body larger than {MAX_RESPONSE} bytes"),
            });
        }
        Ok(body)
    }

    fn io_error(&self, doing: &'static str, source: io::Error) -> EtcdError {
        EtcdError::Io {
            endpoint: self.endpoint.client,
            doing,
            source,
        }
    }

    /// What a non-200 answer says: the gateway's error message when it gives one.
    fn status_error(&self, doing: &'static str, reply: Reply) -> EtcdError {
        let mut body = Vec::new();
        let _ = reply.body.take(64 * 1024).read_to_end(&mut body);
        let text = match gateway::parse::<serde_json::Value>("answer", &body) {
            Err(GatewayError::Refused { message, .. }) => message,
            _ => String::from_utf8_lossy(&body).chars().take(300).collect(),
        };
        EtcdError::Status {
            endpoint: self.endpoint.client,
            doing,
            status: reply.status,
            body: text,
        }
    }

    /// `POST path` with a JSON request; returns the status and the body as a stream that
    /// owns the connection.
    fn post(&self, doing: &'static str, path: &str, json: &[u8]) -> Result<Reply, EtcdError> {
        let addr = self.endpoint.client;
        let io_err = |source| self.io_error(doing, source);
        let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(io_err)?;
        tcp.set_read_timeout(Some(TIMEOUT))
            .and_then(|()| tcp.set_write_timeout(Some(TIMEOUT)))
            .map_err(io_err)?;
        let name = ServerName::IpAddress(addr.ip().into());
        let conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| EtcdError::Tls(e.to_string()))?;
        let mut stream = StreamOwned::new(conn, tcp);
        let host = addr.to_string();
        let length = json.len().to_string();
        let mut request = keel_http::request_head(
            "POST",
            path,
            &[
                ("Host", &host),
                ("User-Agent", "keel-init"),
                ("Content-Type", "application/json"),
                ("Content-Length", &length),
                ("Connection", "close"),
            ],
        )
        .map_err(io_err)?;
        request.extend_from_slice(json);
        stream
            .write_all(&request)
            .and_then(|()| stream.flush())
            .map_err(io_err)?;
        let (head, early) = keel_http::read_response_head(&mut stream).map_err(|e| match e {
            keel_http::HeadError::Io(source) => self.io_error(doing, source),
            e => EtcdError::Http {
                endpoint: addr,
                doing,
                message: e.to_string(),
            },
        })?;
        Ok(Reply {
            status: head.status,
            body: owned_body(&head, early, stream),
        })
    }
}

/// The body of a response as a stream that owns its connection (a snapshot outlives the
/// call that started it).
fn owned_body<S: Read + Send + 'static>(
    head: &keel_http::ResponseHead,
    early: Vec<u8>,
    connection: S,
) -> Box<dyn Read + Send> {
    let wire = io::Cursor::new(early).chain(connection);
    if head.headers.chunked() {
        return Box::new(keel_http::ChunkedReader::new(BufReader::new(wire)));
    }
    match head.content_length {
        Some(len) => Box::new(Exact {
            inner: wire,
            left: len,
        }),
        None => Box::new(wire),
    }
}

/// A Content-Length body: a connection that ends before its length is an error.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the connection ended {} bytes before the body did",
                    self.left
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
