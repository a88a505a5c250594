//! The host checks kubeadm runs before it starts a kubelet (`kubeadm init/join phase
//! preflight`, Kubernetes 1.31: `cmd/kubeadm/app/preflight/checks*.go` and the system
//! validators of `k8s.io/system-validators`, packaged in Debian as
//! `golang-k8s-system-validators-dev`), and what the kubelet itself relies on when it starts,
//! run on the node. Each check prints one line `preflight ok: NAME: detail`; kubeadm's
//! warnings print `preflight warning: NAME: ...`; an error ends the fake kubelet with the
//! check's name, as kubeadm would refuse to go on. docs/kubelet-host.md has the table.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

const PATH_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// kubeadm's `addExecChecks` for 1.31: (executable, mandatory).
const EXECUTABLES: &[(&str, bool)] = &[
    ("conntrack", true),
    ("ip", true),
    ("iptables", true),
    ("mount", true),
    ("nsenter", true),
    ("ebtables", false),
    ("ethtool", false),
    ("socat", false),
    ("tc", false),
    ("touch", false),
];

/// The system validators' `DefaultSysSpec.KernelSpec.Required` (names after `CONFIG_`, with
/// aliases).
const KERNEL_REQUIRED: &[&[&str]] = &[
    &["NAMESPACES"],
    &["NET_NS"],
    &["PID_NS"],
    &["IPC_NS"],
    &["UTS_NS"],
    &["CGROUPS"],
    &["CGROUP_CPUACCT"],
    &["CGROUP_DEVICE"],
    &["CGROUP_FREEZER"],
    &["CGROUP_PIDS"],
    &["CGROUP_SCHED"],
    &["CPUSETS"],
    &["MEMCG"],
    &["INET"],
    &["EXT4_FS"],
    &["PROC_FS"],
    &["NETFILTER_XT_TARGET_REDIRECT", "IP_NF_TARGET_REDIRECT"],
    &["NETFILTER_XT_MATCH_COMMENT"],
    &["FAIR_GROUP_SCHED"],
];
const KERNEL_OPTIONAL: &[&str] = &[
    "OVERLAY_FS",
    "AUFS_FS",
    "BLK_DEV_DM",
    "CFS_BANDWIDTH",
    "CGROUP_HUGETLB",
];
/// `CgroupsV2` (devices and freezer are implicit in cgroup v2, as the validator assumes).
const CGROUPS_V2: &[&str] = &["cpu", "cpuset", "memory", "pids"];

/// The sysctls the kubelet sets itself, or with `protectKernelDefaults` requires.
const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

const MODULES: &[&str] = &["br_netfilter", "overlay", "nf_conntrack", "ip_vs"];

type Report<'a> = &'a mut dyn FnMut(String);

/// Runs every check; the first error ends the run.
pub fn run(hostname: &str, control_plane: bool, out: Report<'_>) -> Result<(), String> {
    privileged_user(out)?;
    swap(out)?;
    executables(out)?;
    sysctls(out)?;
    system_verification(out)?;
    hostname_check(hostname, out)?;
    port_open(10250, out)?;
    if control_plane {
        // Hardware sizing: the test VMs are smaller than kubeadm's floor on purpose.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        out(format!(
            "preflight note: NumCPU/Mem: {cpus} CPU(s), {} MB (kubeadm wants 2 and 1700 for a control plane: the machine's size, not the OS's)",
            mem_total_mb()
        ));
    }
    kubelet_host(out)?;
    Ok(())
}

