use std::io::{self, Read};

use super::*;

fn req(bytes: &[u8]) -> Result<RequestHead, HeadError> {
    let mut wire = bytes.to_vec();
    wire.extend_from_slice(b"\r\n\r\n");
    match parse_request_head(&wire)? {
        Some((head, len)) if len == wire.len() => Ok(head),
        other => panic!("not one complete head: {other:?}"),
    }
}

#[test]
fn ipv6_urls_take_the_default_port() {
    // The bug of issue 12: `contains(':')` took the literal's colons for a port.
    let url = Url::parse("http://[fd00::1]/x").unwrap();
    assert_eq!(
        (url.host(), url.port(), url.target()),
        ("fd00::1", 80, "/x")
    );
    assert_eq!(url.authority(), "[fd00::1]");
    assert_eq!(url.to_string(), "http://[fd00::1]/x");
    let url = Url::parse("http://[fd00::1]:8080/x?y=1").unwrap();
    assert_eq!(
        (url.host(), url.port(), url.target()),
        ("fd00::1", 8080, "/x?y=1")
    );
    assert_eq!(url.authority(), "[fd00::1]:8080");
    let url = Url::parse("https://[::1]").unwrap();
    assert_eq!((url.port(), url.target()), (443, "/"));
    let addrs = Url::parse("http://[::1]/").unwrap().socket_addrs().unwrap();
    assert_eq!(addrs, vec!["[::1]:80".parse().unwrap()]);
}

