use std::path::Path;

use super::*;

const GOOD: &str = r#"
[image]
name = "keel-test"
version = "1.2.3"
slot_size = "512MiB"

[[image.userland]]
debian = { suite = "bookworm", packages = ["containerd"] }

[node]
role = "worker"
hostname = "worker-1"
"#;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn load_err(text: &str) -> (String, Vec<Diagnostic>) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "p.toml", text);
    let err = LoadedProfile::load(&path).unwrap_err();
    let diags = err.diagnostics().to_vec();
    (
        err.to_string()
            .replace(&dir.path().display().to_string(), "DIR"),
        diags,
    )
}

#[test]
fn good_profile_loads_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let p = LoadedProfile::load(&write(dir.path(), "p.toml", GOOD))
        .unwrap()
        .profile;
    assert_eq!(p.image.name.as_str(), "keel-test");
    assert_eq!(p.image.version, Some(semver::Version::new(1, 2, 3)));
    assert_eq!(p.image.slot_size, ByteSize::mib(512));
    assert_eq!(p.image.esp_size, ByteSize::mib(256));
    assert_eq!(p.image.formats, vec![OutputFormat::Raw]);
    assert_eq!(p.image.kernel, KernelSpec::Auto);
    assert_eq!(p.node.role, Role::Worker);
    assert_eq!(p.node.network.mode, NetworkMode::Dhcp);
}

