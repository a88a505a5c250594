//! The supervisor against real processes. Tests run in parallel in one process and share
//! the process-wide reaper, which is part of what is being tested.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_init::supervisor::{
    ConfigError, Error, ExitStatus, Health, Options, OrphanRecord, ProcessSpec, Reaper, Restart,
    ServiceSpec, ServiceState, StopOutcome, Supervisor, WaitError,
};

/// A scratch directory, removed when the test ends (the suite's runs left them in /tmp).
struct TestDir(PathBuf);

impl std::ops::Deref for TestDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TestDir {
    let dir = std::env::temp_dir().join(format!("keel-sv-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TestDir(dir)
}

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<String>>>);

impl Console {
    fn options(&self) -> Options {
        let lines = self.0.clone();
        Options {
            console: Arc::new(move |line: &str| lines.lock().unwrap().push(line.to_string())),
            log_dir: None,
        }
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn has(&self, line: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l == line)
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

fn sh(name: &str, script: &str) -> ServiceSpec {
    ServiceSpec::new(name, &["/bin/sh", "-c", script])
}

fn state(sup: &Supervisor, name: &str) -> ServiceState {
    sup.service(name).unwrap().state
}

/// (state, ppid) of a process, None once it is reaped.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(s, ppid)| s == 'Z' && ppid == me))
        .collect()
}

#[test]
fn dependencies_start_only_once_healthy() {
    let dir = temp_dir("deps");
    let ready = dir.join("a.ready");
    let ready = ready.to_str().unwrap();
    let mut a = sh("a", &format!("sleep 0.5; touch {ready}; exec sleep 30"));
    a.health = Health::Exec(vec!["/bin/test".into(), "-e".into(), ready.into()]);
    let mut b = sh(
        "b",
        &format!(
            "if [ -e {ready} ]; then echo a-was-ready; else echo TOO-EARLY; fi; exec sleep 30"
        ),
    );
    b.depends_on = vec!["a".into()];
    let mut c = ServiceSpec::new("c", &["/bin/sleep", "30"]);
    c.depends_on = vec!["b".into(), "a".into()];
    let console = Console::default();
    // Defined backwards: the order must come from the dependencies.
    let sup = Supervisor::start(vec![c, b, a], console.options()).unwrap();
    let names: Vec<String> = sup.status().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["a", "b", "c"]);

    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(state(&sup, "a"), ServiceState::Starting);
    let b_status = sup.service("b").unwrap();
    assert_eq!(b_status.state, ServiceState::Waiting);
    assert_eq!(b_status.message.as_deref(), Some("waiting for a"));
    assert_eq!(b_status.pid, None);

    sup.wait_healthy("c", Duration::from_secs(5)).unwrap();
    let a = sup.service("a").unwrap();
    let b = sup.service("b").unwrap();
    let c = sup.service("c").unwrap();
    let (a0, b0, c0) = (a.recent_starts[0], b.recent_starts[0], c.recent_starts[0]);
    assert!(b0 >= a.since, "b started before a became healthy");
    assert!(b0 - a0 >= Duration::from_millis(450), "{:?}", b0 - a0);
    assert!(c0 >= b0);
    assert!(wait_until(Duration::from_secs(2), || console.has("[b] a-was-ready")));
    assert!(!console.lines().iter().any(|l| l.contains("TOO-EARLY")));
    assert!(console.has("keel: a: healthy"));
    let report = sup.stop_all(Duration::from_secs(5));
    assert!(report.all_gone());
}

#[test]
fn socket_and_http_health_checks() {
    let dir = temp_dir("health");
    let sock = dir.join("svc.sock");
    let mut unix = ServiceSpec::new("unix", &["/bin/sleep", "30"]);
    unix.health = Health::UnixSocket(sock.clone());

    // Answers 503 three times, then 200.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let mut buf = [0u8; 512];
            let _ = conn.read(&mut buf);
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let answer = if n < 3 {
                "HTTP/1.1 503 No\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\n\r\n"
            };
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    let mut http = ServiceSpec::new("http", &["/bin/sleep", "30"]);
    http.health = Health::Http {
        port,
        path: "/healthz".into(),
    };

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut never = ServiceSpec::new("never", &["/bin/sleep", "30"]);
    never.health = Health::Http {
        port: closed,
        path: "/".into(),
    };
    never.startup_grace = Duration::from_millis(100);

    let console = Console::default();
    let sup = Supervisor::start(vec![unix, http, never], console.options()).unwrap();
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(&sup, "unix"), ServiceState::Starting);
    let _server = UnixListener::bind(&sock).unwrap();
    sup.wait_healthy("unix", Duration::from_secs(3)).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));

    sup.wait_healthy("http", Duration::from_secs(3)).unwrap();
    assert!(requests.load(Ordering::SeqCst) >= 4);

    let err = sup
        .wait_healthy("never", Duration::from_millis(400))
        .unwrap_err();
    let WaitError::Timeout { state, message, .. } = err else {
        panic!("{err:?}");
    };
    assert_eq!(state, ServiceState::Starting);
    let message = message.unwrap();
    assert!(message.starts_with("not healthy after 100ms:"), "{message}");
    assert!(message.contains("cannot connect"), "{message}");
    assert_eq!(
        sup.wait_healthy("nope", Duration::ZERO),
        Err(WaitError::UnknownService("nope".into()))
    );
}

