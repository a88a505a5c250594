//! Health checks, each service instance's run on its own thread so that a slow check never
//! delays supervision.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::manager::Event;
use super::reaper::Reaper;
use super::spawn::ProcessSpec;
use super::{Health, lock};

/// Check cadence until the first success, so dependents start promptly.
const STARTUP_CADENCE: Duration = Duration::from_millis(100);
/// The same for a Unix socket: a `connect` costs next to nothing, and the boot's health gate
/// waits on containerd's socket, so a finer cadence answers ~40 ms sooner on average.
const SOCKET_STARTUP_CADENCE: Duration = Duration::from_millis(20);
const MIN_PAUSE: Duration = Duration::from_millis(10);

/// Stops a checker thread, also in the middle of its sleep.
#[derive(Clone, Default)]
pub(crate) struct CancelToken(Arc<(Mutex<bool>, Condvar)>);

impl CancelToken {
    pub(crate) fn cancel(&self) {
        *lock(&self.0.0) = true;
        self.0.1.notify_all();
    }

    /// Sleeps for `duration`; true if cancelled (before or during the sleep).
    fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut cancelled = lock(&self.0.0);
        loop {
            let now = Instant::now();
            if *cancelled || now >= deadline {
                return *cancelled;
            }
            cancelled = match self.0.1.wait_timeout(cancelled, deadline - now) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

pub(crate) struct Checker {
    pub idx: usize,
    pub generation: u64,
    pub health: Health,
    pub env: Vec<(String, String)>,
    pub interval: Duration,
    pub timeout: Duration,
    pub events: Sender<Event>,
    pub reaper: &'static Reaper,
    pub token: CancelToken,
}

impl Checker {
    pub(crate) fn spawn(self, name: &str) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(format!("{name}-health"))
            .spawn(move || self.run())
            .map(drop)
    }

    fn run(self) {
        let mut passed = false;
        loop {
            let result = check(&self.health, &self.env, self.timeout, self.reaper);
            passed |= result.is_ok();
            let event = Event::Health {
                idx: self.idx,
                generation: self.generation,
                result,
            };
            if self.events.send(event).is_err() {
                return;
            }
            let pause = if passed {
                self.interval
            } else {
                self.interval.min(startup_cadence(&self.health))
            };
            if self.token.sleep(pause.max(MIN_PAUSE)) {
                return;
            }
        }
    }
}

/// How often a check runs until its first success.
fn startup_cadence(health: &Health) -> Duration {
    match health {
        Health::UnixSocket(_) => SOCKET_STARTUP_CADENCE,
        _ => STARTUP_CADENCE,
    }
}

/// Runs one check; the error says what was wrong.
pub(crate) fn check(
    health: &Health,
    env: &[(String, String)],
    timeout: Duration,
    reaper: &Reaper,
) -> Result<(), String> {
    match health {
        Health::ProcessAlive => Ok(()),
        Health::UnixSocket(path) => {
            unix_connect(path).map_err(|e| format!("cannot connect to {}: {e}", path.display()))
        }
        Health::Http { port, path } => http_get(*port, path, timeout),
        Health::Exec(argv) => {
            let spec = ProcessSpec {
                argv,
                env,
                working_dir: None,
                stdout: None,
                stderr: None,
            };
            let program = argv.first().map_or("", String::as_str);
            match reaper.run(spec, timeout) {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(format!("{program}: {status}")),
                Err(e) => Err(format!("{program}: {e}")),
            }
        }
    }
}

/// A non-blocking connect: a blocking one waits forever when the listener's backlog is full
/// (a wedged service), which would freeze the checker instead of reporting it.
fn unix_connect(path: &Path) -> std::io::Result<()> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a usable socket path",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    let rc = unsafe { libc::connect(socket.as_raw_fd(), (&raw const addr).cast(), len) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EAGAIN) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "the listener's backlog is full",
            ));
        }
        return Err(err);
    }
    Ok(())
}

fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("invalid HTTP path {path:?}"));
    }
    let slash = if path.starts_with('/') { "" } else { "/" };
    let target = format!("{slash}{path}");
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let url = format!("http://{addr}{target}");
    let fail = |what: &str, e: std::io::Error| format!("{url}: {what}: {e}");
    let request = keel_http::request_head(
        "GET",
        &target,
        &[
            ("Host", &addr.to_string()),
            ("User-Agent", "keel-init"),
            ("Connection", "close"),
        ],
    )
    .map_err(|e| format!("invalid HTTP path {path:?}: {e}"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail("cannot connect", e))?;
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(MIN_PAUSE);
    let _ = stream.set_read_timeout(Some(remaining));
    let _ = stream.set_write_timeout(Some(remaining));
    stream
        .write_all(&request)
        .map_err(|e| fail("cannot send request", e))?;
    // Only the status matters: the body is never read.
    match keel_http::read_response_head(&mut stream) {
        Ok((head, _)) if (200..300).contains(&head.status) => Ok(()),
        Ok((head, _)) => Err(format!("{url}: HTTP status {}", head.status)),
        Err(keel_http::HeadError::Io(e)) => Err(fail("no answer", e)),
        Err(e) => Err(format!("{url}: not an HTTP answer: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"GET /healthz HTTP/1.1\r\n"));
            conn.write_all(answer.as_bytes()).unwrap();
        });
        port
    }

    #[test]
    fn http_status_codes() {
        let t = Duration::from_secs(2);
        let port = serve_once("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(http_get(port, "/healthz", t), Ok(()));
        let port = serve_once("HTTP/1.0 503 Service Unavailable\r\n\r\n");
        let err = http_get(port, "healthz", t).unwrap_err();
        assert!(err.ends_with("/healthz: HTTP status 503"), "{err}");
        let port = serve_once("garbage");
        assert!(
            http_get(port, "/healthz", t)
                .unwrap_err()
                .contains("not an HTTP answer")
        );
        assert!(
            http_get(port, "/a b", t)
                .unwrap_err()
                .contains("invalid HTTP path")
        );
    }

    #[test]
    fn closed_port_is_unhealthy() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = http_get(port, "/", Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }

    #[test]
    fn unix_socket_checks() {
        let dir = std::env::temp_dir().join(format!("keel-health-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let err = unix_connect(&path).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        unix_connect(&path).unwrap();
        // Never accepting: the backlog fills up and the check fails instead of hanging.
        let start = Instant::now();
        let full = (0..20_000).find_map(|_| unix_connect(&path).err()).unwrap();
        assert!(full.to_string().contains("backlog is full"), "{full}");
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(listener);
        assert!(unix_connect(&dir.join("x".repeat(200))).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cancel_interrupts_sleep() {
        let token = CancelToken::default();
        let t2 = token.clone();
        let start = Instant::now();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            t2.cancel();
        });
        assert!(token.sleep(Duration::from_secs(10)));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(token.sleep(Duration::from_secs(10)), "stays cancelled");
    }
}