/// Each broken profile, the line:column the error must point at, and words the message must
/// contain (the field and what was expected).
#[test]
fn broken_profiles_are_reported_with_file_line_column_field_and_expectation() {
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "unknown top-level key",
            "[imgae]\nname = \"x\"\n",
            "DIR/p.toml:1:2",
            &["unknown field `imgae`", "expected"],
        ),
        (
            "unknown image key",
            "[image]\nnmae = \"x\"\n",
            "DIR/p.toml:2:1",
            &["unknown field `nmae`", "`name`"],
        ),
        (
            "bad semver",
            "[image]\nversion = \"1.0\"\n",
            "DIR/p.toml:2:11",
            &["`image.version`", "semantic version"],
        ),
        (
            "wrong type",
            "[image]\nslot_size = true\n",
            "DIR/p.toml:2:13",
            &["`image.slot_size`", "512MiB"],
        ),
        (
            "bad size unit",
            "[image]\nslot_size = \"1GB\"\n",
            "DIR/p.toml:2:13",
            &["`image.slot_size`", "binary unit"],
        ),
        (
            "size too small",
            "[image]\nversion = \"1.0.0\"\nslot_size = \"16MiB\"\n[[image.userland]]\ndebian = { suite = \"bookworm\", packages = [\"a1\"] }\n",
            "DIR/p.toml:3:13",
            &["`image.slot_size`", "at least 64MiB"],
        ),
        (
            "bad role",
            "[node]\nrole = \"master\"\n",
            "DIR/p.toml:2:8",
            &["`node.role`", "controlplane", "worker"],
        ),
        (
            "bad hostname",
            "[node]\nhostname = \"bad_host\"\n",
            "DIR/p.toml:2:12",
            &["`node.hostname`", "labels"],
        ),
        (
            "static without addresses",
            "[node.network]\nmode = \"static\"\n",
            "DIR/p.toml:1:7",
            &["`node.network.addresses`", "at least one address"],
        ),
        (
            "bad cidr",
            "[node.network]\nmode = \"static\"\naddresses = [\"10.0.0.2\"]\n",
            "DIR/p.toml:3:14",
            &["`node.network.addresses[0]`", "prefix length"],
        ),
        (
            "link without addresses",
            "[node.network]\ninterface = \"eth0\"\n[[node.network.links]]\ninterface = \"eth1\"\naddresses = []\n",
            "DIR/p.toml:5:1",
            &["`node.network.links[0].addresses`", "at least one address"],
        ),
        (
            "link on the main interface",
            "[node.network]\ninterface = \"eth0\"\n[[node.network.links]]\ninterface = \"eth0\"\naddresses = [\"10.5.0.11/24\"]\n",
            "DIR/p.toml:4:13",
            &["`node.network.links[0].interface`", "already configured"],
        ),
        (
            "virtual IP on a worker",
            "[node]\nrole = \"worker\"\n[[node.network.links]]\ninterface = \"eth1\"\naddresses = [\"10.5.0.101/24\"]\nvip = \"10.5.0.10\"\n",
            "DIR/p.toml:6:7",
            &["`node.network.links[0].vip`", "only control planes"],
        ),
        (
            "virtual IP outside the link's subnet",
            "[node]\nrole = \"controlplane\"\n[[node.network.links]]\ninterface = \"eth1\"\naddresses = [\"10.5.0.11/24\"]\nvip = \"10.6.0.10\"\n",
            "DIR/p.toml:6:7",
            &[
                "`node.network.links[0].vip`",
                "outside 10.5.0.11/24's subnet",
            ],
        ),
        (
            "dhcp with gateway",
            "[node.network]\ngateway = \"10.0.0.1\"\n",
            "DIR/p.toml:2:11",
            &["`node.network.gateway`", "static"],
        ),
        (
            "pod network outside the cluster's pods",
            "[node.pod_network]\nmode = \"bridge\"\npod_cidr = \"10.9.0.0/24\"\n",
            "DIR/p.toml:3:12",
            &[
                "`node.pod_network.pod_cidr`",
                "not inside node.kubernetes.pod_cidr",
            ],
        ),
        (
            "pod network mode",
            "[node.pod_network]\nmode = \"flannel\"\n",
            "DIR/p.toml:2:8",
            &["`node.pod_network.mode`", "`bridge`"],
        ),
        (
            "bad endpoint",
            "[node.cluster]\nendpoint = \"http://x:6443\"\n",
            "DIR/p.toml:2:12",
            &["`node.cluster.endpoint`", "https"],
        ),
        (
            "unknown userland kind",
            "[[image.userland]]\ndocker = { image = \"x\" }\n",
            "DIR/p.toml:2:1",
            &["unknown variant `docker`", "`debian`", "`oci`"],
        ),
        (
            "oci with both",
            "[[image.userland]]\noci = { layout = \"a\", archive = \"b\" }\n",
            "DIR/p.toml:2:1",
            &["`image.userland[0].oci`", "exactly one"],
        ),
        (
            "empty packages",
            "[[image.userland]]\ndebian = { suite = \"bookworm\", packages = [] }\n",
            "DIR/p.toml:2:32",
            &["`image.userland[0].debian.packages`", "at least one"],
        ),
        (
            "bad package name",
            "[[image.userland]]\ndebian = { suite = \"bookworm\", packages = [\"ok\", \"Bad Name\"] }\n",
            "DIR/p.toml:2:50",
            &[
                "`image.userland[0].debian.packages[1]`",
                "Debian package name",
            ],
        ),
        (
            "reserved cmdline",
            "[image]\ncmdline = [\"quiet\", \"keel.slot=b\"]\n",
            "DIR/p.toml:2:21",
            &["`image.cmdline[1]`", "set by Keel"],
        ),
        (
            "duplicate format",
            "[image]\nformats = [\"raw\", \"qcow2\", \"raw\"]\n",
            "DIR/p.toml:2:28",
            &["`image.formats[2]`", "twice"],
        ),
        (
            "unknown format",
            "[image]\nformats = [\"vmdk\"]\n",
            "DIR/p.toml:2:12",
            &["unknown variant `vmdk`", "`qcow2`"],
        ),
        (
            "bad kernel",
            "[image]\nkernel = \"newest\"\n",
            "DIR/p.toml:2:10",
            &["`image.kernel`", "auto"],
        ),
        (
            "relative dst",
            "[[image.files]]\nsrc = \"a\"\ndst = \"etc/motd\"\n",
            "DIR/p.toml:3:7",
            &["`image.files[0].dst`", "absolute"],
        ),
        (
            "bad mode",
            "[[image.files]]\nsrc = \"a\"\ndst = \"/a\"\nmode = \"rw\"\n",
            "DIR/p.toml:4:8",
            &["`image.files[0].mode`", "octal"],
        ),
        (
            "level out of range",
            "[image.squashfs]\nlevel = 30\n",
            "DIR/p.toml:2:9",
            &["`image.squashfs.level`", "1 to 22"],
        ),
        (
            "block size",
            "[image.squashfs]\nblock_size = \"100KiB\"\n",
            "DIR/p.toml:2:14",
            &["`image.squashfs.block_size`", "power of two"],
        ),
        (
            "toml syntax",
            "[image\nname = 1\n",
            "DIR/p.toml:1:7",
            &["unclosed table", "expected `]`"],
        ),
        (
            "container image both",
            "[[image.container_images]]\nname = \"x\"\nlayout = \"a\"\narchive = \"b\"\n",
            "DIR/p.toml:1:1",
            &["`image.container_images[0]`", "exactly one"],
        ),
        (
            "container unknown image",
            "[[node.containers]]\nname = \"web\"\nimage = \"nginx\"\n",
            "DIR/p.toml:3:9",
            &[
                "`node.containers[0].image`",
                "not one of image.container_images",
            ],
        ),
        (
            "container bad restart",
            "[[node.containers]]\nname = \"web\"\nimage = \"a/b:c\"\nrestart = \"sometimes\"\n",
            "DIR/p.toml:4:11",
            &["unknown variant `sometimes`", "`on-failure`"],
        ),
        (
            "taint (issue 12)",
            "[node.kubernetes]\ntaints = [\"this is not a taint\"]\n",
            "DIR/p.toml:2:11",
            &[
                "`node.kubernetes.taints[0]`",
                "invalid taint",
                "key=value:Effect",
            ],
        ),
        (
            "label key (issue 12)",
            "[node.kubernetes]\nlabels = { \"bad key!!\" = \"x\" }\n",
            "DIR/p.toml:2:12",
            &["`node.kubernetes.labels", "\"bad key!!\"", "invalid"],
        ),
        (
            "label the kubelet may not set",
            "[node.kubernetes]\nlabels = { \"node-role.kubernetes.io/worker\" = \"\" }\n",
            "DIR/p.toml:2:12",
            &["`node.kubernetes.labels", "may not set"],
        ),
        (
            "label value",
            "[node.kubernetes]\nlabels = { zone = \"a b\" }\n",
            "DIR/p.toml:2:19",
            &["`node.kubernetes.labels.zone`", "label value"],
        ),
        (
            "kubernetes version (issue 12)",
            "[node.kubernetes]\nversion = \"one.two\"\n",
            "DIR/p.toml:2:11",
            &["`node.kubernetes.version`", "Kubernetes version", "1.31.4"],
        ),
        (
            "peer URL (issue 12)",
            "[node.etcd]\nmembers = [{ name = \"cp1\", peer_url = \"not a url\" }]\n",
            "DIR/p.toml:2:39",
            &[
                "`node.etcd.members[0].peer_url`",
                "peer URL",
                "https://HOST:2380",
            ],
        ),
        (
            "etcd member name",
            "[node.etcd]\nmembers = [{ name = \"CP_1\", peer_url = \"https://a:2380\" }]\n",
            "DIR/p.toml:2:21",
            &["`node.etcd.members[0].name`", "DNS name"],
        ),
        (
            "etcd member twice",
            "[node.etcd]\nmembers = [{ name = \"a\", peer_url = \"https://a:2380\" }, { name = \"a\", peer_url = \"https://b:2380\" }]\n",
            "DIR/p.toml:2:66",
            &["`node.etcd.members[1].name`", "twice"],
        ),
        (
            "etcd join without members",
            "[node]\nrole = \"controlplane\"\n[node.etcd]\njoin = true\n",
            "DIR/p.toml:4:8",
            &["`node.etcd.join`", "running members"],
        ),
        (
            "cluster name",
            "[node.cluster]\nname = \"Prod_1\"\n",
            "DIR/p.toml:2:8",
            &["`node.cluster.name`", "lower-case"],
        ),
        (
            "cluster domain",
            "[node.kubernetes]\ncluster_domain = \"cluster..local\"\n",
            "DIR/p.toml:2:18",
            &["`node.kubernetes.cluster_domain`", "DNS name"],
        ),
        (
            "extra SAN",
            "[node.kubernetes]\nextra_sans = [\"ok.example\", \"not ok\"]\n",
            "DIR/p.toml:2:29",
            &[
                "`node.kubernetes.extra_sans[1]`",
                "IP address or a DNS name",
            ],
        ),
        (
            "image repository",
            "[node.kubernetes]\nimage_repository = \"Registry.example/K8s\"\n",
            "DIR/p.toml:2:20",
            &["`node.kubernetes.image_repository`", "registry"],
        ),
        (
            "container name",
            "[[node.containers]]\nname = \"Web_1\"\nimage = \"a/b:c\"\n",
            "DIR/p.toml:2:8",
            &["`node.containers[0].name`", "starting with a letter"],
        ),
        (
            "interface",
            "[node.network]\ninterface = \"eth 0\"\n",
            "DIR/p.toml:2:13",
            &["`node.network.interface`", "interface name"],
        ),
        (
            "image name",
            "[image]\nname = \"keel-\"\n",
            "DIR/p.toml:2:8",
            &["`image.name`", "invalid image name"],
        ),
        (
            "missing base",
            "extends = \"nope.toml\"\n",
            "DIR/p.toml:1:11",
            &["`extends`", "does not exist"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, text, at, words) in cases {
        let (msg, diags) = load_err(text);
        assert!(!diags.is_empty(), "{what}: no diagnostics: {msg}");
        let ok = msg.starts_with(&format!("{at}:")) && words.iter().all(|w| msg.contains(w));
        if !ok {
            failures.push(format!(
                "{what}: expected at {at} with {words:?}, got: {msg}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The profile of issue 12: every value here passed `keel profile check` and then failed the
/// node at boot. Now each is reported with its file, line and column (TOML parsing stops at
/// the first bad value, so they are fixed one at a time until the profile loads).
#[test]
fn the_issue_12_profile_fails_at_check_time() {
    let mut text = ISSUE_12.to_owned();
    let mut bad: Vec<(&str, &str, &str)> = vec![
        (
            "DIR/p.toml:2:11: `node.kubernetes.taints[0]`",
            "this is not a taint",
            "a=b:NoSchedule",
        ),
        (
            "DIR/p.toml:3:12: `node.kubernetes.labels",
            "bad key!!",
            "tier",
        ),
        (
            "DIR/p.toml:4:11: `node.kubernetes.version`",
            "one.two",
            "1.31.4",
        ),
        (
            "DIR/p.toml:6:39: `node.etcd.members[0].peer_url`",
            "not a url",
            "https://cp1:2380",
        ),
    ];
    while !bad.is_empty() {
        let (msg, diags) = load_err(&text);
        assert_eq!(diags.len(), 1, "{msg}");
        let i = bad
            .iter()
            .position(|(at, _, _)| msg.starts_with(at))
            .unwrap_or_else(|| panic!("unexpected: {msg}"));
        let (_, wrong, right) = bad.remove(i);
        text = text.replace(wrong, right);
    }
    let dir = tempfile::tempdir().unwrap();
    LoadedProfile::load(&write(dir.path(), "p.toml", &text)).unwrap();
}

/// As issue 12 shows it, in the sections the fields belong to.
pub(crate) const ISSUE_12: &str = "[node.kubernetes]\ntaints = [\"this is not a taint\"]\nlabels = { \"bad key!!\" = \"x\" }\nversion = \"one.two\"\n[node.etcd]\nmembers = [{ name = \"cp1\", peer_url = \"not a url\" }]\n";

#[test]
fn typed_node_values_round_trip_unchanged() {
    // The baked profile is the node section serialised: typed values must write back what
    // the canonical input said, so that images stay byte for byte the same.
    let text = "[node]\nrole = \"controlplane\"\n[node.network]\ninterface = \"eth0\"\n[node.cluster]\nname = \"prod\"\n[node.kubernetes]\nversion = \"1.31.4\"\nimage_repository = \"registry.example:5000/k8s\"\ncluster_domain = \"cluster.local\"\nlabels = { \"example.com/tier\" = \"edge\", zone = \"\" }\ntaints = [\"dedicated=infra:NoSchedule\", \"spot:PreferNoSchedule\"]\nextra_sans = [\"cp.example.com\", \"10.0.0.1\", \"*.example.org\"]\n[node.etcd]\nmembers = [{ name = \"cp-1\", peer_url = \"https://10.0.0.1:2380\" }]\n";
    let node = LoadedProfile::from_text(Path::new("p.toml"), text)
        .unwrap()
        .profile
        .node;
    let written = toml::to_string(&node).unwrap();
    for want in [
        "version = \"1.31.4\"",
        "image_repository = \"registry.example:5000/k8s\"",
        "\"example.com/tier\" = \"edge\"",
        "\"dedicated=infra:NoSchedule\"",
        "\"*.example.org\"",
        "peer_url = \"https://10.0.0.1:2380\"",
        "interface = \"eth0\"",
        "name = \"prod\"",
    ] {
        assert!(written.contains(want), "{want} in\n{written}");
    }
    let defaults = toml::to_string(&Node::default()).unwrap();
    for want in [
        "version = \"1.31.4\"",
        "image_repository = \"registry.k8s.io\"",
        "cluster_domain = \"cluster.local\"",
    ] {
        assert!(defaults.contains(want), "{want} in\n{defaults}");
    }
}

#[test]
fn extends_merges_tables_and_reports_errors_in_the_file_that_sets_the_field() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "base.toml",
        "[image]\nslot_size = \"256MiB\"\nsigning_key = \"keys/keel.key\"\ncmdline = [\"quiet\"]\n\n[[image.userland]]\ndebian = { suite = \"bookworm\", packages = [\"a1\"] }\n\n[node.network]\nmode = \"dhcp\"\n",
    );
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let leaf = write(
        &dir.path().join("sub"),
        "worker.toml",
        "extends = \"../base.toml\"\n[image]\nversion = \"2.0.0\"\ncmdline = [\"console=ttyS0\"]\n[node]\nrole = \"worker\"\n",
    );
    let loaded = LoadedProfile::load(&leaf).unwrap();
    let p = &loaded.profile;
    assert_eq!(p.image.slot_size, ByteSize::mib(256), "inherited");
    assert_eq!(p.image.version, Some(semver::Version::new(2, 0, 0)), "own");
    assert_eq!(
        p.image.cmdline,
        vec!["console=ttyS0".to_string()],
        "arrays replace"
    );
    assert_eq!(p.image.userland.len(), 1);
    // Paths are relative to the file that sets them.
    assert_eq!(
        p.image.signing_key.as_deref(),
        Some(dir.path().join("keys/keel.key").as_path())
    );
    assert_eq!(loaded.layers.len(), 2);

    // An invalid value inherited from the base is reported in the base.
    write(dir.path(), "base.toml", "[image]\nslot_size = \"16MiB\"\n");
    let err = LoadedProfile::load(&leaf).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}:2:13:", dir.path().join("base.toml").display())),
        "{err}"
    );
}

#[test]
fn extends_cycle_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.toml", "extends = \"b.toml\"\n");
    write(dir.path(), "b.toml", "extends = \"a.toml\"\n");
    let err = LoadedProfile::load(&dir.path().join("a.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cycle"), "{err}");
    assert!(err.contains("b.toml:1:11"), "{err}");
}

