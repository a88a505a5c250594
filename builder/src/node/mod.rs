//! `keel node`: the client of the node management API (the init's `api` module), over
//! HTTPS with mutual TLS. It verifies the node's certificate against the cluster's keel CA
//! and the name `keel-node` (whatever address it dialled), and presents the admin client
//! certificate. One request per connection; HTTP/1.1 from keel-http, as the server.

mod credentials;
mod etcd;
mod identity;
mod renew;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_contract::api::{
    self, Ack, ErrorBody, ErrorKind, Request, RollbackReport, Status, UpgradeReport, Version,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::progress::Reporter;

pub use credentials::{
    ClientCredentials, credentials_for, credentials_from_secrets, credentials_from_secrets_toml,
    credentials_toml_for, operator_section,
};
pub use etcd::{SnapshotReport, check_snapshot_file};
pub use identity::NodeIdentity;
pub use renew::node_certificate_from;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// For the answer to an ordinary request.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// After an upload, the node verifies and writes the slot before it answers.
const UPGRADE_READ_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Logs are the largest answers (at most 100 000 lines).
const MAX_RESPONSE_BODY: u64 = 64 * 1024 * 1024;
const UPLOAD_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Unusable credentials, endpoint or input file (exit code 2).
    #[error("{0}")]
    BadInput(String),
    /// No TCP connection.
    #[error("{endpoint}: cannot connect: {message}")]
    Connect { endpoint: String, message: String },
    /// The TLS handshake or the connection failed.
    #[error("{endpoint}: {message}")]
    Connection { endpoint: String, message: String },
    /// The node answered with an error status.
    #[error("{endpoint}: {what} failed: {message} (HTTP {status} {reason})")]
    Api {
        endpoint: String,
        what: String,
        status: u16,
        reason: String,
        /// The error class, when the status is one of the API's.
        kind: Option<ErrorKind>,
        message: String,
    },
    /// The node answered something that is not the API.
    #[error("{endpoint}: unexpected response: {message}")]
    Protocol { endpoint: String, message: String },
}

impl crate::error::Classify for NodeError {
    /// Errors that are the operator's input rather than a failure: bad credentials or
    /// arguments, an unknown service or endpoint, a request the node found malformed.
    fn is_bad_input(&self) -> bool {
        match self {
            NodeError::BadInput(_) => true,
            NodeError::Api { kind, .. } => {
                matches!(kind, Some(ErrorKind::BadRequest | ErrorKind::NotFound))
            }
            _ => false,
        }
    }
}

/// An answer with a success status.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An update stream to upload: exactly `len` bytes.
pub struct Upload<'a> {
    pub body: &'a mut dyn Read,
    pub len: u64,
    /// Called with the bytes sent so far.
    pub progress: &'a dyn Fn(u64),
}

/// A stream with a known length, as an upload source.
pub struct UpdateStream {
    pub reader: Box<dyn Read + Send>,
    pub len: u64,
}

/// Opens an update for upload: an update bundle (the OCI layout `keel build` writes as
/// `OUTDIR/update`), a build output directory holding one, or an update stream already made
/// (a tar), sent as it is.
pub fn open_update_file(path: &Path) -> Result<UpdateStream, NodeError> {
    let bad = |e: String| NodeError::BadInput(format!("{}: {e}", path.display()));
    let bundle_dir = if crate::bundle::is_bundle(path) {
        Some(path.to_path_buf())
    } else if crate::bundle::is_bundle(&path.join(keel_contract::bundle::BUNDLE_DIR)) {
        Some(path.join(keel_contract::bundle::BUNDLE_DIR))
    } else {
        None
    };
    if let Some(dir) = bundle_dir {
        let bundle = crate::bundle::open_bundle(&dir, None).map_err(|e| bad(e.to_string()))?;
        let (stream, len) =
            crate::bundle::upload_stream(&bundle).map_err(|e| bad(e.to_string()))?;
        return Ok(UpdateStream {
            reader: Box::new(stream),
            len,
        });
    }
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad(
            "not an update bundle, build output or update stream".into()
        ));
    }
    Ok(UpdateStream {
        reader: Box::new(io::BufReader::with_capacity(UPLOAD_CHUNK, file)),
        len: meta.len(),
    })
}

