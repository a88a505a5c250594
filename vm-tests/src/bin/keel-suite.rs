//! `keel-suite [--lanes N] [--list] [--only PART]... [-- TEST-ARGS...]`: runs the whole test
//! suite, every test binary of the workspace plus the init's block-device tests in a VM, N at a time (default 2).
//!
//! Why not plain `cargo test --workspace`: it runs test binaries one after another, and most
//! QEMU tests keep one VM busy, so one of the two cores of a CI machine idled for most of the
//! suite (55 min of `cargo test` then). Here each test binary is a job; jobs are started
//! longest first (by the durations of the previous run, else by the table below) and a lane
//! takes the next job as soon as it is free. Each job's output goes to its own log, printed
//! when the job fails. Jobs run the test executables directly, as cargo does (working
//! directory and `CARGO_*` variables), because `cargo test` holds the build directory's lock
//! while its tests run, which would serialise the lanes again.
//!
//! Each job gets its own work directory (`KEEL_TEST_WORK_DIR`, read by the harness's
//! `work_dir()`); when a job ends, its disks and images (files of 16 MiB and more) are
//! deleted and its consoles and logs kept, so the suite needs the disk of two jobs at a time.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::Instant;

/// Seconds measured for the heaviest jobs in a whole two-lane run (December 2026). The
/// first run on a fresh clone has no `suite-times.json` yet. Unknown QEMU jobs count as heavy,
/// so new ones start early.
const KNOWN_SECONDS: &[(&str, f64)] = &[
    ("keel-vm-tests/upgrade", 960.0),
    ("keel-vm-tests/metal", 432.0),
    ("keel-vm-tests/cluster", 1150.0),
    ("keel-vm-tests/roles", 417.0),
    ("keel-vm-tests/faults", 404.0),
    ("keel-vm-tests/reproducible", 239.0),
    ("keel-vm-tests/cri", 238.0),
    ("keel-vm-tests/boot", 250.0),
    ("keel-builder/run_qemu", 142.0),
    ("keel-vm-tests/image_format", 129.0),
    ("keel-vm-tests/pod_network", 121.0),
    ("keel-vm-tests/node", 91.0),
    ("keel-vm-tests/config_trust", 81.0),
    ("keel-builder/debian_apt", 45.0),
    ("init block devices (VM)", 36.0),
    ("keel-builder/outputs", 35.0),
    ("keel-builder (unit)", 25.0),
    ("keel-builder/cli", 24.0),
    ("keel-builder/private_build", 17.0),
    ("keel-init (unit)", 13.0),
    ("keel-minisign/minisign_interop", 9.0),
    ("keel-init/net_namespace", 7.0),
    ("keel-pki (unit)", 5.0),
];
const UNKNOWN_SECONDS: f64 = 400.0;
/// Unit-test binaries and other small jobs: the seconds they take when not in the table.
const SMALL_SECONDS: f64 = 10.0;
/// Files this large left in a finished job's work directory are disks and images.
const PRUNE_BYTES: u64 = 16 << 20;

struct Job {
    name: String,
    command: Command,
    work_dir: Option<PathBuf>,
}

struct Outcome {
    name: String,
    ok: bool,
    seconds: f64,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Options {
        lanes,
        list,
        only,
        test_args,
    } = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!(
                "keel-suite: {e}\nusage: keel-suite [--lanes N] [--list] [--only PART]... [-- TEST-ARGS...]"
            );
            return ExitCode::from(2);
        }
    };
    let root = workspace_root();
    let logs = root.join("target").join("suite-logs");
    let _ = std::fs::remove_dir_all(&logs);
    if let Err(e) = std::fs::create_dir_all(&logs) {
        eprintln!("keel-suite: creating {}: {e}", logs.display());
        return ExitCode::FAILURE;
    }
    let mut jobs = match test_executables(&root, &test_args) {
        Ok(jobs) => jobs,
        Err(e) => {
            eprintln!("keel-suite: {e}");
            return ExitCode::FAILURE;
        }
    };
    jobs.push(block_device_job(&root, &test_args));
    if !only.is_empty() {
        jobs.retain(|job| only.iter().any(|part| job.name.contains(part.as_str())));
    }
    let times = previous_times(&logs.with_file_name("suite-times.json"));
    jobs.sort_by(|a, b| expected(&times, &b.name).total_cmp(&expected(&times, &a.name)));
    if list {
        for job in &jobs {
            println!("{:7.1} s  {}", expected(&times, &job.name), job.name);
        }
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let outcomes = run_lanes(jobs, lanes, &logs);
    let wall = started.elapsed().as_secs_f64();
    // Test arguments (a filter, `--list`) make durations that would mislead the next order.
    if test_args.is_empty() && only.is_empty() {
        save_times(&logs.with_file_name("suite-times.json"), &times, &outcomes);
    }
    summarise(&outcomes, wall, lanes, &logs)
}

