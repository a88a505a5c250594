//! The node management API's contract: the port and server name, the endpoints and their
//! query parameters, and the JSON bodies. The init serves it (`keel_init::api`), `keel node`
//! calls it (`keel_builder::node`); both build and parse requests through [`Request`] so the
//! two sides cannot drift apart.
//!
//! HTTP/1.1 over TLS 1.3 with mutual authentication: the node presents a certificate for
//! [`SERVER_NAME`] issued by the cluster's keel CA and accepts only clients whose certificate
//! that CA issued. Errors come back as an HTTP status and an [`ErrorBody`].

use serde::{Deserialize, Serialize};

/// The TCP port every node listens on.
pub const PORT: u16 = 50000;
/// The DNS name in the node's serving certificate, which clients verify whatever address
/// they dialled (nodes are reached by IP, and their addresses change).
pub const SERVER_NAME: &str = "keel-node";

/// Endpoint paths.
pub mod path {
    pub const VERSION: &str = "/v1/version";
    pub const STATUS: &str = "/v1/status";
    /// Followed by the service name: `/v1/logs/containerd?lines=100`.
    pub const LOGS: &str = "/v1/logs/";
    pub const REBOOT: &str = "/v1/reboot";
    pub const SHUTDOWN: &str = "/v1/shutdown";
    pub const UPGRADE: &str = "/v1/upgrade";
    pub const ROLLBACK: &str = "/v1/rollback";
    /// The node's API serving certificate: a renewed one is posted here
    /// ([`NodeCertificate`](super::NodeCertificate)).
    pub const CERTIFICATE: &str = "/v1/certificate";
}

/// Content types.
pub mod content_type {
    pub const JSON: &str = "application/json";
    pub const TEXT: &str = "text/plain; charset=utf-8";
    /// The upgrade request body: the update stream.
    pub const UPDATE: &str = "application/x-tar";
}

/// `lines` when a logs request gives none.
pub const DEFAULT_LOG_LINES: usize = 100;
/// The most log lines one request may ask for (the node keeps its logs on /var; this bounds
/// the memory a response takes, not what is kept).
pub const MAX_LOG_LINES: usize = 100_000;

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The image name (`keel-worker`).
    pub name: String,
    /// The OS version (semver).
    pub version: String,
    /// The booted slot, `a` or `b`.
    pub slot: String,
    pub arch: String,
    /// The init's own version.
    pub keel: String,
}

/// One root slot, as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// `a` or `b`.
    pub slot: String,
    /// The OS version in the slot's signed manifest; `None` for an empty slot.
    pub version: Option<String>,
    /// The slot's boot entry file name on the ESP, which shows systemd-boot's counter:
    /// `keel-b+2-1.conf` (2 tries left, 1 used), `keel-a.conf` (blessed). `None`: no entry.
    pub entry: Option<String>,
    /// The slot the node is running from.
    pub booted: bool,
    /// Blessed: a boot from it passed the health gate. A fresh entry with tries left is not
    /// yet healthy; one with no tries left has failed.
    pub healthy: bool,
    /// Why the slot cannot be booted or rolled back to, when it cannot: an upgrade was
    /// writing it and did not finish, it is empty, a file of it is missing on the ESP, it has
    /// no boot entry. `None`: the slot is complete and has its entry.
    #[serde(default)]
    pub invalid: Option<String>,
}

