//! `fake-kubelet`: a test double for the kubelet, which cannot be downloaded on the machines
//! that run Keel's tests. It is no kubelet: it runs no pods and talks to no API server.
//!
//! What it does is check the contract a real kubelet relies on, as Keel's init sets it up,
//! and exit non-zero with a plain message when something is wrong:
//!
//! - the flags: only the ones the init passes, each once, the required ones present;
//!   `--node-ip` usable (and assigned to this machine, unless `FAKE_KUBELET_ANY_NODE_IP` is
//!   set: tests run on machines whose addresses they do not choose), labels the kubelet may
//!   set, well-formed taints;
//! - `--config`: JSON (Keel writes JSON; the fake does not read other YAML there), a
//!   `KubeletConfiguration` with cgroupDriver cgroupfs, webhook authentication and
//!   authorization, anonymous access off, an existing client CA file, an existing
//!   staticPodPath if set, and a containerd endpoint that is a Unix socket accepting
//!   connections;
//! - the kubeconfig (or, when it does not exist yet, the bootstrap kubeconfig): JSON or a
//!   block-style YAML subset, an https server, CA data, and for the kubelet's own kubeconfig a
//!   client certificate whose subject is `CN=system:node:<--hostname-override>`,
//!   `O=system:nodes`, currently valid and issued by the kubeconfig's CA (names compared from
//!   the DER; signatures are not verified);
//! - every file in staticPodPath (dot files skipped, as the kubelet does) a JSON v1 Pod with
//!   named containers that have images.
//!
//! Then it prints one line per check and serves `GET /healthz` (200 `ok`) on the
//! configuration's healthz address (127.0.0.1:10248) until it is killed.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[path = "fake_kubelet/names.rs"]
mod names;
#[path = "fake_kubelet/pki.rs"]
mod pki;
#[path = "fake_kubelet/pods.rs"]
mod pods;
#[path = "fake_kubelet/preflight.rs"]
mod preflight;
#[path = "fake_kubelet/yaml.rs"]
mod yaml;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use names::{check_labels, check_node_name, check_taints};
use serde_json::Value;

const BANNER: &str = "fake-kubelet: this is a test double, not the real kubelet";
/// Skips the check that `--node-ip` is one of this machine's addresses.
const ANY_NODE_IP: &str = "FAKE_KUBELET_ANY_NODE_IP";
/// The fake runs on a build machine, not on a node: skips the host's preflight checks and
/// everything that needs a container runtime (CRI calls, static pods).
const OFF_NODE: &str = "FAKE_KUBELET_OFF_NODE";
/// The flags Keel's init passes (see keel-init's `roles::kubelet::argv`).
const FLAGS: &[&str] = &[
    "config",
    "kubeconfig",
    "bootstrap-kubeconfig",
    "node-ip",
    "hostname-override",
    "node-labels",
    "register-with-taints",
    "cert-dir",
];