struct Options {
    lanes: usize,
    /// Print the jobs in the order they would start, with their expected seconds, and stop.
    list: bool,
    /// Run only the jobs whose names contain one of these (`--only upgrade --only keel-init`).
    only: Vec<String>,
    test_args: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut lanes = std::env::var("KEEL_TEST_LANES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2usize);
    let mut rest = args.iter();
    let mut list = false;
    let mut only = Vec::new();
    let mut test_args = Vec::new();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--lanes" => {
                let value = rest.next().ok_or("--lanes needs a number")?;
                lanes =
                    value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("--lanes: expected a positive number, got {value:?}")
                    })?;
            }
            "--list" => list = true,
            "--only" => only.push(
                rest.next()
                    .ok_or("--only needs part of a job's name")?
                    .clone(),
            ),
            "--" => test_args.extend(rest.by_ref().cloned()),
            // `vm-tests/test --no-fail-fast` was the old way: every job runs to its end here.
            "--no-fail-fast" => {}
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Options {
        lanes,
        list,
        only,
        test_args,
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Builds every test target of the workspace and returns one job per test executable.
fn test_executables(root: &Path, test_args: &[String]) -> Result<Vec<Job>, String> {
    eprintln!("keel-suite: building the tests (cargo test --workspace --no-run)");
    let output = Command::new(cargo())
        .current_dir(root)
        .args(["test", "--workspace", "--no-run"])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !output.status.success() {
        return Err("building the tests failed".to_owned());
    }
    let mut jobs = Vec::new();
    for line in output.stdout.split(|b| *b == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(job) = job_of_artifact(&message, root, test_args) {
            jobs.push(job);
        }
    }
    if jobs.is_empty() {
        return Err("cargo reported no test executables".to_owned());
    }
    Ok(jobs)
}

/// A job for one `compiler-artifact` message that is a test executable.
fn job_of_artifact(message: &serde_json::Value, root: &Path, test_args: &[String]) -> Option<Job> {
    if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
        return None;
    }
    let executable = message["executable"].as_str()?;
    let manifest = Path::new(message["manifest_path"].as_str()?);
    let package_dir = manifest.parent()?;
    let package = package_name(message["package_id"].as_str()?, package_dir);
    let target = message["target"]["name"].as_str()?;
    let kind = message["target"]["kind"][0].as_str().unwrap_or("lib");
    let name = match kind {
        "test" => format!("{package}/{target}"),
        "lib" => format!("{package} (unit)"),
        other => format!("{package} ({other} {target})"),
    };
    let work_dir = root.join("target").join("vm-tests").join(slug(&name));
    let mut command = Command::new(executable);
    command
        .current_dir(package_dir)
        .env("CARGO", cargo())
        .env("CARGO_MANIFEST_DIR", package_dir)
        .env("CARGO_PKG_NAME", &package)
        .env(keel_vm_tests::WORK_DIR_VAR, &work_dir)
        .args(test_args);
    Some(Job {
        name,
        command,
        work_dir: Some(work_dir),
    })
}

/// The package's name from its id (`path+file:///...#name@0.1.0` or `...#0.1.0`, where the
/// name is then the directory's).
fn package_name(id: &str, dir: &Path) -> String {
    let fragment = id.rsplit('#').next().unwrap_or(id);
    match fragment.split_once('@') {
        Some((name, _)) => name.to_owned(),
        None => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| fragment.to_owned()),
    }
}

/// The init's block-device tests, which need device-mapper: inside a VM on the Debian kernel
/// that the image builds leave in keel's package cache. It is ordered among the others by its
/// duration, so by the time a lane takes it, builds that fetch the kernel have run.
fn block_device_job(root: &Path, test_args: &[String]) -> Job {
    let mut command = Command::new(root.join("init/tests/vm/run"));
    command
        .current_dir(root)
        .args(["--", "--include-ignored"])
        .args(test_args);
    Job {
        name: "init block devices (VM)".to_owned(),
        command,
        work_dir: None,
    }
}

