//! The node management API (Keel's apid): HTTPS with mutual TLS on port 50000, served by
//! PID 1 with plain threads (one per connection, a cap on how many), HTTP/1.1 from keel-http.
//!
//! A connection is: the TLS handshake, which fails unless the client presents a certificate
//! the cluster's keel CA issued (nothing is read from a client before that); one request
//! head, bounded in size and time; an optional Content-Length body streamed to the handler;
//! one response; close. The endpoints and bodies are the contract in
//! [`keel_contract::api`]; what they do is the init's [`NodeApi`] implementation.
//!
//! Nothing here panics, and a panic in a handler is caught and answered with a 500: this
//! runs inside PID 1 (whose panic hook otherwise treats a panic as fatal).

pub mod certificate;
mod guard;
mod http;
#[cfg(test)]
mod tests;
pub mod tls;
mod transport;

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_contract::api::{
    Ack, CertificateReport, ErrorBody, ErrorKind, MAX_CERTIFICATE_BODY, NodeCertificate,
    OperatorRole, Request, RollbackReport, RouteError, Status, UpgradeReport, Version,
    content_type,
};
use rustls::{ServerConnection, StreamOwned};
use serde::Serialize;

pub use tls::{ServerTls, TlsError};
pub(crate) use transport::{Socket, Transport};

/// Where the server reports what happened (the init's console).
pub type Log = fn(&str);

/// A handler's failure: an HTTP status (by kind) and a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }
    /// 404: e.g. no such service.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// 409: a downgrade without force, a quarantined version, nothing to roll back to, an
    /// upgrade already running.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    /// 422: the update's signature, digests or format did not verify.
    pub fn verification_failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::VerificationFailed, message)
    }
    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// 503: not ready for this now (still booting, shutting down).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// What the node does for each endpoint; the init implements it. Handlers run on the
/// connection's thread, several at once.
pub trait NodeApi: Send + Sync {
    fn version(&self) -> Version;
    fn status(&self) -> Status;
    /// The last `lines` lines of a service's log.
    fn logs(&self, service: &str, lines: usize) -> Result<String, ApiError>;
    /// Called before the response is sent: start the reboot, don't finish it here.
    fn reboot(&self) -> Result<(), ApiError>;
    /// As `reboot`.
    fn shutdown(&self) -> Result<(), ApiError>;
    /// `body` yields exactly `len` bytes of update stream, then EOF; a client that goes
    /// away first makes it return an error, so a short read is never a complete upload.
    fn upgrade(
        &self,
        body: &mut dyn Read,
        len: u64,
        force: bool,
        reboot: bool,
    ) -> Result<UpgradeReport, ApiError>;
    /// Whether an upgrade would be refused before its first byte (busy, on trial, no other
    /// slot): asked before a `100 Continue`, so that such a refusal reaches the client before
    /// it sends a whole image into a connection about to close.
    fn upgrade_admissible(&self, _force: bool) -> Result<(), ApiError> {
        Ok(())
    }
    /// Make the other slot the next boot.
    fn rollback(&self) -> Result<RollbackReport, ApiError>;
    /// Check, save and serve a renewed API certificate (see [`certificate::Renewal`]).
    fn renew_certificate(&self, _offered: &NodeCertificate) -> Result<CertificateReport, ApiError> {
        Err(ApiError::unavailable(
            "this node's API takes no renewed certificate",
        ))
    }
}

/// Limits.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Connections from one peer address at once, so that one host cannot take every place.
    pub max_per_peer: usize,
    /// From accept to the end of the TLS handshake: a socket that never completes one (an
    /// idle connection, a scanner) gives its place back this soon.
    pub handshake_timeout: Duration,
    /// From accept to the end of the request head, handshake included, so a client that
    /// trickles bytes cannot hold a connection open.
    pub head_timeout: Duration,
    /// The longest wait for any one read or write after that (uploads can take minutes,
    /// but never stall this long).
    pub idle_timeout: Duration,
    /// After a response that did not consume the whole upload (an early refusal), how long
    /// the rest is read and discarded so the client, which reads only once it has sent
    /// everything, gets the response instead of a reset.
    pub drain_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: 32,
            max_per_peer: 8,
            handshake_timeout: Duration::from_secs(5),
            head_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(120),
        }
    }
}