fn main() -> ExitCode {
    println!("{BANNER}");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let on_node = std::env::var_os(OFF_NODE).is_none();
    let mut ok = |line: String| println!("fake-kubelet: ok: {line}");
    let checked = check_all(&args, &mut ok).and_then(|config| {
        if on_node {
            preflight::run(&config.hostname, config.control_plane, &mut |line| {
                println!("fake-kubelet: {line}")
            })?;
            pods::run_static_pods(&config, &mut |line| println!("fake-kubelet: {line}"))?;
        }
        Ok(config.healthz)
    });
    let healthz = match checked {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("fake-kubelet: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(healthz) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fake-kubelet: error: cannot listen on {healthz}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("fake-kubelet: serving GET /healthz on http://{healthz}");
    serve(&listener);
    ExitCode::FAILURE
}

/// Runs every check, reporting each success through `ok`; what the rest needs.
fn check_all(args: &[String], ok: &mut dyn FnMut(String)) -> Result<Config, String> {
    let flags = parse_flags(args)?;
    ok(format!(
        "flags: {}",
        flags
            .given
            .iter()
            .map(|f| format!("--{f}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    check_node_ip(flags.node_ip)?;
    ok(format!("--node-ip={}", flags.node_ip));
    check_node_name(&flags.hostname)?;
    ok(format!("--hostname-override={}", flags.hostname));
    if let Some(labels) = &flags.labels {
        check_labels(labels)?;
        ok(format!("--node-labels={labels}"));
    }
    if let Some(taints) = &flags.taints {
        check_taints(taints)?;
        ok(format!("--register-with-taints={taints}"));
    }
    match (flags.cert_dir.is_dir(), flags.cert_dir.parent()) {
        (true, _) => {}
        (false, Some(parent)) if parent.is_dir() => {}
        _ => {
            return Err(format!(
                "--cert-dir {}: neither it nor its parent is a directory",
                flags.cert_dir.display()
            ));
        }
    }
    ok(format!("--cert-dir={}", flags.cert_dir.display()));

    let mut config = check_config(&flags.config, ok)?;
    check_kubeconfigs(&flags, ok)?;
    if let Some(dir) = &config.static_pod_path {
        check_static_pods(dir, ok)?;
    }
    config.hostname = flags.hostname.clone();
    // Keel gives only a control plane's kubelet static pods.
    config.control_plane = config.static_pod_path.is_some();
    Ok(config)
}

struct Flags {
    given: Vec<String>,
    config: PathBuf,
    kubeconfig: PathBuf,
    bootstrap: Option<PathBuf>,
    node_ip: IpAddr,
    hostname: String,
    labels: Option<String>,
    taints: Option<String>,
    cert_dir: PathBuf,
}

/// `--name=value` or `--name value`, as the kubelet's flag parser takes them.
fn parse_flags(args: &[String]) -> Result<Flags, String> {
    let mut map: BTreeMap<&str, String> = BTreeMap::new();
    let mut given = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(format!(
                "unexpected argument {arg:?}: the kubelet takes flags only"
            ));
        };
        let name = flag.split_once('=').map_or(flag, |(n, _)| n);
        if !FLAGS.contains(&name) {
            return Err(format!(
                "unknown flag --{name} (the fake knows the flags Keel's init passes: --{})",
                FLAGS.join(" --")
            ));
        }
        let value = match flag.split_once('=') {
            Some((_, v)) => v.to_owned(),
            None => it
                .next()
                .ok_or_else(|| format!("--{flag} needs a value"))?
                .clone(),
        };
        if map.insert(name, value).is_some() {
            return Err(format!("--{name} given twice"));
        }
        given.push(name.to_owned());
    }
    let mut take = |name: &str| map.remove(name);
    let mut required = |name: &str| take(name).ok_or_else(|| format!("--{name} is required"));
    let config = PathBuf::from(required("config")?);
    let kubeconfig = PathBuf::from(required("kubeconfig")?);
    let node_ip = required("node-ip")?;
    let hostname = required("hostname-override")?;
    let cert_dir = PathBuf::from(required("cert-dir")?);
    Ok(Flags {
        given,
        config,
        kubeconfig,
        bootstrap: take("bootstrap-kubeconfig").map(PathBuf::from),
        node_ip: node_ip
            .parse()
            .map_err(|_| format!("--node-ip {node_ip:?} is not an IP address"))?,
        hostname,
        labels: take("node-labels"),
        taints: take("register-with-taints"),
        cert_dir,
    })
}

/// The kubelet refuses loopback, link-local, multicast and unspecified node IPs, and ones
/// that are not on one of the machine's interfaces (binding to an address proves the latter).
fn check_node_ip(ip: IpAddr) -> Result<(), String> {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local {
        return Err(format!(
            "--node-ip {ip} is loopback, link-local, multicast or unspecified"
        ));
    }
    if std::env::var_os(ANY_NODE_IP).is_none() {
        UdpSocket::bind((ip, 0))
            .map_err(|e| format!("--node-ip {ip} is not an address of this machine: {e}"))?;
    }
    Ok(())
}

struct Config {
    static_pod_path: Option<PathBuf>,
    healthz: SocketAddr,
    /// containerd's socket (containerRuntimeEndpoint without `unix://`).
    runtime_socket: String,
    hostname: String,
    control_plane: bool,
}

fn read_json(path: &Path, what: &str) -> Result<Value, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{what} {}: not JSON ({e}); Keel writes JSON, and the fake reads nothing else there",
            path.display()
        )
    })
}

