//! Stage 2, in the verified root, as named steps: the boot deadline (first), writable paths,
//! ESP and STATE, the boot entries an interrupted upgrade left, the node's configuration,
//! network and identity, DATA at /var, the management API, containerd, the Kubernetes role
//! and the system containers under the supervisor, the health gate, blessing, the ready line,
//! and an orderly shutdown when asked.
//!
//! A node whose `/var` cannot be mounted comes up *degraded*: its API serves and says why,
//! and it neither blesses its entry nor reboots (see [`degraded`]).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel_contract::layout;
use keel_contract::profile::{Network, Role};
use keel_contract::secrets::NodeSecrets;

use crate::bootinfo::{self, Handoff};
use crate::deadline::{self, BootDeadline};
use crate::supervisor::{Reaper, Supervisor};
use crate::timeline::BOOT;
use crate::{
    config, console, hwmod, install, kmod, mounts, net, node_api, power, services, startup,
    storage, sys, testhooks, upgrade, watchdog,
};

/// Modules stage 2 loads from the root on every machine, when the kernel has them as
/// modules: those no device asks for (ext4 for DATA, with the crc32c its checksums ask the
/// crypto API for, which cannot load modules on demand here; container storage, EFI
/// variables, ISO 9660 and UTF-8 names for configuration given at boot). The pod network's
/// modules (bridge, br_netfilter, veth) are not here: nothing before ready uses them (system
/// containers share the host's network), so they load once containerd is up
/// (`kubelet_host::spawn_pod_network`). Drivers (the NIC, entropy, the power button, fw_cfg)
/// are loaded for the devices found (`hwmod`). Debian's cloud kernel has ext4 and crc32c
/// built in, the generic one as modules.
const MODULES: &[&str] = &[
    "crc32c_generic",
    "ext4",
    "overlay",
    "efivarfs",
    "nls_utf8",
    "isofs",
];
const ESP: &str = layout::root::ESP_MOUNT;

fn log(line: &str) {
    console::line(line);
}

fn warn(warnings: &mut Vec<String>, line: String) {
    log(&format!("warning: {line}"));
    warnings.push(line);
}

/// The drivers the devices found ask for, among all of the root's modules; those no step
/// before ready needs are returned for [`load_drivers_after_ready`].
fn load_drivers(loaded: &mut BTreeSet<PathBuf>) -> hwmod::AfterReady {
    match hwmod::Hardware::for_running_kernel() {
        Ok(mut hw) => {
            let n = hw.settle(
                Path::new(hwmod::SYS_DEVICES),
                loaded,
                &mut hwmod::finit,
                &|m| log(m),
            );
            log(&format!(
                "{n} modules loaded for the devices found: {}",
                hw.summary()
            ));
            hw.take_after_ready()
        }
        Err(e) => {
            log(&format!("warning: no drivers loaded by device: {e}"));
            hwmod::AfterReady::default()
        }
    }
}

/// The drivers [`load_drivers`] set aside, once the node is ready, on the main thread before
/// its loop (a few module loads need no thread of their own, with its stack and arena).
fn load_drivers_after_ready(mut late: Drivers) {
    if late.after_ready.0.is_empty() {
        return;
    }
    hwmod::load_after_ready(
        &late.after_ready,
        &mut late.loaded,
        hwmod::in_sys_module,
        &mut hwmod::finit,
        &|m| log(m),
    );
}

/// What stage 2's basics loaded, and the drivers left for after ready.
struct Drivers {
    loaded: BTreeSet<PathBuf>,
    after_ready: hwmod::AfterReady,
}

