//! `keel node etcd`: a control plane's etcd members, and a snapshot of its database saved to
//! a file. The snapshot comes as the node streams it (chunked, as etcd's `Maintenance.Snapshot`
//! gives it) into a temporary file beside the destination, private (it holds every Kubernetes
//! secret), and is renamed over the destination only once complete and checked against the
//! SHA-256 etcd appends to it: a transfer that fails or is cut short leaves nothing there.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use keel_contract::api::{self, EtcdMembers, Request};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::transport::{ReplyError, Stream, head_error, in_context, reply_from};
use super::{NodeClient, NodeError, READ_TIMEOUT, describe_request};

/// The size of etcd's trailer: the SHA-256 of the database before it.
const TRAILER: usize = 32;
/// etcd's own test for a trailer (`etcdctl snapshot restore`): the database is whole pages,
/// so a snapshot with its hash is 32 bytes past a multiple of 512.
const SECTOR: u64 = 512;

/// What `keel node etcd snapshot` saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotReport {
    /// Where it is now.
    pub file: PathBuf,
    pub bytes: u64,
    /// The SHA-256 of the whole file, as `sha256sum` prints it.
    pub sha256: String,
}

/// The SHA-256 of everything but the last 32 bytes (etcd's hash of the database), and of
/// everything, computed as the bytes go by.
struct Digests {
    all: Sha256,
    database: Sha256,
    /// The last bytes seen, not yet known to be part of the database.
    tail: Vec<u8>,
    bytes: u64,
}

impl Digests {
    fn new() -> Self {
        Digests {
            all: Sha256::new(),
            database: Sha256::new(),
            tail: Vec::with_capacity(2 * TRAILER),
            bytes: 0,
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        self.all.update(chunk);
        self.bytes += chunk.len() as u64;
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > TRAILER {
            let settled = self.tail.len() - TRAILER;
            self.database.update(&self.tail[..settled]);
            self.tail.drain(..settled);
        }
    }

    /// Checks etcd's trailer; returns the whole file's SHA-256 (hex).
    fn finish(self) -> Result<String, String> {
        if self.bytes < TRAILER as u64 || self.bytes % SECTOR != TRAILER as u64 {
            return Err(format!(
                "{} bytes is not a database followed by its SHA-256",
                self.bytes
            ));
        }
        if self.database.finalize().as_slice() != self.tail.as_slice() {
            return Err("the SHA-256 etcd appended does not match the database".into());
        }
        Ok(hex::encode(self.all.finalize()))
    }
}

/// Checks a saved snapshot as `etcdctl snapshot restore` will: whole pages and etcd's
/// SHA-256 trailer. Returns its size.
pub fn check_snapshot_file(path: &Path) -> Result<u64, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut digests = Digests::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        digests.update(&buf[..n]);
    }
    let bytes = digests.bytes;
    digests.finish().map(|_| bytes)
}

/// Where the snapshot may go: a file name in a directory that exists.
fn destination(file: &Path) -> Result<(PathBuf, &std::ffi::OsStr), NodeError> {
    let bad = |why: &str| NodeError::BadInput(format!("{}: {why}", file.display()));
    let name = file.file_name().ok_or_else(|| bad("not a file name"))?;
    if file.is_dir() {
        return Err(bad("is a directory; give the snapshot's file name"));
    }
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(bad("its directory does not exist"));
    }
    Ok((dir, name))
}

impl NodeClient {
    /// The members of the node's etcd, as it sees them.
    pub fn etcd_members(&self) -> Result<EtcdMembers, NodeError> {
        self.json(&Request::EtcdMembers, "etcd members")
    }

    /// Takes the member `name` out of the etcd cluster through this node's member; returns
    /// the members left.
    pub fn etcd_remove_member(&self, name: &str) -> Result<EtcdMembers, NodeError> {
        let request = Request::EtcdRemoveMember {
            name: name.to_owned(),
        };
        self.json(&request, "the members left")
    }

