//! Stage 2's independent work, side by side: DATA at `/var` and, on it, containerd (a thread
//! started as soon as STATE is mounted), while the main thread reads the boot entries and
//! the configuration, brings the network up, and writes the role's certificates and
//! kubeconfigs. Each step is recorded in the timeline ([`crate::timeline::BOOT`]).
//!
//! What keeps this safe: `/var` is decided (checked by e2fsck, or formatted when new) and
//! mounted before anything writes to it, because everything that does (the host's files,
//! containerd, the boot history, the role's files, the API) comes after that decision on the
//! `/var` thread or waits for it ([`Background::var`]); a `/var` that cannot be mounted stops
//! the thread before containerd and leaves the main thread to serve the API degraded.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use keel_contract::profile::{Network, VarDisk};

use crate::bootinfo::Handoff;
use crate::supervisor::Supervisor;
use crate::timeline::BOOT;
use crate::{console, history, kubelet_host, net, services, sys, var, vardisk};

const VAR_TIMEOUT: Duration = Duration::from_secs(30);

fn log(line: &str) {
    console::line(line);
}

/// What the `/var` thread knows once `/var` is decided.
pub struct VarOutcome {
    /// This boot's number in the disk's history, or why `/var` is unavailable.
    pub boot: Result<u64, var::Unavailable>,
    /// Lines for the status' warnings (e2fsck repaired DATA, no boot history).
    pub warnings: Vec<String>,
}

/// The `/var` thread: its decision about `/var` first, then containerd.
pub struct Background {
    var: mpsc::Receiver<VarOutcome>,
    core: JoinHandle<Result<Arc<Supervisor>, String>>,
}

impl Background {
    /// Starts DATA's checks and mount, the host's preparation and containerd with the baked
    /// images, on a thread of their own.
    /// `var_disk` is a network-booted node's `[node.var]` (a disk boot's DATA is on its disk).
    pub fn spawn(
        handoff: &Handoff,
        state_dir: &Path,
        var_disk: Option<VarDisk>,
    ) -> Result<Background, String> {
        let (tx, rx) = mpsc::channel();
        let (handoff, state_dir) = (handoff.clone(), state_dir.to_path_buf());
        let core = std::thread::Builder::new()
            .name("var-containerd".into())
            .spawn(move || var_then_containerd(&handoff, &state_dir, var_disk.as_ref(), &tx))
            .map_err(|e| format!("starting the /var thread: {e}"))?;
        Ok(Background { var: rx, core })
    }

    /// Waits for the decision about `/var`.
    pub fn var(&self) -> VarOutcome {
        self.var.recv().unwrap_or_else(|_| VarOutcome {
            boot: Err(var::Unavailable(
                "the /var thread ended without a word".into(),
            )),
            warnings: Vec::new(),
        })
    }

    /// Waits for containerd to answer and the baked images to be imported.
    pub fn containerd(self) -> Result<Arc<Supervisor>, String> {
        self.core
            .join()
            .unwrap_or_else(|_| Err("the containerd thread panicked".into()))
    }
}

fn var_then_containerd(
    handoff: &Handoff,
    state_dir: &Path,
    var_disk: Option<&VarDisk>,
    decided: &mpsc::Sender<VarOutcome>,
) -> Result<Arc<Supervisor>, String> {
    let mut warnings = Vec::new();
    let boot = BOOT.step("var", || {
        data_and_history(handoff, state_dir, var_disk, &mut warnings)
    });
    let mounted = boot.is_ok();
    // What containerd expects of the host, on /var, before it starts.
    if mounted {
        BOOT.step("host", || kubelet_host::prepare(&log));
    }
    let _ = decided.send(VarOutcome { boot, warnings });
    if !mounted {
        return Err("/var is unavailable".into());
    }
    let core = BOOT.step("containerd", services::start_containerd)?;
    BOOT.step("images", services::import_baked_images)?;
    Ok(core)
}

/// DATA at /var and this boot's number in its history (best-effort).
fn data_and_history(
    handoff: &Handoff,
    state_dir: &Path,
    var_disk: Option<&VarDisk>,
    warnings: &mut Vec<String>,
) -> Result<u64, var::Unavailable> {
    let mounted = match (handoff.disk(), var_disk) {
        (Some((disk, _)), _) => var::mount(disk, state_dir, VAR_TIMEOUT, &|m| log(m))?,
        (None, Some(selected)) => vardisk::mount(selected, state_dir, VAR_TIMEOUT, &|m| log(m))?,
        (None, None) => var::mount_tmpfs(&|m| log(m))?,
    };
    if let Some(note) = mounted.note {
        warnings.push(note);
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let (boot, problem) = history::record_best_effort(
        Path::new(history::HISTORY),
        handoff.slot.letter(),
        &handoff.version.to_string(),
        boot_id.trim(),
    );
    match problem {
        Some(p) => {
            log(&format!("warning: {p}"));
            warnings.push(p);
        }
        None if handoff.disk().is_none() && var_disk.is_none() => {
            log("no boot history: a diskless node's /var does not outlive a boot");
        }
        None => log(&format!(
            "boot {boot} of this {} (history in {})",
            if handoff.disk().is_some() {
                "disk"
            } else {
                "/var disk"
            },
            history::HISTORY
        )),
    }
    Ok(boot)
}

fn apply_hostname(node: &keel_contract::profile::Node, state: &net::NetState) -> String {
    let name = node
        .hostname
        .as_ref()
        .map(|h| h.as_str().to_owned())
        .or_else(|| state.dhcp_hostname.as_ref().map(|h| h.as_str().to_owned()))
        .unwrap_or_else(|| match state.mac {
            Some(mac) => format!("keel-{:02x}{:02x}{:02x}", mac.0[3], mac.0[4], mac.0[5]),
            None => "keel".to_owned(),
        });
    if let Err(e) = sys::sethostname(&name) {
        log(&format!("warning: {e}"));
    }
    let _ = std::fs::write("/etc/hostname", format!("{name}\n"));
    let _ = std::fs::write(
        "/etc/hosts",
        format!("127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {name}\n"),
    );
    name
}

/// The network (reusing what the configuration fetch brought up, when the profile asks for
/// the same) and the host name; lease renewal runs on its own thread.
pub fn network(
    node: &keel_contract::profile::Node,
    early: Option<net::NetState>,
) -> Result<(net::NetState, String), String> {
    let mut state = match early {
        Some(state) if node.network.without_links() == Network::default() => state,
        _ => net::configure(&node.network, &|m| log(m)).map_err(|e| format!("network: {e}"))?,
    };
    state.links = net::links::configure(&node.network.links, state.options(), &|m| log(m))
        .map_err(|e| format!("network: {e}"))?;
    let hostname = apply_hostname(node, &state);
    let addresses: Vec<String> = state.addresses.iter().map(ToString::to_string).collect();
    log(&format!(
        "network: {} {} via {}; hostname {hostname}",
        state.interface,
        addresses.join(" "),
        state
            .gateway
            .map(|g| g.to_string())
            .unwrap_or_else(|| "-".into())
    ));
    let renewal = state.clone();
    std::thread::spawn(move || net::renew_forever(renewal, &|m| log(m)));
    Ok((state, hostname))
}
