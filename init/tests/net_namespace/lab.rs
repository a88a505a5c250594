//! The namespaces, veth pair and client thread the tests run in.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_contract::profile::Network;
use keel_init::net::{self, NetError, NetOptions, NetState};

use super::server::enter_netns;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the network namespace tests need root (ip netns, veth pairs, port 67); run \
         `cargo test -p keel-init` as root"
    );
}

pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A server and a client namespace joined by a veth; removed on drop, even when the test
/// panics. Interface names stay under 16 bytes whatever the pid.
pub struct Lab {
    pub server_ns: String,
    pub client_ns: String,
    pub server_if: String,
    pub client_if: String,
    dir: PathBuf,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        require_root();
        let id = format!("{}{tag}", std::process::id() % 100_000);
        let lab = Lab {
            server_ns: format!("keel-net-s-{id}"),
            client_ns: format!("keel-net-c-{id}"),
            server_if: format!("ks{id}"),
            client_if: format!("kc{id}"),
            dir: std::env::temp_dir().join(format!("keel-net-test-{id}")),
        };
        lab.remove();
        let _ = std::fs::remove_dir_all(&lab.dir);
        std::fs::create_dir_all(&lab.dir).unwrap();
        ip(&["netns", "add", &lab.server_ns]);
        ip(&["netns", "add", &lab.client_ns]);
        ip(&[
            "link",
            "add",
            &lab.server_if,
            "netns",
            &lab.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &lab.client_if,
            "netns",
            &lab.client_ns,
        ]);
        let s = &lab.server_ns;
        ip(&[
            "-n",
            s,
            "addr",
            "add",
            "10.77.0.1/24",
            "dev",
            &lab.server_if,
        ]);
        ip(&["-n", s, "link", "set", "lo", "up"]);
        ip(&["-n", s, "link", "set", &lab.server_if, "up"]);
        lab
    }

    pub fn resolv(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    /// `ip ARGS` inside the client namespace.
    pub fn client_ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.client_ns.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    pub fn options(&self, dhcp_timeout: u64) -> NetOptions {
        NetOptions {
            sysfs: self.dir.join("sys"),
            resolv_conf: self.resolv(),
            carrier_timeout: Duration::from_secs(10),
            dhcp_timeout: Duration::from_secs(dhcp_timeout),
        }
    }

    /// Runs `f` on a thread inside the client namespace, with `options.sysfs` a sysfs of that
    /// namespace, and returns its result and the network code's log.
    pub fn in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Fn(&str)) -> T + Send + 'static,
    ) -> (T, String) {
        let (ns, sysfs) = (self.client_ns.clone(), self.dir.join("sys"));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let lines2 = lines.clone();
        std::thread::spawn(move || {
            enter_netns(&ns);
            private_sysfs(&sysfs);
            let log = |s: &str| lines2.lock().unwrap().push(s.to_owned());
            let _ = tx.send(f(&log));
        });
        let result = rx.recv_timeout(Duration::from_secs(90));
        let log = lines.lock().unwrap().join("\n");
        match result {
            Ok(t) => (t, log),
            Err(e) => panic!("the client thread panicked or hung ({e}); its log:\n{log}"),
        }
    }

    /// `net::configure_with` in the client namespace.
    pub fn configure(
        &self,
        network: Network,
        options: NetOptions,
    ) -> (Result<NetState, NetError>, String) {
        self.in_client(move |log| net::configure_with(&network, &options, log))
    }
    fn remove(&self) {
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.remove();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Gives this thread its own mount namespace with a sysfs of its network namespace at `dir`.
fn private_sysfs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let err = || std::io::Error::last_os_error();
    assert_eq!(
        // SAFETY: unshare takes no pointers; CLONE_NEWNS affects only this thread.
        unsafe { libc::unshare(libc::CLONE_NEWNS) },
        0,
        "unshare: {}",
        err()
    );
    // Without MS_PRIVATE the sysfs mount below would propagate to the host.
    // SAFETY: NUL-terminated literals and null pointers where mount(2) allows them.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "making / private: {}", err());
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: as above; target is a valid C string.
    let r = unsafe {
        libc::mount(
            c"sysfs".as_ptr(),
            target.as_ptr(),
            c"sysfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "mounting sysfs: {}", err());
}
