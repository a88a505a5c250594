//! Where the node's configuration comes from. One generic image can become any node: a
//! profile given at boot (QEMU fw_cfg, a `keel.config=http://...` URL, or a config drive
//! labelled KEELCFG) wins; the one applied is saved to STATE so the node keeps its identity
//! across reboots and upgrades; without either, the profile baked into the image applies.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_contract::layout::{self, config as contract};
use keel_contract::profile::{LoadedProfile, Node};

use crate::sys;

/// Where the kernel's qemu_fw_cfg module shows fw_cfg entries by name.
const FW_CFG_BY_NAME: &str = "/sys/firmware/qemu_fw_cfg/by_name";
pub use keel_contract::layout::config::DRIVE_LABEL as CONFIG_DRIVE_LABEL;
const CONFIG_DRIVE_MOUNT: &str = "/run/keel/config-drive";
pub const STATE_PROFILE: &str = layout::state::PROFILE;
pub const STATE_SECRETS: &str = layout::state::SECRETS;
/// The kernel command-line key naming a URL to fetch the profile from.
pub use keel_contract::layout::cmdline::CONFIG as CMDLINE_URL;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    FwCfg,
    Url(String),
    ConfigDrive(String),
    State,
    Baked,
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::FwCfg => write!(f, "QEMU fw_cfg {}", contract::FW_CFG_PROFILE),
            Source::Url(u) => write!(f, "{u}"),
            Source::ConfigDrive(d) => write!(f, "config drive {d}"),
            Source::State => f.write_str("STATE (applied at an earlier boot)"),
            Source::Baked => f.write_str("the image"),
            Source::Default => f.write_str("defaults (no profile anywhere)"),
        }
    }
}

/// A profile and, optionally, node secrets from one source.
#[derive(Debug, Clone)]
pub struct Found {
    pub source: Source,
    pub profile: Option<String>,
    pub secrets: Option<String>,
}

/// The configuration the node runs with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node: Node,
    pub source: Source,
    /// The node's secrets (TOML, the NodeSecrets format), if any source had them.
    pub secrets: Option<String>,
}

/// Parses and validates a profile's node section.
pub fn parse(origin: &str, text: &str) -> Result<Node, String> {
    let loaded = LoadedProfile::from_text(Path::new(origin), text).map_err(|e| e.to_string())?;
    let problems = keel_contract::profile::validate_node(&loaded.profile.node);
    if let Some(p) = problems.first() {
        return Err(loaded.diagnostic(&p.field, p.message.clone()).to_string());
    }
    Ok(loaded.profile.node)
}

/// QEMU's fw_cfg entries `opt/keel/profile` and `opt/keel/secrets` (module qemu_fw_cfg),
/// under `root` (the `by_name` directory).
pub fn from_fw_cfg(root: &Path) -> Option<Found> {
    let read = |name: &str| std::fs::read_to_string(root.join(name).join("raw")).ok();
    let profile = read(contract::FW_CFG_PROFILE);
    let secrets = read(contract::FW_CFG_SECRETS);
    (profile.is_some() || secrets.is_some()).then_some(Found {
        source: Source::FwCfg,
        profile,
        secrets,
    })
}

pub fn fw_cfg() -> Option<Found> {
    from_fw_cfg(Path::new(FW_CFG_BY_NAME))
}

/// Fetches `url`, trying again after each of `delays` while it fails (the network or the
/// config server may not be up yet when a rack powers on).
pub fn fetch_with_retry(
    url: &str,
    delays: &[Duration],
    fetch: &dyn Fn(&str) -> Result<String, String>,
    log: &dyn Fn(&str),
    sleep: &dyn Fn(Duration),
) -> Result<String, String> {
    let mut delays = delays.iter();
    loop {
        match fetch(url) {
            Ok(body) => return Ok(body),
            Err(e) => match delays.next() {
                Some(delay) => {
                    log(&format!(
                        "fetching the profile failed ({e}); again in {} s",
                        delay.as_secs()
                    ));
                    sleep(*delay);
                }
                None => return Err(e),
            },
        }
    }
}