#[test]
fn output_reaches_console_and_rotated_log_files() {
    let dir = temp_dir("output");
    let logs = dir.join("logs");
    let flag = dir.join("go");
    let flag = flag.to_str().unwrap();
    let mut talker = sh(
        "talker",
        &format!(
            r#"echo "early line"; printf '\377\376 raw\n'; echo err-line >&2
            while [ ! -e {flag} ]; do sleep 0.02; done
            i=0; while [ $i -lt 200 ]; do echo "line $i padding padding padding"; i=$((i+1)); done
            echo done"#
        ),
    );
    talker.restart = Restart::Never;
    talker.log.max_file_size = 2000;
    let mut wide = sh(
        "wide",
        "head -c 20000 /dev/zero | tr '\\0' x; echo; echo after",
    );
    wide.restart = Restart::Never;
    let console = Console::default();
    let sup = Supervisor::start(vec![talker, wide], console.options()).unwrap();

    // Before the log directory exists: console only, files buffered. The supervisor's own
    // "started" note is written after the fork returns, which on a loaded machine can be after
    // the child's first lines: wait for it too.
    let started = |c: &Console| {
        c.0.lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("keel: talker: started (pid "))
    };
    assert!(wait_until(Duration::from_secs(10), || {
        console.has("[talker] err-line")
            && console.has("[talker] \u{fffd}\u{fffd} raw")
            && started(&console)
    }));
    assert!(console.has("[talker] early line"));
    sup.attach_log_dir(&logs).unwrap();
    let log = logs.join("talker.log");
    let text = std::fs::read(&log).unwrap();
    // Supervisor notes about the service go to its log too.
    for line in [
        &b"keel: started (pid "[..],
        b"early line\n",
        b"\xff\xfe raw\n",
        b"err-line\n",
    ] {
        assert!(
            text.windows(line.len()).any(|w| w == line),
            "{line:?} missing"
        );
    }

    std::fs::write(flag, "").unwrap();
    let finished = || sup.service("talker").unwrap().finished;
    assert!(wait_until(Duration::from_secs(5), finished));
    let read = |name: &str| std::fs::read_to_string(logs.join(name)).unwrap_or_default();
    let both = || format!("{}{}", read("talker.log.1"), read("talker.log"));
    assert!(
        wait_until(Duration::from_secs(2), || both().contains("\ndone\n")),
        "{}",
        both()
    );
    assert!(console.has("[talker] line 199 padding padding padding"));
    assert!(console.has("keel: talker: exit status 0; not restarting"));
    let (old, current) = (read("talker.log.1"), read("talker.log"));
    assert!(
        current.len() <= 2000 && old.len() <= 2000,
        "{} {}",
        current.len(),
        old.len()
    );
    assert!(
        old.len() > 1900,
        "rotated at the limit, not before: {}",
        old.len()
    );
    // The two files hold the latest lines, in order, without a gap.
    let numbers: Vec<usize> = both()
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.split(' ').next()?.parse().ok())
        .collect();
    assert!(numbers.len() > 50, "{numbers:?}");
    assert_eq!(numbers.last(), Some(&199));
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");

    // A 20000-byte line is split, losing nothing.
    assert!(wait_until(Duration::from_secs(3), || console.has("[wide] after")));
    let xs: Vec<String> = console
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("[wide] x"))
        .collect();
    assert_eq!(xs.len(), 3);
    assert!(xs.iter().all(|l| l.len() <= "[wide] ".len() + 8192));
    let total: usize = xs.iter().map(|l| l.len() - "[wide] ".len()).sum();
    assert_eq!(total, 20000);
    assert!(wait_until(Duration::from_secs(2), || {
        std::fs::read_to_string(logs.join("wide.log")).is_ok_and(|t| {
            let xs = t.lines().filter(|l| l.bytes().all(|b| b == b'x'));
            xs.map(str::len).sum::<usize>() == 20000
        })
    }));
}

