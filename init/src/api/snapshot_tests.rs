//! The etcd endpoints over a connection: who may call them, the 409 of a node without etcd,
//! and a snapshot streamed whole, or cut short so that the client can tell.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_contract::api::{ErrorBody, EtcdMember, EtcdMembers, Status, Version};

use super::tests::{body_of, exchange, options, plain_server_as, status_of};
use super::*;

/// A node without etcd: the trait's defaults.
struct Worker;

impl NodeApi for Worker {
    fn version(&self) -> Version {
        unreachable_call()
    }
    fn status(&self) -> Status {
        unreachable_call()
    }
    fn logs(&self, _: &str, _: usize) -> Result<String, ApiError> {
        Err(ApiError::internal("not called"))
    }
    fn reboot(&self) -> Result<(), ApiError> {
        Err(ApiError::internal("not called"))
    }
    fn shutdown(&self) -> Result<(), ApiError> {
        Err(ApiError::internal("not called"))
    }
    fn upgrade(
        &self,
        _: &mut dyn Read,
        _: u64,
        _: bool,
        _: bool,
    ) -> Result<UpgradeReport, ApiError> {
        Err(ApiError::internal("not called"))
    }
    fn rollback(&self) -> Result<RollbackReport, ApiError> {
        Err(ApiError::internal("not called"))
    }
}

fn unreachable_call<T>() -> T {
    panic!("not called in these tests")
}

/// A control plane whose etcd gives `snapshot`, failing after `fail_after` bytes if set.
struct ControlPlane {
    snapshot: Vec<u8>,
    fail_after: Option<usize>,
    snapshots: AtomicUsize,
}

/// Yields its bytes, then fails instead of ending.
struct Failing(io::Cursor<Vec<u8>>);

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf)? {
            0 => Err(io::Error::new(io::ErrorKind::InvalidData, "etcd went away")),
            n => Ok(n),
        }
    }
}

impl NodeApi for ControlPlane {
    fn version(&self) -> Version {
        unreachable_call()
    }
    fn status(&self) -> Status {
        unreachable_call()
    }
    fn logs(&self, _: &str, _: usize) -> Result<String, ApiError> {
        Err(ApiError::internal("not called"))
    }
    fn reboot(&self) -> Result<(), ApiError> {
        Err(ApiError::internal("not called"))
    }
    fn shutdown(&self) -> Result<(), ApiError> {
        Err(ApiError::internal("not called"))
    }
    fn upgrade(
        &self,
        _: &mut dyn Read,
        _: u64,
        _: bool,
        _: bool,
    ) -> Result<UpgradeReport, ApiError> {
        Err(ApiError::internal("not called"))
    }
    fn rollback(&self) -> Result<RollbackReport, ApiError> {
        Err(ApiError::internal("not called"))
    }
    fn etcd_members(&self) -> Result<EtcdMembers, ApiError> {
        Ok(EtcdMembers {
            cluster_id: 1,
            member_id: 2,
            leader_id: 2,
            raft_term: 3,
            healthy: true,
            version: "3.4.23".into(),
            members: vec![EtcdMember {
                id: 2,
                name: "cp1".into(),
                peer_urls: vec!["https://10.0.0.5:2380".into()],
                client_urls: vec!["https://10.0.0.5:2379".into()],
                learner: false,
            }],
        })
    }
    fn etcd_snapshot(&self) -> Result<Box<dyn Read + Send>, ApiError> {
        self.snapshots.fetch_add(1, Ordering::SeqCst);
        Ok(match self.fail_after {
            Some(n) => Box::new(Failing(io::Cursor::new(self.snapshot[..n].to_vec()))),
            None => Box::new(io::Cursor::new(self.snapshot.clone())),
        })
    }
}

fn control_plane(fail_after: Option<usize>) -> Arc<ControlPlane> {
    Arc::new(ControlPlane {
        // More than one chunk of the copy.
        snapshot: (0..200_000u32).map(|i| (i % 251) as u8).collect(),
        fail_after,
        snapshots: AtomicUsize::new(0),
    })
}

const MEMBERS: &[u8] = b"GET /v1/etcd/members HTTP/1.1\r\n\r\n";
const SNAPSHOT: &[u8] = b"GET /v1/etcd/snapshot HTTP/1.1\r\n\r\n";

/// The raw response, and its body de-chunked (or the de-chunking's error).
fn fetch(addr: std::net::SocketAddr, request: &[u8]) -> (Vec<u8>, io::Result<Vec<u8>>) {
    let raw = exchange_bytes(addr, request);
    let mut rest: &[u8] = &raw;
    let body = keel_http::read_response_head(&mut rest).map(|(head, early)| {
        let mut body = Vec::new();
        keel_http::body_reader(&head, early, &mut rest)
            .read_to_end(&mut body)
            .map(|_| body)
    });
    let body = body.unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
    (raw, body)
}

fn exchange_bytes(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    c.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    out
}

#[test]
fn a_read_only_operator_lists_members_but_gets_403_for_a_snapshot() {
    let api = control_plane(None);
    let addr = plain_server_as(api.clone(), options(), OperatorRole::ReadOnly);
    let r = exchange(addr, MEMBERS);
    assert_eq!(status_of(&r), 200, "{r}");
    let members: EtcdMembers = serde_json::from_str(body_of(&r)).unwrap();
    assert_eq!(members.members[0].name, "cp1");
    let r = exchange(addr, SNAPSHOT);
    assert_eq!(status_of(&r), 403, "{r}");
    let e: ErrorBody = serde_json::from_str(body_of(&r)).unwrap();
    assert!(e.error.contains("GET /v1/etcd/snapshot"), "{}", e.error);
    assert_eq!(api.snapshots.load(Ordering::SeqCst), 0);
}

#[test]
fn the_etcd_endpoints_take_get_only() {
    let addr = plain_server_as(control_plane(None), options(), OperatorRole::Admin);
    for path in ["/v1/etcd/members", "/v1/etcd/snapshot"] {
        let r = exchange(addr, format!("POST {path} HTTP/1.1\r\n\r\n").as_bytes());
        assert_eq!(status_of(&r), 405, "{r}");
        assert!(r.contains("Allow: GET"), "{r}");
    }
}

#[test]
fn a_node_without_etcd_answers_409_and_says_why() {
    let addr = plain_server_as(Arc::new(Worker), options(), OperatorRole::Admin);
    for request in [MEMBERS, SNAPSHOT] {
        let r = exchange(addr, request);
        assert_eq!(status_of(&r), 409, "{r}");
        let e: ErrorBody = serde_json::from_str(body_of(&r)).unwrap();
        assert!(e.error.contains("not a control plane"), "{}", e.error);
    }
}

#[test]
fn an_admin_gets_the_snapshot_streamed_whole() {
    let api = control_plane(None);
    let addr = plain_server_as(api.clone(), options(), OperatorRole::Admin);
    let (raw, body) = fetch(addr, SNAPSHOT);
    let head = String::from_utf8_lossy(&raw[..200]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    assert_eq!(body.unwrap(), api.snapshot);
}

#[test]
fn a_snapshot_cut_short_by_etcd_lacks_its_last_chunk() {
    let api = control_plane(Some(100_000));
    let addr = plain_server_as(api, options(), OperatorRole::Admin);
    let (raw, body) = fetch(addr, SNAPSHOT);
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    assert!(body.is_err(), "a cut snapshot must not read as complete");
}
