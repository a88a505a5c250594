//! Boot-time benchmark (not a test): power-on to ready for a Keel image against a Debian
//! image (debootstrap, systemd, the same kernel, containerd enabled), booted side by side
//! with the same QEMU, firmware and settings. Run by `vm-tests/bench/boot-vs-debian`.
//!
//! Usage: boot_bench KEEL_OUTDIR DEBIAN_DISK [RUNS] [CPUS]
//! CPUS: vCPUs of both VMs (default 1, the setting of the first figures; `keel run`
//! gives two).
//! Keel is ready at `keel: ready`; Debian when containerd.service has started (a marker unit).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_vm_tests::{Machine, test_dir};

/// The console log with terminal escape sequences removed (systemd colours its status).
fn plain_log(vm: &Machine) -> String {
    let mut out = String::new();
    let mut escape = false;
    for c in vm.console_log().chars() {
        match (escape, c) {
            (false, '\u{1b}') => escape = true,
            (false, c) => out.push(c),
            (true, c) if c.is_ascii_alphabetic() => escape = false,
            (true, _) => {}
        }
    }
    out
}

/// Seconds from starting QEMU until `marker` appears in the console log (QEMU writes the
/// log as the guest prints, so polling it measures the same moment for both systems).
fn boot(name: &str, disk: &Path, dir: &Path, marker: &str, cpus: u8) -> f64 {
    let start = Instant::now();
    let vm = Machine::start(name, disk, dir, |c| {
        c.memory_mib = 1024;
        c.cpus = cpus;
    });
    while !plain_log(&vm).contains(marker) {
        if start.elapsed() > Duration::from_secs(600) {
            vm.fail(&format!("no {marker:?} within 600 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = start.elapsed().as_secs_f64();
    vm.kill();
    secs
}

/// What the Debian image prints when containerd is up: `vm-tests/bench/boot-vs-debian` adds a
/// unit ordered after containerd.service that echoes it to the console (systemd's own status
/// line for containerd does not reach this console).
const DEBIAN_READY: &str = "bench: containerd is up";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let keel_out = PathBuf::from(&args[1]);
    let debian_disk = PathBuf::from(&args[2]);
    let runs: usize = args.get(3).map(|r| r.parse().unwrap()).unwrap_or(3);
    let cpus: u8 = args.get(4).map(|c| c.parse().unwrap()).unwrap_or(1);
    let dir = test_dir("boot_bench");
    let keel_disk = keel_vm_tests::vm_disk(&keel_out, &dir, 4 << 30);
    let deb_disk = dir.join("debian.raw");
    keel_builder::run::sparse_copy(&debian_disk, &deb_disk, 0).unwrap();
    // One boot each first: Keel's first boot creates and formats DATA, Debian's sets its
    // machine id; the measured boots are the steady state.
    boot(
        "bench-keel-warm",
        &keel_disk,
        &dir.join("keel-vm"),
        "keel: ready",
        cpus,
    );
    boot(
        "bench-debian-warm",
        &deb_disk,
        &dir.join("debian-vm"),
        DEBIAN_READY,
        cpus,
    );
    let (mut keel, mut debian) = (Vec::new(), Vec::new());
    println!("{:<4} {:>10} {:>12}", "run", "keel_s", "debian_s");
    for i in 0..runs {
        let k = boot(
            &format!("bench-keel-{i}"),
            &keel_disk,
            &dir.join("keel-vm"),
            "keel: ready",
            cpus,
        );
        let d = boot(
            &format!("bench-debian-{i}"),
            &deb_disk,
            &dir.join("debian-vm"),
            DEBIAN_READY,
            cpus,
        );
        println!("{:<4} {k:>10.2} {d:>12.2}", i + 1);
        keel.push(k);
        debian.push(d);
    }
    let (k, d) = (median(keel), median(debian));
    println!(
        "median ({cpus} vCPU): keel {k:.2}s, debian {d:.2}s, keel/debian {:.2}",
        k / d
    );
}