/// `HOST`, `HOST:PORT`, `IP`, `IP:PORT` or `[IPv6]:PORT`; the port defaults to the API's.
pub fn parse_endpoint(endpoint: &str) -> Result<(String, u16), NodeError> {
    let bad = |why: &str| NodeError::BadInput(format!("invalid endpoint {endpoint:?}: {why}"));
    if let Ok(addr) = endpoint.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    if let Ok(ip) = endpoint.parse::<std::net::IpAddr>() {
        return Ok((ip.to_string(), api::PORT));
    }
    if let Some(inner) = endpoint.strip_prefix('[').and_then(|e| e.strip_suffix(']')) {
        let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| bad("not an IPv6 address"))?;
        return Ok((ip.to_string(), api::PORT));
    }
    let (host, port) = match endpoint.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("expected a port number after the colon"))?,
        ),
        None => (endpoint, api::PORT),
    };
    // A host name in any case, by the one DNS-name rule (addresses were handled above).
    if host.parse::<keel_contract::profile::Hostname>().is_err() {
        return Err(bad("expected HOST[:PORT]"));
    }
    Ok((host.to_owned(), port))
}

fn certs(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, NodeError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NodeError::BadInput(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(NodeError::BadInput(format!(
            "{what}: no certificate in the PEM"
        )));
    }
    Ok(certs)
}

/// The TLS client configuration: TLS 1.3, ring, the keel CA as the only root, the admin
/// certificate presented.
pub fn client_config(creds: &ClientCredentials) -> Result<Arc<ClientConfig>, NodeError> {
    client_config_for(creds, None)
}

/// As [`client_config`], and with `node`, the node's certificate must be that node's (see
/// [`NodeIdentity`]).
pub fn client_config_for(
    creds: &ClientCredentials,
    node: Option<NodeIdentity>,
) -> Result<Arc<ClientConfig>, NodeError> {
    let mut roots = RootCertStore::empty();
    for ca in certs("the keel CA certificate", &creds.ca_pem)? {
        roots
            .add(ca)
            .map_err(|e| NodeError::BadInput(format!("the keel CA certificate: {e}")))?;
    }
    let chain = certs("the admin certificate", &creds.cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())
        .map_err(|e| NodeError::BadInput(format!("the admin key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NodeError::BadInput(format!("TLS: {e}")))?;
    let builder = match node {
        None => builder.with_root_certificates(roots),
        Some(node) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(
                identity::NodeVerifier::new(roots, node)
                    .map_err(|e| NodeError::BadInput(format!("the keel CA certificate: {e}")))?,
            )),
    };
    let config = builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| NodeError::BadInput(format!("the admin certificate and key: {e}")))?;
    Ok(Arc::new(config))
}

type Stream = StreamOwned<ClientConnection, TcpStream>;

/// A node's API.
pub struct NodeClient {
    endpoint: String,
    host: String,
    port: u16,
    config: Arc<ClientConfig>,
    /// When the operator's certificate ends (unix seconds), when known.
    operator_not_after: Option<i64>,
    /// When the certificate the node served on the last connection ends.
    served_not_after: std::sync::Mutex<Option<i64>>,
    /// How long an answer without an upload may take.
    read_timeout: Duration,
}

/// When the certificates of a conversation with a node end (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// The node's API serving certificate (from the last connection).
    pub node: Option<i64>,
    /// The operator's client certificate.
    pub operator: Option<i64>,
}

impl NodeClient {
    pub fn new(endpoint: &str, creds: &ClientCredentials) -> Result<Self, NodeError> {
        Ok(Self::with_config(endpoint, client_config(creds)?)?.operator(creds))
    }

    fn operator(mut self, creds: &ClientCredentials) -> Self {
        self.operator_not_after = keel_pki::not_after_pem(&creds.cert_pem).ok();
        self
    }

    /// When the certificates of the last request end.
    pub fn certificate_expiry(&self) -> CertificateExpiry {
        CertificateExpiry {
            node: *self
                .served_not_after
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            operator: self.operator_not_after,
        }
    }

    /// A client that accepts only node `name`'s certificate (or the shared one, unless
    /// `own_certificate_only`); an endpoint given as an address must be one the certificate
    /// lists, if it lists any.
    pub fn for_node(
        endpoint: &str,
        creds: &ClientCredentials,
        name: &str,
        own_certificate_only: bool,
    ) -> Result<Self, NodeError> {
        let (host, _) = parse_endpoint(endpoint)?;
        let node = NodeIdentity {
            name: name.to_owned(),
            address: host.parse().ok(),
            own_certificate_only,
        };
        Ok(Self::with_config(endpoint, client_config_for(creds, Some(node))?)?.operator(creds))
    }