#[test]
fn restart_backoff_grows() {
    let mut crash = ServiceSpec::new("crash", &["/bin/false"]);
    crash.backoff.initial = Duration::from_millis(50);
    crash.backoff.reset_after = Duration::from_secs(60);
    let console = Console::default();
    let sup = Supervisor::start(vec![crash], console.options()).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        sup.service("crash").unwrap().recent_starts.len() >= 6
    }));
    let status = sup.service("crash").unwrap();
    // Each gap is the backoff delay plus the process's short life. The life is noisy on a
    // loaded machine (ratios between gaps failed under the parallel suite), so each gap is
    // checked against its own delay, which doubles: 50, 100, 200, 400, 800 ms. A backoff that
    // did not grow would put the fifth gap near 50 ms plus one short life.
    let gaps: Vec<f64> = status
        .recent_starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    for (i, gap) in gaps.iter().take(5).enumerate() {
        let delay = 0.050 * f64::from(1u32 << i);
        assert!(*gap >= delay, "gap {i}: {gaps:?}");
    }
    assert!(status.restarts >= 5);
    assert_eq!(status.last_exit, Some(ExitStatus::Exited(1)));
    assert!(console.has("keel: crash: exit status 1; restarting in 50ms"));
    assert!(console.has("keel: crash: exit status 1; restarting in 800ms"));
}

#[test]
fn restart_policies() {
    let mut never = ServiceSpec::new("never", &["/bin/false"]);
    never.restart = Restart::Never;
    let mut ok = ServiceSpec::new("ok", &["/bin/true"]);
    ok.restart = Restart::OnFailure;
    let mut bad = ServiceSpec::new("bad", &["/bin/sh", "-c", "exit 3"]);
    bad.restart = Restart::OnFailure;
    bad.backoff.initial = Duration::from_millis(20);
    let mut after_ok = ServiceSpec::new("after-ok", &["/bin/sleep", "30"]);
    after_ok.depends_on = vec!["ok".into()];
    let sup =
        Supervisor::start(vec![never, ok, bad, after_ok], Console::default().options()).unwrap();

    // A process-alive service counts as healthy while its process runs, however briefly.
    let failed = || state(&sup, "never") == ServiceState::Failed;
    assert!(wait_until(Duration::from_secs(3), failed));
    let err = sup
        .wait_healthy("never", Duration::from_secs(3))
        .unwrap_err();
    assert!(
        matches!(
            err,
            WaitError::Failed {
                state: ServiceState::Failed,
                ..
            }
        ),
        "{err:?}"
    );
    // A finished one-shot counts as ready, for waiters and dependents.
    sup.wait_healthy("ok", Duration::from_secs(3)).unwrap();
    sup.wait_healthy("after-ok", Duration::from_secs(3))
        .unwrap();
    assert!(wait_until(Duration::from_secs(3), || sup
        .service("bad")
        .unwrap()
        .restarts
        >= 2));
    std::thread::sleep(Duration::from_millis(300));

    let never = sup.service("never").unwrap();
    assert_eq!((never.restarts, never.recent_starts.len()), (0, 1));
    assert_eq!(never.last_exit, Some(ExitStatus::Exited(1)));
    assert_eq!(never.next_start, None);
    let ok = sup.service("ok").unwrap();
    assert_eq!(
        (ok.state, ok.restarts, ok.finished),
        (ServiceState::Stopped, 0, true)
    );
    assert_eq!(ok.last_exit, Some(ExitStatus::Exited(0)));
    assert_eq!(
        sup.service("bad").unwrap().last_exit,
        Some(ExitStatus::Exited(3))
    );
}

