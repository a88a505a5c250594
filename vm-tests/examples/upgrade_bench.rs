//! Upgrade benchmark (not a test): the stock worker image, v1 -> v2 through the management
//! API in QEMU. Measures, from the start of the upload: the upload and install (verify,
//! stream into the slot, read back, ESP files, entry) until the API answers, then the reboot
//! until v2 is ready, and PID 1's resident memory when the install ends (now and peak, as the
//! init prints it). Side by side, as the peer, a cold boot of the same v2 disk image to ready,
//! so the reboot share can be read as a ratio. Run by `vm-tests/bench/upgrade`.
//!
//! With `--baseline-init PATH` (a static keel-init built from another commit), every run
//! upgrades a node built with that init and one built with this workspace's init, one after
//! the other, so that a change to the upgrade path is compared side by side.
//!
//! Usage: upgrade_bench [RUNS] [--baseline-init PATH]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_builder::node::{ClientCredentials, NodeClient, credentials_from_secrets};
use keel_builder::progress::Reporter;
use keel_vm_tests::{
    Machine, build_with_init, cluster_secrets, derived_profile, free_port, init_binary, test_dir,
    test_key, vm_disk,
};

struct Variant {
    label: &'static str,
    v1: PathBuf,
    v2: PathBuf,
}

struct Measured {
    install: f64,
    total: f64,
    /// `PID 1 RSS ... (peak ...)` from the node's last upgrade line.
    rss: String,
}

fn upgrade_once(variant: &Variant, dir: &Path, creds: &ClientCredentials, run: usize) -> Measured {
    let run_dir = dir.join(format!("run{run}-{}", variant.label));
    std::fs::create_dir_all(&run_dir).unwrap();
    let disk = vm_disk(&variant.v1, &run_dir, 6 << 30);
    let port = free_port();
    let mut vm = Machine::start(
        &format!("upgrade-bench-{}-{run}", variant.label),
        &disk,
        &run_dir.join("vm"),
        |c| c.forwards.push((port, keel_contract::api::PORT)),
    );
    vm.expect("keel: ready: keel-worker 1.0.0", Duration::from_secs(300));
    let client = NodeClient::new(&format!("127.0.0.1:{port}"), creds).unwrap();
    let mut update = keel_builder::node::open_update_file(&variant.v2.join("update")).unwrap();
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
    let install = start.elapsed().as_secs_f64();
    vm.expect("boots next; ", Duration::from_secs(60));
    let rss = vm.expect("\n", Duration::from_secs(10)).trim().to_owned();
    vm.expect("keel: ready: keel-worker 1.1.0", Duration::from_secs(300));
    let total = start.elapsed().as_secs_f64();
    vm.kill();
    Measured {
        install,
        total,
        rss,
    }
}

fn cold_boot(variant: &Variant, dir: &Path, run: usize) -> f64 {
    // The peer: the same v2 image booted cold (its first boot creates DATA, as v1's did; the
    // upgraded node's reboot does not, which favours the upgrade slightly).
    let run_dir = dir.join(format!("run{run}-{}-cold", variant.label));
    let cold_disk = vm_disk(&variant.v2, &run_dir, 6 << 30);
    let cold_start = Instant::now();
    let mut cold = Machine::start(
        &format!("upgrade-bench-cold-{}-{run}", variant.label),
        &cold_disk,
        &run_dir.join("vm"),
        |_| {},
    );
    cold.expect("keel: ready: keel-worker 1.1.0", Duration::from_secs(300));
    let cold_s = cold_start.elapsed().as_secs_f64();
    cold.kill();
    cold_s
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut runs = 3;
    let mut baseline: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        if arg == "--baseline-init" {
            baseline = Some(args.next().expect("--baseline-init PATH").into());
        } else {
            runs = arg.parse().expect("RUNS");
        }
    }
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
    let mut inits = vec![("current", init_binary())];
    if let Some(path) = baseline {
        inits.insert(0, ("baseline", path));
    }
    let variants: Vec<Variant> = inits
        .into_iter()
        .map(|(label, init)| {
            let (v1, v2) = (
                dir.join(format!("{label}-v1")),
                dir.join(format!("{label}-v2")),
            );
            build_with_init(&profile, &v1, &key, Some("1.0.0"), 1_700_000_000, &init);
            build_with_init(&profile, &v2, &key, Some("1.1.0"), 1_700_000_000, &init);
            Variant { label, v1, v2 }
        })
        .collect();
    let creds = credentials_from_secrets(&secrets).unwrap();
    let payload = keel_contract::manifest::Manifest::from_json(
        &std::fs::read(variants[0].v2.join("manifest.json")).unwrap(),
    )
    .unwrap()
    .slot_payload
    .size;
    println!("slot payload {:.1} MiB", payload as f64 / 1048576.0);
    println!(
        "{:<4} {:<9} {:>10} {:>10} {:>9} {:>12}  pid 1 memory after the install",
        "run", "init", "install_s", "reboot_s", "total_s", "cold_boot_s"
    );
    for run in 0..runs {
        for variant in &variants {
            let m = upgrade_once(variant, &dir, &creds, run);
            let cold = cold_boot(variant, &dir, run);
            println!(
                "{:<4} {:<9} {:>10.2} {:>10.2} {:>9.2} {cold:>12.2}  {}",
                run + 1,
                variant.label,
                m.install,
                m.total - m.install,
                m.total,
                m.rss
            );
        }
    }
}
