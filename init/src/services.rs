//! The node's services, in three groups started in order and stopped in reverse: the core
//! (containerd, then the baked images imported, while stage 2 writes the role's files), the Kubernetes role (etcd and the kubelet,
//! from the role plan), and the system containers. Each group has its own supervisor.

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel_contract::profile::{Endpoint, Node, RestartPolicy, Role};
use keel_contract::secrets::NodeSecrets;
use keel_pki::{self as pki, NodeIdentity};

use crate::supervisor::{self, Health, ProcessSpec, Reaper, Restart, ServiceSpec, Supervisor};
use crate::{console, containerd, roles};

const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(120);
const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a role service may take to become healthy before the gate fails.
const ROLE_TIMEOUT: Duration = Duration::from_secs(180);
pub const LOG_DIR: &str = "/var/log/keel";
use crate::roles::paths::KUBERNETES_DIR;

fn log(line: &str) {
    console::line(line);
}

pub fn env() -> Vec<(String, String)> {
    vec![
        ("PATH".into(), crate::PATH.into()),
        ("HOME".into(), "/root".into()),
    ]
}

/// The console, for one-shot commands' output.
fn console_fd() -> Option<OwnedFd> {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/console")
        .ok()
        .map(OwnedFd::from)
}

/// Runs a command to completion through the reaper, its output on the console; its exit
/// code (a command killed by a signal is an error).
pub fn run_command_code(argv: &[String], timeout: Duration) -> Result<i32, String> {
    let reaper = Reaper::global().map_err(|e| format!("reaper: {e}"))?;
    let env = env();
    let spec = ProcessSpec {
        argv,
        env: &env,
        working_dir: None,
        stdout: console_fd(),
        stderr: console_fd(),
    };
    match reaper
        .run(spec, timeout)
        .map_err(|e| format!("{}: {e}", argv.join(" ")))?
    {
        crate::supervisor::ExitStatus::Exited(code) => Ok(code),
        other => Err(format!("{} failed: {other:?}", argv.join(" "))),
    }
}

/// Runs a command to completion through the reaper, its output on the console.
pub fn run_command(argv: &[String], timeout: Duration) -> Result<(), String> {
    let reaper = Reaper::global().map_err(|e| format!("reaper: {e}"))?;
    let env = env();
    let spec = ProcessSpec {
        argv,
        env: &env,
        working_dir: None,
        stdout: console_fd(),
        stderr: console_fd(),
    };
    let status = reaper
        .run(spec, timeout)
        .map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {status:?}", argv.join(" ")))
    }
}

fn service(name: &str, argv: Vec<String>, health: Health, restart: Restart) -> ServiceSpec {
    let mut spec = ServiceSpec::new(name, &[]);
    spec.argv = argv;
    spec.env = env();
    spec.health = health;
    spec.restart = restart;
    spec
}

fn options() -> supervisor::Options {
    supervisor::Options {
        console: supervisor::stdout_sink(),
        log_dir: Some(PathBuf::from(LOG_DIR)),
    }
}

/// containerd, answering (its state is on `/var`, which must be mounted).
pub fn start_containerd() -> Result<Arc<Supervisor>, String> {
    containerd::write_config().map_err(|e| format!("{}: {e}", containerd::CONFIG))?;
    let spec = service(
        "containerd",
        containerd::daemon_argv(),
        Health::UnixSocket(containerd::SOCKET.into()),
        Restart::Always,
    );
    let core = Supervisor::start(vec![spec], options()).map_err(|e| e.to_string())?;
    core.wait_healthy("containerd", CONTAINERD_TIMEOUT)
        .map_err(|e| format!("containerd: {e}"))?;
    Ok(Arc::new(core))
}

