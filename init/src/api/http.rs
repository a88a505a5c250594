//! The node API's view of HTTP/1.1: keel-http's heads, bodies and responses (shared with
//! the `keel node` client and the other HTTP users), plus what this server insists on: one
//! request per connection, Content-Length bodies only, `Expect: 100-continue` or nothing.
//! (hyper would bring tokio into PID 1.)

use keel_contract::api::ErrorKind;

pub use keel_http::{Body, CONTINUE, HeadError, MAX_HEAD, MAX_HEADERS, Response};

/// A request head, as the API routes it.
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

/// The response to send for a head that could not be read, if one is worth sending.
pub fn refusal(e: &HeadError) -> Option<(ErrorKind, String)> {
    match e {
        HeadError::Closed | HeadError::Io(_) => None,
        HeadError::TooLarge => Some((
            ErrorKind::HeadersTooLarge,
            format!("request head larger than {MAX_HEAD} bytes or {MAX_HEADERS} headers"),
        )),
        HeadError::Malformed(m) => Some((ErrorKind::BadRequest, m.clone())),
    }
}

fn from_shared(head: keel_http::RequestHead) -> Result<Head, HeadError> {
    let expect_continue = match head.headers.get("expect") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("100-continue") => true,
        Some(v) => return Err(HeadError::Malformed(format!("unsupported Expect {v:?}"))),
    };
    Ok(Head {
        transfer_encoding: head.headers.has_transfer_encoding(),
        content_type: head.headers.get("content-type").map(str::to_owned),
        expect_continue,
        content_length: head.content_length,
        method: head.method,
        target: head.target,
    })
}

/// Reads the request head. Returns it with the bytes read past it (the start of the body).
pub fn read_head(r: &mut dyn std::io::Read) -> Result<(Head, Vec<u8>), HeadError> {
    let (head, rest) = keel_http::read_request_head(r)?;
    Ok((from_shared(head)?, rest))
}

/// Parses a head given without its final CRLF CRLF (the tests' form).
#[cfg(test)]
pub fn parse_head(bytes: &[u8]) -> Result<Head, HeadError> {
    let mut wire = bytes.to_vec();
    wire.extend_from_slice(b"\r\n\r\n");
    match keel_http::parse_request_head(&wire)? {
        Some((head, len)) if len == wire.len() => from_shared(head),
        _ => Err(HeadError::Malformed("not one complete head".into())),
    }
}
