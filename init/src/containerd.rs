//! containerd on the node: its generated configuration, importing the images baked into the
//! root, and the commands that run system containers.

use std::path::{Path, PathBuf};

use keel_contract::profile::SystemContainer;

pub const CONFIG: &str = "/etc/containerd/config.toml";
pub const SOCKET: &str = "/run/containerd/containerd.sock";
pub const BAKED_IMAGES: &str = keel_contract::layout::root::BAKED_IMAGES_DIR;
/// containerd namespace for Keel's system containers (kubelet-managed pods use `k8s.io`).
pub const NAMESPACE: &str = "keel";
/// containerd namespace of the CRI plugin: the images pods can use, the pause image.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Per-registry configuration (`<host>/hosts.toml`: mirrors, CAs, plain HTTP), as containerd
/// documents it; a profile bakes files there with `image.files`.
pub const REGISTRY_CONFIG_DIR: &str = "/etc/containerd/certs.d";

/// Plugins a Keel node cannot use, off so that containerd does not try them at every start:
/// `opt` (/opt belongs to CNI DaemonSets); the aufs, btrfs, zfs and devmapper snapshotters
/// (`/var` is ext4 and the CRI plugin uses overlayfs; aufs alone ran `modprobe aufs`, 0.2 s
/// of a 1 s start under TCG, measured from containerd's own log). The v1 runtime stays on
/// although nothing uses it: containerd 1.6's tasks service, and so the CRI plugin, will not
/// load without it.
pub const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
];

/// containerd 1.6 configuration (version 2): state on /var and /run, cgroupfs (no systemd),
/// the CRI plugin on with the pause image the node makes and the CNI directories on /var, and
/// the [`DISABLED_PLUGINS`] off.
pub fn config() -> String {
    let disabled: Vec<String> = DISABLED_PLUGINS.iter().map(|p| format!("{p:?}")).collect();
    format!(
        r#"version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = [{disabled}]

[grpc]
  address = "/run/containerd/containerd.sock"

# Warnings and errors only: the console is a slow serial line on many machines.
[debug]
  level = "warn"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{registries}"
"#,
        sandbox = crate::pause_image::NAME,
        bin_dir = crate::cni::BIN_DIR,
        conf_dir = crate::cni::CONF_DIR,
        registries = REGISTRY_CONFIG_DIR,
        disabled = disabled.join(", "),
    )
}

pub fn write_config() -> std::io::Result<()> {
    std::fs::create_dir_all("/etc/containerd")?;
    std::fs::write(CONFIG, config())
}

/// containerd's executable.
pub const BINARY: &str = "/usr/bin/containerd";

/// Reads containerd's executable once on a thread of its own, so that its pages are in the
/// page cache (decompressed from the squashfs and checked by dm-verity) before containerd
/// starts, instead of page by page as it runs: with one vCPU this fills the time the main
/// thread waits on the disk and the network. Errors only cost the head start. BENCHMARKS.md
/// ("containerd's executable read ahead") has what it saves.
pub fn prefetch() {
    let _ = std::thread::Builder::new()
        .name("prefetch".into())
        .spawn(|| {
            crate::timeline::BOOT.step("prefetch", || {
                if let Ok(mut file) = std::fs::File::open(BINARY) {
                    let _ = std::io::copy(&mut file, &mut std::io::sink());
                }
            })
        });
}

/// The daemon's command line.
pub fn daemon_argv() -> Vec<String> {
    vec![BINARY.into(), "--config".into(), CONFIG.into()]
}