/// A running server (its accept loop runs on its own thread for as long as the process).
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

struct Shared {
    tls: ServerTls,
    api: Arc<dyn NodeApi>,
    notes: guard::Notes,
    options: ServerOptions,
    open: guard::Occupancy,
}

impl Shared {
    fn new(tls: ServerTls, api: Arc<dyn NodeApi>, log: Log, options: ServerOptions) -> Arc<Self> {
        Arc::new(Shared {
            tls,
            api,
            notes: guard::Notes::start(log),
            options,
            open: guard::Occupancy::default(),
        })
    }
}

/// Starts serving on `listener` in a thread of its own. `log` is called from a thread of
/// the server's own, never from one that serves or accepts (see [`guard`]).
pub fn spawn(
    listener: TcpListener,
    tls: ServerTls,
    api: Arc<dyn NodeApi>,
    log: Log,
    options: ServerOptions,
) -> io::Result<Server> {
    let local_addr = listener.local_addr()?;
    let shared = Shared::new(tls, api, log, options);
    std::thread::Builder::new()
        .name("keel-api".into())
        .spawn(move || accept_loop(&listener, &shared))?;
    Ok(Server { local_addr })
}

/// Serves on `listener` on this thread, for ever.
pub fn serve(
    listener: TcpListener,
    tls: ServerTls,
    api: Arc<dyn NodeApi>,
    log: Log,
    options: ServerOptions,
) -> ! {
    accept_loop(&listener, &Shared::new(tls, api, log, options))
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) -> ! {
    loop {
        match listener.accept() {
            Ok((tcp, peer)) => admit(tcp, peer, shared),
            Err(e) => {
                // Out of file descriptors and the like: say so (rate-limited), back off a
                // little instead of spinning.
                shared.notes.refusal(format!("api: accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A place among the connections being served, given back when dropped (also when the
/// thread could not be started, or unwinds).
struct ConnectionSlot(Arc<Shared>, u64);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.give_back(self.1);
    }
}

fn admit(tcp: TcpStream, peer: SocketAddr, shared: &Arc<Shared>) {
    let opts = &shared.options;
    let taken = match shared.open.take(
        peer.ip(),
        tcp.try_clone().ok(),
        opts.max_connections,
        opts.max_per_peer,
    ) {
        Ok(taken) => taken,
        Err(full) => {
            let why = match full {
                guard::Full::All(n) => format!("{n} connections already open"),
                guard::Full::Peer(n) => {
                    format!("{n} connections from {} already open", peer.ip())
                }
            };
            shared.notes.refusal(format!("api: {peer}: refused, {why}"));
            return;
        }
    };
    if let Some(from) = taken.evicted {
        shared.notes.refusal(format!(
            "api: closed the oldest unfinished handshake from {from} to serve {peer}"
        ));
    }
    let slot = ConnectionSlot(shared.clone(), taken.id);
    let spawned = std::thread::Builder::new()
        .name("keel-api-conn".into())
        .spawn(move || {
            let shared = &slot.0;
            connection(tcp, peer, shared, slot.1);
        });
    if let Err(e) = spawned {
        shared
            .notes
            .refusal(format!("api: {peer}: no thread for the connection: {e}"));
    }
}

fn connection(tcp: TcpStream, peer: SocketAddr, shared: &Shared, place: u64) {
    let notes = &shared.notes;
    let opts = &shared.options;
    let accepted = Instant::now();
    let _ = tcp.set_nodelay(true);
    let socket = match Socket::new(
        tcp,
        Some(accepted + opts.handshake_timeout.min(opts.head_timeout)),
        opts.idle_timeout,
    ) {
        Ok(s) => s,
        Err(e) => {
            notes.refusal(format!("api: {peer}: {e}"));
            return;
        }
    };
    let conn = match ServerConnection::new(shared.tls.config.clone()) {
        Ok(c) => c,
        Err(e) => {
            notes.line(format!("api: {peer}: TLS: {e}"));
            return;
        }
    };
    let mut stream = StreamOwned::new(conn, socket);
    // The whole handshake before anything else: this is where a client without a
    // certificate from the keel CA is turned away, before a byte of request is read.
    if let Err(e) = handshake(&mut stream) {
        notes.refusal(format!("api: {peer}: TLS handshake failed: {e}"));
        return;
    }
    shared.open.handshake_done(place);
    stream.set_deadline(Some(accepted + opts.head_timeout));
    let role = client_role(&stream.conn);
    if let Some(line) = handle(&mut stream, shared.api.as_ref(), role, opts) {
        notes.line(format!("api: {peer}: {line}"));
    }
    stream.close_write();
    let _ = stream.sock.tcp.shutdown(Shutdown::Both);
}

/// What the client's certificate (verified in the handshake) allows: read-only when it
/// cannot be read, the lesser role.
fn client_role(conn: &ServerConnection) -> OperatorRole {
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| keel_pki::operator_role(leaf.as_ref()).ok())
        .unwrap_or(OperatorRole::ReadOnly)
}

fn handshake(stream: &mut StreamOwned<ServerConnection, Socket>) -> io::Result<()> {
    while stream.conn.is_handshaking() {
        let (read, written) = stream.conn.complete_io(&mut stream.sock)?;
        if read == 0 && written == 0 && stream.conn.is_handshaking() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the handshake",
            ));
        }
    }
    Ok(())
}

