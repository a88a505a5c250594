//! `keel cluster list|status|start|destroy`: the running cluster as its state file and its
//! nodes' pid files and APIs describe it.

use std::path::Path;

use serde::Serialize;

use super::{ClusterError, State, health, vm};
use crate::context::Config;

/// One node as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub name: String,
    pub role: &'static str,
    pub address: String,
    /// `127.0.0.1:PORT` forwards.
    pub api: String,
    pub etcd: Option<String>,
    pub kube_api: Option<String>,
    /// QEMU's pid while it runs.
    pub pid: Option<u32>,
    /// `ready`, `degraded: ...`, or why the API did not answer.
    pub state: String,
    pub version: Option<String>,
    pub etcd_members: Option<usize>,
    /// The control planes' virtual IP, on the node holding it.
    pub vip: Option<String>,
    pub console: String,
}

/// The rows of `status` (and of `create`'s table).
pub fn report(dir: &Path, state: &State, seen: &[health::Observation]) -> Vec<NodeReport> {
    state
        .nodes
        .iter()
        .map(|node| {
            let config = vm::config(state, &super::node_dir(dir, &node.name), node);
            let pid = vm::running_pid(&config);
            let seen = seen.iter().find(|o| o.node == node.name);
            let (node_state, version) = match (pid, seen.map(|o| &o.status)) {
                (None, _) => ("stopped".to_owned(), None),
                (Some(_), Some(Ok(s))) => (
                    s.degraded
                        .as_ref()
                        .map_or_else(|| "ready".to_owned(), |d| format!("degraded: {d}")),
                    Some(s.version.clone()),
                ),
                (Some(_), Some(Err(e))) => (format!("not answering: {e}"), None),
                (Some(_), None) => ("not asked".to_owned(), None),
            };
            let local = |port: Option<u16>| port.map(|p| format!("127.0.0.1:{p}"));
            NodeReport {
                name: node.name.clone(),
                role: node.role.as_str(),
                address: node.address.to_string(),
                api: format!("127.0.0.1:{}", node.api_port),
                etcd: local(node.etcd_port),
                kube_api: local(node.kube_api_port),
                pid,
                state: node_state,
                version,
                etcd_members: seen
                    .and_then(|o| o.etcd.as_ref())
                    .and_then(|e| e.as_ref().ok())
                    .map(|m| m.members.len()),
                vip: seen
                    .and_then(|o| o.status.as_ref().ok())
                    .and_then(|s| s.vip.clone()),
                console: config.console_log().display().to_string(),
            }
        })
        .collect()
}

/// The table people read: one line per node.
pub fn table(rows: &[NodeReport]) -> String {
    let mut out = format!(
        "{:<20} {:<13} {:<11} {:<16} {:<16} {:<16} {}\n",
        "NODE", "ROLE", "ADDRESS", "API", "ETCD", "KUBE-API", "STATE"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<20} {:<13} {:<11} {:<16} {:<16} {:<16} {}\n",
            r.name,
            r.role,
            r.address,
            r.api,
            r.etcd.as_deref().unwrap_or("-"),
            r.kube_api.as_deref().unwrap_or("-"),
            match &r.vip {
                Some(vip) => format!("{} (holds {vip})", r.state),
                None => r.state.clone(),
            }
        ));
    }
    out
}

/// Kills every node's QEMU; returns how many were running.
pub fn kill_all(dir: &Path, state: &State) -> Result<usize, ClusterError> {
    let mut killed = 0;
    for node in &state.nodes {
        let config = vm::config(state, &super::node_dir(dir, &node.name), node);
        if vm::kill(&config)? {
            killed += 1;
        }
    }
    Ok(killed)
}

