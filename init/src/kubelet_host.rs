//! What the kubelet, kube-proxy and CNI plugins expect of the host they run on, prepared
//! once per boot: before containerd starts, shared mount propagation, a persistent machine
//! id and the CNI directories; once it is up, in the background and before the kubelet
//! starts, kernel modules, the sysctls kubeadm's preflight checks and the kubelet's
//! `protectKernelDefaults` require, and the pod network (`crate::cni`).
//!
//! `docs/kubelet-host.md` lists every item against kubeadm's preflight checks and Talos, with
//! the test that checks it on a node.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use keel_contract::profile::Node;

use crate::net::NetState;
use crate::{cni, kmod, sys};

/// Modules the Kubernetes network stack needs loaded. The image has no `modprobe`, so the
/// kernel cannot load them on demand (`request_module` fails): every module a netfilter
/// rule, ipset or IPVS service may touch is loaded here. All are modules in Debian's cloud
/// kernel (6.1); anything missing is reported on the console.
pub const MODULES: &[&str] = &[
    // Containers and pods.
    "overlay",
    "bridge",
    "br_netfilter",
    "veth",
    // Connection tracking, and its netlink interface for the `conntrack` tool.
    "nf_conntrack",
    "nf_conntrack_netlink",
    // iptables on the nf_tables backend (Debian 12's default), as kube-proxy, the bridge
    // plugin's masquerading and portmap use it, and kube-proxy's nftables mode.
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_redir",
    "nft_ct",
    "nft_limit",
    "nft_numgen",
    "nft_fib_inet",
    "nft_fib_ipv4",
    "nft_fib_ipv6",
    "nft_reject_inet",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_comment",
    "xt_conntrack",
    "xt_mark",
    "xt_multiport",
    "xt_nat",
    "xt_physdev",
    "xt_statistic",
    "xt_tcpudp",
    "xt_set",
    "ipt_REJECT",
    "ip6t_REJECT",
    // kube-proxy's ipvs mode: the schedulers it defaults to and the ipsets it keeps.
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_sh",
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "ip_set_hash_ipportip",
    "ip_set_hash_ipportnet",
    "ip_set_hash_net",
    "ip_set_bitmap_port",
];

/// Kernel parameters: kubeadm's preflight (`ip_forward`, IPv6 forwarding), what the
/// bridge-based pod networks and kube-proxy need (`bridge-nf-call-*`), the values the kubelet
/// sets itself unless `protectKernelDefaults` (then it refuses to start if they differ), and
/// Talos' defaults for Kubernetes workloads.
pub const SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/default/forwarding", "1"),
    // Forwarding would otherwise turn off router advertisements on new interfaces.
    ("net/ipv6/conf/default/accept_ra", "2"),
    ("net/bridge/bridge-nf-call-iptables", "1"),
    ("net/bridge/bridge-nf-call-ip6tables", "1"),
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
    ("kernel/pid_max", "262144"),
    ("fs/inotify/max_user_instances", "8192"),
    ("fs/inotify/max_user_watches", "524288"),
    ("fs/aio-max-nr", "1048576"),
    ("net/ipv4/tcp_keepalive_time", "600"),
    ("net/ipv4/tcp_keepalive_intvl", "60"),
];

/// Where the machine id is kept across boots and upgrades (the kubelet reports it as the
/// node's `machineID`; `/etc/machine-id` is on a tmpfs overlay).
const MACHINE_ID_STORE: &str = "/var/lib/keel/machine-id";

/// Modules loaded before the sysctls (which need `br_netfilter`).
const FIRST: &[&str] = &["overlay", "bridge", "br_netfilter", "veth", "nf_conntrack"];
/// How long the kubelet's start waits for the host to be prepared.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A one-way flag threads wait on: the host prepared, the sandbox image imported.
pub struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    pub const fn new() -> Gate {
        Gate {
            open: Mutex::new(false),
            changed: Condvar::new(),
        }
    }

    pub fn open(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        *open = true;
        self.changed.notify_all();
    }

    /// Whether the gate opened within `timeout`.
    pub fn wait(&self, timeout: Duration) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (open, _) = self
            .changed
            .wait_timeout_while(open, timeout, |open| !*open)
            .unwrap_or_else(|e| e.into_inner());
        *open
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

/// Opens when containerd answers and the baked images are imported (`services::import_baked_images`).
pub static CONTAINERD_UP: Gate = Gate::new();
/// Opens when the network modules are loaded and the pod network is set up.
pub static HOST_READY: Gate = Gate::new();
/// Opens when the pod sandbox image has been imported (or failed to be).
pub static SANDBOX_IMAGE: Gate = Gate::new();

/// Prepares the host for containerd, once `/var` is mounted (it needs no network): mount
/// propagation, the machine id and the CNI directories (containerd watches them from its
/// start). The network modules, the sysctls and the pod network follow in
/// [`spawn_pod_network`], off the path to ready. Every step that fails is reported and the
/// boot goes on: a node whose pods cannot get a network still serves its API and says why.
pub fn prepare(log: &'static (dyn Fn(&str) + Sync)) {
    // Like systemd: mounts propagate, so a pod's Bidirectional volume mounts (CSI drivers)
    // reach the host and other pods.
    if let Err(e) = sys::mount("none", "/", "", libc::MS_REC | libc::MS_SHARED, None) {
        log(&format!("warning: {e}"));
    }
    match machine_id(Path::new(MACHINE_ID_STORE), &random_id) {
        Ok(id) => {
            if let Err(e) = std::fs::write("/etc/machine-id", format!("{id}\n")) {
                log(&format!("warning: /etc/machine-id: {e}"));
            }
        }
        Err(e) => log(&format!("warning: {MACHINE_ID_STORE}: {e}")),
    }
    if let Err(e) = cni::mount_dirs() {
        log(&format!("warning: CNI directories: {e}"));
    }
}