#[test]
fn digest_depends_on_content_not_location() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let pa = LoadedProfile::load(&write(a.path(), "p.toml", GOOD)).unwrap();
    let pb = LoadedProfile::load(&write(b.path(), "p.toml", GOOD)).unwrap();
    assert_eq!(pa.digest(), pb.digest());
    let pc =
        LoadedProfile::load(&write(b.path(), "p.toml", &GOOD.replace("1.2.3", "1.2.4"))).unwrap();
    assert_ne!(pa.digest(), pc.digest());
}

#[test]
fn node_section_round_trips_through_toml() {
    let dir = tempfile::tempdir().unwrap();
    let p = LoadedProfile::load(&write(dir.path(), "p.toml", GOOD))
        .unwrap()
        .profile;
    let text = toml::to_string(&p).unwrap();
    let again = LoadedProfile::from_text(Path::new("baked"), &text)
        .unwrap()
        .profile;
    assert_eq!(p, again);
}

/// Issue 11: the configuration's generation is typed (a non-negative integer, default 0).
#[test]
fn config_generation_is_a_non_negative_integer() {
    let p = LoadedProfile::from_text(Path::new("p.toml"), "[node]\nconfig_generation = 7\n")
        .unwrap()
        .profile;
    assert_eq!(p.node.config_generation, 7);
    assert_eq!(Node::default().config_generation, 0);
    for bad in ["-1", "\"7\"", "1.5"] {
        let (text, _) = load_err(&format!("[node]\nconfig_generation = {bad}\n"));
        assert!(text.contains("config_generation"), "{bad}: {text}");
    }
}

