//! Requests: their methods and targets, and routing a method and target back to one.

use super::{DEFAULT_LOG_LINES, ErrorKind, MAX_LOG_LINES, content_type, path};

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
    /// The members of the node's etcd ([`EtcdMembers`](super::EtcdMembers)).
    EtcdMembers,
    /// A snapshot of the node's etcd, streamed; admin only (it holds every secret).
    EtcdSnapshot,
    /// Takes the member `name` out of the etcd cluster, through this node's member (which
    /// must be another); answers the members left ([`EtcdMembers`](super::EtcdMembers)).
    EtcdRemoveMember {
        name: String,
    },
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
            Request::Version
            | Request::Status
            | Request::Logs { .. }
            | Request::EtcdMembers
            | Request::EtcdSnapshot => Method::Get,
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
            Request::EtcdMembers => path::ETCD_MEMBERS.into(),
            Request::EtcdSnapshot => path::ETCD_SNAPSHOT.into(),
            Request::EtcdRemoveMember { name } => {
                format!("{}?name={name}", path::ETCD_REMOVE_MEMBER)
            }
        }
    }

    /// Whether the request changes the node (upgrade, rollback, reboot, shutdown).
    pub const fn changes_the_node(&self) -> bool {
        !matches!(
            self,
            Request::Version
                | Request::Status
                | Request::Logs { .. }
                | Request::EtcdMembers
                | Request::EtcdSnapshot
        )
    }

    /// Whether only an admin certificate may make the request: one that changes the node,
    /// or an etcd snapshot, which reads nothing it changes but holds every Kubernetes secret.
    pub const fn admin_only(&self) -> bool {
        self.changes_the_node() || matches!(self, Request::EtcdSnapshot)
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
        } else if path_part == path::ETCD_REMOVE_MEMBER {
            (Method::Post, remove_member(&params)?)
        } else {
            let (method_wanted, request) = match path_part {
                path::VERSION => (Method::Get, Request::Version),
                path::STATUS => (Method::Get, Request::Status),
                path::REBOOT => (Method::Post, Request::Reboot),
                path::SHUTDOWN => (Method::Post, Request::Shutdown),
                path::ROLLBACK => (Method::Post, Request::Rollback),
                path::CERTIFICATE => (Method::Post, Request::RenewCertificate),
                path::ETCD_MEMBERS => (Method::Get, Request::EtcdMembers),
                path::ETCD_SNAPSHOT => (Method::Get, Request::EtcdSnapshot),
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

/// `?name=MEMBER`: a member name is a node name, a DNS subdomain.
fn remove_member(params: &[(String, String)]) -> Result<Request, RouteError> {
    let mut name = None;
    for (k, v) in params {
        match k.as_str() {
            "name" => name = Some(v),
            _ => return Err(unknown_param(k)),
        }
    }
    let name = name.ok_or_else(|| {
        RouteError::BadQuery("expected ?name=MEMBER (the member to remove)".into())
    })?;
    if let Some(problem) = crate::names::subdomain_problem(name) {
        return Err(RouteError::BadQuery(format!(
            "name={name}: not a member name: {problem}"
        )));
    }
    Ok(Request::EtcdRemoveMember {
        name: name.to_owned(),
    })
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