    pub fn with_config(endpoint: &str, config: Arc<ClientConfig>) -> Result<Self, NodeError> {
        let (host, port) = parse_endpoint(endpoint)?;
        Ok(NodeClient {
            endpoint: endpoint.to_owned(),
            host,
            port,
            config,
            operator_not_after: None,
            served_not_after: std::sync::Mutex::new(None),
            read_timeout: READ_TIMEOUT,
        })
    }

    /// Waits at most `timeout` for an answer (uploads keep theirs): for callers that poll
    /// many nodes and would rather call a silent one down than wait a minute for it.
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn version(&self) -> Result<Version, NodeError> {
        self.json(&Request::Version, "version")
    }

    pub fn status(&self) -> Result<Status, NodeError> {
        self.json(&Request::Status, "status")
    }

    pub fn logs(&self, service: &str, lines: usize) -> Result<String, NodeError> {
        if !api::valid_service_name(service) {
            return Err(NodeError::BadInput(format!(
                "invalid service name {service:?}"
            )));
        }
        let request = Request::Logs {
            service: service.to_owned(),
            lines,
        };
        Ok(self.request(&request, None)?.text())
    }

    pub fn reboot(&self) -> Result<Ack, NodeError> {
        self.json(&Request::Reboot, "reboot")
    }

    pub fn shutdown(&self) -> Result<Ack, NodeError> {
        self.json(&Request::Shutdown, "shutdown")
    }

    pub fn rollback(&self) -> Result<RollbackReport, NodeError> {
        self.json(&Request::Rollback, "rollback")
    }

    /// Uploads `len` bytes of update stream, with a progress bar on a terminal.
    pub fn upgrade(
        &self,
        body: &mut dyn Read,
        len: u64,
        force: bool,
        reboot: bool,
        rep: &Reporter,
    ) -> Result<UpgradeReport, NodeError> {
        let reply = self.upgrade_raw(body, len, force, reboot, rep)?;
        self.parse(&reply, "upgrade")
    }

    /// As [`upgrade`](Self::upgrade), the node's answer unparsed.
    pub fn upgrade_raw(
        &self,
        body: &mut dyn Read,
        len: u64,
        force: bool,
        reboot: bool,
        rep: &Reporter,
    ) -> Result<Reply, NodeError> {
        let phase = rep.phase("upload", Some(len));
        let progress = |n: u64| {
            phase.set_position(n);
            if n == len {
                // The node verifies and writes the slot before it answers: say so rather
                // than sit at 100%.
                phase.message("sent; the node is verifying and installing it");
            }
        };
        let result = self.request(
            &Request::Upgrade { force, reboot },
            Some(Upload {
                body,
                len,
                progress: &progress,
            }),
        );
        match &result {
            Ok(_) => phase.finish(&format!(
                "sent {} to {}",
                crate::progress::human_bytes(len),
                self.endpoint
            )),
            Err(_) => phase.finish("failed"),
        }
        result
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: &Request,
        what: &str,
    ) -> Result<T, NodeError> {
        let reply = self.request(request, None)?;
        self.parse(&reply, what)
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        reply: &Reply,
        what: &str,
    ) -> Result<T, NodeError> {
        serde_json::from_slice(&reply.body).map_err(|e| NodeError::Protocol {
            endpoint: self.endpoint.clone(),
            message: format!("{what}: {e}"),
        })
    }

    fn connection_error(&self, message: String) -> NodeError {
        NodeError::Connection {
            endpoint: self.endpoint.clone(),
            message,
        }
    }

