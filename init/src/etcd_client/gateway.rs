//! etcd's gRPC gateway as JSON: the member list, the maintenance status and the snapshot
//! stream. The gateway writes protobuf's JSON mapping with the proto's own field names:
//! 64-bit integers are strings, and fields at their zero value (a `false` `isLearner`, a
//! `remaining_bytes` of 0, the name of a member that has not started) are left out.

use std::io::{self, BufRead, Read};

use base64::Engine;
use keel_contract::api::{EtcdMember, EtcdMembers};
use serde::Deserialize;

/// The longest line of the snapshot stream accepted: etcd sends 32 KiB per message, which
/// is about 44 KiB of base64; far more means it is not the stream we know.
pub const MAX_STREAM_LINE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("etcd's {what} is not the JSON expected: {message}")]
    Malformed { what: &'static str, message: String },
    #[error("etcd refused the {what}: {message}")]
    Refused { what: &'static str, message: String },
}

/// A uint64 as the gateway writes it (a string), or as a number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uint(pub u64);

impl<'de> Deserialize<'de> for Uint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(Uint(n)),
            Either::Text(s) => s
                .parse()
                .map(Uint)
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a uint64"))),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default)]
    cluster_id: Uint,
    #[serde(default)]
    member_id: Uint,
    #[serde(default)]
    raft_term: Uint,
}

#[derive(Debug, Deserialize)]
struct Member {
    #[serde(rename = "ID", default)]
    id: Uint,
    #[serde(default)]
    name: String,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    is_learner: bool,
}

/// `POST /v3/cluster/member/list`.
#[derive(Debug, Deserialize)]
pub struct MemberList {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    members: Vec<Member>,
}

/// `POST /v3/maintenance/status`.
#[derive(Debug, Deserialize)]
pub struct MaintenanceStatus {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    version: String,
    #[serde(default)]
    leader: Uint,
    #[serde(rename = "raftTerm", default)]
    raft_term: Uint,
}

/// An error the gateway answers instead of a result: `{"error": "...", "message": ...}` for a
/// call, `{"error": {"message": ...}}` inside a stream.
fn error_message(value: &serde_json::Value) -> Option<String> {
    let error = value.get("error")?;
    let message = error
        .get("message")
        .or_else(|| value.get("message"))
        .and_then(|m| m.as_str())
        .or_else(|| error.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| error.to_string());
    Some(message)
}

/// Parses one gateway answer, turning an error object into [`GatewayError::Refused`].
pub fn parse<T: serde::de::DeserializeOwned>(
    what: &'static str,
    body: &[u8],
) -> Result<T, GatewayError> {
    let malformed = |e: serde_json::Error| GatewayError::Malformed {
        what,
        message: e.to_string(),
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(malformed)?;
    if let Some(message) = error_message(&value) {
        return Err(GatewayError::Refused { what, message });
    }
    serde_json::from_value(value).map_err(malformed)
}

impl From<Member> for EtcdMember {
    fn from(m: Member) -> Self {
        EtcdMember {
            id: m.id.0,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            learner: m.is_learner,
        }
    }
}

impl MemberList {
    /// The members, in the contract's terms.
    pub fn into_members(self) -> Vec<EtcdMember> {
        self.members.into_iter().map(EtcdMember::from).collect()
    }
}

/// `POST /v3/cluster/member/add`: the new member (its ID; no name until it starts) and the
/// cluster's members with it.
#[derive(Debug, Deserialize)]
pub struct MemberAdded {
    member: Member,
    #[serde(default)]
    members: Vec<Member>,
}

impl MemberAdded {
    /// The new member's ID and every member, the new one included.
    pub fn into_parts(self) -> (u64, Vec<EtcdMember>) {
        (
            self.member.id.0,
            self.members.into_iter().map(EtcdMember::from).collect(),
        )
    }
}

/// The body of a member add: the peer URL, as a learner or not.
pub fn member_add_request(peer_url: &str, learner: bool) -> Vec<u8> {
    serde_json::json!({ "peerURLs": [peer_url], "isLearner": learner })
        .to_string()
        .into_bytes()
}

/// The body of a member promote or remove: the ID (a uint64 as a string, as the gateway's
/// JSON mapping writes it).
pub fn member_id_request(id: u64) -> Vec<u8> {
    serde_json::json!({ "ID": id.to_string() })
        .to_string()
        .into_bytes()
}

/// The node's view: the member list, with the leader and term from this member's status
/// (the member list's header has no leader) and its health.
pub fn members_view(list: MemberList, status: MaintenanceStatus, healthy: bool) -> EtcdMembers {
    let term = status.raft_term.0.max(status.header.raft_term.0);
    EtcdMembers {
        cluster_id: list.header.cluster_id.0,
        member_id: list.header.member_id.0,
        leader_id: status.leader.0,
        raft_term: term.max(list.header.raft_term.0),
        healthy,
        version: status.version,
        members: list.into_members(),
    }
}

/// `GET /health` on etcd's metrics listener: `{"health":"true"}` (etcd 3.4 writes a string).
pub fn healthy(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("health").map(|h| match h {
                serde_json::Value::Bool(b) => *b,
                serde_json::Value::String(s) => s == "true",
                _ => false,
            })
        })
        .unwrap_or(false)
}

