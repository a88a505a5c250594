//! A/B upgrades through the management API in QEMU: v1 -> v2, a requested rollback and
//! forward again, a v3 that fails its health gate and is rolled back by itself, bad bundles,
//! downgrades, foreign clients, and a power cut before every durable step of an upgrade.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use keel_builder::node::{ClientCredentials, NodeClient, credentials_from_secrets};
use keel_builder::progress::Reporter;
use keel_contract::layout::test_hooks;
use keel_vm_tests::{
    Machine, build, cluster_secrets, derived_profile, free_port, test_dir, test_key, vm_disk,
    write_file,
};

const BOOT: Duration = Duration::from_secs(300);

/// v1 (1.0.0), v2 (1.1.0), a broken v3 (1.2.0: containerd replaced by a program that exits
/// at once, so its health gate never passes; a 30 s boot deadline) and a good v4 (1.3.0) of
/// one worker image, signed with one key and carrying one cluster's secrets; built once for
/// the tests of this file.
struct Images {
    dir: PathBuf,
    secrets: PathBuf,
    v1: PathBuf,
    v2: PathBuf,
    v3: PathBuf,
    v4: PathBuf,
}

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = test_dir("upgrade");
        let (secrets, _) = cluster_secrets(&dir.join("secrets"));
        let (key, _) = test_key(&dir.join("keys"));
        let base = format!(
            "[image]\nsecrets = \"{}\"\n\n[node.cluster]\nendpoint = \"https://10.0.2.2:6443\"\n",
            secrets.display()
        );
        let good = derived_profile(&dir.join("good"), "worker", &base);
        let broken = derived_profile(
            &dir.join("broken"),
            "worker",
            &format!(
                "{base}\n[[image.files]]\nsrc = \"/bin/false\"\ndst = \"/usr/bin/containerd\"\nmode = \"0755\"\n\n[node]\nboot_deadline_secs = 30\n"
            ),
        );
        let [v1, v2, v3, v4] = ["v1", "v2", "v3", "v4"].map(|v| dir.join(v));
        build(&good, &v1, &key, Some("1.0.0"), 1_700_000_000);
        build(&good, &v2, &key, Some("1.1.0"), 1_700_000_000);
        build(&broken, &v3, &key, Some("1.2.0"), 1_700_000_000);
        build(&good, &v4, &key, Some("1.3.0"), 1_700_000_000);
        Images {
            dir,
            secrets,
            v1,
            v2,
            v3,
            v4,
        }
    })
}

fn client(port: u16, creds: &ClientCredentials) -> NodeClient {
    NodeClient::new(&format!("127.0.0.1:{port}"), creds).unwrap()
}

fn upgrade(
    client: &NodeClient,
    bundle: &Path,
    force: bool,
    reboot: bool,
) -> Result<keel_contract::api::UpgradeReport, String> {
    let mut update = keel_builder::node::open_update_file(bundle).map_err(|e| e.to_string())?;
    client
        .upgrade(
            &mut update.reader,
            update.len,
            force,
            reboot,
            &Reporter::quiet(),
        )
        .map_err(|e| e.to_string())
}

