//! Upgrade benchmark (not a test): the stock worker image, v1 -> v2 through the management
//! API in QEMU. Measures, from the start of the upload: the upload and install (verify,
//! stream into the slot, read back, ESP files, entry) until the API answers, then the reboot
//! until v2 is ready. Side by side, as the peer, a cold boot of the same v2 disk image to ready,
//! so the reboot share can be read as a ratio. Run by `vm-tests/bench/upgrade`.
//!
//! Usage: upgrade_bench [RUNS]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use keel_builder::node::{NodeClient, credentials_from_secrets};
use keel_builder::progress::Reporter;
use keel_vm_tests::{
    Machine, build, cluster_secrets, derived_profile, free_port, test_dir, test_key, vm_disk,
};

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse().unwrap())
        .unwrap_or(3);
    let dir = test_dir("upgrade_bench");
    let (secrets, _) = cluster_secrets(&dir.join("secrets"));
    let (key, _) = test_key(&dir.join("keys"));
    let profile = derived_profile(
        &dir,
        "worker",
        &format!(
            "[image]\nsecrets = \"{}\"\n\n[node.cluster]\nendpoint = \"https://10.0.2.2:6443\"\n",
            secrets.display()
        ),
    );
    let (v1, v2) = (dir.join("v1"), dir.join("v2"));
    build(&profile, &v1, &key, Some("1.0.0"), 1_700_000_000);
    build(&profile, &v2, &key, Some("1.1.0"), 1_700_000_000);
    let creds = credentials_from_secrets(&secrets).unwrap();
    let payload = keel_contract::manifest::Manifest::from_json(
        &std::fs::read(v2.join("manifest.json")).unwrap(),
    )
    .unwrap()
    .slot_payload
    .size;
    println!("slot payload {:.1} MiB", payload as f64 / 1048576.0);
    println!(
        "{:<4} {:>12} {:>12} {:>10} {:>14}",
        "run", "install_s", "reboot_s", "total_s", "cold_boot_s"
    );
    for run in 0..runs {
        let run_dir = dir.join(format!("run{run}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        let disk = vm_disk(&v1, &run_dir, 6 << 30);
        let port = free_port();
        let mut vm = Machine::start(
            &format!("upgrade-bench-{run}"),
            &disk,
            &run_dir.join("vm"),
            |c| c.forwards.push((port, keel_contract::api::PORT)),
        );
        vm.expect("keel: ready: keel-worker 1.0.0", Duration::from_secs(300));
        let client = NodeClient::new(&format!("127.0.0.1:{port}"), &creds).unwrap();
        let mut update = keel_builder::node::open_update_file(&v2.join("update")).unwrap();
        let start = Instant::now();
        client
            .upgrade(
                &mut update.reader,
                update.len,
                false,
                true,
                &Reporter::quiet(),
            )
            .unwrap();
        let installed = start.elapsed().as_secs_f64();
        vm.expect("keel: ready: keel-worker 1.1.0", Duration::from_secs(300));
        let total = start.elapsed().as_secs_f64();
        vm.kill();

        // The peer: the same v2 image booted cold (its first boot creates DATA, as v1's did;
        // the upgraded node's reboot does not, which favours the upgrade slightly).
        let cold_disk = vm_disk(&v2, &run_dir.join("cold"), 6 << 30);
        let cold_start = Instant::now();
        let mut cold = Machine::start(
            &format!("upgrade-bench-cold-{run}"),
            &cold_disk,
            &run_dir.join("cold-vm"),
            |_| {},
        );
        cold.expect("keel: ready: keel-worker 1.1.0", Duration::from_secs(300));
        let cold_s = cold_start.elapsed().as_secs_f64();
        cold.kill();
        println!(
            "{:<4} {installed:>12.2} {:>12.2} {total:>10.2} {cold_s:>14.2}",
            run + 1,
            total - installed
        );
    }
}
