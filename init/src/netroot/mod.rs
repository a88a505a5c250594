//! Stage 1's network root (`keel.root=http://...`, issue 14): DHCP with the init's own client,
//! the signed manifest from beside `root.img` checked with the initramfs's keys, `root.img`
//! streamed into a RAM-backed file while hashed, and, only once its size and SHA-256 equal the
//! manifest's `slot_payload`, a read-only loop device over it for dm-verity. Nothing
//! unverified is ever attached, let alone mounted.

pub mod fetch;
pub mod loopdev;

use std::io::{Read, Seek, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_contract::layout;
use keel_contract::manifest::Manifest;
use keel_contract::output::pxe;
use keel_contract::profile::Network;
use keel_minisign::{self as minisign, SignatureFile, TrustedKeys};

use crate::{net, sys};
pub use fetch::{FetchError, Mismatch};

/// A tmpfs of its own, sized to the payload: `/run`'s default of half the RAM would let a
/// wrong server fill the node, and its own mount makes the RAM it holds plain to see.
const RAM_DIR: &str = "/run/keel/netroot";
const RAM_FILE: &str = "/run/keel/netroot/root.img";
/// The manifest and its signature are small; anything larger is not ours.
pub const MAX_MANIFEST: u64 = 1 << 20;
pub const MAX_SIGNATURE: u64 = 64 << 10;
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// NICs appear asynchronously after their drivers load.
const NIC_TIMEOUT: Duration = Duration::from_secs(30);
/// Between attempts at a transfer that failed (not at bytes that did not match).
const RETRY_DELAYS: [u64; 6] = [1, 2, 4, 8, 15, 15];

#[derive(Debug, thiserror::Error)]
pub enum NetRootError {
    #[error("keel.root={0}: expected an http:// URL of root.img")]
    BadUrl(String),
    #[error("no network interface for {url} within {secs} s: {reason}")]
    NoInterface {
        url: String,
        secs: u64,
        reason: String,
    },
    #[error("network for {url}: {source}")]
    Network { url: String, source: net::NetError },
    #[error("{url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{path}: {reason}")]
    Keys { path: String, reason: String },
    #[error("{url}: signature does not verify with the initramfs's trusted keys: {reason}")]
    Signature { url: String, reason: String },
    #[error("{url}: {reason}")]
    Manifest { url: String, reason: String },
    #[error("keel.roothash={cmdline} differs from the signed manifest's {manifest} ({url})")]
    RootHash {
        url: String,
        cmdline: String,
        manifest: String,
    },
    #[error(transparent)]
    Root(#[from] FetchError),
    #[error("{path}: {reason}")]
    Ram { path: String, reason: String },
    #[error(transparent)]
    Loop(#[from] loopdev::LoopError),
}

/// A verified root in RAM, ready for dm-verity.
pub struct NetworkRoot {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    /// The key ID that signed the manifest.
    pub signer: String,
    /// The read-only loop device over the verified bytes.
    pub device: PathBuf,
    /// Fetching and hashing `root.img`.
    pub seconds: f64,
    /// What the RAM copy holds (the tmpfs's used bytes).
    pub ram_bytes: u64,
}

/// Brings up the network, fetches and verifies the manifest and the root at `url`, and
/// attaches the root. `poll` loads drivers for devices that appeared since.
pub fn fetch(
    url: &str,
    cmdline_root_hash: Option<&str>,
    keys_path: &str,
    poll: &mut dyn FnMut(),
    log: &dyn Fn(&str),
) -> Result<NetworkRoot, NetRootError> {
    if !url.starts_with("http://") {
        return Err(NetRootError::BadUrl(url.to_owned()));
    }
    let beside = |name: &str| fetch::sibling(url, name).ok_or(NetRootError::BadUrl(url.to_owned()));
    let (manifest_url, signature_url) = (beside(pxe::MANIFEST)?, beside(pxe::SIGNATURE)?);
    wait_for_nic(url, poll)?;
    let state =
        net::configure(&Network::default(), log).map_err(|source| NetRootError::Network {
            url: url.to_owned(),
            source,
        })?;
    log(&format!(
        "network root: {} {}; fetching {manifest_url}",
        state.interface,
        state
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let manifest_bytes = with_retries(&manifest_url, log, || {
        get_small(&manifest_url, MAX_MANIFEST)
    })?;
    let signature = with_retries(&signature_url, log, || {
        get_small(&signature_url, MAX_SIGNATURE)
    })?;
    let (manifest, signer) =
        verify_manifest(keys_path, &manifest_url, &manifest_bytes, &signature)?;
    let root_hash = manifest.root.verity.root_hash.to_hex();
    if let Some(cmdline) = cmdline_root_hash
        && cmdline != root_hash
    {
        return Err(NetRootError::RootHash {
            url: manifest_url,
            cmdline: cmdline.to_owned(),
            manifest: root_hash,
        });
    }
    let started = Instant::now();
    let file = fetch_root(url, &manifest, log)?;
    let seconds = started.elapsed().as_secs_f64();
    let device = loopdev::attach_read_only(&file)?;
    drop(file);
    let ram_bytes = tmpfs_used(RAM_DIR);
    // The loop device holds the bytes; nothing in /run shows them to stage 2.
    let _ = std::fs::remove_file(RAM_FILE);
    Ok(NetworkRoot {
        manifest,
        manifest_bytes,
        signer,
        device,
        seconds,
        ram_bytes,
    })
}

fn wait_for_nic(url: &str, poll: &mut dyn FnMut()) -> Result<(), NetRootError> {
    let sysfs = Path::new("/sys");
    let deadline = Instant::now() + NIC_TIMEOUT;
    loop {
        poll();
        match net::iface::select(sysfs, None) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(NetRootError::NoInterface {
                    url: url.to_owned(),
                    secs: NIC_TIMEOUT.as_secs(),
                    reason: format!(
                        "{e} (a network-boot image needs its NIC's driver in the initramfs)"
                    ),
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Runs `attempt` until it succeeds or the delays run out; a transfer that failed is tried
/// again, bytes that did not match never are.
fn with_retries<T>(
    url: &str,
    log: &dyn Fn(&str),
    mut attempt: impl FnMut() -> Result<T, NetRootError>,
) -> Result<T, NetRootError> {
    let mut delays = RETRY_DELAYS.iter();
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(
                e @ (NetRootError::Fetch { .. } | NetRootError::Root(FetchError::Transfer { .. })),
            ) => match delays.next() {
                Some(&secs) => {
                    log(&format!("network root: {e}; again in {secs} s ({url})"));
                    std::thread::sleep(Duration::from_secs(secs));
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

/// A GET answered 200, with the bytes read past its head.
fn open(url: &str) -> Result<(TcpStream, keel_http::ResponseHead, Vec<u8>), String> {
    let parsed = keel_http::Url::parse(url).map_err(|e| e.to_string())?;
    let addr = parsed
        .socket_addrs()
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or_else(|| format!("no address for {}", parsed.host()))?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .map_err(|e| e.to_string())?;
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
    .map_err(|e| e.to_string())?;
    stream.write_all(&request).map_err(|e| e.to_string())?;
    let (head, early) = keel_http::read_response_head(&mut stream)
        .map_err(|e| format!("malformed HTTP response: {e}"))?;
    if head.status != 200 {
        return Err(format!("HTTP status {}", head.status));
    }
    Ok((stream, head, early))
}

/// A whole small file (at most `max` bytes) from `url`, tried again as the root is.
pub fn get_with_retries(url: &str, max: u64, log: &dyn Fn(&str)) -> Result<Vec<u8>, NetRootError> {
    with_retries(url, log, || get_small(url, max))
}

fn get_small(url: &str, max: u64) -> Result<Vec<u8>, NetRootError> {
    let fail = |reason: String| NetRootError::Fetch {
        url: url.to_owned(),
        reason,
    };
    let (mut stream, head, early) = open(url).map_err(fail)?;
    keel_http::read_body(&head, early, &mut stream, max).map_err(|e| fail(e.to_string()))
}

/// The manifest, checked with the keys baked into the initramfs (the initramfs cannot hold
/// the manifest: the manifest holds the initramfs's digest).
fn verify_manifest(
    keys_path: &str,
    url: &str,
    bytes: &[u8],
    signature: &[u8],
) -> Result<(Manifest, String), NetRootError> {
    let keys_err = |reason: String| NetRootError::Keys {
        path: keys_path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(keys_path).map_err(|e| keys_err(e.to_string()))?;
    let keys = TrustedKeys::parse(&text).map_err(|e| keys_err(e.to_string()))?;
    let bad_sig = |reason: String| NetRootError::Signature {
        url: url.to_owned(),
        reason,
    };
    let sig = SignatureFile::parse(&String::from_utf8_lossy(signature))
        .map_err(|e| bad_sig(e.to_string()))?;
    let verified =
        minisign::verify_bytes(&keys, &sig, bytes).map_err(|e| bad_sig(e.to_string()))?;
    let manifest = Manifest::from_json(bytes).map_err(|e| NetRootError::Manifest {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    Ok((manifest, verified.key_id.to_string()))
}

fn ram_err(path: &str) -> impl Fn(String) -> NetRootError + '_ {
    move |reason| NetRootError::Ram {
        path: path.to_owned(),
        reason,
    }
}

/// `root.img` into its own tmpfs, checked against the manifest's `slot_payload`; the file
/// handed back holds exactly the signed bytes.
fn fetch_root(
    url: &str,
    manifest: &Manifest,
    log: &dyn Fn(&str),
) -> Result<std::fs::File, NetRootError> {
    let want = &manifest.slot_payload;
    // Whole MiB and one more: tmpfs rounds to pages, and the size must not be the limit.
    let size = (want.size / (1 << 20) + 2) << 20;
    sys::mkdir_p(RAM_DIR, 0o700).map_err(|e| ram_err(RAM_DIR)(e.to_string()))?;
    sys::mount(
        "tmpfs",
        RAM_DIR,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&format!("mode=0700,size={size}")),
    )
    .map_err(|e| ram_err(RAM_DIR)(e.to_string()))?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(RAM_FILE)
        .map_err(|e| ram_err(RAM_FILE)(e.to_string()))?;
    log(&format!(
        "network root: fetching {url} ({:.0} MiB) into RAM",
        want.size as f64 / f64::from(1 << 20)
    ));
    with_retries(url, log, || {
        file.set_len(0)
            .and_then(|()| file.rewind())
            .map_err(|e| ram_err(RAM_FILE)(e.to_string()))?;
        let (mut stream, head, early) = open(url).map_err(|reason| NetRootError::Fetch {
            url: url.to_owned(),
            reason,
        })?;
        if let Some(announced) = head.content_length
            && announced != want.size
        {
            return Err(FetchError::from(Mismatch::Announced {
                url: url.to_owned(),
                announced,
                want: want.size,
            })
            .into());
        }
        // Without a length (chunked or close-delimited) the copy stops one byte past the
        // payload's size anyway.
        let mut body: Box<dyn std::io::Read + '_> = match head.content_length {
            Some(len) => Box::new(keel_http::Body::new(early, &mut stream, len)),
            None => Box::new(std::io::Cursor::new(early).chain(&mut stream)),
        };
        let started = Instant::now();
        let mut progress = fetch::Progress::new(want.size);
        fetch::copy_verified(url, &mut body, &mut file, RAM_FILE, want, &mut |done| {
            if let Some(line) = progress.line(done, started.elapsed().as_secs_f64()) {
                log(&line);
            }
        })
        .map_err(NetRootError::from)
    })?;
    Ok(file)
}

/// Bytes used on the tmpfs at `dir` (0 when it cannot be told).
fn tmpfs_used(dir: &str) -> u64 {
    let Ok(path) = std::ffi::CString::new(dir) else {
        return 0;
    };
    // SAFETY: `path` is a NUL-terminated string and `st` a plain struct the call fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both live for the call.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 {
        return 0;
    }
    (st.f_blocks - st.f_bfree).saturating_mul(st.f_frsize)
}

/// The `keel.root=` URL on the command line, if any.
pub fn root_url(cmdline: &str) -> Option<&str> {
    layout::cmdline::get(cmdline, layout::cmdline::ROOT)
}