/// The oci-archives the builder baked into the root, sorted.
pub fn baked_archives(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "tar"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// `ctr images import` of an oci-archive into `namespace`.
pub fn import_argv(namespace: &str, archive: &Path) -> Vec<String> {
    vec![
        "/usr/bin/ctr".into(),
        "--address".into(),
        SOCKET.into(),
        "-n".into(),
        namespace.into(),
        "images".into(),
        "import".into(),
        "--platform".into(),
        "linux/amd64".into(),
        archive.display().to_string(),
    ]
}

/// Removes a container left from an earlier boot (its metadata lives on /var); failures
/// are expected when there is none.
pub fn remove_stale_argv(name: &str) -> Vec<String> {
    vec![
        "/usr/bin/ctr".into(),
        "--address".into(),
        SOCKET.into(),
        "-n".into(),
        NAMESPACE.into(),
        "containers".into(),
        "rm".into(),
        name.into(),
    ]
}

/// The entrypoint of a baked image, from the config the builder put beside its archive.
pub fn baked_entrypoint(dir: &Path, image: &str) -> Vec<String> {
    let Ok(bytes) = std::fs::read(dir.join(format!("{image}.config.json"))) else {
        return Vec::new();
    };
    let Ok(config) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    config
        .pointer("/config/Entrypoint")
        .and_then(|e| e.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `ctr run` in the foreground: the container's output is ctr's output, so the supervisor
/// captures it like any service's; SIGTERM to ctr is passed to the task. A command given to
/// `ctr run` replaces the image's whole command line, so with `args` the image's entrypoint
/// goes in front of them (as Kubernetes' `args` keep the entrypoint).
pub fn run_argv(c: &SystemContainer, entrypoint: &[String]) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "/usr/bin/ctr".into(),
        "--address".into(),
        SOCKET.into(),
        "-n".into(),
        NAMESPACE.into(),
        "run".into(),
        "--rm".into(),
        "--net-host".into(),
        c.image_ref(),
        c.name.to_string(),
    ];
    if !c.args.is_empty() {
        argv.extend(entrypoint.iter().cloned());
        argv.extend(c.args.iter().cloned());
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_contract::profile::RestartPolicy;

    #[test]
    fn config_parses_as_toml_with_the_unusable_plugins_disabled() {
        let value: toml::Table = toml::from_str(&config()).unwrap();
        assert_eq!(value["version"].as_integer(), Some(2));
        let disabled: Vec<&str> = value["disabled_plugins"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.as_str())
            .collect();
        assert_eq!(disabled, DISABLED_PLUGINS);
        assert!(disabled.contains(&"io.containerd.internal.v1.opt"));
        assert!(disabled.contains(&"io.containerd.snapshotter.v1.aufs"));
        // The CRI plugin's snapshotter and runtime stay on.
        assert!(
            !disabled
                .iter()
                .any(|p| p.ends_with(".overlayfs") || p.contains(".runtime."))
        );
        assert_eq!(value["root"].as_str(), Some("/var/lib/containerd"));
        let cri = &value["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(
            cri["sandbox_image"].as_str(),
            Some(crate::pause_image::NAME)
        );
        assert_eq!(cri["cni"]["bin_dir"].as_str(), Some("/opt/cni/bin"));
        assert_eq!(cri["cni"]["conf_dir"].as_str(), Some("/etc/cni/net.d"));
        assert_eq!(
            cri["registry"]["config_path"].as_str(),
            Some(REGISTRY_CONFIG_DIR)
        );
    }

    #[test]
    fn run_command_keeps_the_entrypoint_before_args() {
        let c = SystemContainer {
            name: "marker".parse().unwrap(),
            image: "marker".into(),
            args: vec!["hello".into()],
            restart: RestartPolicy::Always,
        };
        let argv = run_argv(&c, &["/marker".into()]);
        let tail: Vec<&str> = argv
            .iter()
            .rev()
            .take(4)
            .rev()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            ["keel.local/marker:latest", "marker", "/marker", "hello"]
        );
        let no_args = SystemContainer { args: vec![], ..c };
        assert_eq!(
            run_argv(&no_args, &["/marker".into()])
                .last()
                .map(String::as_str),
            Some("marker")
        );
    }

    #[test]
    fn entrypoint_comes_from_the_baked_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.config.json"),
            r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/marker","-v"]}}"#,
        )
        .unwrap();
        assert_eq!(baked_entrypoint(dir.path(), "m"), ["/marker", "-v"]);
        assert!(baked_entrypoint(dir.path(), "missing").is_empty());
    }
}
