//! `keel cluster ...`: arguments to library calls, results to the table (stderr progress,
//! stdout table) or `--json`.

use std::time::Duration;

use serde_json::json;

use super::args::ClusterCommand;
use super::commands::ContextFile;
use super::error::CommandError;
use keel_contract::profile::Role;

use crate::cluster::{self, State, create, health, manage, membership};
use crate::progress::Reporter;

pub fn run(
    command: ClusterCommand,
    contexts: &ContextFile,
    rep: &Reporter,
) -> Result<(), CommandError> {
    match command {
        ClusterCommand::Create {
            name,
            image,
            controlplanes,
            workers,
            memory,
            cpus,
            disk_size,
            secrets,
            etcd_snapshot,
            segment,
            wait_timeout,
            json,
        } => {
            let opts = create::CreateOptions {
                request: cluster::Request {
                    name,
                    control_planes: controlplanes,
                    workers,
                    memory_mib: memory,
                    cpus,
                },
                image,
                disk_size,
                secrets,
                etcd_snapshot,
                segment,
                wait_timeout: Duration::from_secs(wait_timeout),
                contexts: contexts.path()?,
            };
            create_cluster(&opts, json, rep)
        }
        ClusterCommand::List { json } => list(json),
        ClusterCommand::Status { name, json } => status(&name, json, rep),
        ClusterCommand::Start {
            name,
            node,
            wait_timeout,
        } => start(&name, node.as_deref(), wait_timeout, rep),
        ClusterCommand::Stop { name, node } => {
            let (dir, state) = State::load(&name)?;
            let was_running = manage::stop(&dir, &state, &node)?;
            rep.note(&if was_running {
                format!("{node} stopped (its disk stays; `keel cluster start {name}` boots it)")
            } else {
                format!("{node} was not running")
            });
            Ok(())
        }
        ClusterCommand::Upgrade {
            name,
            bundle,
            wait_timeout,
            json,
        } => upgrade(&name, &bundle, wait_timeout, json, rep),
        ClusterCommand::Add {
            name,
            controlplanes,
            workers,
            wait_timeout,
        } => {
            let roles = std::iter::repeat_n(Role::ControlPlane, controlplanes.into())
                .chain(std::iter::repeat_n(Role::Worker, workers.into()));
            add(&name, roles, wait_timeout, contexts, rep)
        }
        ClusterCommand::Remove { name, node, json } => remove(&name, &node, json, contexts, rep),
        ClusterCommand::Destroy { name, keep_logs } => {
            let done = manage::destroy(&name, keep_logs, &contexts.path()?)?;
            rep.note(&format!(
                "cluster {name} destroyed ({} VMs stopped){}",
                done.killed,
                done.logs
                    .map(|p| format!("; logs kept in {}", p.display()))
                    .unwrap_or_default()
            ));
            Ok(())
        }
    }
}

fn credentials(state: &State) -> Result<crate::node::ClientCredentials, CommandError> {
    crate::node::credentials_from_secrets(&state.secrets).map_err(CommandError::Failed)
}

/// Creates, prints the nodes (also when the cluster did not become healthy: the table says
/// which node is not), then fails with the health check if it failed.
fn create_cluster(
    opts: &create::CreateOptions,
    json: bool,
    rep: &Reporter,
) -> Result<(), CommandError> {
    let start = std::time::Instant::now();
    let created = create::create(opts, &|line| rep.note(line))?;
    for w in &created.warnings {
        rep.note(&format!("warning: {w}"));
    }
    let seen = health::observe(&created.state, &credentials(&created.state)?);
    let rows = manage::report(&created.dir, &created.state, &seen);
    print_nodes(&created.state, &rows, json);
    created.health?;
    rep.note(&format!(
        "cluster {} healthy after {:.0} s; `keel node status` talks to {}; `keel cluster destroy {}` removes it",
        created.state.name,
        start.elapsed().as_secs_f64(),
        created.state.nodes[0].name,
        created.state.name
    ));
    Ok(())
}

fn status(name: &str, json: bool, rep: &Reporter) -> Result<(), CommandError> {
    let (dir, state) = State::load(name)?;
    let seen = health::observe(&state, &credentials(&state)?);
    let rows = manage::report(&dir, &state, &seen);
    print_nodes(&state, &rows, json);
    if let Err(check) = health::verdict(&state, &seen) {
        rep.note(&format!("not healthy: {check}"));
    }
    Ok(())
}

