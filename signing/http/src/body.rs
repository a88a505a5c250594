//! Bodies: a Content-Length body streamed (uploads are never buffered whole), and a response
//! body of any framing collected up to a limit.

use std::io::{self, BufRead, BufReader, Read};

use crate::ResponseHead;

/// A body of a known length: the bytes read with the head, then the connection. It ends at
/// its length whatever the peer sends after, and a connection that ends early is an error
/// (`UnexpectedEof`), never a short body that looks complete.
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

    fn short(&self, cause: Option<&io::Error>) -> io::Error {
        let done = self.total - self.remaining;
        let total = self.total;
        let message = match cause {
            Some(e) => format!("the peer disconnected after {done} of {total} bytes ({e})"),
            None => format!("the peer disconnected after {done} of {total} bytes"),
        };
        io::Error::new(io::ErrorKind::UnexpectedEof, message)
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
        let n = if let Some(early) = self.early.get(self.early_pos..).filter(|e| !e.is_empty()) {
            let n = max.min(early.len());
            buf[..n].copy_from_slice(&early[..n]);
            self.early_pos += n;
            n
        } else {
            match self.inner.read(&mut buf[..max]) {
                Ok(0) => return Err(self.short(None)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(self.short(Some(&e)));
                }
                Err(e) => return Err(e),
            }
        };
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// The bytes read with the head, then the connection.
pub(crate) struct Prefixed<'a> {
    early: io::Cursor<Vec<u8>>,
    inner: &'a mut dyn Read,
}

impl<'a> Prefixed<'a> {
    pub(crate) fn new(early: Vec<u8>, inner: &'a mut dyn Read) -> Self {
        Prefixed {
            early: io::Cursor::new(early),
            inner,
        }
    }
}

impl Read for Prefixed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.early.read(buf)? {
            0 => self.inner.read(buf),
            n => Ok(n),
        }
    }
}

fn too_large(max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("response body larger than {max} bytes"),
    )
}

pub(crate) fn bad_chunk(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed chunked body: {what}"),
    )
}

/// Reads the body of a response whose head was `head` (with `early`, the bytes read past
/// it): chunked, of a Content-Length, or up to the close. Refuses more than `max` bytes.
/// A close without TLS close_notify (`UnexpectedEof`) ends a close-delimited body, as many
/// servers close that way; a Content-Length or chunked body cut short is an error.
pub fn read_body(
    head: &ResponseHead,
    early: Vec<u8>,
    r: &mut dyn Read,
    max: u64,
) -> io::Result<Vec<u8>> {
    // No body, whatever the headers say (RFC 9112 6.3).
    if head.status == 204 || head.status == 304 {
        return Ok(Vec::new());
    }
    let mut wire = Prefixed {
        early: io::Cursor::new(early),
        inner: r,
    };
    if head.headers.chunked() {
        return dechunk(&mut BufReader::new(wire), max);
    }
    if let Some(len) = head.content_length {
        if len > max {
            return Err(too_large(max));
        }
        let mut body = Vec::new();
        Body::new(Vec::new(), &mut wire, len).read_to_end(&mut body)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    match (&mut wire)
        .take(max.saturating_add(1))
        .read_to_end(&mut body)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e),
    }
    if body.len() as u64 > max {
        return Err(too_large(max));
    }
    Ok(body)
}

/// A line of a chunked body (size line or trailer), without its CRLF; bounded.
pub(crate) fn chunk_line(r: &mut dyn BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    (&mut *r).take(1024).read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(bad_chunk("a line without CRLF, too long, or cut short"));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| bad_chunk("a line that is not UTF-8"))
}

fn dechunk(r: &mut dyn BufRead, max: u64) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = chunk_line(r)?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| bad_chunk(&format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line; as many as a head may have headers.
            for _ in 0..=crate::MAX_HEADERS {
                if chunk_line(r)?.is_empty() {
                    return Ok(body);
                }
            }
            return Err(bad_chunk("too many trailer lines"));
        }
        if (body.len() as u64).saturating_add(size) > max {
            return Err(too_large(max));
        }
        let before = body.len();
        (&mut *r).take(size).read_to_end(&mut body)?;
        if ((body.len() - before) as u64) < size {
            return Err(bad_chunk("cut short"));
        }
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)
            .map_err(|_| bad_chunk("chunk without its CRLF"))?;
        if &crlf != b"\r\n" {
            return Err(bad_chunk("chunk longer than its size"));
        }
    }
}
