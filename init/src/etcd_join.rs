//! A control plane joining a running etcd cluster (`node.etcd.join`), the way etcd's runtime
//! reconfiguration guide and kubeadm's `join --control-plane` do it: ask a running member to
//! add this node as a learner, start etcd with `--initial-cluster-state=existing` and the
//! member list that answer gave, then promote the learner once it has caught up (etcd
//! refuses until then). A learner does not vote, so a new member that is slow to sync never
//! costs the cluster its quorum.
//!
//! Also the rule for taking a member out through the node API. The decisions are pure
//! functions; [`join`] and [`spawn_promotion`] do the talking.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use keel_contract::api::{EtcdMember, EtcdMembers};
use keel_contract::profile::Node;

use crate::etcd_client::{EtcdClient, EtcdEndpoint};
use crate::roles::etcd::CLIENT_PORT;

/// Between two rounds of asking the members.
const RETRY: Duration = Duration::from_secs(2);
/// A failure is printed again after this long, not every round.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// The client endpoints of the other members: their peer URLs' hosts on the client port.
/// A host name is resolved; one that does not resolve is left out.
pub fn other_members(node: &Node, own_name: &str) -> Vec<SocketAddr> {
    node.etcd
        .members
        .iter()
        .filter(|m| m.name.as_str() != own_name)
        .filter_map(|m| {
            let host = m.peer_url.host.as_str();
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) => Some(SocketAddr::new(ip, CLIENT_PORT)),
                Err(_) => (host, CLIENT_PORT).to_socket_addrs().ok()?.next(),
            }
        })
        .collect()
}

/// What a member list says about this node (found by its peer URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Not a member: add it.
    Absent,
    /// Added and not started yet (a member with no name): start etcd as this member.
    Added(u64),
    /// A member that has run before. With an empty data directory it cannot start again as
    /// itself: it must be removed first.
    Started(u64),
}

pub fn membership(members: &[EtcdMember], own_peer_url: &str) -> Membership {
    match members
        .iter()
        .find(|m| m.peer_urls.iter().any(|u| u == own_peer_url))
    {
        None => Membership::Absent,
        Some(m) if m.name.is_empty() => Membership::Added(m.id),
        Some(m) => Membership::Started(m.id),
    }
}

/// `--initial-cluster` for the member `new_id` about to start: every member's name and peer
/// URLs, the new one under `own_name` (it has no name until it starts), as `etcdctl member
/// add` prints it.
pub fn initial_cluster(
    members: &[EtcdMember],
    new_id: u64,
    own_name: &str,
) -> Vec<(String, String)> {
    members
        .iter()
        .flat_map(|m| {
            let name = if m.id == new_id {
                own_name.to_owned()
            } else {
                m.name.clone()
            };
            m.peer_urls.iter().map(move |u| (name.clone(), u.clone()))
        })
        .collect()
}

/// The ID of the member `name` to remove through the member that answered `view`. Its own
/// member is refused: removing it would stop the etcd this node API answers with.
pub fn member_to_remove(view: &EtcdMembers, name: &str) -> Result<u64, String> {
    let Some(member) = view.members.iter().find(|m| m.name == name) else {
        let names: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
        return Err(format!(
            "{} {name:?} (members: {})",
            keel_contract::api::NOT_AN_ETCD_MEMBER,
            names.join(", ")
        ));
    };
    if member.id == view.member_id {
        return Err(format!(
            "{name} is this node's own member: remove it through another control plane"
        ));
    }
    Ok(member.id)
}

/// Asks the other members, in turn, until one adds this node as a learner (or has already
/// added it) or `timeout` passes; returns `--initial-cluster` for etcd.
pub fn join(
    node: &Node,
    own_name: &str,
    own_peer_url: &str,
    timeout: Duration,
    log: &dyn Fn(&str),
) -> Result<Vec<(String, String)>, String> {
    let peers = other_members(node, own_name);
    if peers.is_empty() {
        return Err("node.etcd.join: no other member to join through".into());
    }
    let start = Instant::now();
    let mut reported: Option<Instant> = None;
    loop {
        let mut last = String::new();
        for peer in &peers {
            match join_through(*peer, own_name, own_peer_url) {
                Ok(Ok(cluster)) => {
                    log(&format!(
                        "etcd: joining through {peer} as a learner ({own_peer_url})"
                    ));
                    return Ok(cluster);
                }
                Ok(Err(refusal)) => return Err(refusal),
                Err(e) => last = format!("{peer}: {e}"),
            }
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "etcd: could not join the cluster within {}s; last: {last}",
                timeout.as_secs()
            ));
        }
        if reported.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
            log(&format!("etcd: waiting to join the cluster: {last}"));
            reported = Some(Instant::now());
        }
        std::thread::sleep(RETRY);
    }
}

/// One try through one member: an error to retry (outer), or a refusal that no retry changes
/// (inner).
fn join_through(
    peer: SocketAddr,
    own_name: &str,
    own_peer_url: &str,
) -> Result<Result<Vec<(String, String)>, String>, String> {
    let client = EtcdClient::new(EtcdEndpoint::remote(peer)).map_err(|e| e.to_string())?;
    let members = client.member_list().map_err(|e| e.to_string())?;
    let (id, members) = match membership(&members, own_peer_url) {
        Membership::Added(id) => (id, members),
        Membership::Absent => client
            .member_add(own_peer_url, true)
            .map_err(|e| e.to_string())?,
        Membership::Started(id) => {
            return Ok(Err(format!(
                "etcd: this node ({own_peer_url}) is already member {id:x}, which has run before, but its data directory is empty: remove the member (keel node etcd remove {own_name}) and boot again"
            )));
        }
    };
    Ok(Ok(initial_cluster(&members, id, own_name)))
}

