//! Stage 2, in the verified root: writable paths, DATA at /var, the node's configuration,
//! identity and network, the management API, containerd, the Kubernetes role and the system
//! containers under the supervisor, the health gate, blessing, the ready line, and an orderly
//! shutdown when asked.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel_contract::layout::{self, PartitionRole, Slot};
use keel_contract::profile::{Node, Role};
use keel_contract::secrets::NodeSecrets;

use crate::bootinfo::{self, Handoff};
use crate::supervisor::{Reaper, Supervisor};
use crate::{
    bless, block, config, console, history, kmod, mounts, net, node_api, power, services, sys,
    upgrade,
};

/// Modules stage 2 loads from the root, when the kernel has them as modules: container
/// networking and storage, the NIC, entropy, the power button, EFI variables, fw_cfg and
/// ISO 9660 for configuration given at boot, and what Kubernetes networking needs.
const MODULES: &[&str] = &[
    "overlay",
    "efivarfs",
    "virtio_net",
    "virtio_rng",
    "evdev",
    "button",
    "nls_utf8",
    "qemu_fw_cfg",
    "isofs",
    "bridge",
    "br_netfilter",
    "veth",
];
const VAR_TIMEOUT: Duration = Duration::from_secs(30);
const MKFS_TIMEOUT: Duration = Duration::from_secs(600);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const ESP: &str = layout::root::ESP_MOUNT;
const STATE: &str = layout::root::STATE_MOUNT;

fn log(line: &str) {
    console::line(line);
}