/// `http://host[:port]/path`: plain HTTP GET (no TLS: the profile carries no secrets unless
/// the operator put them there; use fw_cfg or a config drive for those).
pub fn http_get(url: &str, timeout: Duration) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let address = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let fail = |e: std::io::Error| format!("{url}: {e}");
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&address)
        .map_err(fail)?
        .next()
        .ok_or_else(|| format!("{url}: no address for {authority}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    // One write: a server that answers as soon as it has the request line must not find the
    // rest of the request arriving after it closed.
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: keel-init\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let mut response = Vec::new();
    stream
        .take(16 << 20)
        .read_to_end(&mut response)
        .map_err(fail)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: malformed HTTP response"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{url}: HTTP status {status}"));
    }
    Ok(body.to_owned())
}

/// A FAT volume label (boot sector offset 71, FAT32) or an ISO 9660 volume id (sector 16,
/// offset 40): what a config drive is found by without blkid.
pub fn volume_label(head: &[u8]) -> Option<String> {
    let trim = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .trim_end_matches([' ', '\0'])
            .to_owned()
    };
    if head.len() >= 0x8000 + 72 && &head[0x8001..0x8006] == b"CD001" {
        return Some(trim(&head[0x8000 + 40..0x8000 + 72]));
    }
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xAA {
        if &head[82..87] == b"FAT32" {
            return Some(trim(&head[71..82]));
        }
        if &head[54..57] == b"FAT" {
            return Some(trim(&head[43..54]));
        }
    }
    None
}

/// Finds a block device labelled KEELCFG, mounts it read-only and reads `profile.toml` and
/// `secrets.toml` from it.
pub fn config_drive() -> Option<Found> {
    let entries = std::fs::read_dir("/sys/class/block").ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dev = format!("/dev/{name}");
        let Ok(mut file) = std::fs::File::open(&dev) else {
            continue;
        };
        let mut head = vec![0u8; 0x8800];
        let Ok(n) = file.read(&mut head) else {
            continue;
        };
        head.truncate(n);
        if volume_label(&head).as_deref() != Some(CONFIG_DRIVE_LABEL) {
            continue;
        }
        let iso = head.len() > 0x8006 && &head[0x8001..0x8006] == b"CD001";
        let _ = sys::mkdir_p(CONFIG_DRIVE_MOUNT, 0o700);
        let fstype = if iso { "iso9660" } else { "vfat" };
        if sys::mount(
            &dev,
            CONFIG_DRIVE_MOUNT,
            fstype,
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )
        .is_err()
        {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(Path::new(CONFIG_DRIVE_MOUNT).join(f)).ok();
        let found = Found {
            source: Source::ConfigDrive(dev.clone()),
            profile: read(contract::DRIVE_PROFILE),
            secrets: read(contract::DRIVE_SECRETS),
        };
        let _ = sys::umount(CONFIG_DRIVE_MOUNT, 0);
        if found.profile.is_some() || found.secrets.is_some() {
            return Some(found);
        }
    }
    None
}

/// Writes a file on STATE so that a power cut leaves either the old or the new content.
pub fn save(state: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let path = layout::on_volume(state, name);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    sys::rename_durably(&tmp, &path)
}

/// Chooses the configuration: a boot-time source, else what STATE saved, else the baked
/// profile. A boot-time source is saved to STATE.
pub fn choose(boot_time: Option<Found>, state: &Path, baked: &Path) -> Result<NodeConfig, String> {
    let saved = |name: &str| std::fs::read_to_string(layout::on_volume(state, name)).ok();
    let (node, source, profile_text) = match boot_time
        .as_ref()
        .and_then(|f| f.profile.clone().map(|p| (p, f.source.clone())))
    {
        Some((text, source)) => (parse(&source.to_string(), &text)?, source, Some(text)),
        None => match saved(STATE_PROFILE) {
            Some(text) => (parse("STATE profile.toml", &text)?, Source::State, None),
            None => match std::fs::read_to_string(baked) {
                Ok(text) => (
                    parse(&baked.display().to_string(), &text)?,
                    Source::Baked,
                    None,
                ),
                Err(_) => (Node::default(), Source::Default, None),
            },
        },
    };
    if let Some(text) = profile_text {
        save(state, STATE_PROFILE, &text)
            .map_err(|e| format!("saving the profile to STATE: {e}"))?;
    }
    let secrets = match boot_time.and_then(|f| f.secrets) {
        Some(text) => {
            save(state, STATE_SECRETS, &text)
                .map_err(|e| format!("saving secrets to STATE: {e}"))?;
            Some(text)
        }
        None => saved(STATE_SECRETS),
    };
    Ok(NodeConfig {
        node,
        source,
        secrets,
    })
}

