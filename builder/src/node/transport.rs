//! The wire under [`NodeClient`]: the TCP connection and TLS handshake, the upload sent in
//! bounded chunks, the node's answer read with a bounded body, and I/O errors said in terms
//! of the cluster's certificates. Kept apart from the client so that the API calls read as
//! requests and answers; the snapshot download (`etcd`) reuses these pieces.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use keel_contract::api;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use super::{NodeClient, NodeError, Reply, UPLOAD_CHUNK, Upload};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Logs are the largest answers (at most 100 000 lines).
const MAX_RESPONSE_BODY: u64 = 64 * 1024 * 1024;

pub(super) type Stream = StreamOwned<ClientConnection, TcpStream>;

impl NodeClient {
    pub(super) fn connect(&self, read_timeout: Duration) -> Result<Stream, NodeError> {
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
}

/// Sends exactly `len` bytes of the upload; a source that ends early is an error, and the
/// connection is then dropped without a complete body, which the node sees as a broken
/// upload rather than a short one.
pub(super) fn send_body(stream: &mut Stream, upload: Upload<'_>) -> io::Result<()> {
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

pub(super) enum ReplyError {
    Io(io::Error),
    Protocol(String),
}

impl From<io::Error> for ReplyError {
    fn from(e: io::Error) -> Self {
        ReplyError::Io(e)
    }
}

pub(super) fn head_error(e: keel_http::HeadError) -> ReplyError {
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
pub(super) fn await_continue(stream: &mut dyn Read) -> Result<Option<Reply>, ReplyError> {
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
pub(super) fn read_reply(stream: &mut dyn Read) -> Result<Reply, ReplyError> {
    let (head, early) = keel_http::read_response_head(stream).map_err(head_error)?;
    reply_from(head, early, stream)
}

pub(super) fn reply_from(
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
pub(super) fn in_context(doing: &str, e: &io::Error) -> String {
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
