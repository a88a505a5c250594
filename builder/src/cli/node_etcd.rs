//! `keel node etcd ...`: the member table, and what a saved snapshot came to.

use keel_contract::api::{EtcdMembers, Request};

use super::args::{EtcdCommand, NodeConnection};
use super::error::CommandError;
use super::node::{ensure_newline, table};
use crate::node::{NodeClient, SnapshotReport};

impl EtcdCommand {
    pub(super) fn connection(&mut self) -> &mut NodeConnection {
        match self {
            EtcdCommand::Members { conn, .. }
            | EtcdCommand::Snapshot { conn, .. }
            | EtcdCommand::Remove { conn, .. } => conn,
        }
    }
}

/// Runs a `keel node etcd` subcommand; returns what to print.
pub(super) fn run(
    command: EtcdCommand,
    client: &dyn Fn(&NodeConnection) -> Result<NodeClient, CommandError>,
) -> Result<String, CommandError> {
    match command {
        EtcdCommand::Members { conn, json } => {
            let node = client(&conn)?;
            if json {
                Ok(ensure_newline(
                    node.request(&Request::EtcdMembers, None)?.text(),
                ))
            } else {
                Ok(format_members(&node.etcd_members()?))
            }
        }
        EtcdCommand::Remove { name, conn, json } => {
            let request = Request::EtcdRemoveMember { name };
            let answer = client(&conn)?.request(&request, None)?;
            if json {
                Ok(ensure_newline(answer.text()))
            } else {
                let left: EtcdMembers = serde_json::from_str(&answer.text()).map_err(|e| {
                    CommandError::Failed(format!("the node's answer is not a member list: {e}"))
                })?;
                Ok(format_members(&left))
            }
        }
        EtcdCommand::Snapshot { output, conn, json } => {
            let report = client(&conn)?.etcd_snapshot(&output)?;
            if json {
                serde_json::to_string_pretty(&report)
                    .map(|text| text + "\n")
                    .map_err(|e| CommandError::Failed(format!("encoding the report: {e}")))
            } else {
                Ok(format_snapshot(&report))
            }
        }
    }
}

/// IDs in hex, as etcdctl's tables show them.
fn hex_id(id: u64) -> String {
    format!("{id:x}")
}

/// A summary line, then one row per member (`*` marks the one the node runs).
pub fn format_members(m: &EtcdMembers) -> String {
    let leader = match m.leader_id {
        0 => "none".to_owned(),
        id => hex_id(id),
    };
    let health = if m.healthy { "healthy" } else { "UNHEALTHY" };
    let mut out = format!(
        "cluster {}, member {} ({health}), leader {leader}, raft term {}, etcd {}\n",
        hex_id(m.cluster_id),
        hex_id(m.member_id),
        m.raft_term,
        m.version
    );
    let rows: Vec<Vec<String>> = m
        .members
        .iter()
        .map(|member| {
            let mut id = hex_id(member.id);
            if member.id == m.member_id {
                id.push('*');
            }
            let name = if member.name.is_empty() {
                "(not started)".to_owned()
            } else {
                member.name.clone()
            };
            let role = if member.learner { "learner" } else { "voting" };
            let leads = if member.id == m.leader_id { "yes" } else { "" };
            vec![
                id,
                name,
                role.to_owned(),
                leads.to_owned(),
                member.peer_urls.join(","),
                member.client_urls.join(","),
            ]
        })
        .collect();
    out.push_str(&table(
        &["ID", "NAME", "ROLE", "LEADER", "PEER URLS", "CLIENT URLS"],
        &rows,
    ));
    out
}

pub fn format_snapshot(r: &SnapshotReport) -> String {
    format!(
        "saved an etcd snapshot to {} ({}, {} bytes)\nsha256 {}\n",
        r.file.display(),
        crate::progress::human_bytes(r.bytes),
        r.bytes,
        r.sha256
    )
}

#[cfg(test)]
mod tests {
    use keel_contract::api::EtcdMember;

    use super::*;

    #[test]
    fn the_member_table_marks_this_member_the_leader_and_learners() {
        let members = EtcdMembers {
            cluster_id: 0xd1cf2e2c6f0a1b2a,
            member_id: 0xbdaf1c0b87e6a20d,
            leader_id: 0xbdaf1c0b87e6a20d,
            raft_term: 2,
            healthy: true,
            version: "3.4.23".into(),
            members: vec![
                EtcdMember {
                    id: 0xbdaf1c0b87e6a20d,
                    name: "cp1".into(),
                    peer_urls: vec!["https://10.0.0.5:2380".into()],
                    client_urls: vec!["https://10.0.0.5:2379".into()],
                    learner: false,
                },
                EtcdMember {
                    id: 0xd88219a1bd3c9a4e,
                    name: String::new(),
                    peer_urls: vec!["https://10.0.0.6:2380".into()],
                    client_urls: vec![],
                    learner: true,
                },
            ],
        };
        let text = format_members(&members);
        assert!(
            text.starts_with(
                "cluster d1cf2e2c6f0a1b2a, member bdaf1c0b87e6a20d (healthy), leader bdaf1c0b87e6a20d, raft term 2, etcd 3.4.23\n"
            ),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("ID "), "{text}");
        let words = |line: &str| line.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            words(lines[2]),
            "bdaf1c0b87e6a20d* cp1 voting yes https://10.0.0.5:2380 https://10.0.0.5:2379"
        );
        assert_eq!(
            words(lines[3]),
            "d88219a1bd3c9a4e (not started) learner https://10.0.0.6:2380"
        );
    }
}
