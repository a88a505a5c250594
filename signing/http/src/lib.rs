//! keel-http: the one small HTTP/1.1 every Keel program speaks, blocking, over any
//! `Read`/`Write` (a `TcpStream`, a rustls `StreamOwned`, a byte slice in a test).
//!
//! Users: the init's `keel.config=http://...` fetch, its HTTP health checks, its Kubernetes
//! client and its node API server (over rustls); the `keel node` client in the builder; the
//! fake kubelet and fake kube-apiserver of the vm-tests. Before this crate each had its own
//! hand-written parser, and they disagreed (one skipped the default port of
//! `http://[fd00::1]/x` because the authority "contained a colon").
//!
//! Why a crate of its own under `signing/`: builder, init and vm-tests all need it, and
//! `signing/` holds the small crates they share. It is not in keel-contract because HTTP
//! framing is no agreement between build time and boot time (the node API's paths and types
//! are, and stay in `keel_contract::api`), and the contract does no I/O of its own.
//!
//! What it does: heads are parsed with `httparse`, within [`MAX_HEAD`] bytes and
//! [`MAX_HEADERS`] headers; Content-Length must be digits only and agree with itself;
//! bodies are bounded ([`Body`] streams a Content-Length body without buffering it,
//! [`read_body`] collects a response body of any framing up to a limit, de-chunking);
//! [`request_head`] and [`Response`] write; [`Url`] parses `http://host[:port]/path`. No
//! async, no hyper (tokio in PID 1 would cost size and start-up for one connection at a
//! time), and nothing here panics on what a peer sends.

mod body;
mod stream;
mod url;
mod write;

#[cfg(test)]
mod tests;

use std::io::{self, Read};

pub use body::{Body, read_body};
pub use stream::{ChunkedReader, ChunkedWriter, body_reader};
pub use url::{Scheme, Url, UrlError};
pub use write::{CONTINUE, Response, reason, request_head, response_head};

/// The largest head (start line and headers) accepted. Keel's own are a few hundred bytes;
/// this is generous for curl, proxies and Kubernetes, and small for PID 1's memory.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header lines accepted.
pub const MAX_HEADERS: usize = 64;

/// Why a head could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The peer closed the connection before sending anything.
    #[error("closed before sending anything")]
    Closed,
    #[error("head larger than {MAX_HEAD} bytes or {MAX_HEADERS} headers")]
    TooLarge,
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn malformed(m: impl Into<String>) -> HeadError {
    HeadError::Malformed(m.into())
}

/// Header fields in the order received; names compare without case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Any Transfer-Encoding at all.
    pub fn has_transfer_encoding(&self) -> bool {
        self.get("transfer-encoding").is_some()
    }

    /// The body is chunked (the last transfer coding is `chunked`).
    pub fn chunked(&self) -> bool {
        self.all("transfer-encoding")
            .flat_map(|v| v.split(','))
            .last()
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
    }

    /// Content-Length: digits only (`+5`, `5, 5` or spaces inside are how requests get
    /// smuggled), repeated only with the same value.
    fn content_length(&self) -> Result<Option<u64>, HeadError> {
        let mut length = None;
        for value in self.all("content-length") {
            let bad = || malformed(format!("bad Content-Length {value:?}"));
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let n: u64 = value.parse().map_err(|_| bad())?;
            if length.is_some_and(|old| old != n) {
                return Err(malformed("conflicting Content-Length headers"));
            }
            length = Some(n);
        }
        Ok(length)
    }

    fn from_httparse(raw: &[httparse::Header<'_>]) -> Result<Self, HeadError> {
        raw.iter()
            .map(|h| {
                let value = std::str::from_utf8(h.value)
                    .map_err(|_| malformed(format!("header {} is not UTF-8", h.name)))?;
                Ok((
                    h.name.to_owned(),
                    value.trim_matches([' ', '\t']).to_owned(),
                ))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Headers)
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The origin-form target: path and query, always starting with `/`.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Headers,
    /// The checked Content-Length, if one was sent.
    pub content_length: Option<u64>,
}

impl RequestHead {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// A parsed response head (an interim 1xx only from [`read_any_response_head`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub minor_version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub content_length: Option<u64>,
}

/// A head parsed from the start of a buffer, with its length; `None` while incomplete.
pub type Parsed<T> = Result<Option<(T, usize)>, HeadError>;

fn parse_error(what: &str, e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        e => malformed(format!("bad {what} head: {e}")),
    }
}

/// Parses a request head from the start of `buf`: `None` while incomplete, else the head
/// and its length in bytes (the body starts there).
pub fn parse_request_head(buf: &[u8]) -> Parsed<RequestHead> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    let len = match req.parse(buf).map_err(|e| parse_error("request", e))? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(len) => len,
    };
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(malformed("incomplete request line"));
    };
    if !target.starts_with('/') {
        return Err(malformed(format!("bad request target {target:?}")));
    }
    let headers = Headers::from_httparse(req.headers)?;
    let content_length = headers.content_length()?;
    let head = RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        minor_version,
        headers,
        content_length,
    };
    Ok(Some((head, len)))
}

