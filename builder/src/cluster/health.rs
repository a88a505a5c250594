//! When a cluster is healthy: every node ready through its API (not degraded), and etcd with
//! every control plane a voting member, each member healthy and seeing the same member list.
//! [`verdict`] is pure, over what [`observe`] asked the nodes; [`wait`] repeats both.

use std::time::{Duration, Instant};

use keel_contract::api::{EtcdMembers, Status};
use keel_contract::profile::Role;

use crate::node::{ClientCredentials, NodeClient};

use super::{ClusterError, NodePlan, State};

/// What one node said (or why it did not).
#[derive(Debug, Clone)]
pub struct Observation {
    pub node: String,
    pub role: Role,
    pub status: Result<Status, String>,
    /// Control planes only.
    pub etcd: Option<Result<EtcdMembers, String>>,
}

/// Asks every node for its status and, on control planes, its view of the etcd members,
/// all at once: a silent node costs one timeout, not one per node.
pub fn observe(state: &State, creds: &ClientCredentials) -> Vec<Observation> {
    std::thread::scope(|scope| {
        let asked: Vec<_> = state
            .nodes
            .iter()
            .map(|node| (node, scope.spawn(move || observe_node(node, creds))))
            .collect();
        asked
            .into_iter()
            .map(|(node, answer)| {
                answer.join().unwrap_or_else(|_| Observation {
                    node: node.name.clone(),
                    role: node.role,
                    status: Err("observing it failed".into()),
                    etcd: None,
                })
            })
            .collect()
    })
}

/// A node that has not answered in this long is not healthy now (a VM whose firmware found
/// nothing to boot accepts the forwarded connection and never answers).
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(15);

fn observe_node(node: &NodePlan, creds: &ClientCredentials) -> Observation {
    let client = NodeClient::new(&format!("127.0.0.1:{}", node.api_port), creds)
        .map(|c| c.with_read_timeout(OBSERVE_TIMEOUT));
    let status = client
        .as_ref()
        .map_err(ToString::to_string)
        .and_then(|c| c.status().map_err(|e| e.to_string()));
    let etcd = (node.role == Role::ControlPlane).then(|| {
        client
            .as_ref()
            .map_err(ToString::to_string)
            .and_then(|c| c.etcd_members().map_err(|e| e.to_string()))
    });
    Observation {
        node: node.name.clone(),
        role: node.role,
        status,
        etcd,
    }
}

/// `Ok` when healthy, else the first check that fails, named for the user.
pub fn verdict(state: &State, seen: &[Observation]) -> Result<(), String> {
    for o in seen {
        match &o.status {
            Err(e) => return Err(format!("{}: node API: {e}", o.node)),
            Ok(s) => {
                if let Some(why) = &s.degraded {
                    return Err(format!("{}: degraded: {why}", o.node));
                }
                if !s.ready {
                    return Err(format!("{}: not ready yet", o.node));
                }
            }
        }
    }
    let mut want: Vec<&str> = state
        .nodes
        .iter()
        .filter(|n| n.role == Role::ControlPlane)
        .map(|n| n.name.as_str())
        .collect();
    want.sort_unstable();
    let mut first_ids: Option<Vec<u64>> = None;
    for o in seen.iter().filter(|o| o.role == Role::ControlPlane) {
        let members = match &o.etcd {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(format!("{}: etcd: {e}", o.node)),
            None => return Err(format!("{}: etcd: not asked", o.node)),
        };
        if !members.healthy {
            return Err(format!("{}: etcd: member not healthy", o.node));
        }
        let mut voting: Vec<&str> = members
            .members
            .iter()
            .filter(|m| !m.learner)
            .map(|m| m.name.as_str())
            .collect();
        voting.sort_unstable();
        if voting != want {
            return Err(format!(
                "{}: etcd voting members are [{}], expected [{}]",
                o.node,
                voting.join(", "),
                want.join(", ")
            ));
        }
        let mut ids: Vec<u64> = members.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        match &first_ids {
            None => first_ids = Some(ids),
            Some(first) if *first != ids => {
                return Err(format!(
                    "{}: sees other etcd member IDs than the first control plane",
                    o.node
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Observes until [`verdict`] passes or `timeout` passes (then the failing check is the
/// error). `progress` gets a line whenever the failing check changes.
pub fn wait(
    state: &State,
    creds: &ClientCredentials,
    timeout: Duration,
    progress: &dyn Fn(&str),
) -> Result<Vec<Observation>, ClusterError> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let seen = observe(state, creds);
        let failing = match verdict(state, &seen) {
            Ok(()) => return Ok(seen),
            Err(check) => check,
        };
        if start.elapsed() >= timeout {
            return Err(ClusterError::Unhealthy {
                secs: timeout.as_secs(),
                check: failing,
            });
        }
        if failing != last {
            progress(&format!(
                "waiting ({:.0} s): {failing}",
                start.elapsed().as_secs_f64()
            ));
            last = failing;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
