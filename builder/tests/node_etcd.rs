//! `keel node etcd` end to end: the init's API server over TLS with a fake control plane
//! behind it, keel's client and CLI in front, the certificates `keel secrets gen` issues.
//! The snapshot lands at FILE only when complete and matching etcd's SHA-256 trailer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/node_cli.rs"]
mod node_cli;
use node_cli::{conn, run_cli};

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel_builder::cli::{EtcdCommand, NodeCommand, NodeConnection};
use keel_contract::api::{EtcdMember, EtcdMembers, RollbackReport, Status, UpgradeReport, Version};
use keel_init::api::{self as server, ApiError, NodeApi, ServerOptions, ServerTls};
use sha2::{Digest, Sha256};

/// A control plane whose etcd streams `snapshot`, or fails after `cut_after` bytes.
struct ControlPlane {
    snapshot: Vec<u8>,
    cut_after: Option<usize>,
}

/// Yields its bytes, then fails instead of ending (etcd going away mid-snapshot).
struct Cut(io::Cursor<Vec<u8>>);

impl Read for Cut {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf)? {
            0 => Err(io::Error::new(io::ErrorKind::InvalidData, "etcd went away")),
            n => Ok(n),
        }
    }
}

fn not_here<T>() -> Result<T, ApiError> {
    Err(ApiError::internal("not in this test"))
}

impl NodeApi for ControlPlane {
    fn version(&self) -> Version {
        panic!("not in this test")
    }
    fn status(&self) -> Status {
        panic!("not in this test")
    }
    fn logs(&self, _: &str, _: usize) -> Result<String, ApiError> {
        not_here()
    }
    fn reboot(&self) -> Result<(), ApiError> {
        not_here()
    }
    fn shutdown(&self) -> Result<(), ApiError> {
        not_here()
    }
    fn upgrade(
        &self,
        _: &mut dyn Read,
        _: u64,
        _: bool,
        _: bool,
    ) -> Result<UpgradeReport, ApiError> {
        not_here()
    }
    fn rollback(&self) -> Result<RollbackReport, ApiError> {
        not_here()
    }
    fn etcd_members(&self) -> Result<EtcdMembers, ApiError> {
        Ok(EtcdMembers {
            cluster_id: 0xd1cf2e2c6f0a1b2a,
            member_id: 0xbdaf1c0b87e6a20d,
            leader_id: 0xbdaf1c0b87e6a20d,
            raft_term: 2,
            healthy: true,
            version: "3.4.23".into(),
            members: vec![EtcdMember {
                id: 0xbdaf1c0b87e6a20d,
                name: "cp-1".into(),
                peer_urls: vec!["https://10.0.0.5:2380".into()],
                client_urls: vec!["https://10.0.0.5:2379".into()],
                learner: false,
            }],
        })
    }
    fn etcd_snapshot(&self) -> Result<Box<dyn Read + Send>, ApiError> {
        Ok(match self.cut_after {
            Some(n) => Box::new(Cut(io::Cursor::new(self.snapshot[..n].to_vec()))),
            None => Box::new(io::Cursor::new(self.snapshot.clone())),
        })
    }
}

/// What etcd streams: a database of whole pages, then its SHA-256.
fn snapshot_bytes(pages: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..pages * 4096).map(|i| (i ^ (i >> 9)) as u8).collect();
    let hash = Sha256::digest(&bytes);
    bytes.extend_from_slice(&hash);
    bytes
}

struct Node {
    addr: SocketAddr,
    secrets: PathBuf,
    _dir: tempfile::TempDir,
}

