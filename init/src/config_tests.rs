use keel_contract::profile::Role;

use super::*;

const WORKER: &str = "[node]\nrole = \"worker\"\nhostname = \"w1\"\n";
const CP: &str = "[node]\nrole = \"controlplane\"\nhostname = \"cp1\"\n";

/// A worker's share of freshly generated cluster secrets, as TOML.
fn worker_secrets() -> String {
    keel_pki::generate("keel", 1_700_000_000)
        .unwrap()
        .for_role(keel_contract::profile::Role::Worker)
        .to_toml()
        .unwrap()
}

fn fw_cfg(profile: Option<&str>, secrets: Option<&str>) -> Option<Found> {
    Some(Found {
        source: Source::FwCfg,
        profile: profile.map(str::to_owned),
        secrets: secrets.map(str::to_owned),
        ..Found::default()
    })
}

#[test]
fn boot_time_profile_wins_and_is_kept_in_state() {
    let state = tempfile::tempdir().unwrap();
    let baked = state.path().join("baked.toml");
    std::fs::write(&baked, WORKER).unwrap();
    let secrets = worker_secrets();
    let first = choose(fw_cfg(Some(CP), Some(&secrets)), state.path(), &baked, None);
    assert_eq!(first.source, Source::FwCfg);
    assert_eq!(
        first.node.hostname.as_ref().map(|h| h.as_str()),
        Some("cp1")
    );
    assert!(first.secrets.is_some());
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    // Next boot without the fw_cfg entry: STATE keeps the identity.
    let second = choose(None, state.path(), &baked, None);
    assert_eq!(second.source, Source::State);
    assert_eq!(second.node.role, keel_contract::profile::Role::ControlPlane);
    assert_eq!(second.secrets, first.secrets);
    // A new profile replaces it, and the old one is kept aside.
    let third = choose(fw_cfg(Some(WORKER), None), state.path(), &baked, None);
    assert_eq!(third.source, Source::FwCfg);
    assert_eq!(
        std::fs::read_to_string(layout::on_volume(state.path(), &previous(STATE_PROFILE))).unwrap(),
        CP
    );
}

#[test]
fn baked_profile_applies_without_other_sources_and_bad_profiles_are_refused_not_fatal() {
    let state = tempfile::tempdir().unwrap();
    let baked = state.path().join("baked.toml");
    std::fs::write(&baked, WORKER).unwrap();
    let c = choose(None, state.path(), &baked, None);
    assert_eq!(c.source, Source::Baked);
    assert!(!layout::on_volume(state.path(), STATE_PROFILE).exists());
    // A bad profile at boot is refused (not saved), and the node runs what it had.
    let c = choose(
        fw_cfg(Some("[node]\nrole = \"boss\"\n"), None),
        state.path(),
        &baked,
        None,
    );
    assert_eq!(c.source, Source::Baked);
    assert!(c.warnings[0].contains("was refused"), "{:?}", c.warnings);
    assert!(c.warnings[0].contains("role"), "{:?}", c.warnings);
    assert!(!layout::on_volume(state.path(), STATE_PROFILE).exists());
    choose(fw_cfg(Some(CP), None), state.path(), &baked, None);
    let c = choose(
        fw_cfg(Some("[node]\nrole = 3\n"), None),
        state.path(),
        &baked,
        None,
    );
    assert_eq!((c.source, c.node.role), (Source::State, Role::ControlPlane));
}

/// Issue 10: secrets given at boot were saved before they were parsed, so a malformed file
/// replaced the good copy and every later boot failed.
#[test]
fn malformed_secrets_at_boot_are_refused_and_the_good_copy_stays() {
    let state = tempfile::tempdir().unwrap();
    let baked = state.path().join("baked.toml");
    std::fs::write(&baked, WORKER).unwrap();
    let good = worker_secrets();
    let first = choose(fw_cfg(None, Some(&good)), state.path(), &baked, None);
    assert!(first.secrets.is_some());
    let bad = choose(
        fw_cfg(None, Some("version = 1\n[garbage")),
        state.path(),
        &baked,
        None,
    );
    assert_eq!(bad.secrets, first.secrets, "the good copy is used");
    assert!(
        bad.warnings[0].contains("were refused"),
        "{:?}",
        bad.warnings
    );
    assert_eq!(
        std::fs::read_to_string(layout::on_volume(state.path(), STATE_SECRETS)).unwrap(),
        good,
        "the good copy stays on STATE"
    );
    let next = choose(None, state.path(), &baked, None);
    assert_eq!(next.secrets, first.secrets);
    assert!(next.warnings.is_empty(), "{:?}", next.warnings);
}