fn string<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn check_config(path: &Path, ok: &mut dyn FnMut(String)) -> Result<Config, String> {
    let c = read_json(path, "--config")?;
    let bad = |why: String| format!("--config {}: {why}", path.display());
    let expect = |pointer: &str, want: Value| -> Result<(), String> {
        match c.pointer(pointer) {
            Some(v) if *v == want => Ok(()),
            other => Err(bad(format!(
                "{pointer} is {}, expected {want}",
                other.map_or("missing".into(), Value::to_string)
            ))),
        }
    };
    expect("/apiVersion", "kubelet.config.k8s.io/v1beta1".into())?;
    expect("/kind", "KubeletConfiguration".into())?;
    // containerd runs with cgroupfs; a kubelet with another driver fails to create pods.
    expect("/cgroupDriver", "cgroupfs".into())?;
    ok("config.yaml cgroupDriver=cgroupfs".into());
    expect("/authentication/anonymous/enabled", false.into())?;
    expect("/authentication/webhook/enabled", true.into())?;
    expect("/authorization/mode", "Webhook".into())?;
    ok("config.yaml authentication webhook, anonymous off; authorization Webhook".into());

    let ca = string(&c, "/authentication/x509/clientCAFile")
        .ok_or_else(|| bad("authentication.x509.clientCAFile is missing".into()))?;
    let text = std::fs::read_to_string(ca).map_err(|e| bad(format!("clientCAFile {ca}: {e}")))?;
    let cert = pki::pem_certificates(&text)
        .into_iter()
        .next()
        .ok_or_else(|| bad(format!("clientCAFile {ca}: no PEM certificate")))?;
    let info = pki::parse_certificate(&cert).map_err(|e| bad(format!("clientCAFile {ca}: {e}")))?;
    ok(format!(
        "config.yaml clientCAFile={ca} (CN={})",
        info.common_name()
    ));

    let static_pod_path = match c.get("staticPodPath") {
        None => None,
        Some(Value::String(dir)) if Path::new(dir).is_dir() => {
            ok(format!("config.yaml staticPodPath={dir}"));
            Some(PathBuf::from(dir))
        }
        Some(other) => {
            return Err(bad(format!(
                "staticPodPath {other} is not an existing directory"
            )));
        }
    };

    let endpoint = string(&c, "/containerRuntimeEndpoint")
        .ok_or_else(|| bad("containerRuntimeEndpoint is missing".into()))?;
    let socket = endpoint.strip_prefix("unix://").ok_or_else(|| {
        bad(format!(
            "containerRuntimeEndpoint {endpoint:?} is not unix://"
        ))
    })?;
    let meta = std::fs::metadata(socket)
        .map_err(|e| bad(format!("containerRuntimeEndpoint {socket}: {e}")))?;
    if !meta.file_type().is_socket() {
        return Err(bad(format!(
            "containerRuntimeEndpoint {socket} is not a socket"
        )));
    }
    UnixStream::connect(socket).map_err(|e| {
        bad(format!(
            "containerRuntimeEndpoint {socket}: cannot connect: {e}"
        ))
    })?;
    ok(format!(
        "config.yaml containerRuntimeEndpoint={endpoint} accepts connections"
    ));

    let dns = c.get("clusterDNS").and_then(Value::as_array);
    let dns_ok = dns.is_some_and(|d| {
        !d.is_empty()
            && d.iter()
                .all(|ip| ip.as_str().is_some_and(|s| s.parse::<IpAddr>().is_ok()))
    });
    let domain = string(&c, "/clusterDomain").unwrap_or_default();
    if !dns_ok || domain.is_empty() {
        return Err(bad(
            "clusterDNS (IP addresses) and clusterDomain are required".into(),
        ));
    }
    ok(format!(
        "config.yaml clusterDNS={} clusterDomain={domain}",
        c["clusterDNS"]
    ));

    let address = string(&c, "/healthzBindAddress").unwrap_or("127.0.0.1");
    let port = c
        .get("healthzPort")
        .and_then(Value::as_u64)
        .unwrap_or(10248);
    let healthz = format!("{address}:{port}")
        .parse::<SocketAddr>()
        .ok()
        .filter(|_| port > 0 && port <= u64::from(u16::MAX))
        .ok_or_else(|| bad(format!("healthz address {address}:{port} is not usable")))?;
    Ok(Config {
        static_pod_path,
        healthz,
        runtime_socket: socket.to_owned(),
        hostname: String::new(),
        control_plane: false,
    })
}