    /// Saves a snapshot of the node's etcd at `file` (replacing what was there, only once
    /// the snapshot is complete).
    pub fn etcd_snapshot(&self, file: &Path) -> Result<SnapshotReport, NodeError> {
        let (dir, name) = destination(file)?;
        let (mut stream, head, early) = self.start_snapshot()?;
        let mut partial = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".partial")
            .tempfile_in(&dir)
            .map_err(|e| NodeError::BadInput(format!("{}: {e}", dir.display())))?;
        let mut body = keel_http::body_reader(&head, early, &mut stream);
        let digests = copy(&mut body, partial.as_file_mut()).map_err(|e| match e {
            Copy::Node(e) => self.connection_error(in_context("receiving the snapshot", &e)),
            Copy::Disk(e) => NodeError::BadInput(format!("writing {}: {e}", file.display())),
        })?;
        drop(body);
        let bytes = digests.bytes;
        let sha256 = digests
            .finish()
            .map_err(|m| self.protocol_error(format!("the snapshot: {m}")))?;
        let disk = |e: io::Error| NodeError::BadInput(format!("{}: {e}", file.display()));
        partial.as_file().sync_all().map_err(disk)?;
        partial.persist(file).map_err(|e| disk(e.error))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            // The rename itself survives a crash only once the directory is synced.
            let _ = d.sync_all();
        }
        Ok(SnapshotReport {
            file: file.to_path_buf(),
            bytes,
            sha256,
        })
    }

    /// Asks for a snapshot; returns the connection with the head of a success answer and
    /// the body bytes read with it. An error answer is read whole and becomes its error.
    fn start_snapshot(&self) -> Result<(Stream, keel_http::ResponseHead, Vec<u8>), NodeError> {
        let request = Request::EtcdSnapshot;
        let what = describe_request(&request);
        let mut stream = self.connect(READ_TIMEOUT)?;
        let user_agent = format!("keel/{}", env!("CARGO_PKG_VERSION"));
        let head = keel_http::request_head(
            request.method().as_str(),
            &request.target(),
            &[
                ("Host", api::SERVER_NAME),
                ("User-Agent", &user_agent),
                ("Accept", "application/octet-stream, application/json"),
            ],
        )
        .map_err(|e| NodeError::BadInput(format!("the {what} request: {e}")))?;
        stream
            .write_all(&head)
            .and_then(|()| stream.flush())
            .map_err(|e| {
                self.connection_error(in_context(&format!("sending the {what} request"), &e))
            })?;
        let reply_error = |e: ReplyError| match e {
            ReplyError::Io(e) => {
                self.connection_error(in_context(&format!("reading the {what} response"), &e))
            }
            ReplyError::Protocol(message) => self.protocol_error(message),
        };
        let (head, early) =
            keel_http::read_response_head(&mut stream).map_err(|e| reply_error(head_error(e)))?;
        if (200..300).contains(&head.status) {
            return Ok((stream, head, early));
        }
        let reply = reply_from(head, early, &mut stream).map_err(reply_error)?;
        Err(self.api_error(what, &reply))
    }

    fn protocol_error(&self, message: String) -> NodeError {
        NodeError::Protocol {
            endpoint: self.endpoint.clone(),
            message,
        }
    }
}

/// Where a copy failed: the node's stream, or the local disk.
enum Copy {
    Node(io::Error),
    Disk(io::Error),
}

fn copy(body: &mut dyn Read, out: &mut std::fs::File) -> Result<Digests, Copy> {
    let mut digests = Digests::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => return Ok(digests),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Node(e)),
        };
        out.write_all(&buf[..n]).map_err(Copy::Disk)?;
        digests.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_trailer(database: &[u8]) -> Vec<u8> {
        let mut snapshot = database.to_vec();
        snapshot.extend_from_slice(&Sha256::digest(database));
        snapshot
    }

    fn digest_in_pieces(bytes: &[u8], piece: usize) -> Digests {
        let mut d = Digests::new();
        for chunk in bytes.chunks(piece) {
            d.update(chunk);
        }
        d
    }

    #[test]
    fn a_saved_snapshot_is_checked_before_a_restore() {
        let dir = tempfile::tempdir().unwrap();
        let database: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let good = dir.path().join("good.db");
        std::fs::write(&good, with_trailer(&database)).unwrap();
        assert_eq!(check_snapshot_file(&good), Ok(8192 + 32));
        let mut flipped = with_trailer(&database);
        flipped[100] ^= 1;
        let bad = dir.path().join("bad.db");
        std::fs::write(&bad, flipped).unwrap();
        assert!(check_snapshot_file(&bad).unwrap_err().contains("SHA-256"));
        assert!(check_snapshot_file(&dir.path().join("none")).is_err());
    }

    #[test]
    fn etcds_trailer_is_checked_whatever_the_pieces() {
        let database: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
        let snapshot = with_trailer(&database);
        for piece in [1, 7, 32, 33, 4096, 100_000] {
            let sha = digest_in_pieces(&snapshot, piece).finish().unwrap();
            assert_eq!(sha, hex::encode(Sha256::digest(&snapshot)), "{piece}");
        }
        let mut corrupt = snapshot.clone();
        corrupt[100] ^= 1;
        assert!(digest_in_pieces(&corrupt, 1000).finish().is_err());
        // Cut short, or nothing at all.
        assert!(digest_in_pieces(&snapshot[..4096], 1000).finish().is_err());
        assert!(digest_in_pieces(&[], 1).finish().is_err());
    }

    #[test]
    fn the_destination_must_be_a_file_in_a_directory_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        assert!(destination(&dir.path().join("snap.db")).is_ok());
        for bad in [dir.path().to_path_buf(), dir.path().join("no/such/snap.db")] {
            let e = destination(&bad).unwrap_err();
            assert!(matches!(e, NodeError::BadInput(_)), "{e}");
        }
    }
}