#[test]
fn orphans_are_reaped_and_logged() {
    let dir = temp_dir("orphans");
    let pidfile = dir.join("orphan.pid");
    let logged = Arc::new(Mutex::new(Vec::<OrphanRecord>::new()));
    let sink = logged.clone();
    let reaper = Reaper::global().unwrap();
    reaper.set_orphan_sink(Some(Arc::new(move |r: &OrphanRecord| {
        sink.lock().unwrap().push(*r)
    })));

    let mut forker = sh(
        "forker",
        &format!("(sleep 0.3; exit 7) & echo $! > {}", pidfile.display()),
    );
    forker.restart = Restart::Never;
    let sup = Supervisor::start(vec![forker], Console::default().options()).unwrap();
    assert!(wait_until(Duration::from_secs(3), || sup
        .service("forker")
        .unwrap()
        .finished));
    let orphan: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Re-parented to us (the subreaper) once its parent exited.
    assert!(matches!(proc_stat(orphan), Some((_, ppid)) if ppid == std::process::id() as i32));

    assert!(
        wait_until(Duration::from_secs(5), || proc_stat(orphan).is_none()),
        "not reaped"
    );
    let expected = (orphan, ExitStatus::Exited(7));
    assert!(wait_until(Duration::from_secs(2), || {
        logged
            .lock()
            .unwrap()
            .iter()
            .any(|r| (r.pid, r.status) == expected)
    }));
    assert!(
        reaper
            .recent_orphans()
            .iter()
            .any(|r| (r.pid, r.status) == expected)
    );
    reaper.set_orphan_sink(None);

    // Zombies may exist for an instant between exit and reap (other tests run
    // concurrently), but none may stay.
    let zombies = zombie_children();
    std::thread::sleep(Duration::from_millis(500));
    let stuck: Vec<i32> = zombie_children()
        .into_iter()
        .filter(|p| zombies.contains(p))
        .collect();
    assert!(stuck.is_empty(), "zombies left: {stuck:?}");
}

#[test]
fn early_exits_never_lose_a_status() {
    // Directly: exits racing with the claim after fork.
    let reaper = Reaper::global().unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                for i in 0..150 {
                    let (program, code) = if i % 2 == 0 {
                        ("/bin/true", 0)
                    } else {
                        ("/bin/false", 1)
                    };
                    let argv = [program.to_string()];
                    let spec = ProcessSpec {
                        argv: &argv,
                        env: &[],
                        working_dir: None,
                        stdout: None,
                        stderr: None,
                    };
                    let status = reaper.run(spec, Duration::from_secs(5)).unwrap();
                    assert_eq!(status, ExitStatus::Exited(code), "run {i} of {program}");
                }
            })
        })
        .collect();
    // Through the supervisor: a lost exit would leave a service "healthy" forever.
    let specs: Vec<ServiceSpec> = (0..3)
        .map(|i| {
            let mut s = ServiceSpec::new(format!("blink{i}"), &["/bin/true"]);
            s.backoff.initial = Duration::from_millis(1);
            s.backoff.max = Duration::from_millis(1);
            s.log.console = false;
            s
        })
        .collect();
    let sup = Supervisor::start(specs, Console::default().options()).unwrap();
    for w in workers {
        w.join().unwrap();
    }
    let enough = || sup.status().iter().all(|s| s.restarts >= 100);
    assert!(
        wait_until(Duration::from_secs(15), enough),
        "{:#?}",
        sup.status()
    );
}