/// Every baked image imported into both namespaces, the archives side by side (an import
/// waits on containerd as much as it computes); then the pod sandbox image, in the
/// background.
pub fn import_baked_images() -> Result<(), String> {
    let archives = containerd::baked_archives(Path::new(containerd::BAKED_IMAGES));
    let imported: Vec<Result<(), String>> = std::thread::scope(|s| {
        let running: Vec<_> = archives
            .iter()
            .map(|archive| s.spawn(move || import_archive(archive)))
            .collect();
        running
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("an image import panicked".into()))
            })
            .collect()
    });
    imported.into_iter().collect::<Result<(), String>>()?;
    crate::kubelet_host::CONTAINERD_UP.open();
    // Pods need it, the health gate does not: the kubelet's start waits for it instead.
    std::thread::spawn(|| {
        import_pause_image();
        crate::kubelet_host::SANDBOX_IMAGE.open();
    });
    Ok(())
}

/// One baked archive: its system containers' namespace and CRI's (pods may use it), one
/// after the other (the second finds the blobs the first stored).
fn import_archive(archive: &Path) -> Result<(), String> {
    log(&format!("importing {}", archive.display()));
    for namespace in [containerd::NAMESPACE, containerd::CRI_NAMESPACE] {
        run_command(&containerd::import_argv(namespace, archive), IMPORT_TIMEOUT)?;
    }
    Ok(())
}

/// The pod sandbox image (`pause_image`), made from the root's catatonit. Without it no pod
/// can start, but the node's own services can: a failure is reported, not fatal.
fn import_pause_image() {
    let made = std::fs::read(crate::pause_image::CATATONIT)
        .map_err(|e| format!("{}: {e}", crate::pause_image::CATATONIT))
        .and_then(|bin| crate::pause_image::archive(&bin).map_err(|e| e.to_string()))
        .and_then(|tar| {
            std::fs::write(crate::pause_image::ARCHIVE, tar)
                .map_err(|e| format!("{}: {e}", crate::pause_image::ARCHIVE))
        });
    let imported = made.and_then(|()| {
        run_command(
            &containerd::import_argv(
                containerd::CRI_NAMESPACE,
                Path::new(crate::pause_image::ARCHIVE),
            ),
            IMPORT_TIMEOUT,
        )
    });
    match imported {
        Ok(()) => log(&format!(
            "pod sandbox image {} imported",
            crate::pause_image::NAME
        )),
        Err(e) => log(&format!(
            "warning: pod sandbox image {}: {e}; no pod can start",
            crate::pause_image::NAME
        )),
    }
}

/// The API endpoint a node's kubeconfigs and certificates name: the profile's, else (on a
/// control plane) this node on port 6443.
fn endpoint(node: &Node, node_ip: IpAddr) -> Result<Endpoint, String> {
    match (&node.cluster.endpoint, node.role) {
        (Some(e), _) => Ok(e.clone()),
        (None, Role::ControlPlane) => {
            let host = if node_ip.is_ipv6() {
                format!("[{node_ip}]")
            } else {
                node_ip.to_string()
            };
            format!("https://{host}:6443")
                .parse()
                .map_err(|e: String| e)
        }
        (None, Role::Worker) => {
            Err("a worker needs node.cluster.endpoint (the control plane's API server)".into())
        }
    }
}

/// Why the role could not be prepared.
#[derive(Debug)]
pub enum RoleFailure {
    /// The profile or the secrets cannot work here: the boot fails.
    Broken(String),
    /// Something outside the node is missing (the etcd cluster to join): the node stays up,
    /// degraded, and says why.
    Degraded(String),
}

impl From<String> for RoleFailure {
    fn from(why: String) -> Self {
        RoleFailure::Broken(why)
    }
}

/// How long a control plane asks the running members to add it before it gives up.
const ETCD_JOIN_TIMEOUT: Duration = Duration::from_secs(300);