/// DATA at /var: the partition is created (filling the disk) and formatted on first boot.
fn mount_var(handoff: &Handoff) -> Result<(), String> {
    let roots = block::Roots::default();
    let disk =
        block::disk_for(&roots, Path::new(&handoff.slot_device)).map_err(|e| e.to_string())?;
    let existing = block::sysfs::find_partition_on(&roots, &disk, PartitionRole::Data.label())
        .map_err(|e| e.to_string())?;
    if existing.is_none() {
        log(&format!(
            "creating DATA on {} (first boot)",
            disk.path.display()
        ));
    }
    let data =
        block::ensure_data_partition(&roots, &disk, VAR_TIMEOUT).map_err(|e| e.to_string())?;
    let device = data.path.display().to_string();
    if !block::is_ext4(&data.path).map_err(|e| e.to_string())? {
        log(&format!("formatting {device} as ext4"));
        let argv: Vec<String> = [
            "/usr/sbin/mkfs.ext4",
            "-F",
            "-q",
            "-L",
            "DATA",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            &device,
        ]
        .map(String::from)
        .to_vec();
        services::run_command(&argv, MKFS_TIMEOUT)?;
    }
    sys::mount(
        &device,
        "/var",
        "ext4",
        libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )
    .map_err(|e| e.to_string())?;
    for dir in [services::LOG_DIR, "/var/lib/keel", "/var/lib/containerd"] {
        sys::mkdir_p(dir, 0o755).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The node's configuration: a boot-time source (fw_cfg, `keel.config=` URL, config drive),
/// else what STATE kept, else the profile baked into the image. A URL needs the network
/// first: DHCP on the first interface, which is returned for reuse.
fn node_config(state: &Path) -> Result<(config::NodeConfig, Option<net::NetState>), String> {
    let cmdline = bootinfo::cmdline();
    let mut early_net = None;
    let boot_time = if let Some(found) = config::fw_cfg() {
        Some(found)
    } else if let Some(url) = layout::cmdline::get(&cmdline, layout::cmdline::CONFIG) {
        let dhcp = keel_contract::profile::Network::default();
        early_net = Some(
            net::configure(&dhcp, &|m| log(m)).map_err(|e| format!("network for {url}: {e}"))?,
        );
        let delays = [1, 2, 4, 8, 15, 15, 15].map(Duration::from_secs);
        let fetched = config::fetch_with_retry(
            url,
            &delays,
            &|u| config::http_get(u, Duration::from_secs(10)),
            &|m| log(m),
            &std::thread::sleep,
        );
        match fetched {
            Ok(text) => Some(config::Found {
                source: config::Source::Url(url.to_owned()),
                profile: Some(text),
                secrets: None,
            }),
            // A node that applied a profile before keeps its identity while the server is away.
            Err(e) if layout::on_volume(state, layout::state::PROFILE).exists() => {
                log(&format!(
                    "warning: {e}; keeping the profile applied at an earlier boot"
                ));
                None
            }
            Err(e) => return Err(format!("no profile: {e}")),
        }
    } else {
        config::config_drive()
    };
    let cfg = config::choose(boot_time, state, Path::new(bootinfo::BAKED_PROFILE))?;
    Ok((cfg, early_net))
}

fn apply_hostname(node: &Node, state: &net::NetState) -> String {
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

/// Reboots the node if the health gate has not passed `deadline` seconds after the kernel
/// started the init: a version that hangs is treated like one that fails, so the boot
/// counter moves on to the other slot.
fn arm_boot_deadline(
    deadline: u64,
    init_started: f64,
) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ready.clone();
    std::thread::spawn(move || {
        let left = (init_started + deadline as f64 - sys::boottime()).max(0.0);
        std::thread::sleep(Duration::from_secs_f64(left));
        if !flag.load(std::sync::atomic::Ordering::SeqCst) {
            crate::fatal::fatal(&format!(
                "the health gate did not pass within {deadline} seconds of boot"
            ));
        }
    });
    ready
}

fn status_line(supervisors: &[Arc<Supervisor>], net: &net::NetState, hostname: &str) -> String {
    let services: Vec<String> = supervisors
        .iter()
        .flat_map(|s| s.status())
        .map(|s| format!("{} {}", s.name, s.state))
        .collect();
    let addresses: Vec<String> = net.addresses.iter().map(ToString::to_string).collect();
    format!(
        "status: {}; {} {} ({hostname})",
        services.join(", "),
        net.interface,
        addresses.join(" ")
    )
}

/// Stops the groups (given in stop order), unmounts, powers off or reboots.
fn shutdown(request: power::Request, stop_order: &[Arc<Supervisor>]) -> ! {
    log("stopping services");
    for s in stop_order {
        if !s.stop_all(STOP_TIMEOUT).all_gone() {
            log("warning: some services did not stop");
        }
    }
    sys::sync();
    for target in ["/var", ESP, STATE] {
        if sys::umount(target, 0).is_err() {
            let _ = sys::umount(target, libc::MNT_DETACH);
        }
    }
    let cmd = match request {
        power::Request::PowerOff => {
            log("powering off");
            libc::RB_POWER_OFF
        }
        power::Request::Reboot => {
            log("rebooting");
            libc::RB_AUTOBOOT
        }
    };
    let err = sys::reboot(cmd);
    crate::fatal::fatal(&format!("{err}"))
}

/// What an upgrade writes into: the other slot's partition on this disk.
fn upgrade_target(handoff: &Handoff, slot: Slot, state: &Path) -> Result<upgrade::Target, String> {
    let roots = block::Roots::default();
    let disk =
        block::disk_for(&roots, Path::new(&handoff.slot_device)).map_err(|e| e.to_string())?;
    let other = block::sysfs::find_partition_on(&roots, &disk, slot.other().partition().label())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no {} partition", slot.other().partition().label()))?;
    let file =
        std::fs::File::open(&other.path).map_err(|e| format!("{}: {e}", other.path.display()))?;
    let size = block::device_size(&file, &other.path).map_err(|e| e.to_string())?;
    let keys_text = std::fs::read_to_string(bootinfo::TRUSTED_KEYS)
        .map_err(|e| format!("{}: {e}", bootinfo::TRUSTED_KEYS))?;
    let trusted_keys = keel_minisign::TrustedKeys::parse(&keys_text).map_err(|e| e.to_string())?;
    Ok(upgrade::Target {
        name: handoff.name.clone(),
        arch: "x86_64".into(),
        running: handoff
            .version
            .parse()
            .map_err(|e| format!("running version {}: {e}", handoff.version))?,
        active: slot,
        slot_device: other.path,
        slot_size: size,
        esp: PathBuf::from(ESP),
        state: state.to_path_buf(),
        trusted_keys,
    })
}

/// The management API on port 50000, with the node's certificate from its secrets.
fn start_api(secrets: Option<&NodeSecrets>, node: Arc<node_api::Node>) {
    let Some(secrets) = secrets else {
        log("management API: off (no node secrets with an API certificate)");
        return;
    };
    let tls = match crate::api::ServerTls::from_pem(
        &secrets.node_api.cert,
        &secrets.node_api.key,
        &secrets.keel_ca.cert,
    ) {
        Ok(tls) => tls,
        Err(e) => {
            log(&format!("management API: off: {e}"));
            return;
        }
    };
    let listener = match std::net::TcpListener::bind(("0.0.0.0", keel_contract::api::PORT)) {
        Ok(l) => l,
        Err(e) => {
            log(&format!(
                "management API: off: port {}: {e}",
                keel_contract::api::PORT
            ));
            return;
        }
    };
    match crate::api::spawn(
        listener,
        tls,
        node,
        log,
        crate::api::ServerOptions::default(),
    ) {
        Ok(_server) => {
            log(&format!(
                "management API on port {} (mutual TLS, keel CA)",
                keel_contract::api::PORT
            ));
        }
        Err(e) => log(&format!("management API: off: {e}")),
    }
}

fn run() -> Result<std::convert::Infallible, String> {
    let handoff = Handoff::read().map_err(|e| format!("{}: {e}", bootinfo::HANDOFF))?;
    let slot: Slot = handoff.slot().ok_or("bad slot in the hand-off")?;
    log(&format!(
        "stage 2: {} {} from slot {slot}",
        handoff.name, handoff.version
    ));
    power::install_signal_handlers();
    sys::ctrl_alt_del_to_signal();
    mounts::stage2_basics().map_err(|e| e.to_string())?;
    let mut loaded = BTreeSet::new();
    match kmod::ModuleDeps::for_running_kernel() {
        Some(deps) => deps.load(MODULES, &mut loaded, &|m| log(m)),
        None => log("warning: no modules.dep for the running kernel"),
    }
    mounts::etc_overlay().map_err(|e| e.to_string())?;
    if let Err(e) = mounts::efivars() {
        log(&format!("warning: {e} (no boot counting information)"));
    }
    power::watch_power_button(log);
    mounts::fat(&handoff.esp_device, ESP).map_err(|e| e.to_string())?;
    let roots = block::Roots::default();
    if let Ok(disk) = block::disk_for(&roots, Path::new(&handoff.slot_device)) {
        match block::sysfs::find_partition_on(&roots, &disk, PartitionRole::State.label()) {
            Ok(Some(state)) => {
                if let Err(e) = mounts::fat(&state.path.display().to_string(), STATE) {
                    log(&format!("warning: STATE: {e}"));
                }
            }
            _ => log("warning: no STATE partition"),
        }
    }
    Reaper::global().map_err(|e| format!("reaper: {e}"))?;
    mount_var(&handoff)?;
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let boot = history::record(
        Path::new(history::HISTORY),
        slot.letter(),
        &handoff.version,
        boot_id.trim(),
    )
    .map_err(|e| format!("{}: {e}", history::HISTORY))?;
    log(&format!(
        "boot {boot} of this disk (history in {})",
        history::HISTORY
    ));

    let state_dir = if layout::on_volume(Path::new(STATE), layout::state::MARKER).exists() {
        config::state_dir()
    } else {
        log("warning: STATE is not mounted; the applied profile will not survive a reboot");
        let dir = PathBuf::from("/run/keel/state");
        sys::mkdir_p(&dir, 0o700).map_err(|e| e.to_string())?;
        dir
    };
    let running: semver::Version = handoff
        .version
        .parse()
        .map_err(|e| format!("version {}: {e}", handoff.version))?;
    let rolled_back_from = upgrade::detect_rollback(Path::new(ESP), &state_dir, slot, &running);
    match &rolled_back_from {
        Some(r) if r.requested => log(&format!(
            "rolled back from {} as requested: {} runs again",
            r.from, handoff.version
        )),
        Some(r) => log(&format!(
            "rolled back from {}: it failed to boot, {} runs again",
            r.from, handoff.version
        )),
        None => {}
    }
    let (cfg, early_net) = node_config(&state_dir)?;
    let node = cfg.node.clone();
    log(&format!(
        "profile from {}: role {}",
        cfg.source,
        node.role.as_str()
    ));
    let ready = arm_boot_deadline(node.boot_deadline_secs, handoff.stage1_start);
    let secrets = cfg
        .secrets
        .as_deref()
        .map(NodeSecrets::from_toml)
        .transpose()
        .map_err(|e| format!("node secrets: {e}"))?;
    let net_state = match early_net {
        Some(state) if node.network == keel_contract::profile::Network::default() => state,
        _ => net::configure(&node.network, &|m| log(m)).map_err(|e| format!("network: {e}"))?,
    };
    let hostname = apply_hostname(&node, &net_state);
    let addresses: Vec<String> = net_state
        .addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    log(&format!(
        "network: {} {} via {}; hostname {hostname}",
        net_state.interface,
        addresses.join(" "),
        net_state
            .gateway
            .map(|g| g.to_string())
            .unwrap_or_else(|| "-".into())
    ));
    let renewal = net_state.clone();
    std::thread::spawn(move || net::renew_forever(renewal, &|m| log(m)));
    // What the kubelet expects of its host, CNI directories and the pod network.
    crate::kubelet_host::prepare(&node, &net_state, &log);

    let target = upgrade_target(&handoff, slot, &state_dir)
        .map_err(|e| log(&format!("upgrades: off: {e}")))
        .ok();
    let api_node = Arc::new(node_api::Node::new(
        (handoff.name.clone(), handoff.version.clone(), slot),
        hostname.clone(),
        addresses,
        boot,
        rolled_back_from,
        (
            PathBuf::from(ESP),
            state_dir.clone(),
            PathBuf::from(services::LOG_DIR),
        ),
        target,
        log,
    ));
    start_api(secrets.as_ref(), api_node.clone());

    // The health gate: the root was verified in stage 1, the profile is applied, /var is
    // mounted, containerd answers, and the role's services are healthy.
    let ips: Vec<IpAddr> = net_state.addresses.iter().map(|a| a.addr).collect();
    let core = services::start_core()?;
    let role = services::prepare_role(&node, &hostname, &ips, secrets.as_ref())?;
    let role = match role {
        Some(plan) => services::start_role(plan)?,
        None => None,
    };
    if let Some(s) = secrets.as_ref().filter(|s| s.role == Role::ControlPlane) {
        services::spawn_cluster_bootstrap(s);
    }
    let containers = services::start_containers(&node)?;
    let start_order: Vec<Arc<Supervisor>> = std::iter::once(core)
        .chain(role)
        .chain(containers)
        .collect();
    let stop_order: Vec<Arc<Supervisor>> = start_order.iter().rev().cloned().collect();
    if let Ok(mut list) = api_node.supervisors.lock() {
        *list = start_order.clone();
    }

    // Only now does the boot entry lose its counter.
    match bless::bless(
        &layout::on_volume(Path::new(ESP), layout::esp::ENTRIES_DIR),
        slot,
        bootinfo::boot_count_entry().as_deref(),
    ) {
        Ok(bless::Blessing::Blessed { from, to }) => log(&format!("blessed {from} -> {to}")),
        Ok(bless::Blessing::AlreadyBlessed(name)) => log(&format!("{name} already blessed")),
        Err(e) => log(&format!("warning: could not bless the boot entry: {e}")),
    }
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let now = sys::boottime();
    let firmware = bootinfo::firmware_and_loader_seconds().map(|f| f + handoff.stage1_start);
    let rss = sys::rss_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    // systemd-boot records the firmware's time only when it can calibrate the TSC (not
    // under QEMU's TCG); the kernel's share is known either way.
    log(&format!(
        "ready: {} {} slot {slot}, boot {boot}; firmware to init {}, kernel to init {:.2}s, init to ready {:.2}s, PID 1 RSS {rss:.1} MiB",
        handoff.name,
        handoff.version,
        firmware
            .map(|f| format!("{f:.2}s"))
            .unwrap_or_else(|| "not measured".into()),
        handoff.stage1_start,
        now - handoff.stage1_start
    ));
    let mut last = String::new();
    loop {
        if let Some(request) = power::pending() {
            shutdown(request, &stop_order);
        }
        let line = status_line(&start_order, &net_state, &hostname);
        if line != last {
            log(&line);
            last = line;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs stage 2. Never returns.
pub fn main() -> ! {
    match run() {
        Ok(never) => match never {},
        Err(e) => crate::fatal::fatal(&format!("stage 2: {e}")),
    }
}
