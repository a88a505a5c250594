//! Finding the interface to configure and watching its link, from sysfs. The sysfs root is a
//! parameter so tests can point it at a fake tree.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::NetError;

/// ARPHRD_ETHER, as /sys/class/net/X/type shows it.
const TYPE_ETHER: &str = "1";

fn class_net(sysfs: &Path) -> PathBuf {
    sysfs.join("class/net")
}

/// Interface names sorted by ifindex, so "the first Ethernet interface" is the one the kernel
/// registered first (eth0 before eth1), not whatever order readdir returns.
pub fn list(sysfs: &Path) -> Result<Vec<String>, NetError> {
    let dir = class_net(sysfs);
    let entries = std::fs::read_dir(&dir).map_err(|source| NetError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut found: Vec<(u32, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|name| {
            let index = read_attr(&dir.join(&name).join("ifindex"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(u32::MAX);
            (index, name)
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, name)| name).collect())
}

fn read_attr(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// A wired Ethernet interface backed by hardware: type 1, a `device` link (virtual interfaces
/// such as bridges, veths and tunnels have none) and not wireless (no WPA here).
pub fn is_wired_ethernet(sysfs: &Path, name: &str) -> bool {
    let dir = class_net(sysfs).join(name);
    name != "lo"
        && read_attr(&dir.join("type")).as_deref() == Some(TYPE_ETHER)
        && dir.join("device").symlink_metadata().is_ok()
        && !dir.join("wireless").exists()
        && !dir.join("phy80211").exists()
}

/// The interface to configure: `configured` if it exists, else the first wired Ethernet one.
pub fn select(sysfs: &Path, configured: Option<&str>) -> Result<String, NetError> {
    let all = list(sysfs)?;
    let present = || {
        if all.is_empty() {
            "none".to_owned()
        } else {
            all.join(", ")
        }
    };
    match configured {
        Some(name) if all.iter().any(|n| n == name) => Ok(name.to_owned()),
        Some(name) => Err(NetError::NotFound {
            name: name.to_owned(),
            dir: class_net(sysfs),
            present: present(),
        }),
        None => all
            .iter()
            .find(|n| is_wired_ethernet(sysfs, n))
            .cloned()
            .ok_or_else(|| NetError::NoEthernet {
                dir: class_net(sysfs),
                present: present(),
            }),
    }
}

/// Whether the link has carrier. Reading `carrier` fails while the interface is down, which
/// counts as no carrier.
pub fn has_carrier(sysfs: &Path, name: &str) -> bool {
    read_attr(&class_net(sysfs).join(name).join("carrier")).as_deref() == Some("1")
}

/// Polls `carrier` until it is up or `timeout` passes. Polling rather than a netlink
/// subscription keeps this simple; 100 ms is far below how long link negotiation takes.
pub fn wait_carrier(sysfs: &Path, name: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        if has_carrier(sysfs, name) {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeSys(PathBuf);

    impl FakeSys {
        fn new(tag: &str) -> FakeSys {
            let root = std::env::temp_dir().join(format!(
                "keel-net-sysfs-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("class/net")).unwrap();
            FakeSys(root)
        }

        /// `kind`: the `type` file; `device`: whether a `device` link exists.
        fn add(&self, name: &str, index: u32, kind: &str, device: bool) -> PathBuf {
            let dir = self.0.join("class/net").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(dir.join("ifindex"), format!("{index}\n")).unwrap();
            if device {
                std::os::unix::fs::symlink("../../../devices/pci0000:00/x", dir.join("device"))
                    .unwrap();
            }
            dir
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn picks_first_wired_ethernet_by_ifindex() {
        let sys = FakeSys::new("pick");
        sys.add("lo", 1, "772", false);
        let wlan = sys.add("wlan0", 2, "1", true);
        std::fs::create_dir_all(wlan.join("wireless")).unwrap();
        sys.add("docker0", 3, "1", false);
        sys.add("enp2s0", 5, "1", true);
        sys.add("enp1s0", 4, "1", true);
        sys.add("ib0", 6, "32", true);
        assert_eq!(select(&sys.0, None).unwrap(), "enp1s0");
        assert_eq!(
            list(&sys.0).unwrap(),
            ["lo", "wlan0", "docker0", "enp1s0", "enp2s0", "ib0"]
        );
    }

    #[test]
    fn configured_interface_need_not_be_ethernet_but_must_exist() {
        let sys = FakeSys::new("conf");
        sys.add("lo", 1, "772", false);
        sys.add("bond0", 2, "1", false);
        assert_eq!(select(&sys.0, Some("bond0")).unwrap(), "bond0");
        let err = select(&sys.0, Some("eth9")).unwrap_err().to_string();
        assert!(err.contains("eth9") && err.contains("lo, bond0"), "{err}");
    }

    #[test]
    fn no_ethernet_names_what_is_there() {
        let sys = FakeSys::new("none");
        sys.add("lo", 1, "772", false);
        sys.add("veth0", 2, "1", false);
        let err = select(&sys.0, None).unwrap_err();
        assert!(matches!(err, NetError::NoEthernet { .. }));
        assert!(err.to_string().contains("lo, veth0"), "{err}");
        let missing = select(&sys.0.join("nope"), None).unwrap_err();
        assert!(matches!(missing, NetError::Read { .. }), "{missing}");
    }

    #[test]
    fn carrier() {
        let sys = FakeSys::new("carrier");
        let dir = sys.add("eth0", 2, "1", true);
        assert!(!has_carrier(&sys.0, "eth0"));
        assert!(!wait_carrier(&sys.0, "eth0", Duration::from_millis(250)));
        std::fs::write(dir.join("carrier"), "0\n").unwrap();
        assert!(!has_carrier(&sys.0, "eth0"));
        std::fs::write(dir.join("carrier"), "1\n").unwrap();
        assert!(wait_carrier(&sys.0, "eth0", Duration::from_secs(1)));
    }
}
