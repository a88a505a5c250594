//! `keel node`: the client of the node management API (the init's `api` module), over
//! HTTPS with mutual TLS. It verifies the node's certificate against the cluster's keel CA
//! and the name `keel-node` (whatever address it dialled), and presents the admin client
//! certificate. One request per connection; HTTP/1.1 from keel-http, as the server.

mod credentials;
mod etcd;
mod identity;
mod renew;
mod tls_config;
mod transport;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_contract::api::{
    self, Ack, ErrorBody, ErrorKind, Request, RollbackReport, Status, UpgradeReport, Version,
};
use rustls::ClientConfig;

use crate::progress::Reporter;
use transport::{ReplyError, await_continue, in_context, read_reply, send_body};

pub use credentials::{
    ClientCredentials, credentials_for, credentials_from_secrets, credentials_from_secrets_toml,
    credentials_toml_for, operator_section,
};
pub use etcd::{SnapshotReport, check_snapshot_file};
pub use identity::NodeIdentity;
pub use renew::node_certificate_from;
pub use tls_config::{client_config, client_config_for};

/// For the answer to an ordinary request.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// After an upload, the node verifies and writes the slot before it answers.
const UPGRADE_READ_TIMEOUT: Duration = Duration::from_secs(30 * 60);
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