#[test]
fn upgrades_roll_forward_roll_back_and_refuse_what_they_must() {
    let img = images();
    let creds = credentials_from_secrets(&img.secrets).unwrap();
    let dir = img.dir.join("flow");
    let disk = vm_disk(&img.v1, &dir, 6 << 30);
    let port = free_port();
    let start = |name: &str| {
        Machine::start(name, &disk, &dir.join("vm"), |c| {
            c.forwards.push((port, keel_contract::api::PORT))
        })
    };

    let mut vm = start("upgrade_flow-v1");
    vm.expect("keel: ready: keel-worker 1.0.0 slot a, boot 1", BOOT);
    let node = client(port, &creds);
    let status = node.status().unwrap();
    assert_eq!(
        (status.version.as_str(), status.slot.as_str()),
        ("1.0.0", "a")
    );

    // 5. Clients without a certificate of this cluster's keel CA are refused.
    let (_, other) = cluster_secrets(&img.dir.join("other-cluster"));
    let foreign = ClientCredentials {
        ca_pem: creds.ca_pem.clone(),
        cert_pem: other.keel_admin.cert.clone(),
        key_pem: other.keel_admin.key.clone(),
    };
    let err = client(port, &foreign).status().unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Issue 11, on a booted node: 200 idle and 200 garbage connections held open through
    // QEMU's user network (where every host connection comes from one address, 10.0.2.2)
    // leave operators served; a read-only operator reads, and gets 403 on an upgrade.
    let mut held = Vec::new();
    for i in 0..400 {
        if let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            if i >= 200 {
                let _ = std::io::Write::write_all(&mut tcp, b"GET / HTTP/1.0\r\n\r\nnot TLS\r\n");
            }
            held.push(tcp);
        }
    }
    assert_eq!(node.status().unwrap().version, "1.0.0");
    drop(held);
    let read_only = keel_builder::node::credentials_for(
        &img.secrets,
        keel_contract::api::OperatorRole::ReadOnly,
    )
    .unwrap();
    let viewer = client(port, &read_only);
    assert_eq!(viewer.version().unwrap().version, "1.0.0");
    let err = upgrade(&viewer, &img.v2.join("update"), false, false).unwrap_err();
    assert!(err.contains("403"), "{err}");

    // 6. The same or a lower version is refused without --force.
    let err = upgrade(&node, &img.v1.join("update"), false, false).unwrap_err();
    assert!(err.contains("not newer"), "{err}");

    // 3. A bundle with a flipped byte (here in the payload) is rejected; slot b's entry stays
    //    as it was (there is none yet).
    let mut stream = Vec::new();
    let mut update = keel_builder::node::open_update_file(&img.v2.join("update")).unwrap();
    std::io::copy(&mut update.reader, &mut stream).unwrap();
    let at = stream.len() - 4096 * 16;
    stream[at] ^= 0x10;
    let err = node
        .upgrade(
            &mut stream.as_slice(),
            stream.len() as u64,
            false,
            false,
            &Reporter::quiet(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match the signed manifest"), "{err}");
    let status = node.status().unwrap();
    assert_eq!(
        status.slots[1].entry, None,
        "slot b must still have no boot entry"
    );

    // 1. v1 -> v2 through the API: slot b, blessed, /var kept (the boot history goes on).
    let report = upgrade(&node, &img.v2.join("update"), false, true).unwrap();
    assert_eq!((report.to.as_str(), report.slot.as_str()), ("1.1.0", "b"));
    let before = vm.expect("keel: ready: keel-worker 1.1.0 slot b, boot 2", BOOT);
    assert!(
        before.contains("blessed keel-b+2-1.conf -> keel-b.conf"),
        "{before}"
    );
    let status = node.status().unwrap();
    assert_eq!(status.slots[1].entry.as_deref(), Some("keel-b.conf"));
    assert_eq!(status.slots[0].version.as_deref(), Some("1.0.0"));

    // `keel node rollback` on request: back to 1.0.0 in slot a, reported as requested and
    // nothing quarantined, also on the boot after; the data written under 1.1.0 is kept.
    let report = node.rollback().unwrap();
    assert_eq!((report.to.as_str(), report.slot.as_str()), ("1.0.0", "a"));
    let before = vm.expect("keel: ready: keel-worker 1.0.0 slot a, boot 3", BOOT);
    assert!(
        before.contains("rolled back from 1.1.0 as requested"),
        "{before}"
    );
    for boot in [3, 4] {
        let status = node.status().unwrap();
        assert_eq!(status.boot, boot);
        assert_eq!(
            (
                status.rolled_back_from.as_deref(),
                status.rollback_requested
            ),
            (Some("1.1.0"), true)
        );
        assert!(status.quarantined.is_empty(), "{:?}", status.quarantined);
        if boot == 3 {
            node.reboot().unwrap();
            vm.expect("keel: ready: keel-worker 1.0.0 slot a, boot 4", BOOT);
        }
    }
    // Forward again without --force: 1.1.0 is newer and was not quarantined.
    upgrade(&node, &img.v2.join("update"), false, true).unwrap();
    vm.expect("keel: ready: keel-worker 1.1.0 slot b, boot 5", BOOT);

    // 2. v2 -> v3, whose health gate never passes: three tries, then slot b (v2) again,
    //    reporting the rollback; v3 is refused afterwards.
    upgrade(&node, &img.v3.join("update"), false, true).unwrap();
    vm.expect("keel-worker 1.2.0 from slot a", BOOT);
    vm.expect("health gate did not pass", BOOT);
    let before = vm.expect(
        "keel: ready: keel-worker 1.1.0 slot b",
        Duration::from_secs(900),
    );
    assert!(before.contains("rolled back from 1.2.0"), "{before}");
    assert_eq!(
        vm.console_log()
            .matches("keel-worker 1.2.0 from slot a")
            .count(),
        3,
        "three tries of 1.2.0"
    );
    let status = node.status().unwrap();
    assert_eq!(status.rolled_back_from.as_deref(), Some("1.2.0"));
    assert!(!status.rollback_requested);
    assert_eq!(status.quarantined, ["1.2.0"]);
    let err = upgrade(&node, &img.v3.join("update"), false, false).unwrap_err();
    assert!(err.contains("quarantined"), "{err}");

    // `keel node rollback`: back to the other slot's good version on request. Slot a holds
    // 1.2.0 (failed), so rollback is refused.
    let err = node.rollback().unwrap_err().to_string();
    assert!(err.contains("failed to boot"), "{err}");
    vm.kill();
}

/// The power is cut before every durable step of an upgrade (the init stops there, asked
/// through QEMU's fw_cfg `opt/keel/test/pause-at`, and QEMU is killed): the journal, the
/// removal of the target slot's entry, manifest and signature, inside and after the payload,
/// the staged kernel and initramfs renamed into place, the signature, the manifest, the
/// cleared journal, the entry, and after the entry. Every restart boots a good version with
/// /var intact, and the target slot is invalid wherever it must be.
#[test]
fn power_cuts_at_every_step_of_an_upgrade_leave_a_good_node() {
    let img = images();
    let creds = credentials_from_secrets(&img.secrets).unwrap();
    let dir = img.dir.join("power");
    let disk = vm_disk(&img.v1, &dir, 6 << 30);
    let port = free_port();
    let start = |name: &str, pause: Option<&str>| {
        let pause = pause.map(|p| write_file(&dir, &format!("{name}.pause"), p));
        Machine::start(name, &disk, &dir.join(name), |c| {
            c.forwards.push((port, keel_contract::api::PORT));
            c.fw_cfg
                .extend(pause.map(|p| (test_hooks::FW_CFG_PAUSE_AT.to_owned(), p)));
        })
    };
    let node = client(port, &creds);
    // Slot b runs 1.1.0 (blessed); slot a holds 1.0.0 (blessed): the upgrades below rewrite a.
    let mut vm = start("power-setup", None);
    vm.expect("keel: ready: keel-worker 1.0.0 slot a, boot 1;", BOOT);
    upgrade(&node, &img.v2.join("update"), false, true).unwrap();
    vm.expect("keel: ready: keel-worker 1.1.0 slot b, boot 2;", BOOT);
    vm.kill();
    let journal = "upgrade journal: {\"state\":\"writing\",\"slot\":\"a\",\"to\":\"1.3.0\"}";
    let writing = Some("being written");
    // (before which step the power is cut, slot a's problem at the next boot (None: still
    // valid), whether a complete upgrade must first make slot a valid again)
    let cuts: [(&str, Option<&str>, bool); 12] = [
        (journal, None, false),
        ("upgrade remove loader/entries/keel-a.conf", writing, false),
        ("upgrade remove keel/a/manifest.json", writing, true),
        ("upgrade remove keel/a/manifest.json.minisig", writing, true),
        ("upgrade payload 50%", writing, false),
        ("upgrade read back done", writing, false),
        (
            "upgrade rename keel/a/vmlinuz.new into place",
            writing,
            false,
        ),
        (
            "upgrade rename keel/a/initramfs.new into place",
            writing,
            false,
        ),
        ("upgrade write keel/a/manifest.json.minisig", writing, false),
        ("upgrade write keel/a/manifest.json", writing, false),
        ("upgrade journal: {\"state\":\"idle\"}", writing, false),
        (
            "upgrade write loader/entries/keel-a+3.conf",
            Some("no boot entry"),
            false,
        ),
    ];
    // Each boot after a cut is also the next cut's: it must come up on 1.1.0 with /var (its
    // boot number goes on), and slot a must be as the previous cut left it.
    let check = |cut: &str, problem: Option<&str>| {
        let status = node.status().unwrap();
        let a = &status.slots[0];
        match problem {
            None => assert_eq!(
                (a.version.as_deref(), a.invalid.as_deref()),
                (Some("1.0.0"), None),
                "cut before {cut}"
            ),
            Some(p) => {
                let why = a.invalid.as_deref().unwrap_or("");
                assert!(why.contains(p), "cut before {cut}: {a:?}");
                assert_eq!(a.entry, None, "cut before {cut}");
                let err = node.rollback().unwrap_err().to_string();
                assert!(err.contains("409"), "cut before {cut}: {err}");
            }
        }
    };
    let mut boots = 2;
    let mut previous: Option<(&str, Option<&str>)> = None;
    for (i, (cut, problem, reinstall)) in cuts.into_iter().enumerate() {
        let mut vm = start(&format!("power-cut-{i}"), Some(cut));
        boots += 1;
        vm.expect(
            &format!("ready: keel-worker 1.1.0 slot b, boot {boots};"),
            BOOT,
        );
        if let Some((cut, problem)) = previous {
            check(cut, problem);
        }
        if reinstall {
            upgrade(&node, &img.v4.join("update"), false, false).unwrap();
        }
        let bundle = img.v4.join("update");
        let uploader = {
            let node = client(port, &creds);
            std::thread::spawn(move || upgrade(&node, &bundle, false, false))
        };
        vm.expect(&format!("test hook: paused at {cut:?}"), BOOT);
        vm.kill(); // the power cut
        let _ = uploader.join();
        previous = Some((cut, problem));
    }
    // After the entry: the new version boots next.
    let mut vm = start("power-cut-entry", None);
    boots += 1;
    vm.expect(
        &format!("ready: keel-worker 1.1.0 slot b, boot {boots};"),
        BOOT,
    );
    if let Some((cut, problem)) = previous {
        check(cut, problem);
    }
    let bundle = img.v4.join("update");
    let uploader = std::thread::spawn(move || upgrade(&node, &bundle, false, false));
    vm.expect("boots next", BOOT);
    vm.kill();
    let _ = uploader.join();
    let mut vm = start("power-cut-entry-after", None);
    boots += 1;
    vm.expect(
        &format!("ready: keel-worker 1.3.0 slot a, boot {boots};"),
        BOOT,
    );
    vm.vm.powerdown().unwrap();
    assert!(vm.vm.wait_timeout(Duration::from_secs(90)).is_some());
}