fn json_response<T: Serialize>(status: u16, reason: &'static str, value: &T) -> http::Response {
    match serde_json::to_vec(value) {
        Ok(body) => http::Response::new(status, reason, content_type::JSON, body),
        Err(e) => error_response(ErrorKind::Internal, &format!("encoding the response: {e}")),
    }
}

fn error_response(kind: ErrorKind, message: &str) -> http::Response {
    let body = serde_json::to_vec(&ErrorBody {
        error: message.to_owned(),
    })
    .unwrap_or_default();
    http::Response::new(kind.status(), kind.reason(), content_type::JSON, body)
}

/// Runs a handler, turning a panic (a bug) into a 500 instead of a dead connection thread
/// with the client left waiting.
fn guarded<T>(f: impl FnOnce() -> Result<T, ApiError>) -> Result<T, ApiError> {
    crate::fatal::contained(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(ApiError::internal(
            "the node's handler failed (a bug: see the node's console)",
        ))
    })
}

/// Content types an upload may declare (or none).
fn upload_type_ok(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case(content_type::UPDATE)
        || essence.eq_ignore_ascii_case("application/octet-stream")
}

/// Serves one request on an established connection. Returns a line for the log: every
/// POST and every failure (status polls would drown the console).
pub(crate) fn handle(
    t: &mut dyn Transport,
    api: &dyn NodeApi,
    role: OperatorRole,
    opts: &ServerOptions,
) -> Option<String> {
    let (head, early) = match http::read_head(t) {
        Ok(x) => x,
        Err(http::HeadError::Closed) => return None,
        Err(e) => {
            if let Some((kind, message)) = http::refusal(&e)
                && error_response(kind, &message).write_to(t).is_ok()
            {
                t.close_write();
                linger(t);
            }
            return Some(e.to_string());
        }
    };
    // The head is in: from now on only the idle timeout applies (uploads take long).
    t.set_deadline(None);
    let what = format!("{} {}", head.method, head.target);
    let request = match Request::parse(&head.method, &head.target) {
        Ok(r) => r,
        Err(e) => {
            let mut response = error_response(e.kind(), &e.to_string());
            if let RouteError::MethodNotAllowed(m) = &e {
                response.headers.push(("Allow", m.as_str().to_owned()));
            }
            return Some(finish(t, &what, &response, None, opts));
        }
    };
    if !role.allows(&request) {
        let response = error_response(
            ErrorKind::Forbidden,
            &format!(
                "a {} operator certificate may not {what}: it allows status, version and logs; use an admin certificate (keel_admin in the secrets file)",
                role.as_str()
            ),
        );
        // A body the client sends anyway is read and dropped, so that it gets the answer;
        // one held back for a 100 never comes.
        let drain = match head.content_length {
            Some(_) if head.expect_continue => Some(0),
            Some(n) => Some(n.saturating_sub(early.len() as u64)),
            None if head.transfer_encoding => None,
            None => Some(0),
        };
        return Some(finish(t, &what, &response, drain, opts));
    }
    if head.transfer_encoding {
        let response = error_response(
            ErrorKind::LengthRequired,
            "Transfer-Encoding is not accepted: send the body with a Content-Length",
        );
        return Some(finish(t, &what, &response, None, opts));
    }
    let mut unread = 0;
    let result = match request {
        Request::RenewCertificate => {
            return Some(certificate_request(t, &head, early, api, &what, opts));
        }
        Request::Upgrade { force, reboot } => {
            let Some(len) = head.content_length else {
                let response = error_response(
                    ErrorKind::LengthRequired,
                    "an upgrade needs a Content-Length",
                );
                return Some(finish(t, &what, &response, None, opts));
            };
            if let Some(ct) = head
                .content_type
                .as_deref()
                .filter(|ct| !upload_type_ok(ct))
            {
                let response = error_response(
                    ErrorKind::UnsupportedMediaType,
                    &format!("an upgrade is {}, not {ct}", content_type::UPDATE),
                );
                let unread = len.saturating_sub(early.len() as u64);
                return Some(finish(t, &what, &response, Some(unread), opts));
            }
            if head.expect_continue {
                // The client holds the body back until the 100: a refusal known before any
                // byte is answered now, instead of after draining an upload it never needed.
                if let Err(e) = guarded(|| api.upgrade_admissible(force)) {
                    let response = error_response(e.kind, &e.message);
                    return Some(finish(t, &what, &response, None, opts));
                }
                if let Err(e) = t.write_all(http::CONTINUE).and_then(|()| t.flush()) {
                    return Some(format!("{what}: {e}"));
                }
            }
            let mut body = http::Body::new(early, t, len);
            let result = guarded(|| api.upgrade(&mut body, len, force, reboot))
                .map(|report| json_response(200, "OK", &report));
            unread = body.unread_on_wire();
            result
        }
        request => {
            if head.content_length.unwrap_or(0) > 0 {
                let response = error_response(
                    ErrorKind::PayloadTooLarge,
                    "this endpoint takes no request body",
                );
                let unread = head
                    .content_length
                    .map(|n| n.saturating_sub(early.len() as u64));
                return Some(finish(t, &what, &response, unread, opts));
            }
            dispatch(request, api)
        }
    };
    let response = result.unwrap_or_else(|e| error_response(e.kind, &e.message));
    let line = finish(t, &what, &response, Some(unread).filter(|n| *n > 0), opts);
    let quiet = head.method == "GET" && response.status < 400;
    if quiet { None } else { Some(line) }
}