    fn connect(&self, read_timeout: Duration) -> Result<Stream, NodeError> {
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| NodeError::Connect {
                endpoint: self.endpoint.clone(),
                message: e.to_string(),
            })?
            .collect();
        let mut last = None;
        let mut tcp = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(tcp) = tcp else {
            return Err(NodeError::Connect {
                endpoint: self.endpoint.clone(),
                message: last
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "no address".into()),
            });
        };
        let setup = |tcp: &TcpStream| -> io::Result<()> {
            tcp.set_nodelay(true)?;
            tcp.set_read_timeout(Some(read_timeout))?;
            tcp.set_write_timeout(Some(WRITE_TIMEOUT))
        };
        setup(&tcp).map_err(|e| self.connection_error(e.to_string()))?;
        let name = ServerName::try_from(api::SERVER_NAME)
            .map_err(|e| self.connection_error(e.to_string()))?;
        let conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| self.connection_error(format!("TLS: {e}")))?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            match stream.conn.complete_io(&mut stream.sock) {
                Ok((0, 0)) if stream.conn.is_handshaking() => {
                    return Err(self.connection_error(
                        "the node closed the connection during the TLS handshake".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(self.connection_error(describe_io(&e))),
            }
        }
        let served = stream
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| keel_pki::cert_names(leaf.as_ref()).ok())
            .map(|names| names.not_after);
        *self
            .served_not_after
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = served;
        Ok(stream)
    }

    /// Sends one request (with its upload) and reads the answer; an error status becomes
    /// [`NodeError::Api`] with the node's message.
    pub fn request(
        &self,
        request: &Request,
        upload: Option<Upload<'_>>,
    ) -> Result<Reply, NodeError> {
        let what = describe_request(request);
        let timeout = if request.has_body() {
            UPGRADE_READ_TIMEOUT
        } else {
            self.read_timeout
        };
        let mut stream = self.connect(timeout)?;
        let len = upload.as_ref().map_or(0, |u| u.len);
        let user_agent = format!("keel/{}", env!("CARGO_PKG_VERSION"));
        let length = len.to_string();
        let mut headers = vec![
            ("Host", api::SERVER_NAME),
            ("User-Agent", user_agent.as_str()),
            ("Accept", "application/json, text/plain"),
        ];
        if let Some(body_type) = request.body_type() {
            headers.push(("Content-Type", body_type));
            headers.push(("Content-Length", length.as_str()));
            // The node answers a refusal it knows before the first byte (busy, on trial)
            // instead of a 100; the image is then never sent into a closing connection,
            // which can reset it and lose the answer.
            headers.push(("Expect", "100-continue"));
        }
        let head = keel_http::request_head(request.method().as_str(), &request.target(), &headers)
            .map_err(|e| NodeError::BadInput(format!("the {what} request: {e}")))?;
        let sent = stream.write_all(&head).and_then(|()| stream.flush());
        let (sent, early_reply) = match (sent, upload) {
            (Ok(()), Some(upload)) => match await_continue(&mut stream) {
                Ok(None) => (
                    send_body(&mut stream, upload).and_then(|()| stream.flush()),
                    None,
                ),
                Ok(Some(refusal)) => (Ok(()), Some(Ok(refusal))),
                Err(e) => (Ok(()), Some(Err(e))),
            },
            (sent, _) => (sent, None),
        };
        let reply = match early_reply {
            Some(reply) => reply,
            None => read_reply(&mut stream),
        };
        let reply = match (sent, reply) {
            (_, Ok(reply)) => reply,
            // The node may have answered (and closed) before taking the whole upload: its
            // answer says more than the broken pipe.
            (Err(e), Err(_)) => {
                return Err(
                    self.connection_error(in_context(&format!("sending the {what} request"), &e))
                );
            }
            (Ok(()), Err(ReplyError::Io(e))) => {
                return Err(
                    self.connection_error(in_context(&format!("reading the {what} response"), &e))
                );
            }
            (Ok(()), Err(ReplyError::Protocol(message))) => {
                return Err(NodeError::Protocol {
                    endpoint: self.endpoint.clone(),
                    message,
                });
            }
        };
        // One request per connection: tell the node we are done, cleanly.
        stream.conn.send_close_notify();
        let _ = stream.flush();
        if (200..300).contains(&reply.status) {
            return Ok(reply);
        }
        Err(self.api_error(what, &reply))
    }

    /// The node's error answer, with its message.
    fn api_error(&self, what: String, reply: &Reply) -> NodeError {
        let message = serde_json::from_slice::<ErrorBody>(&reply.body)
            .map(|b| b.error)
            .unwrap_or_else(|_| reply.text().trim().to_owned());
        let kind = ErrorKind::from_status(reply.status);
        NodeError::Api {
            endpoint: self.endpoint.clone(),
            what,
            status: reply.status,
            reason: kind.map(|k| k.reason().to_owned()).unwrap_or_default(),
            kind,
            message,
        }
    }
}

fn describe_request(request: &Request) -> String {
    match request {
        Request::Version => "version".into(),
        Request::Status => "status".into(),
        Request::Logs { service, .. } => format!("logs of {service}"),
        Request::Reboot => "reboot".into(),
        Request::Shutdown => "shutdown".into(),
        Request::Upgrade { .. } => "upgrade".into(),
        Request::Rollback => "rollback".into(),
        Request::RenewCertificate => "certificate renewal".into(),
        Request::EtcdMembers => "etcd member list".into(),
        Request::EtcdSnapshot => "etcd snapshot".into(),
        Request::EtcdRemoveMember { name } => format!("removing etcd member {name}"),
    }
}