#[test]
fn the_bootstrap_token_ttl_defaults_to_24_hours() {
    assert_eq!(Node::default().kubernetes.bootstrap_token_ttl_hours, 24);
    let p = LoadedProfile::from_text(
        Path::new("p.toml"),
        "[node.kubernetes]\nbootstrap_token_ttl_hours = 0\n",
    )
    .unwrap()
    .profile;
    assert_eq!(p.node.kubernetes.bootstrap_token_ttl_hours, 0);
    for bad in ["-1", "\"24h\"", "1.5"] {
        let (text, _) = load_err(&format!(
            "[node.kubernetes]\nbootstrap_token_ttl_hours = {bad}\n"
        ));
        assert!(text.contains("bootstrap_token_ttl_hours"), "{bad}: {text}");
    }
}

/// Issue 13: `[node.watchdog]` defaults to on with 60 s; its timeout and device are typed.
#[test]
fn the_watchdog_section_is_typed() {
    let w = Node::default().watchdog;
    assert!(w.enabled);
    assert_eq!((w.timeout_secs.secs(), w.device), (60, None));
    let p = LoadedProfile::from_text(
        Path::new("p.toml"),
        "[node.watchdog]\ntimeout_secs = 10\ndevice = \"watchdog1\"\n",
    )
    .unwrap()
    .profile;
    assert_eq!(p.node.watchdog.timeout_secs.secs(), 10);
    assert_eq!(
        p.node.watchdog.device.as_ref().map(|d| d.as_str()),
        Some("watchdog1")
    );
    for (bad, expected) in [
        ("timeout_secs = 5", "expected 10 to 600 seconds"),
        ("timeout_secs = 601", "expected 10 to 600 seconds"),
        ("device = \"/dev/watchdog\"", "not a watchdog device"),
        ("device = \"watchdog\"", "not a watchdog device"),
        ("enable = true", "enable"),
    ] {
        let (text, _) = load_err(&format!("[node.watchdog]\n{bad}\n"));
        assert!(text.contains(expected), "{bad}: {text}");
        assert!(text.contains(":2:"), "{bad}: line and column: {text}");
    }
}