/// One supervised service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    /// `running`, `starting`, `backoff`, `failed`, `exited`, `stopped`...
    pub state: String,
    pub restarts: u32,
    pub pid: Option<u32>,
    /// Why it is in that state, when that needs saying.
    pub message: Option<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub version: String,
    /// The booted slot.
    pub slot: String,
    pub hostname: String,
    /// With prefix length: `10.0.2.15/24`.
    pub addresses: Vec<String>,
    pub slots: Vec<SlotInfo>,
    pub services: Vec<ServiceInfo>,
    /// This boot's number on this disk (1 for the first).
    pub boot: u64,
    /// The version whose boot failed and made the node fall back to this one, if it did.
    pub rolled_back_from: Option<String>,
    /// The rollback was asked for (`keel node rollback`) rather than forced by a failed boot.
    #[serde(default)]
    pub rollback_requested: bool,
    /// Versions the node refuses to install again (they failed to boot here).
    pub quarantined: Vec<String>,
    pub uptime_secs: u64,
    /// Why the node is up but not doing its job, when it is not: `/var` could not be mounted,
    /// or every boot entry ran out of tries and the node stays up instead of rebooting in a
    /// loop. A degraded node serves this API, does not bless its entry and does not reboot by
    /// itself.
    #[serde(default)]
    pub degraded: Option<String>,
    /// What the node had to work around at this boot and wants an operator to know: a
    /// configuration it refused and the copy it used instead, keys it ignored, a boot
    /// history it could not write.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The init's steps at this boot, stage 1's then stage 2's, in the order they started;
    /// steps that overlap ran in parallel. Empty from a node whose init does not record them.
    #[serde(default)]
    pub timeline: Vec<BootStep>,
    /// Set when the node booted from the network (`keel.root=`) and runs from RAM with no
    /// boot disk: no slots or boot entries, `/var` on tmpfs, upgrades refused. Absent from a
    /// disk-booted node and from nodes older than network boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diskless: Option<Diskless>,
}

/// How a diskless node got its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diskless {
    /// The `root.img` URL it booted from.
    pub root_url: String,
    /// The RAM its verified copy of the root holds.
    pub root_ram_bytes: u64,
    /// Fetching and verifying it, in milliseconds.
    pub fetch_ms: u64,
}

/// Why a diskless node refuses an upgrade or a rollback (409).
pub const DISKLESS_UPGRADE: &str = "this node booted from the network and has no disk to write a slot to: a diskless node upgrades by being served a new version and rebooted";

/// One step of the init at this boot: when it started and ended, in milliseconds of
/// `CLOCK_BOOTTIME` (since the kernel started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootStep {
    /// `modules`, `disk`, `var`, `network`, `containerd`...
    pub step: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// The timeline on one line, in seconds since the kernel started, as the console's ready
/// line and `keel node status` show it: `modules 0.40-0.81 disk 0.81-0.95 ...`.
pub fn timeline_line(steps: &[BootStep]) -> String {
    let secs = |ms: u64| format!("{}.{:02}", ms / 1000, (ms % 1000) / 10);
    steps
        .iter()
        .map(|s| format!("{} {}-{}", s.step, secs(s.start_ms), secs(s.end_ms)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `POST /v1/upgrade`: what was installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeReport {
    /// The running version.
    pub from: String,
    /// The version written to the other slot.
    pub to: String,
    /// The slot it went to.
    pub slot: String,
    /// Bytes of update stream received.
    pub bytes: u64,
    /// The node reboots into it now.
    pub reboot: bool,
}

/// `POST /v1/rollback`: the node boots the other slot next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackReport {
    /// The running version.
    pub from: String,
    /// The other slot's version, booted next.
    pub to: String,
    /// The other slot.
    pub slot: String,
    /// The node reboots into it now.
    pub reboot: bool,
}

/// The largest `POST /v1/certificate` body the node reads: a certificate chain and a key
/// are a few kilobytes.
pub const MAX_CERTIFICATE_BODY: u64 = 64 * 1024;

/// `POST /v1/certificate`: a renewed API serving certificate for the node, from the keel CA
/// the node already trusts (`keel secrets renew`'s shared `node_api`, or `keel secrets node`'s
/// own one). Only the serving certificate travels: the keel CA a node trusts is never
/// replaced through the API it guards, and the Kubernetes secrets are not the API's.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertificate {
    /// PEM: the certificate, then any intermediates.
    pub cert: String,
    /// PEM: its private key (PKCS#8).
    pub key: String,
}

impl std::fmt::Debug for NodeCertificate {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCertificate")
            .field("cert", &format_args!("<{} bytes of PEM>", self.cert.len()))
            .field("key", &format_args!("<elided>"))
            .finish()
    }
}

/// `POST /v1/certificate`: what the node now serves, on every new connection and after a
/// reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateReport {
    /// The certificate's DNS names (`keel-node`, and the node's own name when it is its own).
    pub names: Vec<String>,
    /// When it ends (unix seconds).
    pub not_after: i64,
    /// Its serial number, hex.
    pub serial: String,
}

