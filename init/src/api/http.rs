//! The small part of HTTP/1.1 the node API needs, by hand: one request per connection, a
//! bounded head, Content-Length bodies only. (hyper would bring tokio into PID 1.)

use std::io::{self, Read, Write};

use keel_contract::api::ErrorKind;

/// The largest request head (request line and headers) accepted. Ours are a few hundred
/// bytes; this is generous for curl and proxies and small enough for PID 1's memory.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header lines accepted.
pub const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    pub content_length: Option<u64>,
    pub content_type: Option<String>,
    /// Any Transfer-Encoding: refused, since a body must have a Content-Length.
    pub transfer_encoding: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before it sends the body.
    pub expect_continue: bool,
}

#[derive(Debug)]
pub enum HeadError {
    /// The client closed the connection before sending anything.
    Closed,
    TooLarge,
    Malformed(String),
    Io(io::Error),
}

impl HeadError {
    /// The response to send, if one is worth sending.
    pub fn response(&self) -> Option<(ErrorKind, String)> {
        match self {
            HeadError::Closed | HeadError::Io(_) => None,
            HeadError::TooLarge => Some((
                ErrorKind::HeadersTooLarge,
                format!("request head larger than {MAX_HEAD} bytes or {MAX_HEADERS} headers"),
            )),
            HeadError::Malformed(m) => Some((ErrorKind::BadRequest, m.clone())),
        }
    }
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Closed => f.write_str("closed before a request"),
            HeadError::TooLarge => f.write_str("request head too large"),
            HeadError::Malformed(m) => write!(f, "malformed request: {m}"),
            HeadError::Io(e) => write!(f, "reading the request: {e}"),
        }
    }
}

/// Reads the request head. Returns it with the bytes read past it (the start of the body).
pub fn read_head(r: &mut dyn Read) -> Result<(Head, Vec<u8>), HeadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = match r.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => {
                return Err(HeadError::Malformed(
                    "connection closed inside the request head".into(),
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if buf.is_empty() && e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(HeadError::Closed);
            }
            Err(e) => return Err(HeadError::Io(e)),
        };
        // Search only where the terminator can newly appear.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = find(&buf[from..], b"\r\n\r\n") {
            break from + pos;
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    };
    if end + 4 > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let rest = buf.split_off(end + 4);
    buf.truncate(end);
    let head = parse_head(&buf)?;
    Ok((head, rest))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn malformed(m: impl Into<String>) -> HeadError {
    HeadError::Malformed(m.into())
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses the head without its final CRLF CRLF.
pub fn parse_head(bytes: &[u8]) -> Result<Head, HeadError> {
    let text = std::str::from_utf8(bytes).map_err(|_| malformed("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(format!("bad request line {request_line:?}")));
    };
    if !is_token(method) {
        return Err(malformed(format!("bad method {method:?}")));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(malformed(format!("bad request target {target:?}")));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(malformed(format!("unsupported protocol {version:?}")));
    }
    let mut head = Head {
        method: method.to_owned(),
        target: target.to_owned(),
        content_length: None,
        content_type: None,
        transfer_encoding: false,
        expect_continue: false,
    };
    let mut count = 0;
    for line in lines {
        count += 1;
        if count > MAX_HEADERS {
            return Err(HeadError::TooLarge);
        }
        if line.starts_with([' ', '\t']) {
            return Err(malformed("folded header lines are not accepted"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(malformed(format!("bad header line {line:?}")));
        };
        if !is_token(name) {
            return Err(malformed(format!("bad header name {name:?}")));
        }
        let value = value.trim_matches([' ', '\t']);
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                // Digits only: `+5`, `5, 5` or spaces are how requests get smuggled.
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(malformed(format!("bad Content-Length {value:?}")));
                }
                let n: u64 = value
                    .parse()
                    .map_err(|_| malformed(format!("bad Content-Length {value:?}")))?;
                if head.content_length.is_some_and(|old| old != n) {
                    return Err(malformed("conflicting Content-Length headers"));
                }
                head.content_length = Some(n);
            }
            "transfer-encoding" => head.transfer_encoding = true,
            "content-type" => head.content_type = Some(value.to_owned()),
            "expect" => {
                if value.eq_ignore_ascii_case("100-continue") {
                    head.expect_continue = true;
                } else {
                    return Err(malformed(format!("unsupported Expect {value:?}")));
                }
            }
            _ => {}
        }
    }
    Ok(head)
}

/// A request body of a known length: the bytes read with the head, then the connection. It
/// ends at Content-Length whatever the client sends after, and a connection that ends early
/// is an error (`UnexpectedEof`), never a short body that looks complete.
pub struct Body<'a> {
    early: Vec<u8>,
    early_pos: usize,
    inner: &'a mut dyn Read,
    total: u64,
    remaining: u64,
}

impl<'a> Body<'a> {
    pub fn new(early: Vec<u8>, inner: &'a mut dyn Read, len: u64) -> Self {
        Body {
            early,
            early_pos: 0,
            inner,
            total: len,
            remaining: len,
        }
    }

    /// Bytes of the body still to come from the connection (not yet read with the head).
    pub fn unread_on_wire(&self) -> u64 {
        let early_left = (self.early.len() - self.early_pos) as u64;
        self.remaining.saturating_sub(early_left)
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = if self.early_pos < self.early.len() {
            let n = max.min(self.early.len() - self.early_pos);
            buf[..n].copy_from_slice(&self.early[self.early_pos..self.early_pos + n]);
            self.early_pos += n;
            n
        } else {
            match self.inner.read(&mut buf[..max]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the client disconnected after {} of {} bytes",
                            self.total - self.remaining,
                            self.total
                        ),
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the client disconnected after {} of {} bytes ({e})",
                            self.total - self.remaining,
                            self.total
                        ),
                    ));
                }
                Err(e) => return Err(e),
            }
        };
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A response; always `Connection: close` (one request per connection keeps the server
/// simple, and keel makes one call per command).
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

    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        w.write_all(&bytes)?;
        w.flush()
    }
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