#[test]
fn stop_all_goes_in_reverse_order_and_kills_the_stubborn() {
    let dir = temp_dir("stop");
    let order = dir.join("order");
    let polite = |name: &str| {
        sh(
            name,
            &format!(
                "trap 'echo {name} >> {}; exit 0' TERM; while :; do sleep 0.05; done",
                order.display()
            ),
        )
    };
    let a = polite("a");
    let mut b = polite("b");
    b.depends_on = vec!["a".into()];
    let mut c = sh("c", "trap '' TERM; while :; do sleep 0.05; done");
    c.depends_on = vec!["b".into()];
    c.stop_timeout = Duration::from_millis(300);
    let solo = ServiceSpec::new("solo", &["/bin/sleep", "30"]);
    let mut waiting = ServiceSpec::new("waiting", &["/bin/true"]);
    waiting.depends_on = vec!["never-healthy".into()];
    let mut never_healthy = ServiceSpec::new("never-healthy", &["/bin/sleep", "30"]);
    never_healthy.health = Health::Exec(vec!["/bin/false".into()]);
    let console = Console::default();
    let sup = Supervisor::start(
        vec![a, b, c, solo, waiting, never_healthy],
        console.options(),
    )
    .unwrap();
    sup.wait_healthy("c", Duration::from_secs(3)).unwrap();
    sup.wait_healthy("solo", Duration::from_secs(3)).unwrap();
    let pids: Vec<i32> = sup.status().iter().filter_map(|s| s.pid).collect();
    assert_eq!(pids.len(), 5);
    let c_pid = sup.service("c").unwrap().pid.unwrap();
    // Each service leads its own session and process group.
    let stat = std::fs::read_to_string(format!("/proc/{c_pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_eq!(
        (fields[2], fields[3]),
        (&*c_pid.to_string(), &*c_pid.to_string())
    );

    let start = Instant::now();
    let report = sup.stop_all(Duration::from_secs(10));
    let elapsed = start.elapsed();
    assert!(report.all_gone());
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert_eq!(report.outcome("waiting"), Some(&StopOutcome::NotRunning));
    assert_eq!(
        report.outcome("c"),
        Some(&StopOutcome::Killed(ExitStatus::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false
        }))
    );
    assert_eq!(
        report.outcome("b"),
        Some(&StopOutcome::Exited(ExitStatus::Exited(0)))
    );
    assert_eq!(
        report.outcome("a"),
        Some(&StopOutcome::Exited(ExitStatus::Exited(0)))
    );
    assert!(matches!(
        report.outcome("solo"),
        Some(StopOutcome::Exited(_))
    ));
    let position = |n: &str| {
        report
            .services
            .iter()
            .position(|(name, _)| name == n)
            .unwrap()
    };
    assert!(
        position("c") < position("b") && position("b") < position("a"),
        "{report:?}"
    );
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "b\na\n");
    for status in sup.status() {
        assert_eq!(status.state, ServiceState::Stopped, "{status}");
        assert_eq!(status.pid, None);
    }
    for pid in pids {
        assert!(
            wait_until(Duration::from_secs(1), || proc_stat(pid).is_none()),
            "pid {pid} left"
        );
    }
    // Nothing restarts after a stop.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        sup.status()
            .iter()
            .all(|s| s.state == ServiceState::Stopped)
    );
    assert!(console.has("keel: c: did not stop in time; sent SIGKILL"));
}

#[test]
fn missing_binary_fails_and_is_retried_without_harm() {
    let mut ghost = ServiceSpec::new("ghost", &["/nonexistent/keel-ghost", "--flag"]);
    ghost.backoff.initial = Duration::from_millis(50);
    let mut dependent = ServiceSpec::new("dependent", &["/bin/sleep", "30"]);
    dependent.depends_on = vec!["ghost".into()];
    let mut once = ServiceSpec::new("once", &["keel-not-in-path"]);
    once.restart = Restart::Never;
    let fine = ServiceSpec::new("fine", &["/bin/sleep", "30"]);
    let console = Console::default();
    let sup = Supervisor::start(vec![ghost, dependent, once, fine], console.options()).unwrap();

    sup.wait_healthy("fine", Duration::from_secs(3)).unwrap();
    assert!(wait_until(Duration::from_secs(3), || sup
        .service("ghost")
        .unwrap()
        .restarts
        >= 2));
    let ghost = sup.service("ghost").unwrap();
    assert_eq!(ghost.state, ServiceState::Failed);
    assert_eq!(
        ghost.message.as_deref(),
        Some("cannot execute /nonexistent/keel-ghost: No such file or directory (os error 2)")
    );
    assert!(ghost.next_start.is_some(), "retried with backoff");
    assert_eq!(ghost.last_exit, None);
    let err = sup
        .wait_healthy("ghost", Duration::from_millis(100))
        .unwrap_err();
    assert!(
        matches!(
            err,
            WaitError::Timeout {
                state: ServiceState::Failed,
                ..
            }
        ),
        "{err:?}"
    );
    let dependent = sup.service("dependent").unwrap();
    assert_eq!(dependent.state, ServiceState::Waiting);
    assert_eq!(dependent.message.as_deref(), Some("waiting for ghost"));

    let err = sup
        .wait_healthy("once", Duration::from_secs(3))
        .unwrap_err();
    let WaitError::Failed { state, message, .. } = err else {
        panic!("{err:?}");
    };
    assert_eq!(state, ServiceState::Failed);
    assert!(
        message
            .unwrap()
            .starts_with("cannot find keel-not-in-path in PATH ")
    );
    assert!(console.lines().iter().any(|l| l.starts_with(
        "keel: ghost: failed to start: cannot execute /nonexistent/keel-ghost: No such file or directory (os error 2); retrying in"
    )));
    assert_eq!(sup.service("fine").unwrap().state, ServiceState::Healthy);
}