/// The network modules (those the sysctls need first), the sysctls and the pod network:
/// nothing before the kubelet needs them, so they wait until containerd is up (on one CPU
/// they would only slow its start: under TCG they take seconds) and go on in the background;
/// the kubelet's start waits for them ([`wait_for_kubelet`]).
pub fn spawn_pod_network(node: &Node, net: &NetState, log: &'static (dyn Fn(&str) + Sync)) {
    let (pods, cluster, net) = (
        node.pod_network.clone(),
        node.kubernetes.pod_cidr,
        net.clone(),
    );
    std::thread::spawn(move || {
        CONTAINERD_UP.wait(READY_TIMEOUT);
        let deps = kmod::ModuleDeps::for_running_kernel();
        let mut loaded = BTreeSet::new();
        match &deps {
            Some(deps) => deps.load(FIRST, &mut loaded, log),
            None => log("warning: no modules.dep: the Kubernetes network modules are not loaded"),
        }
        let failed: Vec<String> = SYSCTLS
            .iter()
            .filter_map(|(key, value)| set_sysctl(Path::new("/proc/sys"), key, value).err())
            .collect();
        if !failed.is_empty() {
            log(&format!("warning: sysctls not set: {}", failed.join("; ")));
        }
        if let Some(deps) = &deps {
            let rest: Vec<&str> = MODULES
                .iter()
                .filter(|m| !FIRST.contains(m))
                .copied()
                .collect();
            deps.load(&rest, &mut loaded, log);
        }
        match cni::apply(&pods, &cluster, &net) {
            Ok(Some(summary)) => log(&format!("pod network: {summary}")),
            Ok(None) => log(&format!(
                "pod network: none from Keel (a CNI DaemonSet installs one into {} and {})",
                cni::BIN_DIR,
                cni::CONF_DIR
            )),
            Err(e) => log(&format!("warning: pod network: {e}")),
        }
        HOST_READY.open();
    });
}

/// Called before the kubelet starts: waits until the host is prepared and the sandbox image
/// imported, so the kubelet never sees a half-prepared host.
pub fn wait_for_kubelet(log: &dyn Fn(&str)) {
    for (gate, what) in [
        (&HOST_READY, "the network modules and the pod network"),
        (&SANDBOX_IMAGE, "the pod sandbox image"),
    ] {
        if !gate.wait(READY_TIMEOUT) {
            log(&format!(
                "warning: {what} not ready after {}s; starting the kubelet anyway",
                READY_TIMEOUT.as_secs()
            ));
        }
    }
}

/// Writes one sysctl under `root` (`/proc/sys`); the error names the key.
pub fn set_sysctl(root: &Path, key: &str, value: &str) -> Result<(), String> {
    std::fs::write(root.join(key), value)
        .map_err(|e| format!("{}={value}: {e}", key.replace('/', ".")))
}

/// The machine id kept in `store`, made once (32 lower-case hex digits, as systemd's).
pub fn machine_id(store: &Path, random: &dyn Fn() -> [u8; 16]) -> std::io::Result<String> {
    if let Ok(text) = std::fs::read_to_string(store) {
        let id = text.trim();
        if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id.to_ascii_lowercase());
        }
    }
    let id: String = random().iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = store.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = store.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    sys::rename_durably(&tmp, store)?;
    Ok(id)
}

fn random_id() -> [u8; 16] {
    let mut buf = [0u8; 16];
    // SAFETY: buf is a live, writable buffer of buf.len() bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // getrandom cannot fail for 16 bytes once the pool is initialised; the boot id is
        // unique per boot, which is still better than a fixed value.
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let hex: Vec<u8> = boot.bytes().filter(u8::is_ascii_hexdigit).collect();
        for (i, pair) in hex.chunks(2).take(16).enumerate() {
            let s = std::str::from_utf8(pair).unwrap_or("0");
            buf[i] = u8::from_str_radix(s, 16).unwrap_or(0);
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("keel/machine-id");
        let id = machine_id(&store, &|| [0xab; 16]).unwrap();
        assert_eq!(id, "ab".repeat(16));
        let again = machine_id(&store, &|| [0x01; 16]).unwrap();
        assert_eq!(again, id, "kept across boots");
        std::fs::write(&store, "garbage\n").unwrap();
        assert_eq!(machine_id(&store, &|| [0x02; 16]).unwrap(), "02".repeat(16));
    }

    #[test]
    fn sysctls_are_written_and_failures_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        set_sysctl(dir.path(), "net/ipv4/ip_forward", "1").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("net/ipv4/ip_forward")).unwrap(),
            "1"
        );
        let err = set_sysctl(dir.path(), "net/bridge/bridge-nf-call-iptables", "1").unwrap_err();
        assert!(
            err.starts_with("net.bridge.bridge-nf-call-iptables=1: "),
            "{err}"
        );
    }

    #[test]
    fn a_gate_opens_once_for_every_waiter() {
        let gate = std::sync::Arc::new(Gate::new());
        assert!(!gate.wait(Duration::from_millis(10)));
        let g = gate.clone();
        let waiter = std::thread::spawn(move || g.wait(Duration::from_secs(10)));
        gate.open();
        assert!(waiter.join().unwrap());
        assert!(gate.wait(Duration::ZERO));
    }

    #[test]
    fn the_kubeadm_sysctls_are_set() {
        for key in ["net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"] {
            assert!(SYSCTLS.contains(&(key, "1")), "{key}");
        }
        for module in ["br_netfilter", "overlay", "nf_conntrack", "ip_vs"] {
            assert!(MODULES.contains(&module), "{module}");
        }
    }
}
