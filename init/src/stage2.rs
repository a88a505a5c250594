//! Stage 2, in the verified root: writable paths, DATA at /var, the node's identity and
//! network, containerd and the system containers under the supervisor, the health gate,
//! blessing, the ready line, and an orderly shutdown when asked.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_signing::layout::{PartitionRole, Slot};
use keel_signing::profile::{Node, RestartPolicy};

use crate::bootinfo::{self, Handoff};
use crate::supervisor::{self, Health, ProcessSpec, Reaper, Restart, ServiceSpec, Supervisor};
use crate::{bless, block, config, console, containerd, history, kmod, mounts, net, power, sys};

/// Modules stage 2 loads from the root, when the kernel has them as modules: container
/// networking and storage, the NIC, entropy, the power button, EFI variables, and what
/// Kubernetes networking needs later.
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
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(120);
const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_DIR: &str = "/var/log/keel";

fn log(line: &str) {
    console::line(line);
}

fn env() -> Vec<(String, String)> {
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

/// Runs a command to completion through the reaper, its output on the console.
fn run_command(argv: &[String], timeout: Duration) -> Result<(), String> {
    let reaper = Reaper::global().map_err(|e| format!("reaper: {e}"))?;
    let env = env();
    let status = reaper
        .run(
            ProcessSpec {
                argv,
                env: &env,
                working_dir: None,
                stdout: console_fd(),
                stderr: console_fd(),
            },
            timeout,
        )
        .map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {status:?}", argv.join(" ")))
    }
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
        run_command(&argv, MKFS_TIMEOUT)?;
    }
    sys::mount(
        &device,
        "/var",
        "ext4",
        libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )
    .map_err(|e| e.to_string())?;
    for dir in [LOG_DIR, "/var/lib/keel", "/var/lib/containerd"] {
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
    } else if let Some(url) = keel_signing::layout::cmdline::get(&cmdline, config::CMDLINE_URL) {
        let dhcp = keel_signing::profile::Network::default();
        early_net = Some(
            net::configure(&dhcp, &|m| log(m)).map_err(|e| format!("network for {url}: {e}"))?,
        );
        let text = config::http_get(url, Duration::from_secs(30))?;
        Some(config::Found {
            source: config::Source::Url(url.to_owned()),
            profile: Some(text),
            secrets: None,
        })
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

fn service(
    name: &str,
    argv: Vec<String>,
    depends_on: &[&str],
    health: Health,
    restart: Restart,
) -> ServiceSpec {
    let mut spec = ServiceSpec::new(name, &[]);
    spec.argv = argv;
    spec.env = env();
    spec.depends_on = depends_on.iter().map(|d| (*d).to_owned()).collect();
    spec.health = health;
    spec.restart = restart;
    spec
}

/// containerd up and answering, then the baked images imported and the system containers
/// started under their own supervisor (stopped first at shutdown).
fn start_services(node: &Node) -> Result<(Supervisor, Option<Supervisor>), String> {
    containerd::write_config().map_err(|e| format!("{}: {e}", containerd::CONFIG))?;
    let options = || supervisor::Options {
        console: supervisor::stdout_sink(),
        log_dir: Some(PathBuf::from(LOG_DIR)),
    };
    let core = Supervisor::start(
        vec![service(
            "containerd",
            containerd::daemon_argv(),
            &[],
            Health::UnixSocket(containerd::SOCKET.into()),
            Restart::Always,
        )],
        options(),
    )
    .map_err(|e| e.to_string())?;
    core.wait_healthy("containerd", CONTAINERD_TIMEOUT)
        .map_err(|e| format!("containerd: {e}"))?;
    for archive in containerd::baked_archives(Path::new(containerd::BAKED_IMAGES)) {
        log(&format!("importing {}", archive.display()));
        run_command(&containerd::import_argv(&archive), IMPORT_TIMEOUT)?;
    }
    if node.containers.is_empty() {
        return Ok((core, None));
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
            &[],
            Health::ProcessAlive,
            restart,
        ));
    }
    let containers = Supervisor::start(specs, options()).map_err(|e| e.to_string())?;
    Ok((core, Some(containers)))
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

fn status_line(supervisors: &[&Supervisor], net: &net::NetState, hostname: &str) -> String {
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

fn shutdown(request: power::Request, supervisors: &[&Supervisor]) -> ! {
    log("stopping services");
    for s in supervisors {
        let report = s.stop_all(STOP_TIMEOUT);
        if !report.all_gone() {
            log("warning: some services did not stop");
        }
    }
    sys::sync();
    for target in ["/var", "/efi", "/state"] {
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
    mounts::fat(&handoff.esp_device, "/efi").map_err(|e| e.to_string())?;
    let roots = block::Roots::default();
    if let Ok(disk) = block::disk_for(&roots, Path::new(&handoff.slot_device)) {
        match block::sysfs::find_partition_on(&roots, &disk, PartitionRole::State.label()) {
            Ok(Some(state)) => {
                if let Err(e) = mounts::fat(&state.path.display().to_string(), "/state") {
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

    let state_dir = if Path::new("/state/keel-state").exists() {
        config::state_dir()
    } else {
        log("warning: STATE is not mounted; the applied profile will not survive a reboot");
        let dir = PathBuf::from("/run/keel/state");
        sys::mkdir_p(&dir, 0o700).map_err(|e| e.to_string())?;
        dir
    };
    let (cfg, early_net) = node_config(&state_dir)?;
    let node = cfg.node.clone();
    log(&format!(
        "profile from {}: role {}",
        cfg.source,
        node.role.as_str()
    ));
    let ready = arm_boot_deadline(node.boot_deadline_secs, handoff.stage1_start);
    let net_state = match early_net {
        Some(state) if node.network == keel_signing::profile::Network::default() => state,
        _ => net::configure(&node.network, &|m| log(m)).map_err(|e| format!("network: {e}"))?,
    };
    let hostname = apply_hostname(&node, &net_state);
    log(&format!(
        "network: {} {} via {}; hostname {hostname}",
        net_state.interface,
        net_state
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        net_state
            .gateway
            .map(|g| g.to_string())
            .unwrap_or_else(|| "-".into())
    ));
    let renewal = net_state.clone();
    std::thread::spawn(move || net::renew_forever(renewal, &|m| log(m)));

    let (core, containers) = start_services(&node)?;
    let supervisors: Vec<&Supervisor> = containers.iter().chain(std::iter::once(&core)).collect();

    // Health gate passed: the root was verified in stage 1, the profile is applied, /var is
    // mounted and containerd answers. Only now does the boot entry lose its counter.
    match bless::bless(
        Path::new("/efi/loader/entries"),
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
            shutdown(request, &supervisors);
        }
        let line = status_line(&supervisors, &net_state, &hostname);
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