/// The kubelet's kubeconfig if it exists (a control plane's, or a worker's after TLS
/// bootstrapping), else the bootstrap kubeconfig.
fn check_kubeconfigs(flags: &Flags, ok: &mut dyn FnMut(String)) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let user = format!("system:node:{}", flags.hostname);
    if flags.kubeconfig.exists() {
        let k = pki::Kubeconfig::load(&flags.kubeconfig)?;
        let cert = k.client_certificate(now, Some(&user))?;
        ok(format!(
            "--kubeconfig {}: server {}, CA {}, client certificate CN={} O={} issued by the CA",
            flags.kubeconfig.display(),
            k.server,
            k.ca.common_name(),
            cert.common_name(),
            cert.organizations.join("+"),
        ));
    }
    match &flags.bootstrap {
        Some(path) if path.exists() => {
            let k = pki::Kubeconfig::load(path)?;
            let how = k.bootstrap_credential(now)?;
            ok(format!(
                "--bootstrap-kubeconfig {}: server {}, CA {}, {how}",
                path.display(),
                k.server,
                k.ca.common_name()
            ));
        }
        Some(path) if !flags.kubeconfig.exists() => {
            return Err(format!(
                "neither --kubeconfig {} nor --bootstrap-kubeconfig {} exists",
                flags.kubeconfig.display(),
                path.display()
            ));
        }
        Some(_) => {}
        None if !flags.kubeconfig.exists() => {
            return Err(format!(
                "--kubeconfig {} does not exist and there is no --bootstrap-kubeconfig",
                flags.kubeconfig.display()
            ));
        }
        None => {}
    }
    Ok(())
}

fn check_static_pods(dir: &Path, ok: &mut dyn FnMut(String)) -> Result<(), String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("staticPodPath {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    names.sort();
    for path in names {
        let pod = read_json(&path, "static pod")?;
        let bad = |why: &str| format!("static pod {}: {why}", path.display());
        if pod["apiVersion"] != "v1" || pod["kind"] != "Pod" {
            return Err(bad("not apiVersion v1, kind Pod"));
        }
        let name = string(&pod, "/metadata/name").ok_or_else(|| bad("no metadata.name"))?;
        let containers = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad("no spec.containers"))?;
        let mut images = Vec::new();
        for c in containers {
            match (string(c, "/name"), string(c, "/image")) {
                (Some(n), Some(i)) if !n.is_empty() && !i.is_empty() => images.push(i),
                _ => return Err(bad("a container without a name or an image")),
            }
        }
        ok(format!(
            "static pod {name} ({}) {}",
            file_name(&path),
            images.join(" ")
        ));
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// `GET /healthz` answers 200 `ok`; anything else 404. One connection at a time: the only
/// client is the init's health check.
fn serve(listener: &TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let healthz = keel_http::read_request_head(&mut stream)
            .is_ok_and(|(head, _)| head.method == "GET" && head.path() == "/healthz");
        let (status, body) = if healthz {
            (200, "ok")
        } else {
            (404, "not found: the fake serves /healthz only\n")
        };
        let response = keel_http::Response::new(
            status,
            keel_http::reason(status),
            "text/plain; charset=utf-8",
            body.as_bytes().to_vec(),
        );
        let _ = response.write_to(&mut stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_both_forms() {
        let f = parse_flags(&args(&[
            "--config=/c",
            "--kubeconfig",
            "/k",
            "--node-ip=10.0.0.5",
            "--hostname-override=cp-1",
            "--cert-dir=/d",
        ]))
        .unwrap();
        assert_eq!(f.kubeconfig, Path::new("/k"));
        assert_eq!(f.node_ip.to_string(), "10.0.0.5");
        assert_eq!(f.bootstrap, None);
    }

    #[test]
    fn bad_flags() {
        let base = [
            "--config=/c",
            "--kubeconfig=/k",
            "--node-ip=10.0.0.5",
            "--hostname-override=cp-1",
            "--cert-dir=/d",
        ];
        let with = |extra: &str| {
            let mut a = args(&base);
            a.push(extra.to_owned());
            parse_flags(&a).err().unwrap_or_default()
        };
        assert!(with("--fail-swap-on=false").contains("unknown flag --fail-swap-on"));
        assert!(with("--config=/x").contains("given twice"));
        assert!(with("positional").contains("flags only"));
        assert!(with("--node-labels").contains("needs a value"));
        assert!(with("--x").contains("unknown flag --x"));
        let err = parse_flags(&args(&base[1..])).err().unwrap();
        assert_eq!(err, "--config is required");
    }

    #[test]
    fn labels_and_taints() {
        check_labels("a=b,example.com/x=,node.kubernetes.io/pool=gpu").unwrap();
        assert!(check_labels("node-role.kubernetes.io/control-plane=").is_err());
        assert!(check_labels("a").is_err());
        assert!(check_labels("a=b c").is_err());
        check_taints("a=b:NoSchedule,node-role.kubernetes.io/control-plane:NoSchedule").unwrap();
        assert!(check_taints("a=b").is_err());
        assert!(check_taints("a=b:Never").is_err());
    }

    #[test]
    fn node_ips() {
        for bad in [
            "127.0.0.1",
            "0.0.0.0",
            "169.254.0.1",
            "fe80::1",
            "224.0.0.1",
            "::1",
        ] {
            assert!(check_node_ip(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
