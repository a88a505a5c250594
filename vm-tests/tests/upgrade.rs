//! A/B upgrades through the management API in QEMU: v1 -> v2, a requested rollback and
//! forward again, a v3 that fails its health gate and is rolled back by itself, bad bundles, downgrades, foreign clients, and power cuts at
//! several points of an upgrade.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_builder::node::{ClientCredentials, NodeClient, credentials_from_secrets};
use keel_builder::progress::Reporter;
use keel_vm_tests::{
    Machine, build, cluster_secrets, derived_profile, free_port, test_dir, test_key, vm_disk,
};

const BOOT: Duration = Duration::from_secs(300);

/// v1 (1.0.0), v2 (1.1.0) and a broken v3 (1.2.0: containerd replaced by a program that
/// exits at once, so its health gate never passes; a 30 s boot deadline) of one worker image,
/// signed with one key and carrying one cluster's secrets.
struct Images {
    dir: PathBuf,
    secrets: PathBuf,
    v1: PathBuf,
    v2: PathBuf,
    v3: PathBuf,
}

fn images(name: &str) -> Images {
    let dir = test_dir(name);
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
    let v1 = dir.join("v1");
    let v2 = dir.join("v2");
    let v3 = dir.join("v3");
    build(&good, &v1, &key, Some("1.0.0"), 1_700_000_000);
    build(&good, &v2, &key, Some("1.1.0"), 1_700_000_000);
    build(&broken, &v3, &key, Some("1.2.0"), 1_700_000_000);
    Images {
        dir,
        secrets,
        v1,
        v2,
        v3,
    }
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
    let img = images("upgrade_flow");
    let creds = credentials_from_secrets(&img.secrets).unwrap();
    let disk = vm_disk(&img.v1, &img.dir, 6 << 30);
    let port = free_port();
    let start = |name: &str| {
        Machine::start(name, &disk, &img.dir.join("vm"), |c| {
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

/// QEMU is killed at several points of an upgrade; every restart boots a good version and
/// /var is intact.
#[test]
fn power_cuts_during_an_upgrade_never_leave_an_unbootable_node() {
    let img = images("upgrade_power");
    let creds = credentials_from_secrets(&img.secrets).unwrap();
    let disk = vm_disk(&img.v1, &img.dir, 6 << 30);
    let port = free_port();
    let mut boots = 0;
    for (cut_at, expect_version) in [
        ("upgrade: writing slot b: 30%", "1.0.0"),
        ("written to the ESP", "1.0.0"),
        ("boots next", "1.1.0"),
    ] {
        let name = format!(
            "upgrade_power-{}",
            cut_at.split(':').next().unwrap_or("cut").replace(' ', "-")
        );
        let mut vm = Machine::start(&name, &disk, &img.dir.join("vm"), |c| {
            c.forwards.push((port, keel_contract::api::PORT))
        });
        boots += 1;
        vm.expect(&format!("slot a, boot {boots};"), BOOT);
        let node = client(port, &creds);
        let bundle = img.v2.join("update");
        let uploader = std::thread::spawn(move || upgrade(&node, &bundle, false, false));
        vm.expect(cut_at, BOOT);
        vm.kill(); // the power cut
        let _ = uploader.join();

        let mut vm = Machine::start(&format!("{name}-after"), &disk, &img.dir.join("vm"), |c| {
            c.forwards.push((port, keel_contract::api::PORT))
        });
        boots += 1;
        let slot = if expect_version == "1.0.0" { "a" } else { "b" };
        vm.expect(
            &format!("keel: ready: keel-worker {expect_version} slot {slot}, boot {boots};"),
            BOOT,
        );
        vm.vm.powerdown().unwrap();
        assert!(vm.vm.wait_timeout(Duration::from_secs(90)).is_some());
    }
}
