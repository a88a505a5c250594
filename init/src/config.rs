//! Where the node's configuration comes from. One generic image can become any node: a
//! profile given at boot (QEMU fw_cfg, a `keel.config=http://...` URL, or a config drive
//! labelled KEELCFG) wins; the one applied is saved to STATE so the node keeps its identity
//! across reboots and upgrades; without either, the profile baked into the image applies.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use keel_contract::layout::{self, config as contract};
use keel_contract::profile::{LoadedProfile, Node};
use keel_contract::secrets::NodeSecrets;
use keel_minisign::TrustedKeys;

use crate::config_trust::Verdict;
use crate::sys;

pub const FW_CFG_BY_NAME: &str = "/sys/firmware/qemu_fw_cfg/by_name";
pub use keel_contract::layout::config::DRIVE_LABEL as CONFIG_DRIVE_LABEL;
const CONFIG_DRIVE_MOUNT: &str = "/run/keel/config-drive";
pub const STATE_PROFILE: &str = layout::state::PROFILE;
pub const STATE_SECRETS: &str = layout::state::SECRETS;
/// The kernel command-line key naming a URL to fetch the profile from.
pub use keel_contract::layout::cmdline::CONFIG as CMDLINE_URL;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Source {
    #[default]
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

/// A profile and, optionally, node secrets from one source, each with the minisign
/// signature found beside it (`profile.toml.minisig`, `URL.minisig`).
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub source: Source,
    pub profile: Option<String>,
    pub secrets: Option<String>,
    pub profile_sig: Option<String>,
    pub secrets_sig: Option<String>,
}

/// The configuration the node runs with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node: Node,
    pub source: Source,
    /// The node's secrets, if any source had good ones.
    pub secrets: Option<NodeSecrets>,
    /// What was refused or worked around (for the console and the API's status).
    pub warnings: Vec<String>,
    /// What the console should say that is not a problem (a config drive left attached).
    pub notes: Vec<String>,
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

