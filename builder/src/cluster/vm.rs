//! A cluster node's QEMU: started detached (`-daemonize`, so it outlives `keel cluster
//! create`), found again through its pid file, and stopped. A pid is only trusted while
//! `/proc/PID/cmdline` still names the node's own directory: pids are reused.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::qemu::{self, VmConfig};

use super::plan::{CLUSTER_NIC, NodePlan};
use super::{ClusterError, Segment, State, io};

/// The multicast group every cluster's segment uses; the port tells clusters apart.
pub const SEGMENT_GROUP: &str = "230.0.0.1";

/// The node's QEMU configuration: its disk, two NICs, forwards and fw_cfg files.
pub fn config(state: &State, dir: &Path, node: &NodePlan) -> VmConfig {
    let mut config = VmConfig::new(dir.join("disk.raw"), dir.join("vm"));
    config.memory_mib = state.memory_mib;
    config.cpus = state.cpus;
    config.mac = Some(node.user_mac.clone());
    config
        .forwards
        .push((node.api_port, super::plan::GUEST_API_PORT));
    if let Some(port) = node.etcd_port {
        config.forwards.push((port, super::plan::GUEST_ETCD_PORT));
    }
    if let Some(port) = node.kube_api_port {
        config
            .forwards
            .push((port, super::plan::GUEST_KUBE_API_PORT));
    }
    config.fw_cfg.push((
        keel_contract::layout::config::FW_CFG_PROFILE.into(),
        dir.join("profile.toml"),
    ));
    config.fw_cfg.push((
        keel_contract::layout::config::FW_CFG_SECRETS.into(),
        dir.join("secrets.toml"),
    ));
    let snapshot = dir.join(super::NODE_ETCD_SNAPSHOT);
    if snapshot.is_file() {
        config.fw_cfg.push((
            keel_contract::layout::config::FW_CFG_ETCD_SNAPSHOT.into(),
            snapshot,
        ));
    }
    // One L2 for the cluster: every QEMU on this group and port sees the others' frames.
    // `localaddr` keeps the traffic on loopback (no multicast route needed, nothing leaves
    // the machine). The NIC is the second on the PCI bus, `eth1` in the guest.
    config.extra_args.extend([
        "-netdev".into(),
        segment_netdev(state, node),
        "-device".into(),
        format!("virtio-net-pci,netdev=cluster,mac={}", node.cluster_mac),
    ]);
    debug_assert_eq!(CLUSTER_NIC, "eth1");
    config
}

/// The cluster NIC's backend. The point-to-point transports join the first two nodes only
/// (create refuses them for more).
fn segment_netdev(state: &State, node: &NodePlan) -> String {
    let port = state.segment_port;
    let first = state.nodes.first().is_some_and(|n| n.name == node.name);
    match state.segment {
        Segment::Mcast => {
            format!("socket,id=cluster,mcast={SEGMENT_GROUP}:{port},localaddr=127.0.0.1")
        }
        Segment::Stream => format!(
            "stream,id=cluster,server={},addr.type=inet,addr.host=127.0.0.1,addr.port={port}",
            if first { "on" } else { "off" }
        ),
        Segment::Dgram => {
            let (local, remote) = if first {
                (port, port + 1)
            } else {
                (port + 1, port)
            };
            format!(
                "dgram,id=cluster,local.type=inet,local.host=127.0.0.1,local.port={local},remote.type=inet,remote.host=127.0.0.1,remote.port={remote}"
            )
        }
    }
}

pub fn pid_file(config: &VmConfig) -> PathBuf {
    config.state_dir.join("qemu.pid")
}

