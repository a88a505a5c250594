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
mod handle;
mod http;
mod snapshot;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
pub mod tls;
mod transport;

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_contract::api::{
    CertificateReport, ErrorKind, EtcdMembers, NOT_A_CONTROL_PLANE, NodeCertificate, OperatorRole,
    RollbackReport, Status, UpgradeReport, Version,
};
use rustls::{ServerConnection, StreamOwned};

pub(crate) use handle::handle;
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
    /// The members of the node's etcd; 409 on a node that runs none.
    fn etcd_members(&self) -> Result<EtcdMembers, ApiError> {
        Err(ApiError::conflict(NOT_A_CONTROL_PLANE))
    }
    /// Takes the member `name` out of the etcd cluster through this node's member, and
    /// answers the members left; 409 on a node that runs none.
    fn etcd_remove_member(&self, _name: &str) -> Result<EtcdMembers, ApiError> {
        Err(ApiError::conflict(NOT_A_CONTROL_PLANE))
    }
    /// A snapshot of the node's etcd as a stream of its bytes, which must fail (not end)
    /// when the snapshot is cut short; 409 on a node that runs none. A failure known before
    /// the first byte is an error here, so that it gets a status of its own.
    fn etcd_snapshot(&self) -> Result<Box<dyn Read + Send>, ApiError> {
        Err(ApiError::conflict(NOT_A_CONTROL_PLANE))
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
