//! HTTP handling over plain TCP (the TLS side is tested end to end with keel's client in
//! builder/tests/node_api.rs).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_contract::api::{ErrorBody, RollbackReport, Status, UpgradeReport, Version};
use sha2::{Digest, Sha256};

use super::http::{self, Body, HeadError, MAX_HEAD};
use super::*;

/// What an upgrade handler saw: (bytes, sha256), or the body's read error.
type Seen = Result<(u64, Vec<u8>), String>;

#[derive(Default)]
struct Fake {
    calls: AtomicUsize,
    upload: Mutex<Option<Seen>>,
    /// Refuse an upgrade (409) after reading this many bytes.
    refuse_after: Option<usize>,
    panic_in_status: bool,
}

impl Fake {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn wait_upload(&self) -> Seen {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(r) = self.upload.lock().unwrap().take() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the upgrade handler never finished");
    }
}

impl NodeApi for Fake {
    fn version(&self) -> Version {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Version {
            name: "keel-test".into(),
            version: "1.0.0".into(),
            slot: "a".into(),
            arch: "x86_64".into(),
            keel: "0.1.0".into(),
        }
    }
    fn status(&self) -> Status {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.panic_in_status {
            panic!("a bug in the status handler");
        }
        Status {
            name: "keel-test".into(),
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
            timeline: vec![],
            diskless: None,
            ready: true,
            vip: None,
        }
    }
    fn logs(&self, service: &str, lines: usize) -> Result<String, ApiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(format!("{service} {lines}\n"))
    }
    fn reboot(&self) -> Result<(), ApiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn shutdown(&self) -> Result<(), ApiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn upgrade(
        &self,
        body: &mut dyn Read,
        len: u64,
        _force: bool,
        _reboot: bool,
    ) -> Result<UpgradeReport, ApiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(n) = self.refuse_after {
            let mut first = vec![0u8; n];
            body.read_exact(&mut first)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            return Err(ApiError::conflict("1.0.0 is quarantined"));
        }
        let mut hasher = Sha256::new();
        let mut buf = [0u8; 8192];
        let mut total = 0u64;
        let result = loop {
            match body.read(&mut buf) {
                Ok(0) => break Ok((total, hasher.finalize().to_vec())),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    total += n as u64;
                }
                Err(e) => break Err(format!("{:?}: {e}", e.kind())),
            }
        };
        *self.upload.lock().unwrap() = Some(result.clone());
        match result {
            Ok((bytes, _)) => Ok(UpgradeReport {
                from: "1.0.0".into(),
                to: "1.1.0".into(),
                slot: "b".into(),
                bytes,
                reboot: false,
            }),
            Err(e) => Err(ApiError::internal(e)),
        }
        .and_then(|r| {
            if r.bytes == len {
                Ok(r)
            } else {
                Err(ApiError::internal("short"))
            }
        })
    }
    fn rollback(&self) -> Result<RollbackReport, ApiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(ApiError::conflict("slot b is empty"))
    }
}

pub(super) fn options() -> ServerOptions {
    ServerOptions {
        max_connections: 4,
        max_per_peer: 4,
        handshake_timeout: Duration::from_secs(5),
        head_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(5),
    }
}

/// `handle` on plain TCP connections, one thread each, for an admin.
fn plain_server(api: Arc<Fake>, opts: ServerOptions) -> SocketAddr {
    plain_server_as(api, opts, OperatorRole::Admin)
}

/// As [`plain_server`], every client in `role`.
pub(super) fn plain_server_as<A: NodeApi + 'static>(
    api: Arc<A>,
    opts: ServerOptions,
    role: OperatorRole,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let api = api.clone();
            let opts = opts.clone();
            std::thread::spawn(move || {
                let mut s = Socket::new(
                    tcp,
                    Some(Instant::now() + opts.head_timeout),
                    opts.idle_timeout,
                )
                .unwrap();
                handle(&mut s, api.as_ref(), role, &opts);
                s.close_write();
                let _ = s.tcp.shutdown(Shutdown::Both);
            });
        }
    });
    addr
}