/// QEMU's fw_cfg entries `opt/keel/profile` and `opt/keel/secrets` (module qemu_fw_cfg), under
/// `root`, the `by_name` directory.
pub fn from_fw_cfg(root: &Path) -> Option<Found> {
    let read = |name: &str| std::fs::read_to_string(root.join(name).join("raw")).ok();
    let profile = read(contract::FW_CFG_PROFILE);
    let secrets = read(contract::FW_CFG_SECRETS);
    (profile.is_some() || secrets.is_some()).then_some(Found {
        source: Source::FwCfg,
        profile,
        secrets,
        ..Found::default()
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

/// The largest profile fetched over HTTP.
const MAX_FETCHED: u64 = 16 << 20;

/// `http://host[:port]/path` (`[v6]` literals included): plain HTTP GET (no TLS: the profile
/// is signed and a URL never carries secrets, see [`crate::config_trust`]; only
/// confidentiality is not had).
pub fn http_get(url: &str, timeout: Duration) -> Result<String, String> {
    let parsed = keel_http::Url::parse(url).map_err(|e| e.to_string())?;
    if parsed.scheme() != keel_http::Scheme::Http {
        return Err(format!("{url}: only http:// URLs are supported"));
    }
    let fail = |e: std::io::Error| format!("{url}: {e}");
    let addr = parsed
        .socket_addrs()
        .map_err(fail)?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{url}: no address for {}", parsed.host()))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    let authority = parsed.authority();
    let request = keel_http::request_head(
        "GET",
        parsed.target(),
        &[
            ("Host", &authority),
            ("User-Agent", "keel-init"),
            ("Connection", "close"),
        ],
    )
    .map_err(fail)?;
    // One write: a server that answers as soon as it has the request line must not find the
    // rest of the request arriving after it closed.
    stream.write_all(&request).map_err(fail)?;
    let (head, early) = keel_http::read_response_head(&mut stream)
        .map_err(|e| format!("{url}: malformed HTTP response: {e}"))?;
    if head.status != 200 {
        return Err(format!("{url}: HTTP status {}", head.status));
    }
    let body = keel_http::read_body(&head, early, &mut stream, MAX_FETCHED).map_err(fail)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
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
            profile_sig: read(&contract::signature_of(contract::DRIVE_PROFILE)),
            secrets_sig: read(&contract::signature_of(contract::DRIVE_SECRETS)),
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
    let tmp = layout::on_volume(state, &format!("{name}.new"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    sys::rename_durably(&tmp, &layout::on_volume(state, name))
}

/// The copy [`save_keeping_previous`] keeps of what it replaced.
pub fn previous(name: &str) -> String {
    format!("{name}.prev")
}

/// Saves `text` as `name`, first keeping what was there as `name.prev`. Nothing is written
/// when the content is the same (a profile given at every boot).
pub fn save_keeping_previous(state: &Path, name: &str, text: &str) -> std::io::Result<()> {
    match std::fs::read_to_string(layout::on_volume(state, name)) {
        Ok(current) if current == text => return Ok(()),
        Ok(current) => save(state, &previous(name), &current)?,
        Err(_) => {}
    }
    save(state, name, text)
}

/// Parses a profile STATE kept, which a newer init may have written (then rolled back from):
/// keys this version does not know are dropped, and named, instead of failing the boot.
pub fn parse_saved(origin: &str, text: &str) -> Result<(Node, Vec<String>), String> {
    let mut text = text.to_owned();
    let mut ignored = Vec::new();
    loop {
        let err = match LoadedProfile::from_text(Path::new(origin), &text) {
            Ok(_) => return parse(origin, &text).map(|node| (node, ignored)),
            Err(e) => e,
        };
        let unknown = err
            .diagnostics()
            .iter()
            .find(|d| d.message.starts_with("unknown field"))
            .and_then(|d| d.field.clone());
        let Some(field) = unknown.filter(|_| ignored.len() < 64) else {
            return Err(err.to_string());
        };
        let mut table: toml::Table = text.parse().map_err(|_| err.to_string())?;
        if !remove_field(&mut table, &field) {
            return Err(err.to_string());
        }
        ignored.push(field);
        text = toml::to_string(&table).map_err(|e| format!("{origin}: {e}"))?;
    }
}

/// Removes a dotted field (`node.containers[0].extra`) from a TOML table.
fn remove_field(table: &mut toml::Table, field: &str) -> bool {
    let mut segments: Vec<(&str, Vec<usize>)> = Vec::new();
    for part in field.split('.') {
        let mut pieces = part.split('[');
        let key = pieces.next().unwrap_or_default();
        let indexes = pieces
            .filter_map(|p| p.trim_end_matches(']').parse().ok())
            .collect();
        segments.push((key, indexes));
    }
    let Some(((last, last_indexes), parents)) = segments.split_last() else {
        return false;
    };
    if !last_indexes.is_empty() {
        return false;
    }
    let mut current = table;
    for (key, indexes) in parents {
        let mut value = match current.get_mut(*key) {
            Some(v) => v,
            None => return false,
        };
        for i in indexes {
            value = match value.as_array_mut().and_then(|a| a.get_mut(*i)) {
                Some(v) => v,
                None => return false,
            };
        }
        current = match value.as_table_mut() {
            Some(t) => t,
            None => return false,
        };
    }
    current.remove(*last).is_some()
}

/// The profile and where it came from.
struct Chosen {
    node: Node,
    source: Source,
}

/// A boot-time profile, checked before it is saved; a bad one is refused, not fatal (the
/// next boot would find it again: a loop).
fn boot_time_profile(found: &Found, state: &Path, warnings: &mut Vec<String>) -> Option<Chosen> {
    let text = found.profile.as_ref()?;
    match parse(&found.source.to_string(), text) {
        Ok(node) => {
            if let Err(e) = save_keeping_previous(state, STATE_PROFILE, text) {
                warnings.push(format!(
                    "the profile from {} could not be saved to STATE ({e}): the next boot without it will not find it",
                    found.source
                ));
            }
            Some(Chosen {
                node,
                source: found.source.clone(),
            })
        }
        Err(e) => {
            warnings.push(format!(
                "the profile from {} was refused, the node runs its previous one: {e}",
                found.source
            ));
            None
        }
    }
}

/// STATE's profile, or the copy kept before it was last replaced.
fn saved_profile(state: &Path, warnings: &mut Vec<String>) -> Option<Chosen> {
    for name in [STATE_PROFILE.to_owned(), previous(STATE_PROFILE)] {
        let Ok(text) = std::fs::read_to_string(layout::on_volume(state, &name)) else {
            continue;
        };
        match parse_saved(&format!("STATE {name}"), &text) {
            Ok((node, ignored)) => {
                if !ignored.is_empty() {
                    warnings.push(format!(
                        "STATE {name}: ignored what this version does not know: {}",
                        ignored.join(", ")
                    ));
                }
                return Some(Chosen {
                    node,
                    source: Source::State,
                });
            }
            Err(e) => warnings.push(format!("STATE {name} is unreadable, not used: {e}")),
        }
    }
    None
}

fn baked_profile(baked: &Path, warnings: &mut Vec<String>) -> Chosen {
    let fallback = Chosen {
        node: Node::default(),
        source: Source::Default,
    };
    let Ok(text) = std::fs::read_to_string(baked) else {
        return fallback;
    };
    match parse(&baked.display().to_string(), &text) {
        Ok(node) => Chosen {
            node,
            source: Source::Baked,
        },
        Err(e) => {
            warnings.push(format!("the baked profile is unreadable: {e}"));
            fallback
        }
    }
}

/// The node's secrets: a boot-time source's, parsed before they replace STATE's (a malformed
/// file must not replace a good one: every later boot would fail); else STATE's, or the copy
/// kept before they were last replaced.
fn secrets(
    boot_time: Option<&Found>,
    state: &Path,
    warnings: &mut Vec<String>,
) -> Option<NodeSecrets> {
    if let Some((text, source)) = boot_time.and_then(|f| f.secrets.as_ref().map(|t| (t, &f.source)))
    {
        match NodeSecrets::from_toml(text) {
            Ok(secrets) => {
                if let Err(e) = save_keeping_previous(state, STATE_SECRETS, text) {
                    warnings.push(format!(
                        "secrets from {source} could not be saved to STATE: {e}"
                    ));
                }
                return Some(secrets);
            }
            Err(e) => warnings.push(format!(
                "secrets from {source} were refused, the node keeps the ones it had: {e}"
            )),
        }
    }
    for name in [STATE_SECRETS.to_owned(), previous(STATE_SECRETS)] {
        let Ok(text) = std::fs::read_to_string(layout::on_volume(state, &name)) else {
            continue;
        };
        match NodeSecrets::from_toml(&text) {
            Ok(secrets) => return Some(secrets),
            Err(e) => warnings.push(format!("STATE {name} is unreadable, not used: {e}")),
        }
    }
    None
}

/// Chooses the configuration: a boot-time source, else what STATE saved, else the baked
/// profile. A boot-time source must first pass [`crate::config_trust::admit`] (signed by
/// one of `keys` unless it is fw_cfg, not older than what was applied); what it gives is
/// checked before it is saved to STATE, and what is refused or unreadable is skipped with a
/// warning: no configuration problem stops a boot (the next boot would meet it again).
pub fn choose(
    boot_time: Option<Found>,
    state: &Path,
    baked: &Path,
    keys: Option<&TrustedKeys>,
) -> NodeConfig {
    let mut warnings = Vec::new();
    let mut notes = Vec::new();
    let boot_time = boot_time.and_then(|found| {
        let applied = crate::config_trust::applied(state, baked);
        match crate::config_trust::admit(found, keys, applied) {
            Verdict::Apply(found) => Some(found),
            Verdict::Ignore(note) => {
                notes.push(note);
                None
            }
            Verdict::Refuse(refused) => {
                warnings.push(format!(
                    "refused, the node keeps the configuration it had: {refused}"
                ));
                None
            }
        }
    });
    let chosen = boot_time
        .as_ref()
        .and_then(|f| boot_time_profile(f, state, &mut warnings))
        .or_else(|| saved_profile(state, &mut warnings))
        .unwrap_or_else(|| baked_profile(baked, &mut warnings));
    let secrets = secrets(boot_time.as_ref(), state, &mut warnings);
    NodeConfig {
        node: chosen.node,
        source: chosen.source,
        secrets,
        warnings,
        notes,
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
#[cfg(test)]
#[path = "config_trust_tests.rs"]
mod trust_tests;