/// `POST /v1/reboot` and `/v1/shutdown`: accepted, the node acts after answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub message: String,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Why a request failed, and its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: a malformed request or parameter.
    BadRequest,
    /// 404: no such endpoint or service.
    NotFound,
    /// 405: the endpoint exists with another method.
    MethodNotAllowed,
    /// 403: the client's certificate does not allow this (a read-only operator asking for
    /// an upgrade, a reboot, ...).
    Forbidden,
    /// 409: refused in the node's current state: a downgrade without force, a quarantined
    /// version, an upgrade already running, nothing to roll back to.
    Conflict,
    /// 411: an upload without Content-Length (chunked bodies are not accepted).
    LengthRequired,
    /// 413: a body where none is taken, or too large.
    PayloadTooLarge,
    /// 415: an upload of another content type.
    UnsupportedMediaType,
    /// 422: the update did not verify (signature, digest, format).
    VerificationFailed,
    /// 431: the request head is larger than the server accepts.
    HeadersTooLarge,
    /// 500: the node failed.
    Internal,
    /// 503: the node is not ready for this yet (still booting, or shutting down).
    Unavailable,
}

impl ErrorKind {
    pub const fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::LengthRequired => 411,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::VerificationFailed => 422,
            Self::HeadersTooLarge => 431,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    pub fn from_status(status: u16) -> Option<Self> {
        [
            Self::BadRequest,
            Self::Forbidden,
            Self::NotFound,
            Self::MethodNotAllowed,
            Self::Conflict,
            Self::LengthRequired,
            Self::PayloadTooLarge,
            Self::UnsupportedMediaType,
            Self::VerificationFailed,
            Self::HeadersTooLarge,
            Self::Internal,
            Self::Unavailable,
        ]
        .into_iter()
        .find(|k| k.status() == status)
    }

    /// The reason phrase of the status line.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::BadRequest => "Bad Request",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not Found",
            Self::MethodNotAllowed => "Method Not Allowed",
            Self::Conflict => "Conflict",
            Self::LengthRequired => "Length Required",
            Self::PayloadTooLarge => "Payload Too Large",
            Self::UnsupportedMediaType => "Unsupported Media Type",
            Self::VerificationFailed => "Unprocessable Content",
            Self::HeadersTooLarge => "Request Header Fields Too Large",
            Self::Internal => "Internal Server Error",
            Self::Unavailable => "Service Unavailable",
        }
    }
}

/// What an operator's client certificate allows on the API. The role is in the
/// certificate's subject, as an organisation (O) the keel CA put there: `keel secrets gen`
/// issues one certificate of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperatorRole {
    /// Status, version and logs.
    ReadOnly,
    /// Everything: also upgrade, rollback, reboot, shutdown (and `force`).
    Admin,
}

impl OperatorRole {
    /// The subject organisation of a read-only operator's certificate.
    pub const READ_ONLY_ORGANIZATION: &'static str = "keel:read-only";
    /// The subject organisation of an admin's certificate. Certificates from before roles
    /// (no organisation) are admins too: see [`OperatorRole::from_organizations`].
    pub const ADMIN_ORGANIZATION: &'static str = "keel:admin";

    /// The organisation the keel CA writes into this role's certificates.
    pub const fn organization(self) -> &'static str {
        match self {
            OperatorRole::ReadOnly => Self::READ_ONLY_ORGANIZATION,
            OperatorRole::Admin => Self::ADMIN_ORGANIZATION,
        }
    }

    /// The role of a client certificate from the keel CA, by its subject organisations:
    /// read-only if any says so (the lesser role wins), admin otherwise, which keeps the
    /// admin certificates issued before roles existed (no organisation) working.
    pub fn from_organizations<'a>(organizations: impl IntoIterator<Item = &'a str>) -> Self {
        let mut role = OperatorRole::Admin;
        for o in organizations {
            if o == Self::READ_ONLY_ORGANIZATION {
                role = OperatorRole::ReadOnly;
            }
        }
        role
    }

    /// Whether this role may make `request`.
    pub const fn allows(self, request: &Request) -> bool {
        match self {
            OperatorRole::Admin => true,
            OperatorRole::ReadOnly => !request.changes_the_node(),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            OperatorRole::ReadOnly => "read-only",
            OperatorRole::Admin => "admin",
        }
    }
}

/// HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// One API call: what the client sends and the server routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Version,
    Status,
    Logs {
        service: String,
        lines: usize,
    },
    Reboot,
    Shutdown,
    Upgrade {
        force: bool,
        reboot: bool,
    },
    Rollback,
    /// A renewed API serving certificate ([`NodeCertificate`], JSON).
    RenewCertificate,
}