/// Sends `request`, reads the whole response.
pub(super) fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(request).unwrap();
    // Up to the close (a reset after the response would be a server bug, but keep what
    // came before it so the assertion shows it).
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

pub(super) fn body_of(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
}

#[test]
fn parses_a_request_head() {
    let head = http::parse_head(
        b"POST /v1/upgrade?force=1 HTTP/1.1\r\nHost: keel-node\r\ncontent-length:  42 \r\nContent-Type: application/x-tar\r\nExpect: 100-continue",
    )
    .unwrap();
    assert_eq!(head.method, "POST");
    assert_eq!(head.target, "/v1/upgrade?force=1");
    assert_eq!(head.content_length, Some(42));
    assert_eq!(head.content_type.as_deref(), Some("application/x-tar"));
    assert!(head.expect_continue);
    assert!(!head.transfer_encoding);
    let same_twice =
        http::parse_head(b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5").unwrap();
    assert_eq!(same_twice.content_length, Some(5));
}

#[test]
fn refuses_malformed_heads() {
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
        b"GET /v1/status HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6",
        b"GET /v1/status HTTP/1.1\r\nContent-Length: 99999999999999999999999",
        b"GET /v1/status HTTP/1.1\r\nExpect: something",
        b"GET /v1/\xff HTTP/1.1",
    ] {
        assert!(
            matches!(http::parse_head(bad), Err(HeadError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let many: String = std::iter::once("GET / HTTP/1.1".to_owned())
        .chain((0..=http::MAX_HEADERS).map(|i| format!("X-{i}: y")))
        .collect::<Vec<_>>()
        .join("\r\n");
    assert!(matches!(
        http::parse_head(many.as_bytes()),
        Err(HeadError::TooLarge)
    ));
}

/// Yields one byte per read.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() || buf.is_empty() {
            return Ok(0);
        }
        buf[0] = self.0[0];
        self.0 = &self.0[1..];
        Ok(1)
    }
}

#[test]
fn reads_a_head_across_reads_and_keeps_the_body_start() {
    let wire = b"POST /v1/upgrade HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcNEXT";
    let (head, rest) = http::read_head(&mut Trickle(wire)).unwrap();
    assert_eq!(head.content_length, Some(3));
    assert!(
        rest.is_empty(),
        "one byte at a time reads nothing past the head"
    );
    let (_, rest) = http::read_head(&mut &wire[..]).unwrap();
    assert_eq!(rest, b"abcNEXT");

    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.resize(MAX_HEAD + 10, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    assert!(matches!(
        http::read_head(&mut &big[..]),
        Err(HeadError::TooLarge)
    ));
    assert!(matches!(
        http::read_head(&mut &b""[..]),
        Err(HeadError::Closed)
    ));
    assert!(matches!(
        http::read_head(&mut &b"GET / HTTP/1.1\r\n"[..]),
        Err(HeadError::Malformed(_))
    ));
}

#[test]
fn a_body_stops_at_its_length_and_a_short_one_is_an_error() {
    let mut wire: &[u8] = b"defgh-and-the-next-request";
    let mut body = Body::new(b"abc".to_vec(), &mut wire, 8);
    let mut got = Vec::new();
    body.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"abcdefgh");
    assert_eq!(wire, b"-and-the-next-request", "nothing read past the body");

    // More early bytes than the body: the rest is never handed out.
    let mut nothing: &[u8] = b"";
    let mut body = Body::new(b"abcdef".to_vec(), &mut nothing, 2);
    let mut got = Vec::new();
    body.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"ab");

    let mut short: &[u8] = b"de";
    let mut body = Body::new(b"abc".to_vec(), &mut short, 10);
    let mut got = Vec::new();
    let err = body.read_to_end(&mut got).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(err.to_string().contains("after 5 of 10 bytes"), "{err}");
}