fn ok(out: Report<'_>, name: &str, detail: impl AsRef<str>) {
    out(format!("preflight ok: {name}: {}", detail.as_ref()));
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

fn privileged_user(out: Report<'_>) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    let uid = std::fs::metadata("/proc/self")
        .map_err(|e| format!("preflight IsPrivilegedUser: /proc/self: {e}"))?
        .uid();
    if uid != 0 {
        return Err(format!(
            "preflight IsPrivilegedUser: running as uid {uid}, not root"
        ));
    }
    ok(out, "IsPrivilegedUser", "uid 0");
    Ok(())
}

fn swap(out: Report<'_>) -> Result<(), String> {
    let swaps = read("/proc/swaps")?;
    let active: Vec<&str> = swaps
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    if !active.is_empty() {
        return Err(format!("preflight Swap: swap is on: {}", active.join("; ")));
    }
    ok(out, "Swap", "/proc/swaps lists no swap");
    Ok(())
}

fn in_path(name: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    PATH_DIRS.iter().map(|d| format!("{d}/{name}")).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn executables(out: Report<'_>) -> Result<(), String> {
    for (name, mandatory) in EXECUTABLES {
        match (in_path(name), mandatory) {
            (Some(path), _) => ok(out, &format!("FileExisting-{name}"), path),
            (None, true) => {
                return Err(format!(
                    "preflight FileExisting-{name}: {name} not found in system path"
                ));
            }
            (None, false) => out(format!(
                "preflight warning: FileExisting-{name}: {name} not found in system path"
            )),
        }
    }
    Ok(())
}

fn sysctl(key: &str) -> Result<String, String> {
    read(&format!("/proc/sys/{key}")).map(|v| v.trim().to_owned())
}

fn sysctls(out: Report<'_>) -> Result<(), String> {
    for key in [
        "net/ipv4/ip_forward",
        "net/bridge/bridge-nf-call-iptables",
        "net/ipv6/conf/default/forwarding",
    ] {
        let name = format!("FileContent--proc-sys-{}", key.replace('/', "-"));
        let value = sysctl(key).map_err(|e| format!("preflight {name}: {e}"))?;
        if value != "1" {
            return Err(format!(
                "preflight {name}: /proc/sys/{key} contents are not set to 1 ({value})"
            ));
        }
        ok(out, &name, "1");
    }
    Ok(())
}

fn system_verification(out: Report<'_>) -> Result<(), String> {
    let name = "SystemVerification";
    let fail = |why: String| format!("preflight {name}: {why}");
    let os = read("/proc/sys/kernel/ostype").map_err(fail)?;
    if os.trim() != "Linux" {
        return Err(fail(format!("unsupported operating system: {}", os.trim())));
    }
    let release = read("/proc/sys/kernel/osrelease").map_err(fail)?;
    let release = release.trim();
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if major < 3 || (major == 3 && minor < 10) {
        return Err(fail(format!("kernel {release} is older than 3.10")));
    }
    ok(out, name, format!("OS Linux, kernel {release}"));
    // The validator reads /proc/config.gz or /boot/config-<release> (among others).
    let config_path = format!("/boot/config-{release}");
    let config = read(&config_path).map_err(fail)?;
    let value = |option: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("CONFIG_{option}=")))
            .map(str::to_owned)
    };
    let mut set = Vec::new();
    for names in KERNEL_REQUIRED {
        match names.iter().find_map(|n| value(n).map(|v| (n, v))) {
            Some((n, v)) if v == "y" || v == "m" => set.push(format!("{n}={v}")),
            _ => {
                return Err(fail(format!(
                    "kernel config CONFIG_{} is not set ({config_path})",
                    names[0]
                )));
            }
        }
    }
    ok(
        out,
        name,
        format!("kernel config ({config_path}): {}", set.join(" ")),
    );
    for option in KERNEL_OPTIONAL {
        match value(option) {
            Some(v) if v == "y" || v == "m" => {
                ok(out, name, format!("optional CONFIG_{option}={v}"))
            }
            _ => out(format!(
                "preflight warning: {name}: optional CONFIG_{option} is not set"
            )),
        }
    }
    let magic = cgroup2_mounted().map_err(fail)?;
    let controllers = read("/sys/fs/cgroup/cgroup.controllers").map_err(fail)?;
    let have: Vec<&str> = controllers.split_whitespace().collect();
    let missing: Vec<&&str> = CGROUPS_V2.iter().filter(|c| !have.contains(c)).collect();
    if !missing.is_empty() {
        return Err(fail(format!("missing required cgroups: {missing:?}")));
    }
    ok(
        out,
        name,
        format!(
            "cgroup v2 at /sys/fs/cgroup ({magic}), controllers {}",
            have.join(" ")
        ),
    );
    if !have.contains(&"hugetlb") {
        out(format!(
            "preflight warning: {name}: missing optional cgroups: hugetlb"
        ));
    }
    Ok(())
}

/// /sys/fs/cgroup is the unified hierarchy (cgroup v2), from /proc/self/mountinfo.
fn cgroup2_mounted() -> Result<String, String> {
    let info = read("/proc/self/mountinfo")?;
    info.lines()
        .find(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(4) == Some(&"/sys/fs/cgroup")
                && l.split(" - ")
                    .nth(1)
                    .is_some_and(|r| r.starts_with("cgroup2 "))
        })
        .map(|_| "cgroup2".to_owned())
        .ok_or_else(|| "/sys/fs/cgroup is not a cgroup2 mount".to_owned())
}

