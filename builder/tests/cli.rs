//! The `keel` binary as users run it: help, completions, profile checking, keys, signing and
//! verifying (with the real minisign as the peer), and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn keel(args: &[&str]) -> Output {
    keel_env(args, &[])
}

fn keel_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("KEEL_KEY_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn minisign(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("minisign")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("minisign is installed (see .ci/run)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn help_and_completions() {
    let out = keel(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "build",
        "profile",
        "key",
        "secrets",
        "sign",
        "verify",
        "inspect",
        "run",
        "completions",
    ] {
        assert!(text.contains(cmd), "{cmd} missing from --help:\n{text}");
    }
    let out = keel(&["build", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("--output"));
    let out = keel(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("complete -F"),
        "bash completion script"
    );
    let out = keel(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn profile_check_accepts_the_stock_profiles_and_locates_errors() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    for name in ["base.toml", "worker.toml", "controlplane.toml"] {
        std::fs::copy(profiles.join(name), dir.path().join(name)).unwrap();
    }
    // The stock profiles name a dev key; without it the check says so and where.
    let out = keel(&["profile", "check", p(&dir.path().join("worker.toml"))]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("base.toml:")
            && err.contains("`image.signing_key`")
            && err.contains("does not exist"),
        "{err}"
    );
    assert!(
        keel(&[
            "key",
            "gen",
            "-o",
            p(&dir.path().join("dev-keys")),
            "--unencrypted"
        ])
        .status
        .success()
    );
    for name in ["worker.toml", "controlplane.toml"] {
        let out = keel(&["profile", "check", p(&dir.path().join(name))]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    std::fs::write(dir.path().join("bad.toml"), "extends = \"worker.toml\"\n[node.network]\nmode = \"static\"\naddresses = [\"10.0.0.5\"]\n").unwrap();
    let out = keel(&["profile", "check", p(&dir.path().join("bad.toml"))]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml:4:14: `node.network.addresses[0]`: invalid address \"10.0.0.5\""),
        "{err}"
    );
}

/// Issue 12's profile printed `ok` and then failed the node at boot, rebooting it until
/// systemd-boot gave up. Now `keel profile check` refuses it with file:line:column and exit 2,
/// and so does `keel build`, before it builds anything.
#[test]
fn profile_check_refuses_the_issue_12_profile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("issue12.toml");
    std::fs::write(
        &path,
        "[image]\nversion = \"1.0.0\"\n[[image.userland]]\ndebian = { suite = \"bookworm\", packages = [\"containerd\"] }\n[node.kubernetes]\ntaints = [\"this is not a taint\"]\nlabels = { \"bad key!!\" = \"x\" }\nversion = \"one.two\"\n[node.etcd]\nmembers = [{ name = \"cp1\", peer_url = \"not a url\" }]\n",
    )
    .unwrap();
    for args in [
        vec!["profile", "check", p(&path)],
        vec!["build", p(&path), "-o", p(&dir.path().join("out"))],
    ] {
        let out = keel(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        let located = [
            "issue12.toml:6:11: `node.kubernetes.taints[0]`: invalid taint",
            "issue12.toml:7:12: `node.kubernetes.labels",
            "issue12.toml:8:11: `node.kubernetes.version`: invalid Kubernetes version",
            "issue12.toml:10:39: `node.etcd.members[0].peer_url`: invalid peer URL",
        ];
        assert!(located.iter().any(|l| err.contains(l)), "{args:?}: {err}");
        assert!(!dir.path().join("out").exists());
    }
}

/// A network boot puts image.cmdline into an iPXE script: an argument iPXE would read
/// differently from the kernel is refused, located, before anything is built.
#[test]
fn profile_check_refuses_a_cmdline_ipxe_would_misread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pxe.toml");
    std::fs::write(
        &path,
        "[image]\nversion = \"1.0.0\"\nformats = [\"raw\", \"pxe\"]\ncmdline = [\"console=ttyS0\", \"x=${y}\"]\n[[image.userland]]\ndebian = { suite = \"bookworm\", packages = [\"containerd\"] }\n",
    )
    .unwrap();
    for args in [
        vec!["profile", "check", p(&path)],
        vec!["build", p(&path), "-o", p(&dir.path().join("out"))],
    ] {
        let out = keel(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("pxe.toml:4:29: `image.cmdline[1]`: image.cmdline argument \"x=${y}\" cannot go into an iPXE script"),
            "{args:?}: {err}"
        );
        assert!(!dir.path().join("out").exists());
    }
}

#[test]
fn key_gen_writes_0600_refuses_overwrite_and_needs_a_choice_about_encryption() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("k");
    let out = keel(&["key", "gen", "-o", p(&keys)]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no tty, no passphrase, no --unencrypted"
    );
    assert!(stderr(&out).contains("--unencrypted"), "{}", stderr(&out));
    assert!(!keys.join("keel.key").exists(), "nothing half-written");
    assert!(
        keel(&["key", "gen", "-o", p(&keys), "--unencrypted"])
            .status
            .success()
    );
    let mode = std::fs::metadata(keys.join("keel.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(keys.join("keel.key")).unwrap();
    let out = keel(&["key", "gen", "-o", p(&keys), "--unencrypted"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(keys.join("keel.key")).unwrap(), before);
}

#[test]
fn sign_and_verify_interoperate_with_minisign_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    assert!(
        keel_env(
            &["key", "gen", "-o", p(&keys)],
            &[("KEEL_KEY_PASSPHRASE", "correct horse")]
        )
        .status
        .success()
    );
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, b"keel payload\n".repeat(1000)).unwrap();

    // Keel signs with its encrypted key; minisign verifies.
    let out = keel_env(
        &["sign", p(&file), "--key", p(&keys.join("keel.key"))],
        &[("KEEL_KEY_PASSPHRASE", "correct horse")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ms = minisign(&["-Vm", p(&file), "-p", p(&keys.join("keel.pub"))], "");
    assert!(
        ms.status.success(),
        "minisign rejected keel's signature: {}",
        String::from_utf8_lossy(&ms.stderr)
    );
    assert!(
        keel(&["verify", p(&file), "--pub", p(&keys.join("keel.pub"))])
            .status
            .success()
    );

    // Wrong passphrase: a distinct error, exit 2, no signature written.
    let other = dir.path().join("other.bin");
    std::fs::write(&other, b"x").unwrap();
    let out = keel_env(
        &["sign", p(&other), "--key", p(&keys.join("keel.key"))],
        &[("KEEL_KEY_PASSPHRASE", "wrong")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).to_lowercase().contains("passphrase"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("other.bin.minisig").exists());

    // minisign signs with the key keel made (it reads our encrypted format); keel verifies.
    std::fs::remove_file(dir.path().join("payload.bin.minisig")).unwrap();
    let ms = minisign(
        &[
            "-S",
            "-s",
            p(&keys.join("keel.key")),
            "-m",
            p(&file),
            "-t",
            "signed by minisign",
        ],
        "correct horse\n",
    );
    assert!(
        ms.status.success(),
        "minisign could not sign with keel's key: {}",
        String::from_utf8_lossy(&ms.stderr)
    );
    let out = keel(&["verify", p(&file), "--pub", p(&keys.join("keel.pub"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("signed by minisign"));

    // Altered file, wrong key: non-zero exit and distinct messages.
    std::fs::write(&file, b"altered").unwrap();
    let altered = keel(&["verify", p(&file), "--pub", p(&keys.join("keel.pub"))]);
    assert_eq!(altered.status.code(), Some(1));
    assert!(
        keel(&[
            "key",
            "gen",
            "-o",
            p(&dir.path().join("k2")),
            "--unencrypted"
        ])
        .status
        .success()
    );
    let wrong = keel(&[
        "verify",
        p(&file),
        "--pub",
        p(&dir.path().join("k2/keel.pub")),
    ]);
    assert_eq!(wrong.status.code(), Some(1));
    assert_ne!(stderr(&altered), stderr(&wrong));
    assert!(stderr(&wrong).contains("key"), "{}", stderr(&wrong));
    // A secret key where a public key is expected.
    let kind = keel(&["verify", p(&file), "--pub", p(&keys.join("keel.key"))]);
    assert_eq!(kind.status.code(), Some(2));
    assert!(
        stderr(&kind).to_lowercase().contains("secret"),
        "{}",
        stderr(&kind)
    );
}

/// A build killed half way leaves no OUTDIR (only a hidden partial directory, which the next
/// build clears); a build that fails cleanly leaves nothing at all.
#[test]
fn interrupted_or_failed_builds_leave_no_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    assert!(
        keel(&[
            "key",
            "gen",
            "-o",
            p(&dir.path().join("keys")),
            "--unencrypted"
        ])
        .status
        .success()
    );
    // Any static executable will do as the init for a build that never boots.
    let init = "/sbin/ldconfig";
    let out = dir.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "build",
            p(&profiles.join("worker.toml")),
            "-o",
            p(&out),
            "--key",
            p(&dir.path().join("keys/keel.key")),
            "--init",
            init,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the build is under way (its partial directory exists), then pull the plug.
    let started = std::time::Instant::now();
    while !std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(".out.partial-"))
    {
        assert!(started.elapsed().as_secs() < 60, "the build never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed build must not leave OUTDIR");

    // A build that fails (an initramfs module that does not exist) leaves nothing behind and
    // clears the killed build's leftovers.
    std::fs::write(
        dir.path().join("broken.toml"),
        format!(
            "extends = \"{}\"\n[image.initramfs]\nmodules = [\"no_such_module\"]\n",
            profiles.join("worker.toml").display()
        ),
    )
    .unwrap();
    let failed = keel(&[
        "build",
        p(&dir.path().join("broken.toml")),
        "-o",
        p(&out),
        "--key",
        p(&dir.path().join("keys/keel.key")),
        "--init",
        init,
    ]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        stderr(&failed).contains("no_such_module"),
        "{}",
        stderr(&failed)
    );
    assert!(!out.exists());
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".out."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn secrets_gen_writes_0600_refuses_overwrite_and_profiles_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.secrets.toml");
    let kubeconfig = dir.path().join("admin.kubeconfig");
    let out = keel(&[
        "secrets",
        "gen",
        "-o",
        p(&file),
        "--cluster-name",
        "prod-1",
        "--endpoint",
        "https://10.0.0.1:6443",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in [&file, &kubeconfig] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let secrets = keel_contract::secrets::Secrets::from_toml(&text).unwrap();
    assert_eq!(secrets.cluster_name, "prod-1");
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&kubeconfig).unwrap()).unwrap();
    assert_eq!(
        conf["clusters"][0]["cluster"]["server"],
        "https://10.0.0.1:6443"
    );
    assert_eq!(conf["clusters"][0]["name"], "prod-1");

    // Never overwritten, whichever of the two exists.
    let out = keel(&["secrets", "gen", "-o", p(&file)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    let other = dir.path().join("other.toml");
    let out = keel(&["secrets", "gen", "-o", p(&other)]);
    assert_eq!(out.status.code(), Some(2), "admin.kubeconfig is there");
    assert!(!other.exists());

    // Bad input: exit 2, nothing written.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    for args in [
        vec!["--cluster-name", "Prod"],
        vec!["--endpoint", "http://10.0.0.1:6443"],
    ] {
        let target = sub.join("s.toml");
        let mut all = vec!["secrets", "gen", "-o", p(&target)];
        all.extend(args.iter());
        let out = keel(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            std::fs::read_dir(&sub).unwrap().next().is_none(),
            "{args:?}"
        );
    }

    // A profile naming the secrets is checked with them: the cluster name must match.
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    for name in ["base.toml", "worker.toml"] {
        std::fs::copy(profiles.join(name), dir.path().join(name)).unwrap();
    }
    assert!(
        keel(&[
            "key",
            "gen",
            "-o",
            p(&dir.path().join("dev-keys")),
            "--unencrypted"
        ])
        .status
        .success()
    );
    let profile = dir.path().join("p.toml");
    std::fs::write(
        &profile,
        "extends = \"worker.toml\"\n[image]\nsecrets = \"cluster.secrets.toml\"\n[node.cluster]\nname = \"prod-1\"\n",
    )
    .unwrap();
    let out = keel(&["profile", "check", p(&profile)]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(
        &profile,
        "extends = \"worker.toml\"\n[image]\nsecrets = \"cluster.secrets.toml\"\n[node.cluster]\nname = \"staging\"\n",
    )
    .unwrap();
    let out = keel(&["profile", "check", p(&profile)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("`node.cluster.name`: \"staging\" differs from the cluster name \"prod-1\""),
        "{}",
        stderr(&out)
    );
    std::fs::write(
        dir.path().join("broken.toml"),
        text.replace("version = 1", "version = 9"),
    )
    .unwrap();
    std::fs::write(
        &profile,
        "extends = \"worker.toml\"\n[image]\nsecrets = \"broken.toml\"\n",
    )
    .unwrap();
    let out = keel(&["profile", "check", p(&profile)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("p.toml:3:11: `image.secrets`: ")
            && stderr(&out).contains("`version`: 9 is not supported by this Keel: expected 1"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_refuses_a_bad_boot_profile_or_secrets_before_starting_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("disk.raw"), vec![0u8; 4096]).unwrap();
    let bad = dir.path().join("node.toml");
    std::fs::write(&bad, "[node]\nrole = \"controlplane\"\nhostnme = \"cp1\"\n").unwrap();
    let o = keel(&["run", p(&out), "--profile", p(&bad)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("node.toml:3:1") && err.contains("hostnme"),
        "names file, line, column and field:\n{err}"
    );

    let o = keel(&["run", p(&out), "--secrets", p(&bad)]);
    assert_eq!(o.status.code(), Some(2), "--secrets needs --profile");
    assert!(stderr(&o).contains("--profile"), "{}", stderr(&o));

    let good = dir.path().join("cp.toml");
    std::fs::write(
        &good,
        "[node]\nrole = \"controlplane\"\nhostname = \"cp1\"\n[node.cluster]\nname = \"other\"\n",
    )
    .unwrap();
    let secrets = dir.path().join("cluster.secrets.toml");
    assert!(
        keel(&["secrets", "gen", "-o", p(&secrets)])
            .status
            .success()
    );
    let o = keel(&[
        "run",
        p(&out),
        "--profile",
        p(&good),
        "--secrets",
        p(&secrets),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("node.cluster.name")
            && stderr(&o).contains("expected the same cluster"),
        "{}",
        stderr(&o)
    );
}

/// clap's `env` feature: every variable keel reads for an option is shown in `--help`.
#[test]
fn help_names_the_environment_variables() {
    for (args, vars) in [
        (
            vec!["node", "status", "--help"],
            vec!["KEEL_ENDPOINT", "KEEL_SECRETS"],
        ),
        (
            vec!["build", "--help"],
            vec![
                "KEEL_INIT",
                "KEEL_CACHE_DIR",
                "KEEL_BLOCK_CACHE_DIR",
                "KEEL_NO_BLOCK_CACHE",
            ],
        ),
        (vec!["--help"], vec!["KEEL_CONTEXT", "KEEL_CONFIG"]),
    ] {
        let out = keel(&args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for var in vars {
            assert!(text.contains(var), "{var} missing from {args:?}:\n{text}");
        }
    }
}

/// `keel man -o DIR` writes a page per command, and groff (the independent renderer) reads
/// every one with all warnings on and complains about none.
#[test]
fn man_pages_are_written_and_render_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = keel(&["man", "-o", p(dir.path())]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in [
        "keel.1",
        "keel-build.1",
        "keel-verify.1",
        "keel-node-status.1",
        "keel-node-upgrade.1",
        "keel-context-set.1",
        "keel-man.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "{want} missing: {pages:?}");
    }
    for page in &pages {
        let rendered = Command::new("groff")
            // -cbou: plain text, no overstriking, so the words can be searched.
            .args(["-man", "-ww", "-Tutf8", "-P", "-cbou"])
            .arg(dir.path().join(page))
            .env("LC_ALL", "C")
            .output()
            .expect("groff (groff-base) is installed: vm-tests/install-host-packages");
        assert!(rendered.status.success(), "{page}: {}", stderr(&rendered));
        assert_eq!(stderr(&rendered), "", "{page}: groff warnings");
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{page}:\n{text}"
        );
    }
    let status = String::from_utf8_lossy(
        &Command::new("groff")
            .args(["-man", "-Tascii", "-P", "-cbou"])
            .arg(dir.path().join("keel-node-status.1"))
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    for want in ["--endpoint", "KEEL_ENDPOINT", "--context", "--json"] {
        assert!(status.contains(want), "{want} missing:\n{status}");
    }
}

/// `-q` silences everything but errors; `-v` and `-q` together are a usage error.
#[test]
fn quiet_and_verbose() {
    let dir = tempfile::tempdir().unwrap();
    let out = keel(&["-q", "key", "gen", "-o", p(dir.path()), "--unencrypted"]);
    assert!(out.status.success());
    assert_eq!(stderr(&out), "");
    let out = keel(&["-q", "-v", "key", "gen", "-o", p(&dir.path().join("b"))]);
    assert_eq!(out.status.code(), Some(2));
    let out = keel(&[
        "-vv",
        "key",
        "gen",
        "-o",
        p(&dir.path().join("c")),
        "--unencrypted",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("key ID"));
}

/// `keel profile check --json`: what the profile builds, or each problem with its file, line,
/// column and field, for a script to read.
#[test]
fn profile_check_json() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[image]\nversion = \"1.2.0\"\n[[image.userland]]\ndebian = { suite = \"bookworm\", packages = [\"containerd\"] }\n[node]\nrole = \"controlplane\"\n",
    )
    .unwrap();
    let out = keel(&["profile", "check", "--json", p(&good)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["version"], "1.2.0");
    assert_eq!(v["role"], "controlplane");
    assert_eq!(v["layers"].as_array().unwrap().len(), 1);

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[node.kubernetes]\nversion = \"one.two\"\n").unwrap();
    let out = keel(&["profile", "check", "--json", p(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(2), Some(11))
    );
    assert_eq!(d["field"], "node.kubernetes.version");
    assert!(d["file"].as_str().unwrap().ends_with("bad.toml"));
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("Kubernetes version")
    );
}

/// Saved contexts: `keel context set/list/show/use/delete` in the file `--config` (or
/// KEEL_CONFIG) names, and `keel node` taking its endpoint and secrets from the current
/// context when the command line gives none.
#[test]
fn contexts_give_keel_node_its_endpoint_and_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cfg/keel/config.toml");
    let env = [("KEEL_CONFIG", p(&config))];
    let k = |args: &[&str]| keel_env(args, &env);
    let secrets = dir.path().join("cluster.secrets.toml");
    assert!(k(&["secrets", "gen", "-o", p(&secrets)]).status.success());

    // Without a context or flags, keel node says what it needs.
    let out = k(&["node", "version"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("keel context set"),
        "{}",
        stderr(&out)
    );

    // Port 1 on loopback: nothing listens, so the error names the endpoint that was used.
    let out = k(&[
        "context",
        "set",
        "lab",
        "-e",
        "127.0.0.1:1",
        "--secrets",
        p(&secrets),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = k(&[
        "context",
        "set",
        "prod",
        "-e",
        "127.0.0.2:1",
        "-e",
        "10.0.0.6",
        "--secrets",
        p(&secrets),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let list = k(&["context", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("* lab") && text.contains("  prod"), "{text}");
    let show: serde_json::Value =
        serde_json::from_slice(&k(&["context", "show", "prod", "--json"]).stdout).unwrap();
    assert_eq!(show["endpoints"][1], "10.0.0.6");
    assert_eq!(show["secrets"], p(&secrets));
    assert_eq!(show["current"], false);

    let out = k(&["node", "version"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("127.0.0.1:1"), "{}", stderr(&out));
    // --context picks another; -e on the command line wins over the context.
    let out = k(&["--context", "prod", "node", "version"]);
    assert!(stderr(&out).contains("127.0.0.2:1"), "{}", stderr(&out));
    let out = k(&["node", "version", "-e", "127.0.0.3:1"]);
    assert!(stderr(&out).contains("127.0.0.3:1"), "{}", stderr(&out));
    let out = keel_env(
        &["node", "version"],
        &[env[0], ("KEEL_ENDPOINT", "127.0.0.4:1")],
    );
    assert!(stderr(&out).contains("127.0.0.4:1"), "{}", stderr(&out));

    assert!(k(&["context", "use", "prod"]).status.success());
    let out = k(&["node", "version"]);
    assert!(stderr(&out).contains("127.0.0.2:1"), "{}", stderr(&out));
    let out = k(&["context", "use", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("lab, prod"), "{}", stderr(&out));
    assert!(k(&["context", "delete", "prod"]).status.success());
    let out = k(&["node", "version"]);
    assert_eq!(out.status.code(), Some(2), "no current context now");
    let out = k(&[
        "context",
        "set",
        "Bad_Name",
        "-e",
        "x",
        "--secrets",
        p(&secrets),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn secrets_node_and_renew() {
    use keel_contract::secrets::{NodeSecrets, Secrets};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.secrets.toml");
    assert!(keel(&["secrets", "gen", "-o", p(&file)]).status.success());
    let before = Secrets::from_toml(&std::fs::read_to_string(&file).unwrap()).unwrap();

    let node = dir.path().join("node-a.secrets.toml");
    let args = [
        "secrets",
        "node",
        "node-a",
        "--ip",
        "10.0.0.5",
        "--secrets",
        p(&file),
        "-o",
        p(&node),
    ];
    let out = keel(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::metadata(&node).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&node).unwrap();
    let ns = NodeSecrets::from_toml(&text).unwrap();
    assert_eq!(ns.role, keel_contract::profile::Role::Worker);
    assert!(ns.etcd_ca.is_none(), "a worker's file holds no CA key");
    assert_ne!(ns.node_api, before.node_api);
    let der = keel_contract::secrets::pem_blocks(&ns.node_api.cert).unwrap();
    let names = keel_pki::cert_names(&der[0].der).unwrap();
    assert_eq!(names.dns, ["node-a", "keel-node"]);
    // Never overwritten; a bad name is bad input.
    let out = keel(&args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&node).unwrap(), text);
    let bad = dir.path().join("bad.toml");
    let out = keel(&[
        "secrets",
        "node",
        "Not_A_Name",
        "--secrets",
        p(&file),
        "-o",
        p(&bad),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!bad.exists());

    let out = keel(&["secrets", "renew", p(&file)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let after = Secrets::from_toml(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(after.keel_ca, before.keel_ca);
    assert_eq!(after.kubernetes_ca, before.kubernetes_ca);
    assert_ne!(after.keel_admin, before.keel_admin);
    assert_ne!(after.node_api, before.node_api);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".renewing"))
        .collect();
    assert!(leftovers.is_empty());
    let out = keel(&["secrets", "renew", p(&node)]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a node file is not cluster secrets"
    );
}