#[test]
fn routes_and_refuses_over_a_connection() {
    let api = Arc::new(Fake::default());
    let addr = plain_server(api.clone(), options());

    let r = exchange(addr, b"GET /v1/version HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.contains("Content-Type: application/json\r\n"));
    assert!(r.contains("Connection: close\r\n"));
    let v: Version = serde_json::from_str(body_of(&r)).unwrap();
    assert_eq!(v.version, "1.0.0");

    let r = exchange(addr, b"GET /v1/logs/etcd?lines=3 HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(body_of(&r), "etcd 3\n");

    let r = exchange(addr, b"POST /v1/reboot HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&r), 202, "{r}");

    let r = exchange(addr, b"POST /v1/rollback HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&r), 409, "{r}");
    let e: ErrorBody = serde_json::from_str(body_of(&r)).unwrap();
    assert_eq!(e.error, "slot b is empty");

    let calls = api.calls();
    let refused: &[(&[u8], u16)] = &[
        (b"GET /v1/nothing HTTP/1.1\r\n\r\n", 404),
        (b"GET /v1/logs/../x HTTP/1.1\r\n\r\n", 404),
        (b"GET /v1/reboot HTTP/1.1\r\n\r\n", 405),
        (b"GET /v1/logs/etcd?lines=zero HTTP/1.1\r\n\r\n", 400),
        (b"POST /v1/upgrade?forse=1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400),
        (b"POST /v1/upgrade HTTP/1.1\r\n\r\n", 411),
        (
            b"POST /v1/upgrade HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
        ),
        (
            b"POST /v1/upgrade HTTP/1.1\r\nContent-Length: 2\r\nContent-Type: text/html\r\n\r\nhi",
            415,
        ),
        (b"POST /v1/reboot HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", 413),
        (b"GET /v1/status HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"BREW /v1/status HTTP/1.1\r\n\r\n", 405),
    ];
    for (request, want) in refused {
        let r = exchange(addr, request);
        assert_eq!(
            status_of(&r),
            *want,
            "{}: {r}",
            String::from_utf8_lossy(request)
        );
        let e: ErrorBody = serde_json::from_str(body_of(&r)).unwrap();
        assert!(!e.error.is_empty());
    }
    let r = exchange(addr, b"GET /v1/reboot HTTP/1.1\r\n\r\n");
    assert!(r.contains("Allow: POST\r\n"), "{r}");
    assert_eq!(api.calls(), calls, "no refused request reached a handler");
}

#[test]
fn oversize_heads_get_431() {
    let api = Arc::new(Fake::default());
    let addr = plain_server(api.clone(), options());
    let mut request = b"GET /v1/status HTTP/1.1\r\nX-Big: ".to_vec();
    request.resize(MAX_HEAD + 4096, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let r = exchange(addr, &request);
    assert_eq!(status_of(&r), 431, "{r}");
    assert_eq!(api.calls(), 0);
}

#[test]
fn a_stalled_head_times_out() {
    let api = Arc::new(Fake::default());
    let opts = ServerOptions {
        head_timeout: Duration::from_millis(300),
        ..options()
    };
    let addr = plain_server(api.clone(), opts);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /v1/sta").unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the server kept it open"
    );
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert_eq!(api.calls(), 0);
}

fn upload_request(len: usize) -> Vec<u8> {
    format!(
        "POST /v1/upgrade?force=0&reboot=0 HTTP/1.1\r\nContent-Type: application/x-tar\r\nContent-Length: {len}\r\n\r\n"
    )
    .into_bytes()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
}

#[test]
fn an_upload_arrives_intact_and_nothing_past_it() {
    let api = Arc::new(Fake::default());
    let addr = plain_server(api.clone(), options());
    let data = pattern(3 * 1024 * 1024 + 17);
    let mut request = upload_request(data.len());
    request.extend_from_slice(&data);
    request.extend_from_slice(b"GET /v1/status HTTP/1.1\r\n\r\n");
    let r = exchange(addr, &request);
    assert_eq!(status_of(&r), 200, "{r}");
    let (bytes, hash) = api.wait_upload().unwrap();
    assert_eq!(bytes, data.len() as u64);
    assert_eq!(hash, Sha256::digest(&data).to_vec());
    assert_eq!(
        api.calls(),
        1,
        "the bytes after the body were not a second request"
    );
}

#[test]
fn expect_continue_gets_a_100_first() {
    let api = Arc::new(Fake::default());
    let addr = plain_server(api.clone(), options());
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = upload_request(4);
    head.truncate(head.len() - 2);
    head.extend_from_slice(b"Expect: 100-continue\r\n\r\n");
    c.write_all(&head).unwrap();
    let mut interim = [0u8; http::CONTINUE.len()];
    c.read_exact(&mut interim).unwrap();
    assert_eq!(&interim[..], http::CONTINUE);
    c.write_all(b"tar!").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert_eq!(status_of(&out), 200, "{out}");
    assert_eq!(api.wait_upload().unwrap().0, 4);
}

#[test]
fn a_client_that_disconnects_mid_upload_gives_the_handler_an_error() {
    let api = Arc::new(Fake::default());
    let addr = plain_server(api.clone(), options());
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(&upload_request(1_000_000)).unwrap();
    c.write_all(&pattern(500_000)).unwrap();
    drop(c);
    let err = api.wait_upload().unwrap_err();
    assert!(err.contains("UnexpectedEof"), "{err}");
    assert!(err.contains("of 1000000 bytes"), "{err}");
}

#[test]
fn an_early_refusal_reaches_a_client_still_uploading() {
    let api = Arc::new(Fake {
        refuse_after: Some(10),
        ..Fake::default()
    });
    let addr = plain_server(api.clone(), options());
    // 8 MiB: more than the socket buffers hold, so the server must read the rest for the
    // client to finish sending and read the answer.
    let data = pattern(8 * 1024 * 1024);
    let mut request = upload_request(data.len());
    request.extend_from_slice(&data);
    let r = exchange(addr, &request);
    assert_eq!(status_of(&r), 409, "{r}");
    assert!(body_of(&r).contains("quarantined"), "{r}");
}

#[test]
fn a_panicking_handler_is_a_500() {
    let api = Arc::new(Fake {
        panic_in_status: true,
        ..Fake::default()
    });
    let addr = plain_server(api.clone(), options());
    let r = exchange(addr, b"GET /v1/status HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&r), 500, "{r}");
}

#[test]
fn tls_configuration_errors_name_the_input() {
    let err = ServerTls::from_pem("", "", "").unwrap_err();
    assert_eq!(
        err.to_string(),
        "the node certificate: no certificate in the PEM"
    );
    let not_pem = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
    let err = ServerTls::from_pem(not_pem, "", "").unwrap_err();
    assert!(
        err.to_string().starts_with("the node certificate: "),
        "{err}"
    );
}

#[test]
fn a_read_only_operator_reads_and_gets_403_for_the_rest() {
    let api = Arc::new(Fake::default());
    let addr = plain_server_as(api.clone(), options(), OperatorRole::ReadOnly);
    for request in [
        &b"GET /v1/status HTTP/1.1\r\n\r\n"[..],
        b"GET /v1/version HTTP/1.1\r\n\r\n",
        b"GET /v1/logs/etcd?lines=3 HTTP/1.1\r\n\r\n",
    ] {
        let r = exchange(addr, request);
        assert_eq!(status_of(&r), 200, "{r}");
    }
    assert_eq!(api.calls(), 3);
    let data = pattern(1024 * 1024);
    let mut upload = upload_request(data.len());
    upload.extend_from_slice(&data);
    let mut held_back = upload_request(4);
    held_back.truncate(held_back.len() - 2);
    held_back.extend_from_slice(b"Expect: 100-continue\r\n\r\n");
    for request in [
        upload,
        held_back,
        b"POST /v1/upgrade?force=1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"POST /v1/reboot HTTP/1.1\r\n\r\n".to_vec(),
        b"POST /v1/shutdown HTTP/1.1\r\n\r\n".to_vec(),
        b"POST /v1/rollback HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        let r = exchange(addr, &request);
        assert_eq!(status_of(&r), 403, "{r}");
        let e: ErrorBody = serde_json::from_str(body_of(&r)).unwrap();
        assert!(
            e.error
                .starts_with("a read-only operator certificate may not POST /v1/"),
            "{}",
            e.error
        );
        assert!(e.error.contains("use an admin certificate"), "{}", e.error);
    }
    assert_eq!(api.calls(), 3, "no refused request reached a handler");
}