/// Where STATE is mounted.
pub fn state_dir() -> PathBuf {
    PathBuf::from(layout::root::STATE_MOUNT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKER: &str = "[node]\nrole = \"worker\"\nhostname = \"w1\"\n";
    const CP: &str = "[node]\nrole = \"controlplane\"\nhostname = \"cp1\"\n";

    #[test]
    fn boot_time_profile_wins_and_is_kept_in_state() {
        let state = tempfile::tempdir().unwrap();
        let baked = state.path().join("baked.toml");
        std::fs::write(&baked, WORKER).unwrap();
        let first = choose(
            Some(Found {
                source: Source::FwCfg,
                profile: Some(CP.into()),
                secrets: Some("s = 1\n".into()),
            }),
            state.path(),
            &baked,
        )
        .unwrap();
        assert_eq!(first.source, Source::FwCfg);
        assert_eq!(
            first.node.hostname.as_ref().map(|h| h.as_str()),
            Some("cp1")
        );
        // Next boot without the fw_cfg entry: STATE keeps the identity.
        let second = choose(None, state.path(), &baked).unwrap();
        assert_eq!(second.source, Source::State);
        assert_eq!(second.node.role, keel_contract::profile::Role::ControlPlane);
        assert_eq!(second.secrets.as_deref(), Some("s = 1\n"));
    }

    #[test]
    fn baked_profile_applies_without_other_sources_and_bad_profiles_are_refused() {
        let state = tempfile::tempdir().unwrap();
        let baked = state.path().join("baked.toml");
        std::fs::write(&baked, WORKER).unwrap();
        let c = choose(None, state.path(), &baked).unwrap();
        assert_eq!(c.source, Source::Baked);
        assert!(!layout::on_volume(state.path(), STATE_PROFILE).exists());
        let bad = Found {
            source: Source::FwCfg,
            profile: Some("[node]\nrole = \"boss\"\n".into()),
            secrets: None,
        };
        let err = choose(Some(bad), state.path(), &baked).unwrap_err();
        assert!(err.contains("role"), "{err}");
    }

    #[test]
    fn labels_of_fat32_and_iso9660() {
        let mut fat = vec![0u8; 512];
        fat[510] = 0x55;
        fat[511] = 0xAA;
        fat[82..90].copy_from_slice(b"FAT32   ");
        fat[71..82].copy_from_slice(b"KEELCFG    ");
        assert_eq!(volume_label(&fat).as_deref(), Some("KEELCFG"));
        let mut iso = vec![0u8; 0x8800];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        iso[0x8028..0x8028 + 7].copy_from_slice(b"KEELCFG");
        assert_eq!(volume_label(&iso).as_deref(), Some("KEELCFG"));
        assert_eq!(volume_label(&[0u8; 600]), None);
    }

    #[test]
    fn fw_cfg_entries_are_read_from_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let entry = root.path().join(contract::FW_CFG_PROFILE);
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("raw"), CP).unwrap();
        let found = from_fw_cfg(root.path()).unwrap();
        assert_eq!(found.profile.as_deref(), Some(CP));
        assert!(found.secrets.is_none());
        assert!(from_fw_cfg(&root.path().join("none")).is_none());
    }

    #[test]
    fn http_get_fetches_a_body() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n[node]\nrole = \"worker\"\n",
            )
            .unwrap();
        });
        let body = http_get(
            &format!("http://127.0.0.1:{port}/node.toml"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(body, "[node]\nrole = \"worker\"\n");
        assert!(http_get("https://x/y", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn fetch_retries_after_each_delay_then_gives_up() {
        let calls = std::cell::Cell::new(0);
        let slept = std::cell::RefCell::new(Vec::new());
        let delays = [Duration::from_secs(1), Duration::from_secs(2)];
        let flaky = |_: &str| {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err("connection refused".to_owned())
            } else {
                Ok("[node]\n".to_owned())
            }
        };
        let sleep = |d: Duration| slept.borrow_mut().push(d);
        let got = fetch_with_retry("http://x/", &delays, &flaky, &|_| {}, &sleep);
        assert_eq!(got.as_deref(), Ok("[node]\n"));
        assert_eq!(*slept.borrow(), delays);

        calls.set(-10);
        slept.borrow_mut().clear();
        let got = fetch_with_retry("http://x/", &delays, &flaky, &|_| {}, &sleep);
        assert_eq!(got, Err("connection refused".to_owned()));
        assert_eq!(calls.get(), -7, "three tries");
    }
}