#[derive(Debug, Deserialize)]
struct SnapshotChunk {
    #[serde(default)]
    blob: String,
}

#[derive(Debug, Deserialize)]
struct StreamLine {
    result: Option<SnapshotChunk>,
}

/// The snapshot stream (`{"result":{"blob":"<base64>","remaining_bytes":"..."}}`, one object a
/// line) as the raw bytes etcd sent, decoded one message at a time: what is held in memory is
/// one message, never the snapshot. An error object in the stream, a line that is not a
/// chunk or a bad base64 blob is an error (`InvalidData`), so a broken stream can never read
/// as a complete snapshot.
pub struct SnapshotDecoder<R: BufRead> {
    lines: R,
    pending: Vec<u8>,
    pos: usize,
    /// Bytes decoded so far, for the error messages.
    decoded: u64,
}

impl<R: BufRead> SnapshotDecoder<R> {
    pub fn new(lines: R) -> Self {
        SnapshotDecoder {
            lines,
            pending: Vec::new(),
            pos: 0,
            decoded: 0,
        }
    }

    fn invalid(&self, message: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "etcd's snapshot stream, after {} bytes: {message}",
                self.decoded
            ),
        )
    }

    /// The next message's bytes into `pending`; false at the end of the stream.
    fn next_message(&mut self) -> io::Result<bool> {
        loop {
            let mut line = Vec::new();
            (&mut self.lines)
                .take(MAX_STREAM_LINE)
                .read_until(b'\n', &mut line)?;
            if line.is_empty() {
                return Ok(false);
            }
            if line.len() as u64 >= MAX_STREAM_LINE && !line.ends_with(b"\n") {
                return Err(self.invalid(format!("a line longer than {MAX_STREAM_LINE} bytes")));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: serde_json::Value = serde_json::from_slice(&line)
                .map_err(|e| self.invalid(format!("not JSON: {e}")))?;
            if let Some(message) = error_message(&value) {
                return Err(self.invalid(format!("etcd failed: {message}")));
            }
            let chunk = serde_json::from_value::<StreamLine>(value)
                .ok()
                .and_then(|l| l.result)
                .ok_or_else(|| {
                    self.invalid("a line that is neither a chunk nor an error".into())
                })?;
            self.pending = base64::engine::general_purpose::STANDARD
                .decode(chunk.blob.as_bytes())
                .map_err(|e| self.invalid(format!("a chunk that is not base64: {e}")))?;
            self.pos = 0;
            self.decoded += self.pending.len() as u64;
            if !self.pending.is_empty() {
                return Ok(true);
            }
        }
    }
}

impl<R: BufRead> Read for SnapshotDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.pending.len() && !self.next_message()? {
            return Ok(0);
        }
        let left = self.pending.get(self.pos..).unwrap_or_default();
        let n = left.len().min(buf.len());
        buf[..n].copy_from_slice(&left[..n]);
        self.pos += n;
        Ok(n)
    }
}