fn start(
    name: &str,
    node: Option<&str>,
    wait_timeout: u64,
    rep: &Reporter,
) -> Result<(), CommandError> {
    let (dir, state) = State::load(name)?;
    let started = manage::start(&dir, &state, node)?;
    rep.note(&format!("started: {}", list_or_none(&started)));
    health::wait(
        &state,
        &credentials(&state)?,
        Duration::from_secs(wait_timeout),
        &|l| rep.note(l),
    )?;
    rep.note(&format!("cluster {name} healthy"));
    Ok(())
}

fn upgrade(
    name: &str,
    bundle: &std::path::Path,
    wait_timeout: u64,
    json: bool,
    rep: &Reporter,
) -> Result<(), CommandError> {
    let (_, state) = State::load(name)?;
    let done = cluster::upgrade::upgrade(
        &state,
        &credentials(&state)?,
        bundle,
        Duration::from_secs(wait_timeout),
        rep,
    )?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&done).unwrap_or_default()
        );
    }
    rep.note(&format!("cluster {name}: every node upgraded"));
    Ok(())
}

fn add(
    name: &str,
    roles: impl Iterator<Item = Role>,
    wait_timeout: u64,
    contexts: &ContextFile,
    rep: &Reporter,
) -> Result<(), CommandError> {
    let (_, state) = State::load(name)?;
    let creds = credentials(&state)?;
    let mut added = 0;
    for role in roles {
        let start = std::time::Instant::now();
        let done = membership::add(
            name,
            role,
            &creds,
            &contexts.path()?,
            Duration::from_secs(wait_timeout),
            &|l| rep.note(l),
        )?;
        for w in &done.warnings {
            rep.note(&format!("warning: {w}"));
        }
        rep.note(&format!(
            "{} added; cluster {name} healthy after {:.0} s",
            done.node.name,
            start.elapsed().as_secs_f64()
        ));
        added += 1;
    }
    if added == 0 {
        return Err(CommandError::BadInput(
            "nothing to add: expected --controlplanes N and/or --workers N".into(),
        ));
    }
    status(name, false, rep)
}

fn remove(
    name: &str,
    node: &str,
    json: bool,
    contexts: &ContextFile,
    rep: &Reporter,
) -> Result<(), CommandError> {
    let (_, state) = State::load(name)?;
    let done = membership::remove(name, node, &credentials(&state)?, &contexts.path()?, &|l| {
        rep.note(l)
    })?;
    rep.note(&format!(
        "{node} removed{}",
        if done.was_running {
            " (its VM stopped, its disk deleted)"
        } else {
            " (its disk deleted)"
        }
    ));
    match (&done.members, json) {
        (Some(members), true) => println!(
            "{}",
            serde_json::to_string_pretty(members).unwrap_or_default()
        ),
        (Some(members), false) => print!("{}", super::node_etcd::format_members(members)),
        (None, true) => println!("null"),
        (None, false) => {}
    }
    Ok(())
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none (every node was running)".to_owned()
    } else {
        names.join(", ")
    }
}

fn print_nodes(state: &State, rows: &[manage::NodeReport], json: bool) {
    if json {
        let doc = json!({"name": state.name, "image": state.image, "secrets": state.secrets, "nodes": rows});
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!("{}", manage::table(rows));
    }
}

fn list(json: bool) -> Result<(), CommandError> {
    let mut out = Vec::new();
    for name in cluster::list()? {
        let (dir, state) = State::load(&name)?;
        let running = state
            .nodes
            .iter()
            .filter(|n| {
                let config = cluster::vm::config(&state, &cluster::node_dir(&dir, &n.name), n);
                cluster::vm::running_pid(&config).is_some()
            })
            .count();
        out.push((name, state.nodes.len(), running));
    }
    if json {
        let doc: Vec<_> = out
            .iter()
            .map(|(name, nodes, running)| json!({"name": name, "nodes": nodes, "running": running}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        println!("{:<20} {:<6} RUNNING", "NAME", "NODES");
        for (name, nodes, running) in out {
            println!("{name:<20} {nodes:<6} {running}");
        }
    }
    Ok(())
}
