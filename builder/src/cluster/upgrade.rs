//! `keel cluster upgrade NAME BUNDLE`: a rolling upgrade, one node at a time, control planes
//! first (the state file's order). Before each node the cluster must be healthy; each node
//! gets the bundle through its API and reboots into it; the rollout goes on only once that
//! node is ready on the new version and the whole cluster is healthy again (etcd with every
//! member). It stops at the first node that fails or comes back on its old version (its
//! health gate failed and it rolled back), and never continues past it.
//!
//! [`judge`] is pure: what a node's status after the upload means.

use std::path::Path;
use std::time::{Duration, Instant};

use keel_contract::api::Status;

use super::{ClusterError, NodePlan, State, health};
use crate::node::{ClientCredentials, NodeClient, open_update_file};
use crate::progress::Reporter;

/// What one node's status says after its upgrade was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Not back yet, or back and still booting: keep asking.
    Waiting(String),
    Upgraded,
    /// Back on another version than the bundle's: the new one failed its health gate.
    RolledBack(String),
    /// Up on the new version but degraded.
    Degraded(String),
}

/// `before_boot`: the node's boot number when the upload was accepted.
pub fn judge(before_boot: u64, target: &str, status: &Status) -> Judgement {
    if status.boot <= before_boot {
        return Judgement::Waiting("has not rebooted yet".into());
    }
    if status.version != target {
        let why = status
            .degraded
            .clone()
            .or_else(|| status.warnings.first().cloned())
            .unwrap_or_else(|| "its health gate failed".into());
        return Judgement::RolledBack(format!(
            "came back on {} instead of {target} (rolled back from {}): {why}",
            status.version,
            status.rolled_back_from.as_deref().unwrap_or("?")
        ));
    }
    if let Some(why) = &status.degraded {
        return Judgement::Degraded(why.clone());
    }
    if status.ready {
        Judgement::Upgraded
    } else {
        Judgement::Waiting(format!("booting {target}"))
    }
}

/// One node's part of the rollout, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeUpgrade {
    pub node: String,
    pub from: String,
    pub to: String,
    /// Seconds from the upload's start to the cluster healthy again.
    pub seconds: f64,
    /// Already on the bundle's version: nothing was sent.
    pub skipped: bool,
}

/// Upgrades every node in turn; the error names the node that stopped the rollout.
pub fn upgrade(
    state: &State,
    creds: &ClientCredentials,
    bundle: &Path,
    timeout: Duration,
    rep: &Reporter,
) -> Result<Vec<NodeUpgrade>, ClusterError> {
    let progress = |line: &str| rep.note(line);
    health::wait(state, creds, timeout, &progress)?;
    let mut done = Vec::new();
    for node in &state.nodes {
        let one = upgrade_node(state, creds, node, bundle, timeout, rep)?;
        progress(&if one.skipped {
            format!("{}: already on {}", one.node, one.to)
        } else {
            format!(
                "{}: {} -> {} in {:.0} s, cluster healthy",
                one.node, one.from, one.to, one.seconds
            )
        });
        done.push(one);
    }
    Ok(done)
}

fn stopped(node: &NodePlan, why: String) -> ClusterError {
    ClusterError::Upgrade {
        node: node.name.clone(),
        why,
    }
}

