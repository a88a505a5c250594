//! CRI pod start benchmark (not a test): on a ready Keel node in QEMU, the time from
//! `RunPodSandbox` until `StartContainer` returns (sandbox, CNI ADD on Keel's bridge network,
//! container create and start) for a pod of the baked probe image, against `ctr run -d` of the
//! same image (one container, created and started, no sandbox, no CNI) run on the node, side by
//! side. "first" is the first of its kind after a boot (each boot runs one first of each, in
//! alternating order), "warm" the following ones, alternating. The CRI calls come from the host
//! through the relay static pod and QEMU's port forward; `ctr` runs on the node (entered from
//! a privileged host-PID pod with nsenter) and is timed there. Run by `vm-tests/bench/cri`.
//!
//! Usage: cri_bench [BOOTS] [WARM_RUNS]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use keel_fakes::cri::{ContainerSpec, Cri, PodSpec};
use keel_vm_tests::cri_node::{Inspector, PROBE, RELAY_PORT, connect, node_images};
use keel_vm_tests::{Machine, free_port, vm_disk};

/// Seconds from RunPodSandbox to StartContainer's return; the pod is removed afterwards.
fn cri_pod(cri: &mut Cri, name: &str) -> f64 {
    let pod = PodSpec::new(name, "bench", &format!("{name}-uid"));
    let c = ContainerSpec::new("sleep", PROBE, &["/bin/sleep", "1000000"]);
    let start = Instant::now();
    let sandbox = pod.sandbox_config();
    let pod_id = cri.run_pod(&sandbox).unwrap();
    let id = cri
        .create_container(&pod_id, &c.config(&pod), &sandbox)
        .unwrap();
    cri.start_container(&id).unwrap();
    let secs = start.elapsed().as_secs_f64();
    cri.stop_pod(&pod_id).unwrap();
    cri.remove_pod(&pod_id).unwrap();
    secs
}

/// Seconds `ctr run -d` of the same image takes on the node (from /proc/uptime around it).
fn ctr_run(cri: &mut Cri, inspector: &Inspector, name: &str) -> f64 {
    let ctr = format!(
        "nsenter -t 1 -m -u -i -n -p -- /usr/bin/ctr -n k8s.io run -d {PROBE} {name} /bin/sleep 1000000 > /dev/null"
    );
    let out = inspector.sh(
        cri,
        &format!(
            "a=$(cut -d' ' -f1 /proc/uptime); {ctr}; b=$(cut -d' ' -f1 /proc/uptime); echo $a $b"
        ),
    );
    let times: Vec<f64> = out.split_whitespace().map(|t| t.parse().unwrap()).collect();
    inspector.sh(
        cri,
        &format!(
            "nsenter -t 1 -m -p -- /usr/bin/ctr -n k8s.io task kill -s KILL {name}; sleep 1; nsenter -t 1 -m -p -- /usr/bin/ctr -n k8s.io task delete -f {name}; nsenter -t 1 -m -p -- /usr/bin/ctr -n k8s.io container delete {name}"
        ),
    );
    times[1] - times[0]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let boots: usize = args.next().map_or(2, |a| a.parse().unwrap());
    let warm: usize = args.next().map_or(5, |a| a.parse().unwrap());
    let node = node_images("cri_bench", &["1.0.0"]);
    let (mut first_cri, mut first_ctr, mut warm_cri, mut warm_ctr) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    println!(
        "{:<6} {:<6} {:>10} {:>10}",
        "boot", "run", "cri_pod_s", "ctr_run_s"
    );
    for boot in 0..boots {
        let run_dir = node.dir.join(format!("boot{boot}"));
        let disk = vm_disk(&node.images[0], &run_dir, 8 << 30);
        let relay = free_port();
        let mut vm = Machine::start(
            &format!("cri-bench-{boot}"),
            &disk,
            &run_dir.join("vm"),
            |c| {
                c.memory_mib = 1536;
                c.forwards.push((relay, RELAY_PORT));
            },
        );
        vm.expect("keel: ready", Duration::from_secs(420));
        let mut cri = connect(relay, Duration::from_secs(180));
        let inspector = Inspector::start(&mut cri, "bench-inspector");
        let (c, r) = if boot % 2 == 0 {
            let c = cri_pod(&mut cri, "first");
            (c, ctr_run(&mut cri, &inspector, "first"))
        } else {
            let r = ctr_run(&mut cri, &inspector, "first");
            (cri_pod(&mut cri, "first"), r)
        };
        println!("{boot:<6} {:<6} {c:>10.2} {r:>10.2}", "first");
        first_cri.push(c);
        first_ctr.push(r);
        for i in 0..warm {
            let name = format!("warm{i}");
            let c = cri_pod(&mut cri, &name);
            let r = ctr_run(&mut cri, &inspector, &name);
            println!("{boot:<6} {:<6} {c:>10.2} {r:>10.2}", name);
            warm_cri.push(c);
            warm_ctr.push(r);
        }
        vm.kill();
    }
    let (fc, fr) = (median(&mut first_cri), median(&mut first_ctr));
    let (wc, wr) = (median(&mut warm_cri), median(&mut warm_ctr));
    println!(
        "median first: CRI pod {fc:.2} s, ctr run {fr:.2} s, CRI/ctr {:.2}",
        fc / fr
    );
    println!(
        "median warm:  CRI pod {wc:.2} s, ctr run {wr:.2} s, CRI/ctr {:.2}",
        wc / wr
    );
}