/// Starts the nodes whose QEMU is not running (`only`: just that node); returns their names.
/// A node keeps its disk: it boots with its data, as after a power cut.
pub fn start(dir: &Path, state: &State, only: Option<&str>) -> Result<Vec<String>, ClusterError> {
    if let Some(name) = only
        && !state.nodes.iter().any(|n| n.name == name)
    {
        let known: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(ClusterError::BadRequest(format!(
            "no node {name:?} in cluster {} (nodes: {})",
            state.name,
            known.join(", ")
        )));
    }
    let mut started = Vec::new();
    for node in state
        .nodes
        .iter()
        .filter(|n| only.is_none_or(|name| n.name == name))
    {
        let config = vm::config(state, &super::node_dir(dir, &node.name), node);
        if vm::running_pid(&config).is_none() {
            vm::start(&config, &node.name)?;
            started.push(node.name.clone());
        }
    }
    Ok(started)
}

/// Stops one node's QEMU (pulls the plug); false when it was not running.
pub fn stop(dir: &Path, state: &State, name: &str) -> Result<bool, ClusterError> {
    let node = state.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
        ClusterError::BadRequest(format!("no node {name:?} in cluster {}", state.name))
    })?;
    vm::kill(&vm::config(state, &super::node_dir(dir, &node.name), node))
}

/// What `destroy` did.
pub struct Destroyed {
    /// VMs that were running.
    pub killed: usize,
    /// Where the logs were kept (`--keep-logs`).
    pub logs: Option<std::path::PathBuf>,
}

/// Kills every VM, removes the cluster's directory and its context. With `keep_logs` the
/// consoles and QEMU logs stay, moved to `NAME.destroyed-UNIXTIME` beside the clusters so
/// that the name is free again.
pub fn destroy(name: &str, keep_logs: bool, contexts: &Path) -> Result<Destroyed, ClusterError> {
    let (dir, state) = State::load(name)?;
    let killed = kill_all(&dir, &state)?;
    let logs = if keep_logs {
        remove_all_but_logs(&dir)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let kept = dir.with_file_name(format!("{name}.destroyed-{now}"));
        std::fs::rename(&dir, &kept).map_err(super::io(kept.display()))?;
        Some(kept)
    } else {
        std::fs::remove_dir_all(&dir).map_err(super::io(dir.display()))?;
        None
    };
    let mut config = Config::load(contexts)?;
    if config.contexts.contains_key(name) {
        config.remove(name)?;
        config.save(contexts)?;
    }
    Ok(Destroyed { killed, logs })
}

/// Leaves `NODE/vm/console.log` and `NODE/vm/qemu.log`; everything else goes (disks,
/// secrets, the state file, so the name is free again).
fn remove_all_but_logs(dir: &Path) -> Result<(), ClusterError> {
    let keep = |p: &Path| {
        matches!(
            p.file_name().and_then(|n| n.to_str()),
            Some("console.log" | "qemu.log")
        )
    };
    fn walk(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<(), ClusterError> {
        for entry in std::fs::read_dir(dir).map_err(super::io(dir.display()))? {
            let path = entry.map_err(super::io(dir.display()))?.path();
            if path.is_dir() {
                walk(&path, keep)?;
            } else if !keep(&path) {
                std::fs::remove_file(&path).map_err(super::io(path.display()))?;
            }
        }
        Ok(())
    }
    walk(dir, &keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeping_logs_removes_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("kt-cp-1");
        std::fs::create_dir_all(node.join("vm")).unwrap();
        for f in [
            "disk.raw",
            "secrets.toml",
            "vm/console.log",
            "vm/qemu.log",
            "vm/qemu.pid",
        ] {
            std::fs::write(node.join(f), b"x").unwrap();
        }
        std::fs::write(dir.path().join(super::super::STATE_FILE), b"x").unwrap();
        remove_all_but_logs(dir.path()).unwrap();
        let mut left: Vec<String> = walk_files(dir.path());
        left.sort();
        assert_eq!(left, ["kt-cp-1/vm/console.log", "kt-cp-1/vm/qemu.log"]);
    }

    fn walk_files(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    out.push(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        out
    }
}