/// Certificates and kubeconfigs derived from the node's secrets, then the role's files and
/// services. `None` (with the reason printed) when the node has no cluster secrets: it runs
/// containerd and its system containers, and reports its role as degraded.
pub fn prepare_role(
    node: &Node,
    hostname: &str,
    ips: &[IpAddr],
    secrets: Option<&NodeSecrets>,
) -> Result<Option<roles::RolePlan>, RoleFailure> {
    let Some(secrets) = secrets else {
        log(&format!(
            "role {}: degraded: no cluster secrets (image.secrets, or given at boot); Kubernetes services not started",
            node.role.as_str()
        ));
        return Ok(None);
    };
    if secrets.role != node.role {
        return Err(RoleFailure::Broken(format!(
            "the node's secrets are for a {}, its profile says {}",
            secrets.role.as_str(),
            node.role.as_str()
        )));
    }
    let node_ip = roles::node_ip(ips).map_err(|e| e.to_string())?;
    let identity = NodeIdentity {
        hostname: hostname.to_owned(),
        ips: ips.to_vec(),
        endpoint: endpoint(node, node_ip)?,
        service_cidr: node.kubernetes.service_cidr,
        cluster_domain: node.kubernetes.cluster_domain.to_string(),
        extra_sans: node
            .kubernetes
            .extra_sans
            .iter()
            .map(ToString::to_string)
            .collect(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let files = pki::derive(secrets, &identity, now).map_err(|e| format!("certificates: {e}"))?;
    pki::write_files(Path::new(KUBERNETES_DIR), &files)
        .map_err(|e| format!("certificates: {e}"))?;
    let facts = roles::NodeFacts {
        hostname: hostname.to_owned(),
        ips: ips.to_vec(),
        root: PathBuf::from("/"),
        etcd_joined: bootstrap_etcd(node, hostname, node_ip)?,
    };
    let plan =
        roles::plan(node, &facts).map_err(|e| format!("role {}: {e}", node.role.as_str()))?;
    plan.write(Path::new("/"))
        .map_err(|e| format!("role {}: {e}", node.role.as_str()))?;
    log(&format!(
        "role {}: {} certificates and kubeconfigs in {KUBERNETES_DIR}, node IP {}",
        node.role.as_str(),
        files.len(),
        plan.node_ip
    ));
    for degraded in &plan.degraded {
        log(&format!("role {}: {degraded}", node.role.as_str()));
    }
    Ok(Some(plan))
}

/// How much longer than its boot deadline this boot may take to pass its health gate: a
/// control plane with no etcd data that will restore a snapshot or join a running cluster
/// may wait for the cluster (or etcdctl) up to [`ETCD_JOIN_TIMEOUT`], which is not its
/// slot's fault. Its first boot only; then it comes up or goes degraded.
pub fn etcd_bootstrap_allowance(node: &Node) -> Duration {
    let first_boot = !Path::new(roles::paths::ETCD_DATA_DIR)
        .join("member")
        .is_dir();
    let bootstraps = node.etcd.join || etcd_snapshot_given().is_some();
    if node.role == Role::ControlPlane && first_boot && bootstraps {
        ETCD_JOIN_TIMEOUT
    } else {
        Duration::ZERO
    }
}

/// The snapshot to restore, when QEMU's fw_cfg carries one.
fn etcd_snapshot_given() -> Option<PathBuf> {
    let path = Path::new(crate::config::FW_CFG_BY_NAME)
        .join(keel_contract::layout::config::FW_CFG_ETCD_SNAPSHOT)
        .join("raw");
    path.is_file().then_some(path)
}

/// A control plane with no etcd data yet either restores the snapshot it was started with
/// ([`crate::etcd_restore`]: a new single-member cluster) or, with `node.etcd.join`, is added
/// to the running cluster as a learner ([`crate::etcd_join`]); returns the member list a
/// join answered. A later boot starts from its data.
fn bootstrap_etcd(
    node: &Node,
    hostname: &str,
    node_ip: IpAddr,
) -> Result<Option<Vec<(String, String)>>, RoleFailure> {
    let data_dir = Path::new(roles::paths::ETCD_DATA_DIR);
    if node.role != Role::ControlPlane || data_dir.join("member").is_dir() {
        return Ok(None);
    }
    let own = roles::etcd::own_peer_url(node, hostname, node_ip)
        .map_err(|e| RoleFailure::Broken(e.to_string()))?;
    if let Some(snapshot) = etcd_snapshot_given() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let cluster = node.cluster.name.as_deref().unwrap_or("keel");
        let token = crate::etcd_restore::restored_token(cluster, now);
        log(&format!(
            "etcd: restoring the snapshot from fw_cfg into a new cluster ({token}) as {hostname}"
        ));
        let run = |argv: &[String]| run_command(argv, Duration::from_secs(300));
        crate::etcd_restore::restore(
            &snapshot,
            Path::new(crate::etcd_restore::SCRATCH_DIR),
            data_dir,
            hostname,
            &own,
            &token,
            &run,
        )
        .map_err(|e| RoleFailure::Degraded(format!("etcd: {e}")))?;
        log("etcd: snapshot restored");
        return Ok(None);
    }
    if !node.etcd.join {
        return Ok(None);
    }
    crate::etcd_join::join(node, hostname, &own, ETCD_JOIN_TIMEOUT, &log)
        .map(Some)
        .map_err(RoleFailure::Degraded)
}

/// On a control plane that joined (`node.etcd.join`), in the background: promoted from
/// learner to voting member once etcd allows it.
pub fn spawn_etcd_promotion(node: &Node, hostname: &str, ips: &[IpAddr]) {
    if node.role != Role::ControlPlane || !node.etcd.join {
        return;
    }
    let Ok(node_ip) = roles::node_ip(ips) else {
        return;
    };
    match roles::etcd::own_peer_url(node, hostname, node_ip) {
        Ok(own) => crate::etcd_join::spawn_promotion(node, hostname, &own, &log),
        Err(e) => log(&format!("etcd: {e}")),
    }
}

/// Starts the role's services and waits until each is healthy (part of the health gate).
pub fn start_role(plan: roles::RolePlan) -> Result<Option<Arc<Supervisor>>, String> {
    if plan.services.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = plan.services.iter().map(|s| s.name.clone()).collect();
    if names.iter().any(|n| n == roles::kubelet::SERVICE) {
        crate::kubelet_host::wait_for_kubelet(&log);
    }
    let sup = Supervisor::start(plan.services, options()).map_err(|e| e.to_string())?;
    for name in &names {
        sup.wait_healthy(name, ROLE_TIMEOUT)
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(Some(Arc::new(sup)))
}

/// The profile's system containers, through containerd.
pub fn start_containers(node: &Node) -> Result<Option<Arc<Supervisor>>, String> {
    if node.containers.is_empty() {
        return Ok(None);
    }
    let mut specs = Vec::new();
    for c in &node.containers {
        // A container from an earlier boot keeps its metadata on /var; `ctr run` would refuse
        // the name. Its absence is the normal case, so failure here is only logged.
        let _ = run_command(
            &containerd::remove_stale_argv(&c.name),
            Duration::from_secs(30),
        );
        let restart = match c.restart {
            RestartPolicy::Always => Restart::Always,
            RestartPolicy::OnFailure => Restart::OnFailure,
            RestartPolicy::Never => Restart::Never,
        };
        let entrypoint =
            containerd::baked_entrypoint(Path::new(containerd::BAKED_IMAGES), &c.image);
        specs.push(service(
            &c.name,
            containerd::run_argv(c, &entrypoint),
            Health::ProcessAlive,
            restart,
        ));
    }
    Supervisor::start(specs, options())
        .map(|s| Some(Arc::new(s)))
        .map_err(|e| e.to_string())
}

/// On a control plane, one thread per link with a virtual IP: the address follows the etcd
/// leader (`net::vip`). Started once etcd is healthy (the role's services passed their gate).
pub fn spawn_virtual_ips(node: &keel_contract::profile::Node) {
    for link in &node.network.links {
        let Some(vip) = link.vip else { continue };
        let iface = link.interface.as_str().to_owned();
        log(&format!("vip: {vip} on {iface} follows the etcd leader"));
        std::thread::spawn(move || {
            crate::net::vip::run_forever(iface, vip, &this_member_leads, &|m| log(m))
        });
    }
}

/// Whether the local etcd member is the leader and healthy; `None` when it does not answer.
fn this_member_leads() -> Option<bool> {
    use crate::etcd_client::{EtcdClient, EtcdEndpoint};
    let members = EtcdClient::new(EtcdEndpoint::local())
        .ok()?
        .members()
        .ok()?;
    Some(members.healthy && members.leader_id != 0 && members.leader_id == members.member_id)
}

/// On a control plane, in the background: once its API server is ready, creates what workers
/// need to join with the bootstrap token (`roles::cluster_bootstrap`). The API server is a
/// static pod the kubelet starts, which may take minutes, so this is not part of the health
/// gate; it retries until it is done, reporting on the console now and then.
pub fn spawn_cluster_bootstrap(secrets: &NodeSecrets, token_ttl_hours: u32) {
    let token_id = secrets.bootstrap_token.id.clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let objects = match roles::cluster_bootstrap::objects_at(
        &secrets.bootstrap_token,
        secrets.created,
        token_ttl_hours,
        now,
    ) {
        Ok((objects, None)) => objects,
        Ok((objects, Some(expired))) => {
            log(&format!(
                "cluster bootstrap: bootstrap token {token_id} expired at {} (node.kubernetes.bootstrap_token_ttl_hours = {token_ttl_hours}), not created again: new workers cannot join until the control plane gets secrets with a new token (keel secrets renew)",
                i64::try_from(expired)
                    .ok()
                    .and_then(keel_pki::rfc3339)
                    .unwrap_or_else(|| expired.to_string())
            ));
            objects
        }
        Err(e) => return log(&format!("cluster bootstrap: {e}")),
    };
    std::thread::spawn(move || {
        let client = match std::fs::read_to_string(roles::paths::ADMIN_CONF)
            .map_err(|e| format!("{}: {e}", roles::paths::ADMIN_CONF))
            .and_then(|t| {
                crate::kube_client::KubeClient::from_kubeconfig(&t).map_err(|e| e.to_string())
            }) {
            Ok(c) => c,
            Err(e) => return log(&format!("cluster bootstrap: {e}")),
        };
        log(&format!(
            "cluster bootstrap: creating bootstrap token {token_id} and its RBAC bindings once the API server at {} is ready",
            client.endpoint()
        ));
        let mut delay = Duration::from_secs(2);
        let mut last_report: Option<std::time::Instant> = None;
        loop {
            match create_all(&client, &objects) {
                Ok((created, there)) => {
                    let bindings = objects
                        .iter()
                        .filter(|o| !o.describe.starts_with("Secret/"))
                        .count();
                    let token = if bindings < objects.len() {
                        format!("bootstrap token {token_id}")
                    } else {
                        format!("no bootstrap token ({token_id} expired)")
                    };
                    return log(&format!(
                        "cluster bootstrap: {token} and {bindings} RBAC bindings in place ({created} created, {there} already there)"
                    ));
                }
                Err(e) => {
                    if last_report.is_none_or(|t| t.elapsed() > Duration::from_secs(600)) {
                        log(&format!("cluster bootstrap: {e}; retrying"));
                        last_report = Some(std::time::Instant::now());
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
}

/// (created, already there), or why not yet.
fn create_all(
    client: &crate::kube_client::KubeClient,
    objects: &[roles::cluster_bootstrap::ApiObject],
) -> Result<(usize, usize), String> {
    if !client.ready().map_err(|e| e.to_string())? {
        return Err(format!(
            "the API server at {} is not ready",
            client.endpoint()
        ));
    }
    let (mut created, mut there) = (0, 0);
    for object in objects {
        match client.create(object)? {
            crate::kube_client::Created::Created => created += 1,
            crate::kube_client::Created::AlreadyThere => there += 1,
        }
    }
    Ok((created, there))
}