/// Signals, the basic mounts, modules, /etc, EFI variables, the power button, the ESP and the
/// reaper: what every later step stands on.
fn system_basics(handoff: &Handoff) -> Result<Drivers, String> {
    power::install_signal_handlers();
    sys::ctrl_alt_del_to_signal();
    mounts::stage2_basics().map_err(|e| e.to_string())?;
    let mut loaded = BTreeSet::new();
    match kmod::ModuleDeps::for_running_kernel() {
        Some(deps) => deps.load(MODULES, &mut loaded, &|m| log(m)),
        None => log("warning: no modules.dep for the running kernel"),
    }
    let after_ready = load_drivers(&mut loaded);
    mounts::etc_overlay().map_err(|e| e.to_string())?;
    if let Err(e) = mounts::efivars() {
        log(&format!("warning: {e} (no firmware timing information)"));
    }
    power::watch_power_button(log);
    storage::mount_esp(handoff)?;
    Reaper::global().map_err(|e| format!("reaper: {e}"))?;
    Ok(Drivers {
        loaded,
        after_ready,
    })
}

/// The node's configuration: a boot-time source (fw_cfg, `keel.config=` URL, config drive),
/// else what STATE kept, else the profile baked into the image. A URL needs the network
/// first: DHCP on the first interface, which is returned for reuse. What a URL or a drive
/// gives applies only when signed by the image's keys (see [`config::choose`]).
fn node_config(state: &Path) -> Result<(config::NodeConfig, Option<net::NetState>), String> {
    let cmdline = bootinfo::cmdline();
    let mut early_net = None;
    let boot_time = if let Some(found) = config::fw_cfg() {
        Some(found)
    } else if let Some(url) = layout::cmdline::get(&cmdline, layout::cmdline::CONFIG) {
        early_net = Some(
            net::configure(&Network::default(), &|m| log(m))
                .map_err(|e| format!("network for {url}: {e}"))?,
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
            // The signature is fetched once: the server just answered. Without it the
            // profile is refused as unsigned (config::choose says so).
            Ok(text) => Some(config::Found {
                source: config::Source::Url(url.to_owned()),
                profile: Some(text),
                profile_sig: config::http_get(
                    &layout::config::signature_of(url),
                    Duration::from_secs(10),
                )
                .map_err(|e| log(&format!("warning: no signature for the profile: {e}")))
                .ok(),
                ..config::Found::default()
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
    // The keys stage 1 copied from the verified initramfs; without them nothing signed can
    // be checked, so only fw_cfg and what the node already has apply.
    let keys = bootinfo::trusted_keys()
        .map_err(|e| log(&format!("warning: {e}")))
        .ok();
    let cfg = config::choose(
        boot_time,
        state,
        Path::new(bootinfo::BAKED_PROFILE),
        keys.as_ref(),
    );
    for note in &cfg.notes {
        log(note);
    }
    Ok((cfg, early_net))
}

/// What a network-booted node tells its status: where its root came from and what it holds.
fn diskless(handoff: &Handoff) -> Option<keel_contract::api::Diskless> {
    match &handoff.source {
        bootinfo::BootSource::Network {
            url,
            fetch_seconds,
            ram_bytes,
            ..
        } => Some(keel_contract::api::Diskless {
            root_url: url.clone(),
            root_ram_bytes: *ram_bytes,
            fetch_ms: (fetch_seconds * 1000.0) as u64,
        }),
        bootinfo::BootSource::Disk { .. } => None,
    }
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

/// The management API on port 50000, with the node's certificate from its secrets, or the
/// renewed one an admin pushed since (STATE's [`layout::state::API_CERTIFICATE`]).
fn start_api(secrets: Option<&NodeSecrets>, node: Arc<node_api::Node>) {
    let Some(secrets) = secrets else {
        log("management API: off (no node secrets with an API certificate)");
        return;
    };
    let from_secrets = keel_contract::api::NodeCertificate {
        cert: secrets.node_api.cert.clone(),
        key: secrets.node_api.key.clone(),
    };
    let hostname = node.facts.hostname.clone();
    let now = rustls::pki_types::UnixTime::now();
    let serving = match crate::api::certificate::saved(
        &node.state,
        &from_secrets,
        &secrets.keel_ca.cert,
        &hostname,
        now,
    ) {
        Ok(Some((renewed, report))) => {
            log(&format!(
                "management API: serving the renewed certificate (serial {}, valid until {})",
                report.serial,
                keel_pki::rfc3339(report.not_after).unwrap_or_default()
            ));
            renewed
        }
        Ok(None) => from_secrets,
        Err(warning) => {
            log(&format!("warning: {warning}"));
            from_secrets
        }
    };
    let tls =
        match crate::api::ServerTls::from_pem(&serving.cert, &serving.key, &secrets.keel_ca.cert) {
            Ok(tls) => tls,
            Err(e) => {
                log(&format!("management API: off: {e}"));
                return;
            }
        };
    let _ = node.renewal.set(crate::api::certificate::Renewal {
        tls: tls.clone(),
        trusted_ca_pem: secrets.keel_ca.cert.clone(),
        hostname,
        state: node.state.clone(),
        log,
    });
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
    let options = crate::api::ServerOptions::default();
    match crate::api::spawn(listener, tls, node, log, options) {
        Ok(_server) => log(&format!(
            "management API on port {} (mutual TLS, keel CA)",
            keel_contract::api::PORT
        )),
        Err(e) => log(&format!("management API: off: {e}")),
    }
}

/// Something rebooting would not cure (`/var` cannot be mounted, the installer refused): not
/// the slot's fault, and the other slot would find it just as broken, so the node neither blesses its entry (it did not pass its gate) nor fails it
/// (the deadline is suspended: no reboot). It stays up, its API serving and saying why,
/// until an operator repairs DATA and reboots it, or rolls it back.
fn degraded(deadline: &BootDeadline, node: &node_api::Node, why: &str) -> ! {
    deadline.suspend();
    let why = why.to_owned();
    log(&format!(
        "DEGRADED: {why}; the node stays up with its API, does not bless its boot entry and does not reboot"
    ));
    *node.degraded.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
    crate::fatal::set_degraded(&why);
    crate::fatal::stay_up()
}

/// The role's services once containerd is up, then the system containers; all groups in
/// start order.
fn start_services(
    core: Arc<Supervisor>,
    role: Option<crate::roles::RolePlan>,
    node: &keel_contract::profile::Node,
    secrets: Option<&NodeSecrets>,
) -> Result<Vec<Arc<Supervisor>>, String> {
    let role = match role {
        Some(plan) => BOOT.step("kubernetes", || services::start_role(plan))?,
        None => None,
    };
    if let Some(s) = secrets.filter(|s| s.role == Role::ControlPlane) {
        services::spawn_cluster_bootstrap(s, node.kubernetes.bootstrap_token_ttl_hours);
    }
    if node.role == Role::ControlPlane {
        services::spawn_virtual_ips(node);
    }
    let containers = BOOT.step("containers", || services::start_containers(node))?;
    Ok(std::iter::once(core)
        .chain(role)
        .chain(containers)
        .collect())
}

/// The health gate passed: the entry is blessed, the deadline is off, and the ready line says
/// how long it took.
fn pass_health_gate(handoff: &Handoff, state_dir: &Path, deadline: &BootDeadline, boot: u64) {
    crate::testhooks::pause_at("bless");
    storage::bless(handoff, state_dir);
    deadline.passed();
    let now = sys::boottime();
    let firmware = bootinfo::firmware_and_loader_seconds().map(|f| f + handoff.stage1_start);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rss = mib(sys::rss_bytes().unwrap_or(0));
    let memory = sys::memory_in_use()
        .map(|(used, total)| format!("{:.0} of {:.0} MiB", mib(used), mib(total)))
        .unwrap_or_else(|| "not measured".into());
    crate::node_api::mark_ready();
    // Before the ready line, which tests and benchmarks stop at.
    log(&format!(
        "timeline: {}",
        keel_contract::api::timeline_line(&BOOT.steps())
    ));
    // systemd-boot records the firmware's time only when it can calibrate the TSC (not
    // under QEMU's TCG); the kernel's share is known either way.
    log(&format!(
        "ready: {} {} slot {}, boot {boot}; firmware to init {}, kernel to init {:.2}s, init to ready {:.2}s, PID 1 RSS {rss:.1} MiB, memory in use {memory}",
        handoff.name,
        handoff.version,
        handoff.slot,
        firmware
            .map(|f| format!("{f:.2}s"))
            .unwrap_or_else(|| "not measured".into()),
        handoff.stage1_start,
        now - handoff.stage1_start
    ));
}

/// After ready: a status line whenever a service's state changes, and a stop when asked.
fn serve(start_order: &[Arc<Supervisor>], net: &net::NetState, hostname: &str, boot: u64) -> ! {
    let stop_order: Vec<Arc<Supervisor>> = start_order.iter().rev().cloned().collect();
    let mut last = String::new();
    // From here the watchdog is petted only while this loop turns.
    watchdog::main_loop_alive();
    if testhooks::hang_after_ready(boot) {
        log(&format!(
            "test hook: PID 1's main loop hangs after the ready line of boot {boot}"
        ));
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    loop {
        watchdog::main_loop_alive();
        if let Some(request) = power::pending() {
            watchdog::shutting_down();
            power::shutdown(request, &stop_order, log);
        }
        let line = status_line(start_order, net, hostname);
        if line != last {
            log(&line);
            last = line;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn run() -> Result<std::convert::Infallible, String> {
    let handoff = Handoff::read().map_err(|e| format!("{}: {e}", bootinfo::HANDOFF))?;
    // First: every step after this one counts against the deadline.
    let deadline = BootDeadline::arm(
        deadline::DEFAULT_SECS,
        handoff.stage1_start,
        sys::boottime,
        deadline::reboot_on_expiry,
    );
    if handoff.boot.last_resort {
        crate::fatal::set_no_reboot(crate::stage1::LAST_RESORT);
    }
    BOOT.extend(&handoff.timeline);
    BOOT.mark("switch", handoff.stage1_end, sys::boottime());
    let slot = handoff.slot;
    log(&format!(
        "stage 2: {} {} from slot {slot}",
        handoff.name, handoff.version
    ));
    crate::containerd::prefetch();
    let drivers = BOOT.step("basics", || system_basics(&handoff))?;
    let mut warnings = Vec::new();
    let state_dir = BOOT.step("state", || storage::mount_state(&handoff, &mut warnings))?;
    // From here DATA, the host and containerd go on beside the main thread (`startup`). A
    // network boot's /var may be on a disk its profile names, so its thread waits for the
    // profile.
    let early = match handoff.disk() {
        Some(_) => Some(startup::Background::spawn(&handoff, &state_dir, None)?),
        None => None,
    };
    let rolled_back_from = BOOT.step("entries", || {
        storage::settle_boot_entries(&handoff, &state_dir, &mut warnings)
    });
    let (cfg, early_net) = BOOT.step("config", || node_config(&state_dir))?;
    let background = match early {
        Some(background) => {
            if cfg.node.var.is_some() {
                warn(
                    &mut warnings,
                    "[node.var] is for network-booted nodes: /var stays on this boot disk's DATA"
                        .into(),
                );
            }
            background
        }
        None => startup::Background::spawn(&handoff, &state_dir, cfg.node.var.clone())?,
    };
    deadline.set_secs(cfg.node.boot_deadline_secs);
    watchdog::arm(&cfg.node.watchdog, &log);
    log(&format!(
        "profile from {}: role {}",
        cfg.source,
        cfg.node.role.as_str()
    ));
    for w in &cfg.warnings {
        warn(&mut warnings, w.clone());
    }
    let (net_state, hostname) = BOOT.step("network", || startup::network(&cfg.node, early_net))?;
    let diskless = diskless(&handoff);
    let target = match diskless {
        Some(_) => {
            log(&format!(
                "upgrades: off: {}",
                keel_contract::api::DISKLESS_UPGRADE
            ));
            None
        }
        None => upgrade::Target::of_running(&handoff, Path::new(ESP), &state_dir)
            .map_err(|e| log(&format!("upgrades: off: {e}")))
            .ok(),
    };
    let var = background.var();
    warnings.extend(var.warnings);
    let facts = node_api::BootFacts {
        hostname: hostname.clone(),
        addresses: net_state
            .links
            .iter()
            .flat_map(|l| &l.addresses)
            .chain(&net_state.addresses)
            .map(ToString::to_string)
            .collect(),
        boot: *var.boot.as_ref().unwrap_or(&0),
        rolled_back_from,
        warnings,
        diskless,
    };
    let identity = node_api::Identity {
        name: handoff.name.clone(),
        version: handoff.version.to_string(),
        arch: handoff.arch.clone(),
        slot,
    };
    let paths = (
        PathBuf::from(ESP),
        state_dir.clone(),
        PathBuf::from(services::LOG_DIR),
    );
    let api_node = Arc::new(node_api::Node::new(identity, facts, paths, target, log));
    BOOT.step("api", || start_api(cfg.secrets.as_ref(), api_node.clone()));
    if let Some(install) = &cfg.node.install {
        let running = install::Running {
            handoff: &handoff,
            esp: Path::new(ESP),
            state: &state_dir,
        };
        // Writing a disk may outlast the boot deadline; a reboot halfway would only start
        // it again.
        match install::run(install, &running, &|| deadline.suspend(), &log) {
            install::Outcome::Installed(disk) => log(&format!(
                "install: booted from {disk}, an installed disk: nothing to install"
            )),
            install::Outcome::Done { disk } => {
                log(&format!("install: done; rebooting into {disk}"));
                let core: Vec<_> = background.containerd().into_iter().collect();
                power::shutdown(power::Request::Reboot, &core, log)
            }
            install::Outcome::Refused(why) => {
                degraded(&deadline, &api_node, &format!("install: refused: {why}"))
            }
            install::Outcome::Failed(why) => {
                degraded(&deadline, &api_node, &format!("install: failed: {why}"))
            }
        }
    }
    let boot = match var.boot {
        Ok(boot) => boot,
        Err(problem) => degraded(&deadline, &api_node, &problem.to_string()),
    };
    crate::kubelet_host::spawn_pod_network(&cfg.node, &net_state, &log);

    // The health gate: the root was verified in stage 1, the profile is applied, /var is
    // mounted, containerd answers, and the role's services are healthy. The role's files
    // are written while containerd starts.
    let ips: Vec<IpAddr> = net_state.node_addresses();
    let secrets = cfg.secrets.as_ref();
    let allowance = services::etcd_bootstrap_allowance(&cfg.node).as_secs();
    if allowance > 0 {
        deadline.set_secs(deadline.secs() + allowance);
        log(&format!(
            "etcd: restoring or joining may take up to {allowance} s more; boot deadline now {} s",
            deadline.secs()
        ));
    }
    let role = match BOOT.step("role", || {
        services::prepare_role(&cfg.node, &hostname, &ips, secrets)
    }) {
        Ok(role) => role,
        Err(services::RoleFailure::Degraded(why)) => degraded(&deadline, &api_node, &why),
        Err(services::RoleFailure::Broken(why)) => return Err(why),
    };
    let core = background.containerd()?;
    let start_order = start_services(core, role, &cfg.node, secrets)?;
    services::spawn_etcd_promotion(&cfg.node, &hostname, &ips);
    if let Ok(mut list) = api_node.supervisors.lock() {
        *list = start_order.clone();
    }
    pass_health_gate(&handoff, &state_dir, &deadline, boot);
    load_drivers_after_ready(drivers);
    serve(&start_order, &net_state, &hostname, boot)
}

/// Runs stage 2. Never returns.
pub fn main() -> ! {
    match run() {
        Ok(never) => match never {},
        Err(e) => crate::fatal::fatal(&format!("stage 2: {e}")),
    }
}