/// Parses a response head from the start of `buf`, as [`parse_request_head`].
pub fn parse_response_head(buf: &[u8]) -> Parsed<ResponseHead> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut raw);
    let len = match res.parse(buf).map_err(|e| parse_error("response", e))? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(len) => len,
    };
    let (Some(status), Some(minor_version)) = (res.code, res.version) else {
        return Err(malformed("incomplete status line"));
    };
    let headers = Headers::from_httparse(res.headers)?;
    let content_length = headers.content_length()?;
    let head = ResponseHead {
        minor_version,
        status,
        reason: res.reason.unwrap_or_default().to_owned(),
        headers,
        content_length,
    };
    Ok(Some((head, len)))
}

/// Reads from `r` until `parse` finds a complete head within [`MAX_HEAD`] bytes. Returns
/// the head and the bytes read past it (the start of the body).
fn read_head<T>(
    r: &mut dyn Read,
    mut buf: Vec<u8>,
    parse: fn(&[u8]) -> Parsed<T>,
) -> Result<(T, Vec<u8>), HeadError> {
    let mut chunk = [0u8; 4096];
    loop {
        if !buf.is_empty() {
            if let Some((head, len)) = parse(&buf)? {
                if len > MAX_HEAD {
                    return Err(HeadError::TooLarge);
                }
                return Ok((head, buf.split_off(len)));
            }
            if buf.len() > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
        }
        // Never read more than the limit allows, so a slow client cannot grow the buffer.
        let room = (MAX_HEAD + 1 - buf.len().min(MAX_HEAD)).min(chunk.len());
        match r.read(&mut chunk[..room]) {
            Ok(0) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => return Err(malformed("connection closed inside the head")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A TLS peer that goes away without close_notify.
            Err(e) if buf.is_empty() && e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(HeadError::Closed);
            }
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Reads a request head. Returns it with the bytes read past it (the start of the body).
pub fn read_request_head(r: &mut dyn Read) -> Result<(RequestHead, Vec<u8>), HeadError> {
    read_head(r, Vec::with_capacity(1024), parse_request_head)
}

/// Reads the next response head, interim ones (`100 Continue`) included, starting with
/// `already` (bytes read past an earlier head): a client that sent `Expect: 100-continue`
/// learns from it whether to send its body. Returns it with the bytes read past it.
pub fn read_any_response_head(
    r: &mut dyn Read,
    already: Vec<u8>,
) -> Result<(ResponseHead, Vec<u8>), HeadError> {
    read_head(r, already, parse_response_head)
}

/// Reads a response head, skipping interim responses (`100 Continue`). Returns it with the
/// bytes read past it.
pub fn read_response_head(r: &mut dyn Read) -> Result<(ResponseHead, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let (head, rest) = read_head(r, buf, parse_response_head)?;
        if !(100..200).contains(&head.status) {
            return Ok((head, rest));
        }
        buf = rest;
    }
}