/// `keel-vm-tests/upgrade` -> `keel-vm-tests-upgrade`, `keel-init (unit)` -> `keel-init-unit`.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

fn expected(times: &BTreeMap<String, f64>, name: &str) -> f64 {
    if let Some(seconds) = times.get(name) {
        return *seconds;
    }
    if let Some((_, seconds)) = KNOWN_SECONDS.iter().find(|(n, _)| *n == name) {
        return *seconds;
    }
    if name.starts_with("keel-vm-tests/") {
        UNKNOWN_SECONDS
    } else {
        SMALL_SECONDS
    }
}

fn previous_times(path: &Path) -> BTreeMap<String, f64> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn save_times(path: &Path, previous: &BTreeMap<String, f64>, outcomes: &[Outcome]) {
    let mut times = previous.clone();
    for outcome in outcomes {
        times.insert(outcome.name.clone(), outcome.seconds);
    }
    if let Ok(json) = serde_json::to_vec_pretty(&times) {
        let _ = std::fs::write(path, json);
    }
}

/// Runs the jobs in `lanes` threads, each taking the next job from the front of the queue.
fn run_lanes(jobs: Vec<Job>, lanes: usize, logs: &Path) -> Vec<Outcome> {
    let total = jobs.len();
    let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<_>>());
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..lanes {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    let Some(job) = next else { break };
                    let outcome = run_job(job, logs);
                    let mut done = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                    done.push(outcome);
                    let last = &done[done.len() - 1];
                    eprintln!(
                        "keel-suite: [{}/{total}] {} {:7.1} s  {}",
                        done.len(),
                        if last.ok { "ok    " } else { "FAILED" },
                        last.seconds,
                        last.name
                    );
                }
            });
        }
    });
    outcomes.into_inner().unwrap_or_else(|e| e.into_inner())
}

fn run_job(mut job: Job, logs: &Path) -> Outcome {
    let log_path = logs.join(format!("{}.log", slug(&job.name)));
    let started = Instant::now();
    let ok = match std::fs::File::create(&log_path) {
        Ok(log) => {
            let stderr = log.try_clone();
            job.command.stdin(Stdio::null()).stdout(log);
            if let Ok(stderr) = stderr {
                job.command.stderr(stderr);
            }
            match job.command.status() {
                Ok(status) => status.success(),
                Err(e) => {
                    eprintln!("keel-suite: {}: cannot start: {e}", job.name);
                    false
                }
            }
        }
        Err(e) => {
            eprintln!("keel-suite: creating {}: {e}", log_path.display());
            false
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if !ok {
        print_tail(&job.name, &log_path);
    }
    if let Some(dir) = &job.work_dir
        && std::env::var_os(keel_vm_tests::KEEP_VAR).is_none()
    {
        prune_large_files(dir);
    }
    Outcome {
        name: job.name,
        ok,
        seconds,
    }
}

fn print_tail(name: &str, log: &Path) {
    let Ok(file) = std::fs::File::open(log) else {
        return;
    };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    let from = lines.len().saturating_sub(80);
    eprintln!("---- {name}: last lines of {} ----", log.display());
    for line in &lines[from..] {
        eprintln!("{line}");
    }
    eprintln!("---- end of {name} ----");
}

fn prune_large_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.metadata() {
            Ok(m) if m.is_dir() => prune_large_files(&path),
            Ok(m) if m.len() >= PRUNE_BYTES => {
                let _ = std::fs::remove_file(&path);
            }
            _ => {}
        }
    }
}

fn summarise(outcomes: &[Outcome], wall: f64, lanes: usize, logs: &Path) -> ExitCode {
    let mut sorted: Vec<&Outcome> = outcomes.iter().collect();
    sorted.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let busy: f64 = outcomes.iter().map(|o| o.seconds).sum();
    eprintln!(
        "\nkeel-suite: jobs by duration (logs in {}):",
        logs.display()
    );
    for outcome in sorted.iter().filter(|o| o.seconds >= 5.0 || !o.ok) {
        let mark = if outcome.ok { "ok    " } else { "FAILED" };
        eprintln!("  {mark} {:7.1} s  {}", outcome.seconds, outcome.name);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.name.as_str())
        .collect();
    eprintln!(
        "keel-suite: {} jobs in {:.0} s wall ({:.1} min) on {lanes} lanes, {:.0} s of jobs; {} failed",
        outcomes.len(),
        wall,
        wall / 60.0,
        busy,
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("keel-suite: FAILED: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}