/// Issue 10: a parse error in STATE's profile (a newer version's key after a rollback to an
/// older init) was fatal on both slots.
#[test]
fn state_profiles_with_unknown_keys_or_unreadable_do_not_stop_the_boot() {
    let state = tempfile::tempdir().unwrap();
    let baked = state.path().join("baked.toml");
    std::fs::write(&baked, WORKER).unwrap();
    let newer = "[node]\nrole = \"controlplane\"\nhostname = \"cp1\"\nfuture_knob = true\n\n\
                 [node.network]\nmode = \"dhcp\"\nwifi = \"x\"\n\n\
                 [[node.containers]]\nname = \"m\"\nimage = \"m\"\nsandbox = \"gvisor\"\n";
    std::fs::write(layout::on_volume(state.path(), STATE_PROFILE), newer).unwrap();
    let c = choose(None, state.path(), &baked, None);
    assert_eq!(c.source, Source::State);
    assert_eq!(c.node.role, Role::ControlPlane);
    assert_eq!(c.node.containers.len(), 1);
    let warning = c.warnings.join("\n");
    for key in [
        "node.future_knob",
        "node.network.wifi",
        "node.containers[0].sandbox",
    ] {
        assert!(warning.contains(key), "{key}: {warning}");
    }
    // Unreadable: the copy kept before it, else the baked profile, with a loud warning.
    std::fs::write(
        layout::on_volume(state.path(), STATE_PROFILE),
        "[node\nrole=",
    )
    .unwrap();
    let c = choose(None, state.path(), &baked, None);
    assert_eq!(c.source, Source::Baked);
    assert!(c.warnings[0].contains("unreadable"), "{:?}", c.warnings);
    std::fs::write(
        layout::on_volume(state.path(), &previous(STATE_PROFILE)),
        CP,
    )
    .unwrap();
    let c = choose(None, state.path(), &baked, None);
    assert_eq!((c.source, c.node.role), (Source::State, Role::ControlPlane));
}

#[test]
fn labels_of_fat32_and_iso9660() {
    let mut fat = vec![0u8; 512];
    fat[510] = 0x55;
    fat[511] = 0xAA;
    fat[82..90].copy_from_slice(b"FAT32   ");
    fat[71..82].copy_from_slice(b"KEELCFG    ");
    assert_eq!(volume_label(&fat).as_deref(), Some("KEELCFG"));
    let mut iso = vec![0u8; 0x8800];
    iso[0x8001..0x8006].copy_from_slice(b"CD001");
    iso[0x8028..0x8028 + 7].copy_from_slice(b"KEELCFG");
    assert_eq!(volume_label(&iso).as_deref(), Some("KEELCFG"));
    assert_eq!(volume_label(&[0u8; 600]), None);
}

#[test]
fn fw_cfg_entries_are_read_from_sysfs() {
    let root = tempfile::tempdir().unwrap();
    let entry = root.path().join(contract::FW_CFG_PROFILE);
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::write(entry.join("raw"), CP).unwrap();
    let found = from_fw_cfg(root.path()).unwrap();
    assert_eq!(found.profile.as_deref(), Some(CP));
    assert!(found.secrets.is_none());
    assert!(from_fw_cfg(&root.path().join("none")).is_none());
}

#[test]
fn http_get_fetches_a_body() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).unwrap();
        s.write_all(
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n[node]\nrole = \"worker\"\n",
        )
        .unwrap();
    });
    let body = http_get(
        &format!("http://127.0.0.1:{port}/node.toml"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(body, "[node]\nrole = \"worker\"\n");
    assert!(http_get("https://x/y", Duration::from_secs(1)).is_err());
}

#[test]
fn fetch_retries_after_each_delay_then_gives_up() {
    let calls = std::cell::Cell::new(0);
    let slept = std::cell::RefCell::new(Vec::new());
    let delays = [Duration::from_secs(1), Duration::from_secs(2)];
    let flaky = |_: &str| {
        calls.set(calls.get() + 1);
        if calls.get() < 3 {
            Err("connection refused".to_owned())
        } else {
            Ok("[node]\n".to_owned())
        }
    };
    let sleep = |d: Duration| slept.borrow_mut().push(d);
    let got = fetch_with_retry("http://x/", &delays, &flaky, &|_| {}, &sleep);
    assert_eq!(got.as_deref(), Ok("[node]\n"));
    assert_eq!(*slept.borrow(), delays);

    calls.set(-10);
    slept.borrow_mut().clear();
    let got = fetch_with_retry("http://x/", &delays, &flaky, &|_| {}, &sleep);
    assert_eq!(got, Err("connection refused".to_owned()));
    assert_eq!(calls.get(), -7, "three tries");
}

/// `http://[v6]/path` has no port: it is 80, not part of the address (issue 12: a
/// `contains(':')` check took the IPv6 literal's colons for a port). Port 80 needs root or
/// a free port 80; elsewhere the test says so and passes (keel-http's URL tests cover the
/// parsing everywhere).
#[test]
fn http_get_uses_the_default_port_of_an_ipv6_url() {
    let listener = match std::net::TcpListener::bind("[::1]:80") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skipped: cannot listen on [::1]:80: {e}");
            return;
        }
    };
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(request.starts_with("GET /node.toml HTTP/1."), "{request}");
        assert!(request.contains("\r\nHost: [::1]\r\n"), "{request}");
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nv6ok")
            .unwrap();
    });
    let body = http_get("http://[::1]/node.toml", Duration::from_secs(5));
    assert_eq!(body.as_deref(), Ok("v6ok"));
}