/// `POST /v1/certificate`: a small JSON body, read whole, then the handler.
fn certificate_request(
    t: &mut dyn Transport,
    head: &http::Head,
    early: Vec<u8>,
    api: &dyn NodeApi,
    what: &str,
    opts: &ServerOptions,
) -> String {
    let Some(len) = head.content_length else {
        let response = error_response(
            ErrorKind::LengthRequired,
            "a certificate needs a Content-Length",
        );
        return finish(t, what, &response, None, opts);
    };
    let unread = len.saturating_sub(early.len() as u64);
    let refusal = if len > MAX_CERTIFICATE_BODY {
        Some((
            ErrorKind::PayloadTooLarge,
            format!("a certificate body is at most {MAX_CERTIFICATE_BODY} bytes, not {len}"),
        ))
    } else {
        head.content_type
            .as_deref()
            .filter(|ct| {
                let essence = ct.split(';').next().unwrap_or_default().trim();
                !essence.eq_ignore_ascii_case(content_type::JSON)
            })
            .map(|ct| {
                (
                    ErrorKind::UnsupportedMediaType,
                    format!("a certificate is {}, not {ct}", content_type::JSON),
                )
            })
    };
    if let Some((kind, message)) = refusal {
        // A body held back for a 100 never comes; one sent anyway is drained.
        let drain = (!head.expect_continue).then_some(unread);
        return finish(t, what, &error_response(kind, &message), drain, opts);
    }
    if head.expect_continue
        && let Err(e) = t.write_all(http::CONTINUE).and_then(|()| t.flush())
    {
        return format!("{what}: {e}");
    }
    let mut body = Vec::new();
    if let Err(e) = http::Body::new(early, t, len).read_to_end(&mut body) {
        return format!("{what}: reading the body: {e}");
    }
    let response = serde_json::from_slice::<NodeCertificate>(&body)
        .map_err(|e| {
            ApiError::bad_request(format!(
                "the body is not a certificate (JSON with `cert` and `key`, PEM): {e}"
            ))
        })
        .and_then(|offered| guarded(|| api.renew_certificate(&offered)))
        .map_or_else(
            |e| error_response(e.kind, &e.message),
            |report| json_response(200, "OK", &report),
        );
    finish(t, what, &response, None, opts)
}

