//! `keel cluster create`: plan, write the cluster's directory (secrets, disks, profiles and
//! the state file, in that order), start every VM detached, save a `keel` context for the
//! cluster, then wait until it is healthy. Bad input is refused before anything is written;
//! a failure while writing or starting removes what was made (VMs included).

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_contract::profile::{ByteSize, Role};

use super::plan::{self, NodePlan, Request};
use super::{ClusterError, State, health, io, vm};
use crate::context::{Config, Context};

pub struct CreateOptions {
    pub request: Request,
    /// A build output directory (with `disk.raw`).
    pub image: PathBuf,
    pub disk_size: String,
    /// Cluster secrets to use instead of new ones.
    pub secrets: Option<PathBuf>,
    /// An etcd snapshot the first control plane restores into a new cluster, which the
    /// other control planes join.
    pub etcd_snapshot: Option<PathBuf>,
    /// The cluster L2's transport (benchmarks; the product uses multicast).
    pub segment: super::Segment,
    pub wait_timeout: Duration,
    /// The contexts file to save the cluster's context in.
    pub contexts: PathBuf,
}

/// What was created, for the table and `--json`.
pub struct Created {
    pub dir: PathBuf,
    pub state: State,
    pub warnings: Vec<String>,
    pub health: Result<(), ClusterError>,
}

/// A port the kernel says is free now (bound, then released).
pub(super) fn free_port() -> Result<u16, ClusterError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port())
}

/// A free UDP port for the cluster's multicast segment.
fn free_udp_port() -> Result<u16, ClusterError> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(socket
        .local_addr()
        .map_err(io("finding a free port"))?
        .port())
}

/// The segment's (first) port: UDP for multicast, TCP for a stream, two UDP ports in a row
/// for datagrams.
fn segment_port(segment: super::Segment) -> Result<u16, ClusterError> {
    match segment {
        super::Segment::Mcast => free_udp_port(),
        super::Segment::Stream => free_port(),
        super::Segment::Dgram => {
            for _ in 0..50 {
                let port = free_udp_port()?;
                let next = port.checked_add(1).unwrap_or(port);
                if next != port && std::net::UdpSocket::bind(("127.0.0.1", next)).is_ok() {
                    return Ok(port);
                }
            }
            Err(ClusterError::Plan("no two free UDP ports in a row".into()))
        }
    }
}

struct Checked {
    dir: PathBuf,
    disk: PathBuf,
    size: ByteSize,
    secrets: Option<keel_contract::secrets::Secrets>,
    warnings: Vec<String>,
}

/// The snapshot, whole (etcd's SHA-256 trailer), before anything is written.
fn check_snapshot(path: &Path) -> Result<(), ClusterError> {
    crate::node::check_snapshot_file(path)
        .map(|_| ())
        .map_err(|why| {
            ClusterError::BadRequest(format!(
                "--etcd-snapshot {}: {why} (expected a file from `keel node etcd snapshot`)",
                path.display()
            ))
        })
}

fn check(opts: &CreateOptions) -> Result<Checked, ClusterError> {
    let warnings = plan::check(&opts.request)?;
    let name = opts.request.name.as_str();
    let dir = super::cluster_dir(name)?;
    if dir.exists() {
        return Err(ClusterError::Exists {
            name: name.to_owned(),
            dir,
        });
    }
    let disk = opts.image.join(keel_contract::output::DISK);
    if !disk.is_file() {
        return Err(ClusterError::BadRequest(format!(
            "--image {}: no {} (expected a keel build output directory)",
            opts.image.display(),
            keel_contract::output::DISK
        )));
    }
    let size: ByteSize = opts
        .disk_size
        .parse()
        .map_err(|e| ClusterError::BadRequest(format!("--disk-size: {e}")))?;
    let secrets = opts
        .secrets
        .as_deref()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ClusterError::BadRequest(format!("--secrets {}: {e}", path.display()))
            })?;
            keel_contract::secrets::Secrets::from_toml(&text).map_err(|e| {
                ClusterError::BadRequest(format!(
                    "--secrets {}: {e} (expected a file from `keel secrets gen`)",
                    path.display()
                ))
            })
        })
        .transpose()?;
    // The nodes' kubeconfigs carry the secrets' cluster name, their profiles this one.
    if let (Some(path), Some(secrets)) = (&opts.secrets, &secrets)
        && secrets.cluster_name != name
    {
        return Err(ClusterError::BadRequest(format!(
            "--secrets {}: its cluster is {:?}, not {name:?} (expected secrets from `keel secrets gen --cluster-name {name}`)",
            path.display(),
            secrets.cluster_name
        )));
    }
    if let Some(path) = &opts.etcd_snapshot {
        check_snapshot(path)?;
    }
    let nodes = u16::from(opts.request.control_planes) + u16::from(opts.request.workers);
    if !opts.segment.is_multicast() && nodes != 2 {
        return Err(ClusterError::BadRequest(format!(
            "--segment {:?}: a point-to-point transport joins exactly two nodes, not {nodes}",
            opts.segment
        )));
    }
    Ok(Checked {
        dir,
        disk,
        size,
        secrets,
        warnings,
    })
}