fn start(api: ControlPlane) -> Node {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let secrets = keel_pki::generate("keel", now).unwrap();
    let tls = ServerTls::from_pem(
        &secrets.node_api.cert,
        &secrets.node_api.key,
        &secrets.keel_ca.cert,
    )
    .unwrap();
    let options = ServerOptions {
        idle_timeout: Duration::from_secs(10),
        ..ServerOptions::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server::spawn(listener, tls, Arc::new(api), |_| {}, options)
        .unwrap()
        .local_addr();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.toml");
    std::fs::write(&file, secrets.to_toml().unwrap()).unwrap();
    Node {
        addr,
        secrets: file,
        _dir: dir,
    }
}

impl Node {
    fn admin(&self) -> NodeConnection {
        conn(self.addr, &self.secrets)
    }
    fn read_only(&self) -> NodeConnection {
        NodeConnection {
            read_only: true,
            ..self.admin()
        }
    }
}

fn snapshot(conn: NodeConnection, output: &Path, json: bool) -> NodeCommand {
    NodeCommand::Etcd(EtcdCommand::Snapshot {
        output: output.to_owned(),
        conn,
        json,
    })
}

/// What is in `dir` besides the secrets.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn members_as_a_table_and_as_json_for_a_read_only_operator() {
    let node = start(ControlPlane {
        snapshot: vec![],
        cut_after: None,
    });
    let table = run_cli(NodeCommand::Etcd(EtcdCommand::Members {
        conn: node.read_only(),
        json: false,
    }))
    .unwrap();
    assert!(table.contains("leader bdaf1c0b87e6a20d"), "{table}");
    assert!(table.contains("cp-1"), "{table}");
    let json = run_cli(NodeCommand::Etcd(EtcdCommand::Members {
        conn: node.read_only(),
        json: true,
    }))
    .unwrap();
    let members: EtcdMembers = serde_json::from_str(&json).unwrap();
    assert_eq!(members.members[0].name, "cp-1");
}

#[test]
fn a_snapshot_is_saved_private_and_whole_with_its_sha256() {
    let bytes = snapshot_bytes(50);
    let node = start(ControlPlane {
        snapshot: bytes.clone(),
        cut_after: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.db");
    let text = run_cli(snapshot(node.admin(), &file, false)).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "a snapshot holds every secret");
    let sha = hex::encode(Sha256::digest(&bytes));
    assert!(text.contains(&sha), "{text}");
    assert!(text.contains(&format!("{} bytes", bytes.len())), "{text}");
    assert_eq!(
        files_in(dir.path()),
        ["etcd.db"],
        "no temporary file is left"
    );
    // Again, over the first one, as JSON.
    let json = run_cli(snapshot(node.admin(), &file, true)).unwrap();
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["sha256"], sha.as_str());
    assert_eq!(report["bytes"], bytes.len() as u64);
    assert_eq!(report["file"], file.to_str().unwrap());
}

#[test]
fn a_snapshot_cut_short_or_corrupt_leaves_nothing_at_file() {
    let bytes = snapshot_bytes(50);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.db");
    let cut = start(ControlPlane {
        snapshot: bytes.clone(),
        cut_after: Some(bytes.len() / 2),
    });
    let e = run_cli(snapshot(cut.admin(), &file, false)).unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    assert!(e.to_string().contains("receiving the snapshot"), "{e}");
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
    // Complete as a transfer, but not what etcd's hash says: refused too, and an earlier
    // snapshot at FILE stays as it was.
    std::fs::write(&file, b"the last good one").unwrap();
    let mut corrupt = bytes.clone();
    corrupt[5000] ^= 0xff;
    let bad = start(ControlPlane {
        snapshot: corrupt,
        cut_after: None,
    });
    let e = run_cli(snapshot(bad.admin(), &file, false)).unwrap_err();
    assert!(e.to_string().contains("SHA-256"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"the last good one");
    assert_eq!(files_in(dir.path()), ["etcd.db"]);
}

#[test]
fn a_read_only_operator_is_refused_a_snapshot_and_bad_paths_are_bad_input() {
    let node = start(ControlPlane {
        snapshot: snapshot_bytes(2),
        cut_after: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.db");
    let e = run_cli(snapshot(node.read_only(), &file, false)).unwrap_err();
    assert!(e.to_string().contains("HTTP 403"), "{e}");
    assert!(!file.exists());
    for bad in [dir.path().to_path_buf(), dir.path().join("none/etcd.db")] {
        let e = run_cli(snapshot(node.admin(), &bad, false)).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains(bad.to_str().unwrap()), "{e}");
    }
}

#[test]
fn the_cli_names_what_is_missing_with_exit_code_2() {
    let keel = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .env_remove("KEEL_CONTEXT")
            .env("KEEL_CONFIG", "/nonexistent/keel/config.toml")
            .output()
            .unwrap()
    };
    let out = keel(&["node", "etcd", "snapshot", "--endpoint", "127.0.0.1"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--output <FILE>"), "{stderr}");
    let out = keel(&["node", "etcd", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("members") && help.contains("snapshot"),
        "{help}"
    );
}