/// Starts QEMU detached and returns its pid once QEMU has daemonized (its devices are up).
pub fn start(config: &VmConfig, node: &str) -> Result<u32, ClusterError> {
    let failed = |why: String| ClusterError::Start {
        node: node.to_owned(),
        why,
    };
    let ovmf = qemu::find_ovmf().map_err(|e| failed(e.to_string()))?;
    std::fs::create_dir_all(&config.state_dir).map_err(io(config.state_dir.display()))?;
    if !config.vars_file().exists() {
        std::fs::copy(&ovmf.vars_template, config.vars_file())
            .map_err(io(ovmf.vars_template.display()))?;
    }
    config
        .prepare_sockets()
        .map_err(|e| failed(e.to_string()))?;
    let pid_path = pid_file(config);
    let _ = std::fs::remove_file(&pid_path);
    let log = std::fs::File::create(config.stderr_log()).map_err(io("the QEMU log"))?;
    let mut cmd = config.command(&ovmf);
    // QEMU forks once its devices are up; the parent's exit status says whether they came up.
    cmd.args(["-daemonize", "-pidfile"])
        .arg(&pid_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let status = cmd.status().map_err(|e| failed(format!("qemu: {e}")))?;
    if !status.success() {
        let said = std::fs::read_to_string(config.stderr_log()).unwrap_or_default();
        return Err(failed(format!("qemu {status}: {}", said.trim())));
    }
    read_pid(config).ok_or_else(|| failed(format!("no pid in {}", pid_path.display())))
}

/// The pid of the node's QEMU while it runs.
pub fn running_pid(config: &VmConfig) -> Option<u32> {
    read_pid(config).filter(|pid| is_ours(*pid, &config.state_dir))
}

fn read_pid(config: &VmConfig) -> Option<u32> {
    std::fs::read_to_string(pid_file(config))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is a live QEMU whose command line names `state_dir`.
fn is_ours(pid: u32, state_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie has an empty command line.
    let needle = state_dir.to_string_lossy();
    String::from_utf8_lossy(&cmdline).contains(needle.as_ref())
}

/// Pulls the plug: SIGKILL, then waits until the process is gone. A disposable cluster's
/// nodes keep their data through this as through a power cut.
/// Its sockets go too (they may live outside the node's directory).
pub fn kill(config: &VmConfig) -> Result<bool, ClusterError> {
    let killed = match running_pid(config) {
        Some(pid) => kill_pid(pid, config)?,
        None => false,
    };
    config.remove_sockets();
    Ok(killed)
}

fn kill_pid(pid: u32, config: &VmConfig) -> Result<bool, ClusterError> {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return Ok(false);
    };
    // SAFETY: kill(2) with a pid we checked is our QEMU.
    if unsafe { libc::kill(raw, libc::SIGKILL) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(io(format!("killing QEMU (pid {pid})"))(e));
        }
    }
    let start = Instant::now();
    while is_ours(pid, &config.state_dir) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::plan::{self, Request};

    fn state(segment: Segment) -> State {
        let request = Request {
            name: "b".parse().unwrap(),
            control_planes: 2,
            workers: 0,
            memory_mib: 1024,
            cpus: 1,
        };
        let mut port = 40000;
        let nodes = plan::nodes(&request, &mut || {
            port += 1;
            Ok(port)
        })
        .unwrap();
        State {
            name: "b".into(),
            image: "/img".into(),
            secrets: "/s.toml".into(),
            segment_port: 41000,
            segment,
            memory_mib: 1024,
            cpus: 1,
            nodes,
        }
    }

    #[test]
    fn each_transport_joins_the_two_nodes() {
        let s = state(Segment::Mcast);
        for node in &s.nodes {
            assert_eq!(
                segment_netdev(&s, node),
                "socket,id=cluster,mcast=230.0.0.1:41000,localaddr=127.0.0.1"
            );
        }
        let s = state(Segment::Stream);
        assert!(segment_netdev(&s, &s.nodes[0]).contains("server=on"));
        assert!(segment_netdev(&s, &s.nodes[1]).contains("server=off"));
        assert!(segment_netdev(&s, &s.nodes[1]).contains("addr.port=41000"));
        let s = state(Segment::Dgram);
        assert!(
            segment_netdev(&s, &s.nodes[0]).contains("local.port=41000,")
                && segment_netdev(&s, &s.nodes[0]).ends_with("remote.port=41001")
        );
        assert!(
            segment_netdev(&s, &s.nodes[1]).contains("local.port=41001,")
                && segment_netdev(&s, &s.nodes[1]).ends_with("remote.port=41000")
        );
        // The state file of a multicast cluster is as before (no `segment` key).
        let text = toml::to_string(&state(Segment::Mcast)).unwrap();
        assert!(!text.contains("segment ="), "{text}");
        let back: State = toml::from_str(&text).unwrap();
        assert_eq!(back.segment, Segment::Mcast);
    }
}