fn upgrade_node(
    state: &State,
    creds: &ClientCredentials,
    node: &NodePlan,
    bundle: &Path,
    timeout: Duration,
    rep: &Reporter,
) -> Result<NodeUpgrade, ClusterError> {
    let start = Instant::now();
    let client = NodeClient::new(&format!("127.0.0.1:{}", node.api_port), creds)
        .map_err(|e| stopped(node, e.to_string()))?;
    let before = client.status().map_err(|e| stopped(node, e.to_string()))?;
    let mut update =
        open_update_file(bundle).map_err(|e| ClusterError::BadRequest(e.to_string()))?;
    rep.note(&format!("{}: uploading {}", node.name, bundle.display()));
    let report = match client.upgrade(&mut update.reader, update.len, false, true, rep) {
        Ok(report) => report,
        // The node refuses the version it runs (409): nothing to do on it. (A node resumed
        // after a stopped rollout is already on it.)
        Err(e)
            if e.to_string().contains(&format!(
                "{v} is not newer than the running {v}",
                v = before.version
            )) =>
        {
            return Ok(NodeUpgrade {
                node: node.name.clone(),
                from: before.version.clone(),
                to: before.version,
                seconds: 0.0,
                skipped: true,
            });
        }
        Err(e) => return Err(stopped(node, format!("upload refused: {e}"))),
    };
    wait_until_upgraded(&client, node, before.boot, &report.to, start, timeout, rep)?;
    health::wait(state, creds, timeout, &|line| rep.note(line)).map_err(|e| {
        stopped(
            node,
            format!(
                "upgraded to {}, but the cluster is not healthy: {e}",
                report.to
            ),
        )
    })?;
    Ok(NodeUpgrade {
        node: node.name.clone(),
        from: report.from,
        to: report.to,
        seconds: start.elapsed().as_secs_f64(),
        skipped: false,
    })
}

/// Asks the node until [`judge`] says it is upgraded (Ok), rolled back or degraded (the
/// rollout's error), or `timeout` since `start` passes.
fn wait_until_upgraded(
    client: &NodeClient,
    node: &NodePlan,
    before_boot: u64,
    target: &str,
    start: Instant,
    timeout: Duration,
    rep: &Reporter,
) -> Result<(), ClusterError> {
    let mut last = String::new();
    loop {
        let judgement = match client.status() {
            Ok(status) => judge(before_boot, target, &status),
            Err(e) => Judgement::Waiting(format!("API not answering ({e})")),
        };
        match judgement {
            Judgement::Upgraded => return Ok(()),
            Judgement::RolledBack(why) | Judgement::Degraded(why) => {
                return Err(stopped(node, why));
            }
            Judgement::Waiting(why) => {
                if start.elapsed() > timeout {
                    return Err(stopped(
                        node,
                        format!("not ready on {target} after {} s: {why}", timeout.as_secs()),
                    ));
                }
                if why != last {
                    rep.note(&format!("{}: {why}", node.name));
                    last = why;
                }
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(version: &str, boot: u64, ready: bool) -> Status {
        let text = format!(
            r#"{{"name":"keel-worker","version":"{version}","slot":"b","hostname":"n","addresses":[],"slots":[],"services":[],"boot":{boot},"rolled_back_from":null,"quarantined":[],"uptime_secs":1,"ready":{ready}}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn a_node_is_upgraded_only_when_back_ready_on_the_new_version() {
        assert!(matches!(
            judge(3, "1.0.1", &status("1.0.0", 3, true)),
            Judgement::Waiting(_)
        ));
        assert!(matches!(
            judge(3, "1.0.1", &status("1.0.1", 4, false)),
            Judgement::Waiting(_)
        ));
        assert_eq!(
            judge(3, "1.0.1", &status("1.0.1", 4, true)),
            Judgement::Upgraded
        );
    }

    #[test]
    fn back_on_the_old_version_is_a_rollback_that_stops_the_rollout() {
        let mut back = status("1.0.0", 6, true);
        back.rolled_back_from = Some("1.0.1".into());
        match judge(3, "1.0.1", &back) {
            Judgement::RolledBack(why) => {
                assert!(why.contains("came back on 1.0.0 instead of 1.0.1"), "{why}");
                assert!(why.contains("rolled back from 1.0.1"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let mut degraded = status("1.0.1", 4, false);
        degraded.degraded = Some("/var: cannot mount".into());
        assert_eq!(
            judge(3, "1.0.1", &degraded),
            Judgement::Degraded("/var: cannot mount".into())
        );
    }
}