#[test]
fn urls_with_names_and_ipv4() {
    let url = Url::parse("http://Config.Example:8000/nodes/a.toml#frag").unwrap();
    assert_eq!(url.host(), "config.example");
    assert_eq!((url.port(), url.target()), (8000, "/nodes/a.toml"));
    assert_eq!(url.authority(), "config.example:8000");
    let url = Url::parse("http://10.0.2.2?x").unwrap();
    assert_eq!(
        (url.host(), url.port(), url.target()),
        ("10.0.2.2", 80, "/?x")
    );
    assert_eq!(Url::parse("http://h:/").unwrap().port(), 80);
    assert_eq!(Url::parse("https://h:80/").unwrap().authority(), "h:80");
    for bad in [
        "ftp://h/x",
        "h/x",
        "http:///x",
        "http://fd00::1/x",
        "http://[fd00::1/x",
        "http://[fd00::1]8080/x",
        "http://[not-v6]/x",
        "http://h:0/",
        "http://h:65536/",
        "http://h:+80/",
        "http://h:x/",
        "http://user@h/",
        "http://h/a b",
        "http://h\r\nX: y/",
    ] {
        assert!(Url::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn parses_a_request_head() {
    let head = req(b"POST /v1/upgrade?force=1 HTTP/1.1\r\nHost: keel-node\r\ncontent-length:  42 \r\nContent-Type: application/x-tar\r\nExpect: 100-continue").unwrap();
    assert_eq!(
        (head.method.as_str(), head.target.as_str()),
        ("POST", "/v1/upgrade?force=1")
    );
    assert_eq!(head.path(), "/v1/upgrade");
    assert_eq!(head.minor_version, 1);
    assert_eq!(head.content_length, Some(42));
    assert_eq!(head.headers.get("CONTENT-TYPE"), Some("application/x-tar"));
    assert_eq!(head.headers.get("expect"), Some("100-continue"));
    assert!(!head.headers.has_transfer_encoding());
    let same_twice = req(b"GET / HTTP/1.0\r\nContent-Length: 5\r\nContent-Length: 5").unwrap();
    assert_eq!(same_twice.content_length, Some(5));
    assert_eq!(same_twice.minor_version, 0);
    let chunked = req(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked").unwrap();
    assert!(chunked.headers.chunked());
}

#[test]
fn malformed_heads_are_errors_not_panics() {
    for bad in [
        &b"GET /v1/status"[..],
        b"GET /v1/status HTTP/2.0",
        b"GET  /v1/status HTTP/1.1",
        b"GET v1/status HTTP/1.1",
        b"G(T /v1/status HTTP/1.1",
        b"GET /v1/status HTTP/1.1\r\nno colon",
        b"GET /v1/status HTTP/1.1\r\nA: b\r\n folded",
        b"GET /v1/status HTTP/1.1\r\nContent-Length: +5",
        b"GET /v1/status HTTP/1.1\r\nContent-Length: 5, 5",
        b"GET /v1/status HTTP/1.1\r\nContent-Length: -1",
        b"GET /v1/status HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6",
        b"GET /v1/status HTTP/1.1\r\nContent-Length: 99999999999999999999999",
        b"GET /v1/\xff HTTP/1.1",
        b"GET /v1/status HTTP/1.1\r\nX: \xff\xfe",
        b"\0\0\0",
    ] {
        assert!(
            matches!(req(bad), Err(HeadError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    for bad in [
        &b"garbage\r\n\r\n"[..],
        b"HTTP/1.1 2000 X\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
    ] {
        assert!(
            matches!(parse_response_head(bad), Err(HeadError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let many: String = std::iter::once("GET / HTTP/1.1".to_owned())
        .chain((0..=MAX_HEADERS).map(|i| format!("X-{i}: y")))
        .collect::<Vec<_>>()
        .join("\r\n");
    assert!(matches!(req(many.as_bytes()), Err(HeadError::TooLarge)));
}

/// Yields one byte per read.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((b, rest)), Some(out)) => {
                *out = *b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn reads_a_head_across_reads_and_keeps_the_body_start() {
    let wire = b"POST /v1/upgrade HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcNEXT";
    let (head, rest) = read_request_head(&mut Trickle(wire)).unwrap();
    assert_eq!(head.content_length, Some(3));
    assert!(
        rest.is_empty(),
        "one byte at a time reads nothing past the head"
    );
    let (_, rest) = read_request_head(&mut &wire[..]).unwrap();
    assert_eq!(rest, b"abcNEXT");
    assert!(matches!(
        read_request_head(&mut &b""[..]),
        Err(HeadError::Closed)
    ));
    assert!(matches!(
        read_request_head(&mut &b"GET / HTTP/1.1\r\n"[..]),
        Err(HeadError::Malformed(_))
    ));
}

#[test]
fn oversize_heads_are_refused() {
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.resize(MAX_HEAD + 10, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    assert!(matches!(
        read_request_head(&mut &big[..]),
        Err(HeadError::TooLarge)
    ));
    // Without an end the reader stops at the limit instead of reading on.
    let mut endless = io::repeat(b'a');
    let mut prefixed = b"HTTP/1.1 200 OK\r\nX: ".chain(&mut endless);
    assert!(matches!(
        read_response_head(&mut prefixed),
        Err(HeadError::TooLarge)
    ));
    // Exactly at the limit is accepted.
    let mut exact = b"GET / HTTP/1.1\r\nX: ".to_vec();
    exact.resize(MAX_HEAD - 4, b'a');
    exact.extend_from_slice(b"\r\n\r\n");
    assert_eq!(exact.len(), MAX_HEAD);
    assert!(read_request_head(&mut &exact[..]).is_ok());
}

#[test]
fn interim_responses_are_skipped() {
    let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    let (head, early) = read_response_head(&mut Trickle(wire)).unwrap();
    assert_eq!((head.status, head.reason.as_str()), (201, "Created"));
    assert_eq!(read_body(&head, early, &mut &b"ok"[..], 10).unwrap(), b"ok");
    assert!(matches!(
        read_response_head(&mut &b"garbage"[..]),
        Err(HeadError::Malformed(_))
    ));
}

fn response(wire: &[u8], max: u64) -> io::Result<Vec<u8>> {
    let mut wire = wire;
    let (head, early) = read_response_head(&mut wire).map_err(io::Error::other)?;
    read_body(&head, early, &mut wire, max)
}

#[test]
fn content_length_bodies_are_bounded() {
    assert_eq!(
        response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef", 10).unwrap(),
        b"abc"
    );
    let err = response(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", 10).unwrap_err();
    assert!(err.to_string().contains("larger than 10 bytes"), "{err}");
    let err = response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", 10).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    assert!(err.to_string().contains("after 2 of 5 bytes"), "{err}");
    // Up to the close, bounded too.
    assert_eq!(
        response(b"HTTP/1.0 200 OK\r\n\r\nto the end", 10).unwrap(),
        b"to the end"
    );
    assert!(response(b"HTTP/1.0 200 OK\r\n\r\nto the end!", 10).is_err());
    assert_eq!(
        response(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", 10).unwrap(),
        b""
    );

    // A streamed request body: early bytes, then the wire, never past its length.
    let mut wire: &[u8] = b"defgh-and-the-next-request";
    let mut body = Body::new(b"abc".to_vec(), &mut wire, 8);
    let mut got = Vec::new();
    body.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"abcdefgh");
    assert_eq!(wire, b"-and-the-next-request");
    let mut nothing: &[u8] = b"";
    let mut got = Vec::new();
    Body::new(b"abcdef".to_vec(), &mut nothing, 2)
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, b"ab");
}

#[test]
fn chunked_bodies() {
    let wire = b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\n{\"mes\r\n1b\r\nsage\":\"already exists\"}    \r\n0\r\nTrailer: x\r\n\r\n";
    assert_eq!(
        response(wire, 100).unwrap(),
        b"{\"message\":\"already exists\"}    "
    );
    let err = response(wire, 10).unwrap_err();
    assert!(err.to_string().contains("larger than 10"), "{err}");
    for bad in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n",
    ] {
        assert!(
            response(bad, 100).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    // Endless trailers end in an error, not a loop for as long as the peer sends.
    let trailers = "X: y\r\n".repeat(MAX_HEADERS + 2);
    let wire = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n{trailers}\r\n");
    let err = response(wire.as_bytes(), 100).unwrap_err();
    assert!(err.to_string().contains("trailer"), "{err}");
    let few = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n\r\n";
    assert_eq!(response(few, 100).unwrap(), b"");
}

#[test]
fn request_and_response_round_trips() {
    let head = request_head(
        "POST",
        "/api/v1/x?y=1",
        &[("Host", "[fd00::1]:6443"), ("Content-Length", "4")],
    )
    .unwrap();
    let mut wire = head.clone();
    wire.extend_from_slice(b"body");
    let (parsed, early) = read_request_head(&mut &wire[..]).unwrap();
    assert_eq!(
        (parsed.method.as_str(), parsed.target.as_str()),
        ("POST", "/api/v1/x?y=1")
    );
    assert_eq!(parsed.headers.get("host"), Some("[fd00::1]:6443"));
    assert_eq!(
        (parsed.content_length, early.as_slice()),
        (Some(4), &b"body"[..])
    );

    let mut response = Response::new(404, "Not Found", "text/plain", b"no such thing".to_vec());
    response.headers.push(("Allow", "GET".into()));
    let mut wire = Vec::new();
    response.write_to(&mut wire).unwrap();
    let mut r = &wire[..];
    let (head, early) = read_response_head(&mut r).unwrap();
    assert_eq!((head.status, head.reason.as_str()), (404, "Not Found"));
    assert_eq!(head.headers.get("allow"), Some("GET"));
    assert_eq!(head.headers.get("connection"), Some("close"));
    assert_eq!(
        read_body(&head, early, &mut r, 100).unwrap(),
        b"no such thing"
    );

    // Values from input cannot inject header lines.
    assert!(request_head("GET", "/", &[("Host", "h\r\nX: y")]).is_err());
    assert!(request_head("GET", "/a b", &[]).is_err());
    assert!(request_head("G T", "/", &[]).is_err());
    response.headers.push(("X", "a\nb".into()));
    assert!(response.write_to(&mut Vec::new()).is_err());
}

#[test]
fn a_chunked_stream_reads_back_what_was_written_and_a_cut_one_fails() {
    use std::io::{Read, Write};
    let mut writer = crate::ChunkedWriter::new(Vec::new());
    for part in [&b"hello "[..], b"", b"chunked world"] {
        writer.write_all(part).unwrap();
    }
    let wire = writer.finish().unwrap();
    let mut back = Vec::new();
    crate::ChunkedReader::new(&wire[..])
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, b"hello chunked world");
    // Without the last chunk, and cut inside a chunk: errors, never a short body.
    for cut in [wire.len() - 5, 10] {
        let mut out = Vec::new();
        let result = crate::ChunkedReader::new(&wire[..cut]).read_to_end(&mut out);
        assert!(result.is_err(), "cut at {cut}");
    }
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut response = head.to_vec();
    response.extend_from_slice(&wire);
    let (head, early) = crate::read_response_head(&mut &response[..]).unwrap();
    let mut rest: &[u8] = &[];
    let mut body = Vec::new();
    crate::body_reader(&head, early, &mut rest)
        .read_to_end(&mut body)
        .unwrap();
    assert_eq!(body, b"hello chunked world");
}