#[test]
fn environment_working_dir_and_signals() {
    let dir = temp_dir("env");
    let mut w = sh("w", "pwd; echo \"$FOO|$HOME\"; echo \"PATH=$PATH\"");
    w.env = vec![("FOO".into(), "bar".into())];
    w.working_dir = Some(dir.clone());
    w.restart = Restart::Never;
    // Exec'd directly (and found through PATH), so it shows exactly what the child got.
    let mut sigs = ServiceSpec::new(
        "sigs",
        &["grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"],
    );
    sigs.restart = Restart::Never;
    let mut bad_dir = ServiceSpec::new("bad-dir", &["/bin/true"]);
    bad_dir.working_dir = Some(Path::new("/nonexistent/dir").into());
    bad_dir.restart = Restart::Never;
    let console = Console::default();
    let sup = Supervisor::start(vec![w, sigs, bad_dir], console.options()).unwrap();
    sup.wait_healthy("w", Duration::from_secs(3)).unwrap();
    assert!(wait_until(Duration::from_secs(2), || console
        .lines()
        .iter()
        .any(|l| l.starts_with("[w] PATH="))));
    assert!(console.has(&format!("[w] {}", dir.display())));
    assert!(
        console.has("[w] bar|"),
        "the init's environment is not inherited"
    );
    let sigs_done = || {
        console
            .lines()
            .iter()
            .filter(|l| l.starts_with("[sigs] "))
            .count()
            == 2
    };
    assert!(wait_until(Duration::from_secs(2), sigs_done));
    assert!(console.has("[sigs] SigBlk:\t0000000000000000"));
    assert!(
        console.has("[sigs] SigIgn:\t0000000000000000"),
        "{:?}",
        console.lines()
    );
    assert!(console.has("[w] PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
    let err = sup
        .wait_healthy("bad-dir", Duration::from_secs(3))
        .unwrap_err();
    assert!(
        err.to_string().ends_with(
            "cannot change directory to /nonexistent/dir: No such file or directory (os error 2)"
        ),
        "{err}"
    );
}

#[test]
fn configuration_errors_start_nothing() {
    let dir = temp_dir("config");
    let marker = dir.join("started");
    let touch = |name: &str, deps: &[&str]| {
        let mut s = sh(name, &format!("touch {}; exec sleep 30", marker.display()));
        s.depends_on = deps.iter().map(|d| d.to_string()).collect();
        s
    };
    let cycle = vec![touch("free", &[]), touch("x", &["y"]), touch("y", &["x"])];
    match Supervisor::start(cycle, Console::default().options()) {
        Err(Error::Config(ConfigError::Cycle(path))) => assert_eq!(path, ["x", "y", "x"]),
        other => panic!("{:?}", other.err()),
    }
    let unknown = vec![touch("free", &[]), touch("k", &["nope"])];
    let err = Supervisor::start(unknown, Console::default().options())
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "service \"k\" depends on unknown service \"nope\""
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(!marker.exists(), "a service was started despite the error");
}
