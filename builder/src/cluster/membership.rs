//! `keel cluster add` and `keel cluster remove`: a node more or less in a running cluster.
//!
//! An added control plane boots with `node.etcd.join`: it asks a running member to add it as
//! an etcd learner and is promoted once it has caught up (the init's `etcd_join`), so the
//! cluster is healthy again only when it is a voting member. A removed control plane is
//! taken out of etcd's member list through another control plane's node API first, then
//! its VM is stopped and its files removed, so the cluster never waits for a member that is
//! not coming back.

use std::path::Path;
use std::time::{Duration, Instant};

use keel_contract::api::{EtcdMembers, NOT_AN_ETCD_MEMBER as NOT_A_MEMBER};
use keel_contract::profile::Role;

use super::plan::{self, NodePlan};
use super::{ClusterError, State, health, io, vm};
use crate::node::{ClientCredentials, NodeClient};

/// etcd refuses to remove a member while another joined in the last 5 seconds ("unhealthy
/// cluster"); a removal is tried again for this long.
const REMOVE_RETRY_FOR: Duration = Duration::from_secs(60);

/// What `add` did.
pub struct Added {
    pub node: NodePlan,
    pub warnings: Vec<String>,
}

/// Adds one node of `role` to the running cluster `name` and waits until the cluster is
/// healthy with it (for a control plane: a voting etcd member).
pub fn add(
    name: &str,
    role: Role,
    creds: &ClientCredentials,
    contexts: &Path,
    wait_timeout: Duration,
    progress: &dyn Fn(&str),
) -> Result<Added, ClusterError> {
    let (dir, mut state) = State::load(name)?;
    let cluster = state
        .name
        .parse()
        .map_err(|e: String| ClusterError::BadState {
            path: dir.join(super::STATE_FILE),
            message: e,
        })?;
    // A learner needs a quorum to be added and to catch up from.
    health::verdict(&state, &health::observe(&state, creds)).map_err(|check| {
        ClusterError::Unhealthy {
            secs: 0,
            check: format!("the cluster must be healthy before a node is added: {check}"),
        }
    })?;
    let node = plan::next_node(&cluster, &state.nodes, role, &mut super::create::free_port)?;
    let mut nodes = state.nodes.clone();
    nodes.push(node.clone());
    let mut section = plan::node_section(&cluster, &nodes, &node)?;
    section.etcd.join = role == Role::ControlPlane;
    write_node(&dir, &state, &node, &section)?;
    state.nodes = nodes;
    state.save(&dir)?;
    let config = vm::config(&state, &super::node_dir(&dir, &node.name), &node);
    if let Err(e) = vm::start(&config, &node.name) {
        forget(&dir, &mut state, &node.name)?;
        return Err(e);
    }
    progress(&format!("{} started, joining", node.name));
    super::create::save_context(contexts, &state)?;
    let control_planes = state
        .nodes
        .iter()
        .filter(|n| n.role == Role::ControlPlane)
        .count();
    let warnings = plan::even_count_warning(u8::try_from(control_planes).unwrap_or(u8::MAX))
        .filter(|_| role == Role::ControlPlane)
        .into_iter()
        .collect();
    health::wait(&state, creds, wait_timeout, progress)?;
    Ok(Added { node, warnings })
}