/// Creates the cluster and waits for it. An error before the VMs run leaves nothing behind;
/// a cluster that does not become healthy is left running (its consoles say why) and
/// reported in [`Created::health`].
pub fn create(opts: &CreateOptions, progress: &dyn Fn(&str)) -> Result<Created, ClusterError> {
    let checked = check(opts)?;
    let dir = checked.dir.clone();
    let made = (|| {
        std::fs::create_dir_all(&dir).map_err(io(dir.display()))?;
        let state = write_cluster(opts, &checked, progress)?;
        start_all(&dir, &state, progress)?;
        Ok(state)
    })();
    let state = match made {
        Ok(state) => state,
        Err(e) => {
            if let Ok((_, state)) = State::load(opts.request.name.as_str()) {
                let _ = super::manage::kill_all(&dir, &state);
            }
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    save_context(&opts.contexts, &state)?;
    progress(&format!(
        "context {} saved: `keel node ...` talks to {}",
        state.name, state.nodes[0].name
    ));
    let creds = crate::node::credentials_from_secrets(&state.secrets)
        .map_err(|e| ClusterError::BadRequest(format!("cluster secrets: {e}")))?;
    let health = health::wait(&state, &creds, opts.wait_timeout, progress).map(|_| ());
    Ok(Created {
        dir,
        state,
        warnings: checked.warnings,
        health,
    })
}

/// Secrets, disks and profiles, then the state file.
fn write_cluster(
    opts: &CreateOptions,
    checked: &Checked,
    progress: &dyn Fn(&str),
) -> Result<State, ClusterError> {
    let dir = &checked.dir;
    let nodes = plan::nodes(&opts.request, &mut free_port)?;
    let (secrets_path, secrets) = match (&opts.secrets, &checked.secrets) {
        (Some(path), Some(secrets)) => (
            std::path::absolute(path).map_err(io(path.display()))?,
            secrets.clone(),
        ),
        _ => {
            let endpoint = plan::endpoint().parse().map_err(ClusterError::Plan)?;
            let path = dir.join("secrets.toml");
            let generated =
                crate::secrets::generate(&path, opts.request.name.as_str(), &endpoint, unix_now())
                    .map_err(|e| ClusterError::Plan(e.to_string()))?;
            progress(&format!("cluster secrets in {}", path.display()));
            (path, generated.secrets)
        }
    };
    for (i, node) in nodes.iter().enumerate() {
        let mut section = plan::node_section(&opts.request.name, &nodes, node)?;
        if let Some(snapshot) = &opts.etcd_snapshot {
            // The first control plane restores; the others join the cluster it makes.
            if i == 0 {
                let copy = super::node_dir(dir, &node.name).join(super::NODE_ETCD_SNAPSHOT);
                std::fs::create_dir_all(super::node_dir(dir, &node.name))
                    .map_err(io(dir.display()))?;
                copy_private(snapshot, &copy)?;
            } else {
                section.etcd.join = node.role == Role::ControlPlane;
            }
        }
        write_node(dir, node, &section, &secrets, checked)?;
    }
    let state = State {
        name: opts.request.name.as_str().to_owned(),
        image: std::path::absolute(&opts.image).map_err(io(opts.image.display()))?,
        secrets: secrets_path,
        segment_port: segment_port(opts.segment)?,
        segment: opts.segment,
        memory_mib: opts.request.memory_mib,
        cpus: opts.request.cpus,
        nodes,
    };
    state.save(dir)?;
    Ok(state)
}

fn write_node(
    dir: &Path,
    node: &NodePlan,
    section: &keel_contract::profile::Node,
    secrets: &keel_contract::secrets::Secrets,
    checked: &Checked,
) -> Result<(), ClusterError> {
    let node_dir = super::node_dir(dir, &node.name);
    std::fs::create_dir_all(&node_dir).map_err(io(node_dir.display()))?;
    write_private(&node_dir.join("profile.toml"), &plan::node_toml(section)?)?;
    let role_secrets = secrets
        .for_role(node.role)
        .to_toml()
        .map_err(|e| ClusterError::Plan(e.to_string()))?;
    write_private(&node_dir.join("secrets.toml"), &role_secrets)?;
    let disk = node_dir.join("disk.raw");
    crate::run::sparse_copy(&checked.disk, &disk, checked.size.bytes()).map_err(io(disk.display()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn write_private(path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::io::Write;
    crate::io::create_new_with_mode(path, 0o600)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io(path.display()))
}

/// A copy only its owner reads (a snapshot holds every Kubernetes secret).
fn copy_private(from: &Path, to: &Path) -> Result<(), ClusterError> {
    let mut input = std::fs::File::open(from).map_err(io(from.display()))?;
    let mut out = crate::io::create_new_with_mode(to, 0o600).map_err(io(to.display()))?;
    std::io::copy(&mut input, &mut out).map_err(io(to.display()))?;
    Ok(())
}

/// Starts every node's QEMU, control planes first.
fn start_all(dir: &Path, state: &State, progress: &dyn Fn(&str)) -> Result<(), ClusterError> {
    for node in &state.nodes {
        let config = vm::config(state, &super::node_dir(dir, &node.name), node);
        let pid = vm::start(&config, &node.name)?;
        progress(&format!(
            "{} started (QEMU pid {pid}, {})",
            node.name,
            match node.role {
                Role::ControlPlane => "control plane",
                Role::Worker => "worker",
            }
        ));
    }
    Ok(())
}

/// The cluster's context (every node's API, the secrets), made the current one, as kind
/// switches kubectl's context.
pub(super) fn save_context(path: &Path, state: &State) -> Result<(), ClusterError> {
    let mut config = Config::load(path)?;
    config.set(
        &state.name,
        Context {
            endpoints: state.api_endpoints(),
            secrets: state.secrets.clone(),
        },
    )?;
    config.use_context(&state.name)?;
    config.save(path)?;
    Ok(())
}