/// Why a method and target name no request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NotFound(String),
    /// The path exists with this other method.
    MethodNotAllowed(Method),
    BadQuery(String),
}

impl RouteError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RouteError::NotFound(_) => ErrorKind::NotFound,
            RouteError::MethodNotAllowed(_) => ErrorKind::MethodNotAllowed,
            RouteError::BadQuery(_) => ErrorKind::BadRequest,
        }
    }
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::NotFound(path) => write!(f, "no such endpoint: {path}"),
            RouteError::MethodNotAllowed(m) => write!(f, "this endpoint takes {}", m.as_str()),
            RouteError::BadQuery(e) => f.write_str(e),
        }
    }
}

/// A service name as the logs endpoint takes it: what the supervisor names services, and
/// nothing that needs escaping in a path or could name a file outside the log directory.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Request {
    pub const fn method(&self) -> Method {
        match self {
            Request::Version | Request::Status | Request::Logs { .. } => Method::Get,
            _ => Method::Post,
        }
    }

    /// The request target: path and query.
    pub fn target(&self) -> String {
        match self {
            Request::Version => path::VERSION.into(),
            Request::Status => path::STATUS.into(),
            Request::Logs { service, lines } => format!("{}{service}?lines={lines}", path::LOGS),
            Request::Reboot => path::REBOOT.into(),
            Request::Shutdown => path::SHUTDOWN.into(),
            Request::Upgrade { force, reboot } => format!(
                "{}?force={}&reboot={}",
                path::UPGRADE,
                u8::from(*force),
                u8::from(*reboot)
            ),
            Request::Rollback => path::ROLLBACK.into(),
            Request::RenewCertificate => path::CERTIFICATE.into(),
        }
    }

    /// Whether the request changes the node (upgrade, rollback, reboot, shutdown): only an
    /// admin certificate may make it.
    pub const fn changes_the_node(&self) -> bool {
        !matches!(
            self,
            Request::Version | Request::Status | Request::Logs { .. }
        )
    }

    /// Whether the request carries a body (the update stream, the certificate).
    pub const fn has_body(&self) -> bool {
        self.body_type().is_some()
    }

    /// The content type of the request's body, when it has one.
    pub const fn body_type(&self) -> Option<&'static str> {
        match self {
            Request::Upgrade { .. } => Some(content_type::UPDATE),
            Request::RenewCertificate => Some(content_type::JSON),
            _ => None,
        }
    }

    /// Routes a method and request target. Unknown query parameters are refused, so a
    /// misspelt `forse=1` is not silently a non-forced upgrade.
    pub fn parse(method: &str, target: &str) -> Result<Request, RouteError> {
        let (path_part, query) = match target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (target, ""),
        };
        let params = parse_query(query)?;
        let (want, request) = if let Some(service) = path_part.strip_prefix(path::LOGS) {
            if !valid_service_name(service) {
                return Err(RouteError::NotFound(format!(
                    "{path_part} (invalid service name)"
                )));
            }
            let mut lines = DEFAULT_LOG_LINES;
            for (k, v) in &params {
                match k.as_str() {
                    "lines" => {
                        lines = v
                            .parse::<usize>()
                            .ok()
                            .filter(|n| (1..=MAX_LOG_LINES).contains(n))
                            .ok_or_else(|| {
                                RouteError::BadQuery(format!(
                                    "lines={v}: expected a number from 1 to {MAX_LOG_LINES}"
                                ))
                            })?;
                    }
                    _ => return Err(unknown_param(k)),
                }
            }
            (
                Method::Get,
                Request::Logs {
                    service: service.to_owned(),
                    lines,
                },
            )
        } else if path_part == path::UPGRADE {
            let (mut force, mut reboot) = (false, true);
            for (k, v) in &params {
                let flag = match v.as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        return Err(RouteError::BadQuery(format!("{k}={v}: expected 0 or 1")));
                    }
                };
                match k.as_str() {
                    "force" => force = flag,
                    "reboot" => reboot = flag,
                    _ => return Err(unknown_param(k)),
                }
            }
            (Method::Post, Request::Upgrade { force, reboot })
        } else {
            let (method_wanted, request) = match path_part {
                path::VERSION => (Method::Get, Request::Version),
                path::STATUS => (Method::Get, Request::Status),
                path::REBOOT => (Method::Post, Request::Reboot),
                path::SHUTDOWN => (Method::Post, Request::Shutdown),
                path::ROLLBACK => (Method::Post, Request::Rollback),
                path::CERTIFICATE => (Method::Post, Request::RenewCertificate),
                _ => return Err(RouteError::NotFound(path_part.to_owned())),
            };
            if let Some((k, _)) = params.first() {
                return Err(unknown_param(k));
            }
            (method_wanted, request)
        };
        if method != want.as_str() {
            return Err(RouteError::MethodNotAllowed(want));
        }
        Ok(request)
    }
}