/// In the background: until this node's member is a voting one, asks the other members to
/// promote it (etcd refuses while the learner is behind the leader). A member that is voting
/// already (a later boot) ends it at once.
pub fn spawn_promotion(
    node: &Node,
    own_name: &str,
    own_peer_url: &str,
    log: &'static (dyn Fn(&str) + Sync),
) {
    let peers = other_members(node, own_name);
    let own_peer_url = own_peer_url.to_owned();
    std::thread::spawn(move || {
        let mut reported: Option<Instant> = None;
        loop {
            // A voting member answers for itself (a learner refuses the member list).
            if voting_already(&own_peer_url) {
                return;
            }
            let mut last = String::new();
            for peer in &peers {
                match promote_through(*peer, &own_peer_url) {
                    Ok(Some(message)) => return log(&message),
                    Ok(None) => return,
                    Err(e) => last = format!("{peer}: {e}"),
                }
            }
            if reported.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
                log(&format!(
                    "etcd: not a voting member yet (promotion refused, or no member answers): {last}"
                ));
                reported = Some(Instant::now());
            }
            std::thread::sleep(RETRY);
        }
    });
}

/// Whether the local member lists itself as a voting member.
fn voting_already(own_peer_url: &str) -> bool {
    EtcdClient::new(EtcdEndpoint::local())
        .and_then(|c| c.member_list())
        .is_ok_and(|members| {
            members
                .iter()
                .any(|m| !m.learner && m.peer_urls.iter().any(|u| u == own_peer_url))
        })
}

/// `Ok(Some(what happened))` or `Ok(None)` when there is nothing to do (already voting) end
/// the promotion; an error means try again.
fn promote_through(peer: SocketAddr, own_peer_url: &str) -> Result<Option<String>, String> {
    let client = EtcdClient::new(EtcdEndpoint::remote(peer)).map_err(|e| e.to_string())?;
    let members = client.member_list().map_err(|e| e.to_string())?;
    let me = members
        .iter()
        .find(|m| m.peer_urls.iter().any(|u| u == own_peer_url))
        .ok_or_else(|| format!("{own_peer_url} is not a member (removed?)"))?;
    if !me.learner {
        return Ok(None);
    }
    client.member_promote(me.id).map_err(|e| e.to_string())?;
    Ok(Some(format!(
        "etcd: learner {:x} promoted to a voting member",
        me.id
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, peer: &str, learner: bool) -> EtcdMember {
        EtcdMember {
            id,
            name: name.into(),
            peer_urls: vec![peer.into()],
            client_urls: Vec::new(),
            learner,
        }
    }

    fn three_and_a_learner() -> Vec<EtcdMember> {
        vec![
            member(1, "kt-cp-1", "https://10.5.0.11:2380", false),
            member(2, "kt-cp-2", "https://10.5.0.12:2380", false),
            member(3, "kt-cp-3", "https://10.5.0.13:2380", false),
            member(9, "", "https://10.5.0.14:2380", true),
        ]
    }

    #[test]
    fn the_new_member_starts_under_its_own_name_beside_the_others() {
        let cluster = initial_cluster(&three_and_a_learner(), 9, "kt-cp-4");
        let flag: Vec<String> = cluster.iter().map(|(n, u)| format!("{n}={u}")).collect();
        assert_eq!(
            flag,
            [
                "kt-cp-1=https://10.5.0.11:2380",
                "kt-cp-2=https://10.5.0.12:2380",
                "kt-cp-3=https://10.5.0.13:2380",
                "kt-cp-4=https://10.5.0.14:2380",
            ]
        );
    }

    #[test]
    fn a_node_is_absent_added_or_started_by_its_peer_url() {
        let members = three_and_a_learner();
        assert_eq!(
            membership(&members, "https://10.5.0.15:2380"),
            Membership::Absent
        );
        assert_eq!(
            membership(&members, "https://10.5.0.14:2380"),
            Membership::Added(9)
        );
        assert_eq!(
            membership(&members, "https://10.5.0.12:2380"),
            Membership::Started(2)
        );
    }

    #[test]
    fn a_member_is_removed_by_name_but_never_the_answering_one() {
        let view = EtcdMembers {
            cluster_id: 7,
            member_id: 1,
            leader_id: 1,
            raft_term: 2,
            healthy: true,
            version: "3.4.23".into(),
            members: three_and_a_learner(),
        };
        assert_eq!(member_to_remove(&view, "kt-cp-3"), Ok(3));
        let own = member_to_remove(&view, "kt-cp-1").unwrap_err();
        assert!(own.contains("another control plane"), "{own}");
        let unknown = member_to_remove(&view, "kt-cp-8").unwrap_err();
        assert!(unknown.contains("kt-cp-2"), "{unknown}");
    }

    #[test]
    fn the_other_members_are_reached_on_their_client_port() {
        let text = r#"
            role = "controlplane"
            [etcd]
            join = true
            members = [
                { name = "a", peer_url = "https://10.5.0.11:2380" },
                { name = "b", peer_url = "https://10.5.0.12:2380" },
                { name = "me", peer_url = "https://10.5.0.14:2380" },
            ]
        "#;
        let node: Node = toml::from_str(text).unwrap();
        let peers: Vec<String> = other_members(&node, "me")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(peers, ["10.5.0.11:2379", "10.5.0.12:2379"]);
    }
}
