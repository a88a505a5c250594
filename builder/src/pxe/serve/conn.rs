//! One connection: one request (`Connection: close`), GET or HEAD, a file streamed whole or
//! one byte range of it, and one access line.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use keel_http::{HeadError, RequestHead};

use super::{Route, Site};

/// How long a client may take to send its request head (iPXE sends it at once).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one write may block on a client that stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes read from a file per write to the client: few system calls for a root image of
/// hundreds of MiB, and 16 MiB at most for all connections together.
const COPY_BUFFER: usize = 256 * 1024;

/// A satisfiable byte range, both ends inclusive (as `Content-Range` writes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What a `Range` header asks of a file of a known length (RFC 9110, section 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No header, one this server does not do (several ranges, another unit) or a
    /// malformed one: the whole file, 200 (a server may ignore Range).
    Full,
    Partial(ByteRange),
    /// 416.
    Unsatisfiable,
}

/// Reads `bytes=FIRST-LAST`, `bytes=FIRST-` and `bytes=-SUFFIX`.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return match number(last) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if len == 0 => RangeRequest::Unsatisfiable,
            Some(suffix) => RangeRequest::Partial(ByteRange {
                start: len.saturating_sub(suffix),
                end: len - 1,
            }),
        };
    }
    let Some(start) = number(first) else {
        return RangeRequest::Full;
    };
    let end = match last {
        "" => None,
        last => match number(last) {
            Some(end) if end >= start => Some(end),
            _ => return RangeRequest::Full,
        },
    };
    if start >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial(ByteRange {
        start,
        end: end.map_or(len - 1, |e| e.min(len - 1)),
    })
}

fn content_type(path: &std::path::Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        Some("ipxe" | "minisig" | "toml") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// What was answered, for the access line.
struct Outcome {
    status: u16,
    bytes: u64,
}

/// Serves one request on `stream` and logs it.
pub(super) fn handle(mut stream: TcpStream, site: &Site, log: &dyn Fn(&str)) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "-".to_owned(), |a| a.to_string());
    let _ = stream.set_read_timeout(Some(HEAD_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let head = match keel_http::read_request_head(&mut stream) {
        Ok((head, _)) => head,
        Err(HeadError::Closed) => return,
        Err(e) => {
            let status = if matches!(e, HeadError::TooLarge) {
                431
            } else {
                400
            };
            let sent = small(&mut stream, status, &[], format!("{e}\n").as_bytes(), true);
            log(&access_line("-", "-", status, sent, &peer));
            return;
        }
    };
    let local = stream.local_addr().ok();
    let outcome = respond(&mut stream, site, &head, local);
    let (status, bytes) = match outcome {
        Ok(o) => (o.status, o.bytes),
        // The client went away mid-body: its status was sent; say how far it got.
        Err((status, bytes, e)) => {
            log(&format!("{} {} ({e})", head.method, escape(head.path())));
            (status, bytes)
        }
    };
    log(&access_line(
        &head.method,
        &escape(head.path()),
        status,
        bytes,
        &peer,
    ));
}

/// `METHOD PATH STATUS BYTES PEER`.
fn access_line(method: &str, path: &str, status: u16, bytes: u64, peer: &str) -> String {
    format!("{method} {path} {status} {bytes} {peer}")
}

/// A path as a log line may show it: no control characters.
fn escape(path: &str) -> String {
    path.chars().flat_map(char::escape_debug).collect()
}

type Failed = (u16, u64, io::Error);

fn respond(
    stream: &mut TcpStream,
    site: &Site,
    head: &RequestHead,
    local: Option<SocketAddr>,
) -> Result<Outcome, Failed> {
    let body = head.method == "GET";
    if !body && head.method != "HEAD" {
        let sent = small(
            stream,
            405,
            &[("Allow", "GET, HEAD")],
            b"GET or HEAD\n",
            true,
        );
        return Ok(Outcome {
            status: 405,
            bytes: sent,
        });
    }
    let text = |stream: &mut TcpStream, status: u16, text: String| Outcome {
        status,
        bytes: small(stream, status, &[], text.as_bytes(), body),
    };
    match site.route(head.path()) {
        Route::Index => Ok(text(stream, 200, site.index())),
        Route::NotFound => Ok(text(stream, 404, "not found\n".into())),
        Route::Base { prefix } => {
            let host = host_of(head, local);
            let script = crate::pxe::script::base_script(
                &format!("http://{host}{prefix}"),
                &format!("http://{host}/{}/", keel_contract::output::pxe::CONFIGS_DIR),
            );
            Ok(text(stream, 200, script))
        }
        Route::File(path) => send_file(stream, &path, head, body),
    }
}

/// The authority the client used (so the URLs in the base script reach this server the way
/// the client did), if it is a plain host[:port]; else the address it connected to.
fn host_of(head: &RequestHead, local: Option<SocketAddr>) -> String {
    let plain = |h: &&str| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    };
    match (head.headers.get("host").filter(plain), local) {
        (Some(host), _) => host.to_owned(),
        (None, Some(addr)) => addr.to_string(),
        (None, None) => "localhost".to_owned(),
    }
}

