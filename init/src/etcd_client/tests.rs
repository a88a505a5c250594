//! The gateway's JSON as etcd 3.4 writes it (taken from a real member), and the snapshot
//! stream's failures.

use std::io::Read;

use super::gateway::*;

const MEMBER_LIST: &str = r#"{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","raft_term":"2"},"members":[{"ID":"13668033151171901709","name":"cp1","peerURLs":["https://10.0.0.5:2380"],"clientURLs":["https://10.0.0.5:2379"]},{"ID":"15601146497664272206","peerURLs":["https://10.0.0.6:2380"],"isLearner":true}]}"#;

const STATUS: &str = r#"{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"1","raft_term":"2"},"version":"3.4.23","dbSize":"20480","leader":"13668033151171901709","raftIndex":"4","raftTerm":"2","raftAppliedIndex":"4","dbSizeInUse":"16384"}"#;

#[test]
fn the_member_list_with_a_learner_and_the_status_make_the_nodes_view() {
    let list: MemberList = parse("member list", MEMBER_LIST.as_bytes()).unwrap();
    let status: MaintenanceStatus = parse("status", STATUS.as_bytes()).unwrap();
    let view = members_view(list, status, true);
    assert_eq!(view.cluster_id, 15118495548433857066);
    assert_eq!(view.member_id, 13668033151171901709);
    assert_eq!(view.leader_id, 13668033151171901709);
    assert_eq!(view.raft_term, 2);
    assert_eq!(view.version, "3.4.23");
    assert!(view.healthy);
    assert_eq!(view.members.len(), 2);
    let voter = &view.members[0];
    assert_eq!(voter.name, "cp1");
    assert!(!voter.learner);
    assert_eq!(voter.client_urls, ["https://10.0.0.5:2379"]);
    // Not started yet: no name, no client URLs, and a learner.
    let learner = &view.members[1];
    assert_eq!(learner.id, 15601146497664272206);
    assert!(learner.learner);
    assert!(learner.name.is_empty() && learner.client_urls.is_empty());
}

#[test]
fn numbers_are_taken_as_numbers_too_and_bad_ones_are_refused() {
    let list: MemberList =
        parse("member list", br#"{"header":{"member_id":7},"members":[]}"#).unwrap();
    let status: MaintenanceStatus = parse("status", b"{}").unwrap();
    assert_eq!(members_view(list, status, false).member_id, 7);
    let e = parse::<MemberList>("member list", br#"{"members":[{"ID":"x7"}]}"#).unwrap_err();
    assert!(matches!(e, GatewayError::Malformed { .. }), "{e}");
    assert!(e.to_string().contains("member list"), "{e}");
    let e = parse::<MemberList>("member list", b"<html>").unwrap_err();
    assert!(matches!(e, GatewayError::Malformed { .. }), "{e}");
}

#[test]
fn an_error_answer_is_a_refusal_with_etcds_message() {
    let body =
        br#"{"error":"etcdserver: not capable","message":"etcdserver: not capable","code":9}"#;
    let e = parse::<MemberList>("member list", body).unwrap_err();
    assert!(
        matches!(&e, GatewayError::Refused { message, .. } if message == "etcdserver: not capable"),
        "{e}"
    );
}

#[test]
fn health_is_the_string_true() {
    assert!(healthy(br#"{"health":"true"}"#));
    assert!(healthy(br#"{"health":true}"#));
    assert!(!healthy(br#"{"health":"false","reason":"no leader"}"#));
    assert!(!healthy(b"not json"));
}

fn line(bytes: &[u8]) -> String {
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!("{{\"result\":{{\"blob\":\"{blob}\",\"remaining_bytes\":\"5\"}}}}\n")
}

fn decode(stream: &str) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    SnapshotDecoder::new(stream.as_bytes()).read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn snapshot_chunks_decode_to_the_bytes_etcd_sent() {
    let stream = format!("{}\n{}{}", line(b"hello "), line(b""), line(b"snapshot"));
    assert_eq!(decode(&stream).unwrap(), b"hello snapshot");
    // The last line need not end with a newline.
    let stream = line(b"abc");
    assert_eq!(decode(stream.trim_end()).unwrap(), b"abc");
}

#[test]
fn a_bad_chunk_or_an_error_in_the_stream_fails_the_snapshot() {
    let bad_base64 = format!("{}{}", line(b"good"), r#"{"result":{"blob":"@@@"}}"#);
    let e = decode(&bad_base64).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("after 4 bytes"), "{e}");
    assert!(e.to_string().contains("base64"), "{e}");
    let error = format!(
        "{}{}",
        line(b"good"),
        r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: leader changed","http_status":"Service Unavailable"}}"#
    );
    let e = decode(&error).unwrap_err();
    assert!(e.to_string().contains("leader changed"), "{e}");
    for other in ["{\"something\":1}", "not json", "[1,2]"] {
        assert!(decode(other).is_err(), "{other}");
    }
    let huge = format!("{{\"result\":{{\"blob\":\"{}\"}}}}", "A".repeat(2 << 20));
    let e = decode(&huge).unwrap_err();
    assert!(e.to_string().contains("longer than"), "{e}");
}