fn dispatch(request: Request, api: &dyn NodeApi) -> Result<http::Response, ApiError> {
    match request {
        Request::Version => guarded(|| Ok(api.version())).map(|v| json_response(200, "OK", &v)),
        Request::Status => guarded(|| Ok(api.status())).map(|s| json_response(200, "OK", &s)),
        Request::Logs { service, lines } => guarded(|| api.logs(&service, lines))
            .map(|text| http::Response::new(200, "OK", content_type::TEXT, text.into_bytes())),
        Request::Reboot => guarded(|| api.reboot()).map(|()| {
            json_response(
                202,
                "Accepted",
                &Ack {
                    message: "rebooting".into(),
                },
            )
        }),
        Request::Shutdown => guarded(|| api.shutdown()).map(|()| {
            json_response(
                202,
                "Accepted",
                &Ack {
                    message: "shutting down".into(),
                },
            )
        }),
        Request::Rollback => {
            guarded(|| api.rollback()).map(|report| json_response(200, "OK", &report))
        }
        // Routed with their bodies in `handle`.
        Request::Upgrade { .. } | Request::RenewCertificate => {
            Err(ApiError::internal("a request without its body"))
        }
    }
}

/// Writes the response, then reads and drops up to `drain` bytes of body the client is
/// still sending, and returns the log line.
fn finish(
    t: &mut dyn Transport,
    what: &str,
    response: &http::Response,
    drain: Option<u64>,
    opts: &ServerOptions,
) -> String {
    let status = response.status;
    let mut line = format!("{what} -> {status}");
    if status >= 400
        && let Ok(body) = serde_json::from_slice::<ErrorBody>(&response.body)
    {
        line.push_str(&format!(": {}", body.error));
    }
    if let Err(e) = response.write_to(t) {
        line.push_str(&format!(" (not delivered: {e})"));
        return line;
    }
    // The client sees the end of the response at once; what it still sends is read below.
    t.close_write();
    match drain {
        Some(0) => {}
        Some(left) => {
            t.set_deadline(Some(Instant::now() + opts.drain_timeout));
            let _ = io::copy(&mut http::Body::new(Vec::new(), t, left), &mut io::sink());
        }
        // A refusal before the body's length was known (chunked, say): whatever follows.
        None if status >= 400 => linger(t),
        None => {}
    }
    line
}

/// After refusing a request whose head was not read to its end: reads and drops what the
/// client still sends, for a moment, so that closing does not reset the connection (which
/// can discard the response before the client reads it).
fn linger(t: &mut dyn Transport) {
    t.set_deadline(Some(Instant::now() + Duration::from_secs(1)));
    let mut sink = [0u8; 4096];
    let mut total = 0;
    while total < 64 * 1024 {
        match t.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}