fn send_file(
    stream: &mut TcpStream,
    path: &std::path::Path,
    head: &RequestHead,
    body: bool,
) -> Result<Outcome, Failed> {
    let opened = File::open(path).and_then(|f| {
        let meta = f.metadata()?;
        Ok((f, meta))
    });
    let (mut file, meta) = match opened {
        Ok((f, meta)) if meta.is_file() => (f, meta),
        Ok(_) | Err(_) => {
            let sent = small(stream, 404, &[], b"not found\n", body);
            return Ok(Outcome {
                status: 404,
                bytes: sent,
            });
        }
    };
    let len = meta.len();
    let kind = content_type(path);
    let (status, range) = match parse_range(head.headers.get("range"), len) {
        RangeRequest::Full => (200, None),
        RangeRequest::Partial(r) => (206, Some(r)),
        RangeRequest::Unsatisfiable => {
            let unsatisfied = format!("bytes */{len}");
            let sent = small(
                stream,
                416,
                &[("Content-Range", &unsatisfied)],
                b"range not satisfiable\n",
                body,
            );
            return Ok(Outcome {
                status: 416,
                bytes: sent,
            });
        }
    };
    let (start, count) = range.map_or((0, len), |r| (r.start, r.len()));
    let length = count.to_string();
    let content_range = range.map(|r| format!("bytes {}-{}/{len}", r.start, r.end));
    let mut headers = vec![
        ("Content-Type", kind),
        ("Content-Length", length.as_str()),
        ("Accept-Ranges", "bytes"),
        ("Connection", "close"),
    ];
    if let Some(cr) = &content_range {
        headers.push(("Content-Range", cr.as_str()));
    }
    let failed = |bytes, e| (status, bytes, e);
    let head_bytes = keel_http::response_head(status, &headers).map_err(|e| failed(0, e))?;
    stream.write_all(&head_bytes).map_err(|e| failed(0, e))?;
    if !body {
        return Ok(Outcome { status, bytes: 0 });
    }
    match copy_range(&mut file, stream, start, count) {
        Ok(()) => Ok(Outcome {
            status,
            bytes: count,
        }),
        Err((sent, e)) => Err(failed(sent, e)),
    }
}

/// Sends `count` bytes of `file` from `start`; on failure, how many were sent.
fn copy_range(
    file: &mut File,
    stream: &mut TcpStream,
    start: u64,
    count: u64,
) -> Result<(), (u64, io::Error)> {
    file.seek(SeekFrom::Start(start)).map_err(|e| (0, e))?;
    let mut sent = 0u64;
    let mut buf = vec![0u8; COPY_BUFFER];
    while sent < count {
        let want = usize::try_from(count - sent).map_or(buf.len(), |n| n.min(buf.len()));
        let n = match file.read(&mut buf[..want]) {
            // The file shrank under us: the client sees a short body and must refuse it.
            Ok(0) => {
                let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank");
                return Err((sent, e));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((sent, e)),
        };
        stream.write_all(&buf[..n]).map_err(|e| (sent, e))?;
        sent += n as u64;
    }
    Ok(())
}

/// A short answer (text) in one write; returns the body bytes sent (0 for HEAD).
fn small(
    stream: &mut TcpStream,
    status: u16,
    extra: &[(&str, &str)],
    text: &[u8],
    body: bool,
) -> u64 {
    let length = text.len().to_string();
    let mut headers = vec![
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", length.as_str()),
        ("Connection", "close"),
    ];
    headers.extend_from_slice(extra);
    let Ok(mut bytes) = keel_http::response_head(status, &headers) else {
        return 0;
    };
    if body {
        bytes.extend_from_slice(text);
    }
    match stream.write_all(&bytes).and_then(|()| stream.flush()) {
        Ok(()) if body => text.len() as u64,
        _ => 0,
    }
}

/// Past [`super::MAX_CONNECTIONS`]: 503 without reading the request.
pub(super) fn refuse_busy(mut stream: TcpStream, log: &dyn Fn(&str)) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "-".to_owned(), |a| a.to_string());
    let sent = small(
        &mut stream,
        503,
        &[("Retry-After", "1")],
        b"busy: try again\n",
        true,
    );
    log(&access_line("-", "-", 503, sent, &peer));
}