/// The new node's profile, role secrets and disk (a copy of the image, as large as the
/// first node's disk).
fn write_node(
    dir: &Path,
    state: &State,
    node: &NodePlan,
    section: &keel_contract::profile::Node,
) -> Result<(), ClusterError> {
    let node_dir = super::node_dir(dir, &node.name);
    std::fs::create_dir_all(&node_dir).map_err(io(node_dir.display()))?;
    let written = (|| {
        super::create::write_private(&node_dir.join("profile.toml"), &plan::node_toml(section)?)?;
        let text = std::fs::read_to_string(&state.secrets).map_err(io(state.secrets.display()))?;
        let secrets = keel_contract::secrets::Secrets::from_toml(&text).map_err(|e| {
            ClusterError::BadState {
                path: state.secrets.clone(),
                message: e.to_string(),
            }
        })?;
        let role_secrets = secrets
            .for_role(node.role)
            .to_toml()
            .map_err(|e| ClusterError::Plan(e.to_string()))?;
        super::create::write_private(&node_dir.join("secrets.toml"), &role_secrets)?;
        let first = super::node_dir(dir, &state.nodes[0].name).join("disk.raw");
        let size = std::fs::metadata(&first)
            .map_err(io(first.display()))?
            .len();
        let image = state.image.join(keel_contract::output::DISK);
        let disk = node_dir.join("disk.raw");
        crate::run::sparse_copy(&image, &disk, size).map_err(io(disk.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&node_dir);
    }
    written
}

/// Drops a node from the state file and removes its directory (its VM is not running).
fn forget(dir: &Path, state: &mut State, node: &str) -> Result<(), ClusterError> {
    state.nodes.retain(|n| n.name != node);
    state.save(dir)?;
    let node_dir = super::node_dir(dir, node);
    match std::fs::remove_dir_all(&node_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(node_dir.display())(e)),
        _ => Ok(()),
    }
}

/// What `remove` did.
pub struct Removed {
    /// The etcd members left, as the control plane that removed it answered.
    pub members: Option<EtcdMembers>,
    pub was_running: bool,
}

/// Removes node `node_name`: out of etcd first (a control plane), then its VM and files.
pub fn remove(
    name: &str,
    node_name: &str,
    creds: &ClientCredentials,
    contexts: &Path,
    progress: &dyn Fn(&str),
) -> Result<Removed, ClusterError> {
    let (dir, mut state) = State::load(name)?;
    let Some(node) = state.nodes.iter().find(|n| n.name == node_name).cloned() else {
        let known: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(ClusterError::BadRequest(format!(
            "no node {node_name:?} in cluster {name} (nodes: {})",
            known.join(", ")
        )));
    };
    let others: Vec<&NodePlan> = state
        .nodes
        .iter()
        .filter(|n| n.role == Role::ControlPlane && n.name != node_name)
        .collect();
    if node.role == Role::ControlPlane && others.is_empty() {
        return Err(ClusterError::BadRequest(format!(
            "{node_name} is the cluster's last control plane (destroy the cluster instead)"
        )));
    }
    let members = match node.role {
        Role::ControlPlane => Some(remove_member(&others, node_name, creds, progress)?),
        Role::Worker => None,
    };
    let config = vm::config(&state, &super::node_dir(&dir, node_name), &node);
    let was_running = vm::kill(&config)?;
    forget(&dir, &mut state, node_name)?;
    super::create::save_context(contexts, &state)?;
    Ok(Removed {
        members,
        was_running,
    })
}

/// Asks the other control planes, in turn, to remove the member, until one has or
/// [`REMOVE_RETRY_FOR`] passes.
fn remove_member(
    others: &[&NodePlan],
    member: &str,
    creds: &ClientCredentials,
    progress: &dyn Fn(&str),
) -> Result<EtcdMembers, ClusterError> {
    let start = Instant::now();
    let mut reported = String::new();
    loop {
        let mut last = String::new();
        for through in others {
            let answer = NodeClient::new(&format!("127.0.0.1:{}", through.api_port), creds)
                .and_then(|c| c.etcd_remove_member(member));
            match answer {
                Ok(members) => {
                    progress(&format!("{member} removed from etcd by {}", through.name));
                    return Ok(members);
                }
                // Taken out before (a removal cut short): nothing left to do in etcd.
                Err(e) if e.to_string().contains(NOT_A_MEMBER) => {
                    return NodeClient::new(&format!("127.0.0.1:{}", through.api_port), creds)
                        .and_then(|c| c.etcd_members())
                        .map_err(|e| ClusterError::Membership {
                            node: member.to_owned(),
                            why: e.to_string(),
                        });
                }
                Err(e) => last = format!("{}: {e}", through.name),
            }
        }
        if start.elapsed() >= REMOVE_RETRY_FOR {
            return Err(ClusterError::Membership {
                node: member.to_owned(),
                why: format!("removing the etcd member: {last}"),
            });
        }
        if last != reported {
            progress(&format!(
                "removing {member} from etcd: {last}; trying again"
            ));
            reported = last;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
