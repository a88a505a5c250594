//! Writing requests and responses.

use std::io::{self, Write};

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// A header value may not end the line early (CR, LF) or carry NUL: that is how a value
/// taken from input would inject headers.
fn check_header(name: &str, value: &str) -> io::Result<()> {
    if !is_token(name) {
        return Err(invalid(format!("bad header name {name:?}")));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(invalid(format!("bad value of header {name}: {value:?}")));
    }
    Ok(())
}

/// An HTTP/1.1 request head, ready to write in one piece (a server that answers as soon as
/// it has the request line must not find the rest arriving after it closed). `headers`
/// should hold Host, and Content-Length when a body follows.
pub fn request_head(method: &str, target: &str, headers: &[(&str, &str)]) -> io::Result<Vec<u8>> {
    if !is_token(method) {
        return Err(invalid(format!("bad method {method:?}")));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(invalid(format!("bad request target {target:?}")));
    }
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        check_header(name, value)?;
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    Ok(head.into_bytes())
}

/// A response head, ready to write in one piece before a body streamed after it (a file):
/// `HTTP/1.1 STATUS REASON`, then `headers` as given (Content-Length among them).
pub fn response_head(status: u16, headers: &[(&str, &str)]) -> io::Result<Vec<u8>> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        check_header(name, value)?;
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    Ok(head.into_bytes())
}

/// The reason phrase of the statuses Keel sends (clients must not rely on it).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A response; always `Connection: close` (one request per connection keeps servers
/// simple, and Keel's clients make one call per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: &'static str,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(
        status: u16,
        reason: &'static str,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> Self {
        Response {
            status,
            reason,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// Head and body in one write, then a flush.
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            check_header(name, value)?;
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        w.write_all(&bytes)?;
        w.flush()
    }
}