fn unknown_param(name: &str) -> RouteError {
    RouteError::BadQuery(format!("unknown query parameter {name:?}"))
}

/// `a=1&b=2` into pairs. No percent-decoding: no parameter takes anything but digits and
/// words, so an escaped character is refused rather than decoded.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, RouteError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let plain = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !plain(k) || !plain(v) {
            return Err(RouteError::BadQuery(format!(
                "invalid query parameter {pair:?}"
            )));
        }
        if out.iter().any(|(seen, _)| seen == k) {
            return Err(RouteError::BadQuery(format!(
                "query parameter {k:?} given twice"
            )));
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_requests() -> Vec<Request> {
        vec![
            Request::Version,
            Request::Status,
            Request::Logs {
                service: "containerd".into(),
                lines: 7,
            },
            Request::Reboot,
            Request::Shutdown,
            Request::Upgrade {
                force: true,
                reboot: false,
            },
            Request::Upgrade {
                force: false,
                reboot: true,
            },
            Request::Rollback,
            Request::RenewCertificate,
        ]
    }

    #[test]
    fn every_request_round_trips_through_its_target() {
        for r in all_requests() {
            let back = Request::parse(r.method().as_str(), &r.target()).unwrap();
            assert_eq!(back, r, "{}", r.target());
        }
    }

    #[test]
    fn the_wrong_method_is_refused() {
        for r in all_requests() {
            let other = match r.method() {
                Method::Get => "POST",
                Method::Post => "GET",
            };
            assert_eq!(
                Request::parse(other, &r.target()),
                Err(RouteError::MethodNotAllowed(r.method()))
            );
        }
        assert!(matches!(
            Request::parse("DELETE", "/v1/status"),
            Err(RouteError::MethodNotAllowed(Method::Get))
        ));
    }

    #[test]
    fn defaults_and_refusals() {
        assert_eq!(
            Request::parse("POST", "/v1/upgrade").unwrap(),
            Request::Upgrade {
                force: false,
                reboot: true
            }
        );
        assert_eq!(
            Request::parse("GET", "/v1/logs/etcd").unwrap(),
            Request::Logs {
                service: "etcd".into(),
                lines: DEFAULT_LOG_LINES
            }
        );
        for bad in [
            "/v1/upgrade?forse=1",
            "/v1/upgrade?force=yes",
            "/v1/upgrade?force=1&force=0",
            "/v1/upgrade?force=%31",
            "/v1/status?x=1",
        ] {
            let method = if bad.starts_with("/v1/upgrade") {
                "POST"
            } else {
                "GET"
            };
            assert!(
                matches!(Request::parse(method, bad), Err(RouteError::BadQuery(_))),
                "{bad}"
            );
        }
        for bad in ["lines=0", "lines=-1", "lines=100001", "lines=x"] {
            assert!(matches!(
                Request::parse("GET", &format!("/v1/logs/etcd?{bad}")),
                Err(RouteError::BadQuery(_))
            ));
        }
        for bad in [
            "/v1/logs/",
            "/v1/logs/../etc",
            "/v1/logs/a/b",
            "/v1/logs/.hidden",
            "/v2/status",
            "/v1/status/",
            "/",
        ] {
            assert!(
                matches!(Request::parse("GET", bad), Err(RouteError::NotFound(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn status_codes_map_both_ways() {
        for status in [400, 404, 405, 409, 411, 413, 415, 422, 431, 500, 503] {
            let kind = ErrorKind::from_status(status).unwrap();
            assert_eq!(kind.status(), status);
        }
        assert_eq!(ErrorKind::from_status(418), None);
        assert_eq!(ErrorKind::Conflict.status(), 409);
        assert_eq!(ErrorKind::VerificationFailed.status(), 422);
    }

    #[test]
    fn the_timeline_reads_in_seconds_and_an_older_node_has_none() {
        let step = |step: &str, start_ms, end_ms| BootStep {
            step: step.into(),
            start_ms,
            end_ms,
        };
        let steps = [step("modules", 404, 810), step("var", 1009, 12345)];
        assert_eq!(timeline_line(&steps), "modules 0.40-0.81 var 1.00-12.34");
        assert_eq!(timeline_line(&[]), "");
        let mut json = serde_json::to_value(Status {
            name: "n".into(),
            version: "1.0.0".into(),
            slot: "a".into(),
            hostname: "h".into(),
            addresses: vec![],
            slots: vec![],
            services: vec![],
            boot: 1,
            rolled_back_from: None,
            rollback_requested: false,
            quarantined: vec![],
            uptime_secs: 1,
            degraded: None,
            warnings: vec![],
            timeline: steps.to_vec(),
            diskless: None,
        })
        .unwrap();
        json.as_object_mut().unwrap().remove("timeline");
        let older: Status = serde_json::from_value(json).unwrap();
        assert!(older.timeline.is_empty());
    }

    #[test]
    fn status_json_field_names_are_the_contract() {
        let status = Status {
            name: "keel-worker".into(),
            version: "1.0.0".into(),
            slot: "a".into(),
            hostname: "w1".into(),
            addresses: vec!["10.0.2.15/24".into()],
            slots: vec![SlotInfo {
                slot: "a".into(),
                version: Some("1.0.0".into()),
                entry: Some("keel-a.conf".into()),
                booted: true,
                healthy: true,
                invalid: None,
            }],
            services: vec![ServiceInfo {
                name: "containerd".into(),
                state: "running".into(),
                restarts: 0,
                pid: Some(42),
                message: None,
            }],
            boot: 3,
            rolled_back_from: None,
            rollback_requested: false,
            quarantined: vec![],
            uptime_secs: 61,
            degraded: Some("/var is unavailable".into()),
            warnings: vec!["w".into()],
            timeline: vec![BootStep {
                step: "var".into(),
                start_ms: 810,
                end_ms: 1954,
            }],
            diskless: Some(Diskless {
                root_url: "http://10.0.2.2:8080/root.img".into(),
                root_ram_bytes: 300 << 20,
                fetch_ms: 4200,
            }),
        };
        let json = serde_json::to_value(&status).unwrap();
        for key in [
            "name",
            "version",
            "slot",
            "hostname",
            "addresses",
            "slots",
            "services",
            "boot",
            "rolled_back_from",
            "quarantined",
            "uptime_secs",
            "degraded",
            "warnings",
            "timeline",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert_eq!(json["timeline"][0]["step"], "var");
        assert_eq!(json["timeline"][0]["start_ms"], 810);
        assert_eq!(json["timeline"][0]["end_ms"], 1954);
        assert_eq!(json["slots"][0]["entry"], "keel-a.conf");
        assert_eq!(json["services"][0]["pid"], 42);
        assert_eq!(
            json["diskless"]["root_url"],
            "http://10.0.2.2:8080/root.img"
        );
        assert_eq!(json["diskless"]["root_ram_bytes"], 300 << 20);
        assert_eq!(json["diskless"]["fetch_ms"], 4200);
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn a_read_only_role_reads_and_an_admin_does_everything() {
        for r in all_requests() {
            assert!(OperatorRole::Admin.allows(&r), "{r:?}");
            let reads = matches!(r, Request::Version | Request::Status | Request::Logs { .. });
            assert_eq!(OperatorRole::ReadOnly.allows(&r), reads, "{r:?}");
        }
        assert_eq!(OperatorRole::from_organizations([]), OperatorRole::Admin);
        assert_eq!(
            OperatorRole::from_organizations(["keel:admin"]),
            OperatorRole::Admin
        );
        assert_eq!(
            OperatorRole::from_organizations(["keel:admin", "keel:read-only"]),
            OperatorRole::ReadOnly
        );
        for role in [OperatorRole::ReadOnly, OperatorRole::Admin] {
            assert_eq!(
                OperatorRole::from_organizations([role.organization()]),
                role
            );
        }
        assert_eq!(ErrorKind::from_status(403), Some(ErrorKind::Forbidden));
    }
}