/// Sends exactly `len` bytes of the upload; a source that ends early is an error, and the
/// connection is then dropped without a complete body, which the node sees as a broken
/// upload rather than a short one.
fn send_body(stream: &mut Stream, upload: Upload<'_>) -> io::Result<()> {
    let mut buf = vec![0u8; UPLOAD_CHUNK];
    let mut sent = 0u64;
    while sent < upload.len {
        let want = usize::try_from(upload.len - sent)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match upload.body.read(&mut buf[..want]) {
            Ok(0) => {
                // Cut the connection: no close_notify, so the node cannot take the
                // truncated stream for a finished one.
                let _ = stream.sock.shutdown(std::net::Shutdown::Both);
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the update ended after {sent} of {} bytes", upload.len),
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = stream.sock.shutdown(std::net::Shutdown::Both);
                return Err(e);
            }
        };
        stream.write_all(&buf[..n])?;
        sent += n as u64;
        (upload.progress)(sent);
    }
    Ok(())
}

enum ReplyError {
    Io(io::Error),
    Protocol(String),
}

impl From<io::Error> for ReplyError {
    fn from(e: io::Error) -> Self {
        ReplyError::Io(e)
    }
}

fn head_error(e: keel_http::HeadError) -> ReplyError {
    match e {
        keel_http::HeadError::Io(e) => ReplyError::Io(e),
        keel_http::HeadError::Closed => ReplyError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the node closed the connection without answering",
        )),
        e => ReplyError::Protocol(format!("response {e}")),
    }
}

/// After a request with `Expect: 100-continue`: `None` on the node's 100 (send the body),
/// or its final answer when it has one before the body: a refusal, or the answer to an empty
/// upload, which can follow the 100 at once.
fn await_continue(stream: &mut dyn Read) -> Result<Option<Reply>, ReplyError> {
    let mut already = Vec::new();
    loop {
        let (head, early) =
            keel_http::read_any_response_head(stream, already).map_err(head_error)?;
        if head.status == 100 && early.is_empty() {
            return Ok(None);
        }
        if !(100..200).contains(&head.status) {
            return reply_from(head, early, stream).map(Some);
        }
        // Another interim answer, or the final one already behind the 100: read on.
        already = early;
    }
}

/// The node's answer (interim 100s skipped), its body bounded.
fn read_reply(stream: &mut dyn Read) -> Result<Reply, ReplyError> {
    let (head, early) = keel_http::read_response_head(stream).map_err(head_error)?;
    reply_from(head, early, stream)
}

fn reply_from(
    head: keel_http::ResponseHead,
    early: Vec<u8>,
    stream: &mut dyn Read,
) -> Result<Reply, ReplyError> {
    let body = keel_http::read_body(&head, early, stream, MAX_RESPONSE_BODY).map_err(|e| {
        if e.kind() == io::ErrorKind::InvalidData {
            ReplyError::Protocol(e.to_string())
        } else {
            ReplyError::Io(e)
        }
    })?;
    Ok(Reply {
        status: head.status,
        content_type: head.headers.get("content-type").map(str::to_owned),
        body,
    })
}

/// An error during the exchange, after `doing`, unless it is the TLS layer's: in TLS 1.3
/// the node's refusal of our certificate arrives after the client's side of the handshake,
/// with the first read, and "reading the response" would only hide what happened.
fn in_context(doing: &str, e: &io::Error) -> String {
    if is_tls(e) {
        describe_io(e)
    } else {
        format!("{doing}: {}", describe_io(e))
    }
}

fn is_tls(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// An I/O error from the TLS stream, said in terms of the cluster's certificates where
/// that is what went wrong.
fn describe_io(e: &io::Error) -> String {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let Some(tls) = tls else {
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                "timed out waiting for the node".into()
            }
            _ => e.to_string(),
        };
    };
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match tls {
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "the node's certificate is not for {}: {tls}",
            api::SERVER_NAME
        ),
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
            "the node's certificate was not issued by the keel CA in the secrets (another cluster?): {tls}"
        ),
        E::InvalidCertificate(_) => format!("the node's certificate is not acceptable: {tls}"),
        E::General(message) => message.clone(),
        E::AlertReceived(
            A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::DecryptError
            | A::AccessDenied,
        ) => format!(
            "the node refused our client certificate ({tls}): is --secrets for this node's cluster?"
        ),
        _ => format!("TLS: {tls}"),
    }
}