/// kubeadm's `HostnameCheck`: a valid name that resolves (here through /etc/hosts, as the
/// `files` NSS source does).
fn hostname_check(hostname: &str, out: Report<'_>) -> Result<(), String> {
    let hosts = read("/etc/hosts").map_err(|e| format!("preflight Hostname: {e}"))?;
    let address = hosts.lines().find_map(|l| {
        let mut f = l.split('#').next().unwrap_or("").split_whitespace();
        let addr = f.next()?;
        f.any(|n| n == hostname).then(|| addr.to_owned())
    });
    match address {
        Some(a) => ok(out, "Hostname", format!("{hostname} resolves to {a}")),
        None => out(format!(
            "preflight warning: Hostname: hostname \"{hostname}\" could not be reached"
        )),
    }
    Ok(())
}

fn port_open(port: u16, out: Report<'_>) -> Result<(), String> {
    TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| format!("preflight Port-{port}: Port {port} is in use ({e})"))?;
    ok(out, &format!("Port-{port}"), "free");
    Ok(())
}

fn mem_total_mb() -> u64 {
    read("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn run_tool(name: &str, argv: &[&str]) -> Result<String, String> {
    let output = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| format!("preflight {name}: {}: {e}", argv.join(" ")))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(format!(
            "preflight {name}: {} failed: {}",
            argv.join(" "),
            text.trim()
        ));
    }
    Ok(text)
}

/// What the kubelet, kube-proxy and CNI plugins rely on beyond kubeadm's list.
fn kubelet_host(out: Report<'_>) -> Result<(), String> {
    for (key, want) in KUBELET_SYSCTLS {
        let got = sysctl(key).map_err(|e| format!("preflight KernelDefaults: {e}"))?;
        if got != *want {
            return Err(format!(
                "preflight KernelDefaults: {} is {got}, the kubelet wants {want}",
                key.replace('/', ".")
            ));
        }
    }
    ok(
        out,
        "KernelDefaults",
        "the kubelet's protectKernelDefaults sysctls hold",
    );
    let loaded = read("/proc/modules").map_err(|e| format!("preflight Modules: {e}"))?;
    for module in MODULES {
        let present = loaded
            .lines()
            .any(|l| l.split_whitespace().next() == Some(module))
            || Path::new(&format!("/sys/module/{module}")).exists();
        if !present {
            return Err(format!("preflight Modules: {module} is not loaded"));
        }
    }
    ok(out, "Modules", MODULES.join(" "));
    if !Path::new("/dev/kmsg").exists() {
        return Err(
            "preflight KernelLog: /dev/kmsg is missing (the kubelet's OOM watcher reads it)".into(),
        );
    }
    ok(out, "KernelLog", "/dev/kmsg");
    let id = read("/etc/machine-id").map_err(|e| format!("preflight MachineID: {e}"))?;
    if id.trim().len() != 32 {
        return Err(format!(
            "preflight MachineID: /etc/machine-id is {:?}",
            id.trim()
        ));
    }
    ok(out, "MachineID", id.trim());
    let info =
        read("/proc/self/mountinfo").map_err(|e| format!("preflight MountPropagation: {e}"))?;
    let root_shared = info.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(4) == Some(&"/")
            && f.iter()
                .skip(6)
                .take_while(|x| **x != "-")
                .any(|x| x.starts_with("shared:"))
    });
    if !root_shared {
        return Err("preflight MountPropagation: / is not a shared mount".into());
    }
    ok(out, "MountPropagation", "/ is shared");
    run_tool("Iptables", &["iptables", "-w", "-t", "nat", "-S"])?;
    ok(
        out,
        "Iptables",
        "iptables -t nat -S runs (nf_tables backend)",
    );
    run_tool("Nftables", &["nft", "list", "tables"])?;
    ok(out, "Nftables", "nft list tables runs");
    run_tool("Conntrack", &["conntrack", "-C"])?;
    ok(out, "Conntrack", "conntrack -C runs");
    run_tool("Ipset", &["ipset", "list", "-n"])?;
    ok(out, "Ipset", "ipset list runs");
    for dir in ["/opt/cni/bin", "/etc/cni/net.d"] {
        let probe = format!("{dir}/.fake-kubelet-write-test");
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| format!("preflight CNIDirs: {dir} is not writable: {e}"))?;
    }
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        if !Path::new(&format!("/opt/cni/bin/{plugin}")).is_file() {
            return Err(format!(
                "preflight CNIDirs: /opt/cni/bin/{plugin} is missing"
            ));
        }
    }
    ok(
        out,
        "CNIDirs",
        "/opt/cni/bin (bridge host-local portmap loopback) and /etc/cni/net.d writable",
    );
    Ok(())
}
