//! Debian packages as a userland source: resolve a package set with the host's apt, download
//! it into a cache, verify it, and unpack it into a [`Tree`].
//!
//! apt is run as an ordinary program with an isolated state (an empty or generated dpkg status
//! file, our own pin preferences, no binary cache files), so the dependency closure is computed
//! as if nothing were installed, the host's installed packages and pins play no part, and no
//! root privileges are needed. The host's package lists (`apt-get update`) and its sources and
//! signing keys are used as they are: apt verifies the index signatures, and we verify every
//! `.deb` against the SHA256 in that index before it is unpacked.
//!
//! Parsing apt's output is kept in pure functions (text in, data out) so it can be tested
//! without apt; the functions that run apt are thin wrappers around them.
//!
//! What this does not do, because no maintainer scripts or triggers run, and what the builder
//! therefore has to provide itself where the image needs it:
//! - `/etc/passwd`, `/etc/group`, `/etc/shadow` (base-passwd's postinst copies them from
//!   `/usr/share/base-passwd/*.master`; adduser/useradd calls add system users such as `etcd`).
//! - `/etc/ld.so.cache` (the `ldconfig` trigger). Not needed: Debian's glibc searches
//!   `/lib/<triplet>` and `/usr/lib/<triplet>` without it; only `/etc/ld.so.conf.d` extras are
//!   lost. [`super::shlibs::missing_shared_libraries`] checks with exactly that search path.
//! - update-alternatives links are made from the `postinst` scripts' literal calls instead
//!   (`/usr/sbin/iptables` -> `/usr/sbin/iptables-nft`, see [`super::alternatives`]);
//!   `/lib/modules/<kver>/modules.dep*` (the kernel's postinst runs depmod),
//!   `/etc/ssl/certs/ca-certificates.crt` (update-ca-certificates), `/vmlinuz` links,
//!   systemd enablement symlinks, diversions, and files a postinst creates (`/etc/modules`).
//! - Essential packages are not added implicitly: nothing depends on them, so `base-files`
//!   (`/etc/os-release`) or `dash` (`/bin/sh`) are there only if the profile lists them.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::deb::{self, DebError, DebStats};
use crate::tree::Tree;

mod apt_env;
mod apt_output;
use apt_env::{AptEnv, CacheLock};
pub mod resolution_cache;
pub use super::deb822::{Stanza, parse_stanzas};
pub use apt_output::*;
use resolution_cache::{Resolution, ResolutionCache};

/// The profile's `[[image.userland]] debian = { .. }` entry; the schema lives in the contract crate.
pub use keel_contract::profile::DebianSource;

/// One package apt chose, downloaded and verified. Serialised (without its path) in the
/// resolution cache.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResolvedDeb {
    pub package: String,
    pub version: String,
    pub architecture: String,
    /// File name in the archive cache, as apt names it (`libcap2_1%3a2.66-4_amd64.deb`).
    pub filename: String,
    /// Lowercase hex SHA256 from apt's (signed) index.
    pub sha256: String,
    pub size: u64,
    /// Where the verified `.deb` is; empty until downloaded.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("debian userland: no packages requested")]
    NoPackages,
    #[error(
        "debian package name `{name}` is not valid (lowercase letters, digits, `+`, `-` and `.`)"
    )]
    InvalidPackageName { name: String },
    #[error("debian package `{package}` is both requested and excluded")]
    RequestedAndExcluded { package: String },
    #[error(
        "debian suite `{suite}` is not in the host's apt package lists (known: {known}); \
         add a sources entry for it under /etc/apt/sources.list.d and run `apt-get update`"
    )]
    UnknownSuite { suite: String, known: String },
    #[error(
        "debian suite `{suite}` has no component `{component}` in the build host's apt sources \
         (it has: {known}); add it to the suite's Components in /etc/apt/sources.list.d/ and \
         run apt-get update"
    )]
    UnknownComponent {
        suite: String,
        component: String,
        known: String,
    },
    #[error("debian package `{package}` does not exist in suite `{suite}`")]
    UnknownPackage { package: String, suite: String },
    #[error(
        "debian package `{package}` has no installable version in suite `{suite}` \
         (a purely virtual package? name one of its providers instead)"
    )]
    NoCandidate { package: String, suite: String },
    #[error(
        "cannot exclude `{package}`: it is not a real package in suite `{suite}` \
         (unknown, or purely virtual: exclude the package that provides it)"
    )]
    BadExclude { package: String, suite: String },
    #[error("excluded package `{package}` would be installed anyway (apt chose {version})")]
    ExcludeIgnored { package: String, version: String },
    #[error("running `{program}` (the debian userland needs a host with apt): {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}){hint}:\n{output}")]
    Apt {
        command: String,
        status: String,
        /// apt's stderr, plus the explanatory part of its stdout (unmet dependencies).
        output: String,
        hint: &'static str,
    },
    #[error("unexpected apt output: {line:?}")]
    Parse { line: String },
    #[error("debian package `{package}` {version}: apt's index entry {problem}")]
    Index {
        package: String,
        version: String,
        problem: String,
    },
    #[error("debian package `{package}` {version}: apt did not leave {path}")]
    NotDownloaded {
        package: String,
        version: String,
        path: PathBuf,
    },
    #[error(
        "debian package `{package}` {version}: {path} has SHA256 {actual} but apt's index \
         says {expected}; the file was removed so the next run downloads it again"
    )]
    ChecksumMismatch {
        package: String,
        version: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DebianError + '_ {
    move |source| DebianError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Resolves `src` with the host's apt, downloads what is not cached yet into
/// `<cache_dir>/debian/archives`, verifies every file's SHA256, and returns the packages sorted
/// by name. Progress goes to `log`, one line per call. When the profile's source, apt's
/// configuration and its package lists are what an earlier build resolved, apt's answer comes
/// from [`resolution_cache`] instead of four runs of apt.
pub fn resolve_and_download(
    src: &DebianSource,
    cache_dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<ResolvedDeb>, DebianError> {
    validate(src)?;
    let debian_cache = cache_dir.join("debian");
    let archives = debian_cache.join("archives");
    let cache = ResolutionCache::new(&debian_cache);
    let key = resolution_cache::key(src);
    if let Some(hit) = key.as_deref().and_then(|k| cache.load(k)) {
        let resolved = hit.resolved(&archives);
        // A hit whose packages were pruned from the cache takes apt's path: downloading
        // needs apt's state for these exclusions.
        if all_cached(&resolved) {
            for line in &hit.log {
                log(line);
            }
            log("debian: apt's answer reused (same source, apt configuration and package lists)");
            log("debian: every package is in the cache, nothing to download");
            return Ok(resolved);
        }
    }
    let apt = AptEnv::new()?;
    let mut lines = Vec::new();
    let resolved = resolve_with_apt(&apt, src, &archives, &mut |line: &str| {
        lines.push(line.to_owned());
        log(line);
    })?;
    download(&apt, &resolved, &debian_cache, log)?;
    // Lists updated while apt ran would make the answer belong to neither key.
    if let Some(key) = key.filter(|k| resolution_cache::key(src).as_ref() == Some(k))
        && let Err(e) = cache.store(&key, &Resolution::new(lines, &resolved))
    {
        log(&format!("debian: apt's answer not cached: {e}"));
    }
    Ok(resolved)
}

/// Runs apt (with the isolated state in `apt`) to resolve `src` into the packages it needs,
/// with their paths in `archives`.
fn resolve_with_apt(
    apt: &AptEnv,
    src: &DebianSource,
    archives: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<ResolvedDeb>, DebianError> {
    let policy = apt.run("apt-cache", &["policy".into()])?;
    let known = parse_release_suites(&String::from_utf8_lossy(&policy.stdout));
    if !known.contains(&src.suite) {
        return Err(DebianError::UnknownSuite {
            suite: src.suite.clone(),
            known: if known.is_empty() {
                "none: the host has no package lists".into()
            } else {
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            },
        });
    }
    let suites = companion_suites(&src.suite, &known);
    let policy_text = String::from_utf8_lossy(&policy.stdout);
    let have = release_components(&policy_text, &src.suite);
    let components: Vec<&str> = src
        .components_or_main()
        .into_iter()
        .map(|c| c.as_str())
        .collect();
    if let Some(missing) = components.iter().find(|c| !have.contains(**c)) {
        return Err(DebianError::UnknownComponent {
            suite: src.suite.clone(),
            component: (*missing).to_owned(),
            known: have.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    log(&format!(
        "debian: using suites {} ({})",
        suites.join(", "),
        components.join(", ")
    ));
    write(
        &apt.preferences,
        &suite_preferences(&suites, &components, &[]),
    )?;

    if !src.exclude.is_empty() {
        let mut args = vec!["show".to_string(), "--no-all-versions".to_string()];
        args.extend(src.exclude.iter().cloned());
        // apt-cache show exits 0 and prints nothing for unknown or virtual names; presence of
        // a stanza is the only reliable signal.
        let out = apt.run_unchecked("apt-cache", &args)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let found: BTreeSet<String> = parse_stanzas(&text)
            .iter()
            .filter_map(|s| s.field("Package").map(str::to_string))
            .collect();
        if let Some(missing) = src.exclude.iter().find(|p| !found.contains(*p)) {
            return Err(DebianError::BadExclude {
                package: missing.clone(),
                suite: src.suite.clone(),
            });
        }
        if !out.status.success() {
            return Err(apt_failure("apt-cache show", &out));
        }
        write(&apt.status, &exclusion_status(&text))?;
        write(
            &apt.preferences,
            &suite_preferences(&suites, &components, &src.exclude),
        )?;
        log(&format!(
            "debian: excluding {} (treated as installed)",
            src.exclude.join(", ")
        ));
    }

    let mut args = vec!["-s".to_string(), "install".to_string()];
    args.extend(src.packages.iter().cloned());
    let sim = apt
        .run("apt-get", &args)
        .map_err(|e| refine_install_error(e, &src.suite))?;
    log_warnings(&sim, log);
    let sim_text = String::from_utf8_lossy(&sim.stdout);
    for line in sim_text.lines().filter(|l| l.starts_with("Remv ")) {
        // An excluded package conflicts with something requested: apt drops it and its
        // Provides no longer count, which is consistent but worth knowing.
        log(&format!("debian: apt: {line}"));
    }
    let planned = parse_simulation(&sim_text)?;
    if let Some(p) = planned.iter().find(|p| src.exclude.contains(&p.package)) {
        return Err(DebianError::ExcludeIgnored {
            package: p.package.clone(),
            version: p.version.clone(),
        });
    }

    let mut args = vec!["show".to_string(), "--no-all-versions".to_string()];
    args.extend(
        planned
            .iter()
            .map(|p| format!("{}={}", p.package, p.version)),
    );
    let show = apt.run("apt-cache", &args)?;
    let resolved = resolved_from_index(&planned, &String::from_utf8_lossy(&show.stdout), archives)?;
    log(&format!(
        "debian: resolved {} packages, {} bytes of .debs",
        resolved.len(),
        resolved.iter().map(|r| r.size).sum::<u64>()
    ));
    Ok(resolved)
}

/// Downloads what of `resolved` is not in the cache yet and verifies it.
fn download(
    apt: &AptEnv,
    resolved: &[ResolvedDeb],
    debian_cache: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(), DebianError> {
    let archives = debian_cache.join("archives");
    std::fs::create_dir_all(archives.join("partial")).map_err(io_err(&archives))?;
    // apt runs with locking disabled (it would want /var/lib/dpkg/lock); this lock keeps two
    // builds sharing the cache from writing the same partial file at once.
    let _lock = CacheLock::acquire(&debian_cache.join("lock"))?;

    // Hashing what is already there both decides whether apt must run and verifies it.
    let cached = cached_flags(resolved);
    let missing: Vec<&ResolvedDeb> = resolved
        .iter()
        .zip(&cached)
        .filter(|(_, c)| !**c)
        .map(|(r, _)| r)
        .collect();
    if missing.is_empty() {
        log("debian: every package is in the cache, nothing to download");
    } else {
        log(&format!(
            "debian: downloading {} of {} packages ({} bytes)",
            missing.len(),
            resolved.len(),
            missing.iter().map(|r| r.size).sum::<u64>()
        ));
        let mut args = vec![
            "-o".to_string(),
            format!("Dir::Cache::archives={}/", archives.display()),
            "--download-only".to_string(),
            "install".to_string(),
        ];
        // Exact versions of the whole closure, so apt cannot choose differently this time.
        args.extend(
            resolved
                .iter()
                .map(|r| format!("{}={}", r.package, r.version)),
        );
        let out = apt.run("apt-get", &args)?;
        log_warnings(&out, log);
        let fetched = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("Get:"))
            .count();
        log(&format!("debian: apt fetched {fetched} files"));
    }
    for (r, _) in resolved.iter().zip(&cached).filter(|(_, c)| !**c) {
        verify(r)?;
    }
    Ok(())
}

/// Unpacks every package into `tree`, sorted by name so the result does not depend on the
/// order apt listed them. Each file is read once, checked against its SHA256 and unpacked from
/// those same bytes, so what lands in the tree is exactly what the signed index describes.
pub fn install(resolved: &[ResolvedDeb], tree: &mut Tree) -> Result<Vec<DebStats>, DebError> {
    let mut ordered: Vec<&ResolvedDeb> = resolved.iter().collect();
    ordered.sort_by(|a, b| (&a.package, &a.architecture).cmp(&(&b.package, &b.architecture)));
    let mut stats = Vec::with_capacity(ordered.len());
    // Reading, checking and decompressing (xz, one core per package) runs in parallel,
    // largest first: the kernel's and containerd's packages take over a second each, and
    // one started last would keep a core busy long after the others are done. Applying stays
    // in name order, so the tree is the same whatever the scheduling.
    let size = |r: &&ResolvedDeb| r.size;
    let decode = |r: &&ResolvedDeb| read_and_decode(r);
    crate::in_order::parallel_then_in_order(&ordered, size, decode, |i, decoded| {
        let r = ordered[i];
        let s = deb::apply_decoded(decoded?, &r.path, tree)?;
        if (
            s.package.as_str(),
            s.version.as_str(),
            s.architecture.as_str(),
        ) != (
            r.package.as_str(),
            r.version.as_str(),
            r.architecture.as_str(),
        ) {
            return Err(DebError::ControlMismatch {
                path: r.path.clone(),
                expected: format!("{} {} {}", r.package, r.version, r.architecture),
                found: format!("{} {} {}", s.package, s.version, s.architecture),
            });
        }
        stats.push(s);
        Ok(())
    })?;
    // What the packages' postinst scripts would have linked with update-alternatives.
    let wanted = stats
        .iter()
        .filter_map(|s| s.postinst.as_deref())
        .flat_map(super::alternatives::parse_postinst)
        .collect();
    super::alternatives::apply(tree, &super::alternatives::choose(wanted)).map_err(|e| {
        DebError::Control {
            path: PathBuf::from("update-alternatives"),
            reason: e.to_string(),
        }
    })?;
    Ok(stats)
}

fn read_and_decode(r: &ResolvedDeb) -> Result<deb::DecodedDeb, DebError> {
    let bytes = std::fs::read(&r.path).map_err(|source| DebError::Io {
        path: r.path.clone(),
        source,
    })?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != r.sha256 {
        return Err(DebError::Checksum {
            path: r.path.clone(),
            expected: r.sha256.clone(),
            actual,
        });
    }
    deb::decode_deb(&bytes, &r.path)
}

fn validate(src: &DebianSource) -> Result<(), DebianError> {
    if src.packages.is_empty() {
        return Err(DebianError::NoPackages);
    }
    for name in src.packages.iter().chain(&src.exclude) {
        // Names go on apt's command line: a leading `-` would be an option and `=`/`/` would
        // select versions or releases.
        if !is_package_name(name) {
            return Err(DebianError::InvalidPackageName { name: name.clone() });
        }
    }
    if let Some(p) = src.packages.iter().find(|p| src.exclude.contains(p)) {
        return Err(DebianError::RequestedAndExcluded { package: p.clone() });
    }
    Ok(())
}

/// Debian policy 5.6.1: at least two characters, lowercase alphanumerics and `+ - .`,
/// starting with an alphanumeric.
pub fn is_package_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.')
        })
}

/// Whether each package is in the cache whole (hashed on every core: 87 MiB for a worker).
fn cached_flags(resolved: &[ResolvedDeb]) -> Vec<bool> {
    use rayon::prelude::*;
    resolved.par_iter().map(is_cached).collect()
}

fn all_cached(resolved: &[ResolvedDeb]) -> bool {
    cached_flags(resolved).into_iter().all(|c| c)
}

fn is_cached(r: &ResolvedDeb) -> bool {
    std::fs::metadata(&r.path).is_ok_and(|m| m.len() == r.size)
        && sha256_file(&r.path).is_ok_and(|h| h == r.sha256)
}

fn verify(r: &ResolvedDeb) -> Result<(), DebianError> {
    if !r.path.is_file() {
        return Err(DebianError::NotDownloaded {
            package: r.package.clone(),
            version: r.version.clone(),
            path: r.path.clone(),
        });
    }
    let actual = sha256_file(&r.path)?;
    if actual != r.sha256 {
        // A bad file in the cache would fail every later build too.
        let _ = std::fs::remove_file(&r.path);
        return Err(DebianError::ChecksumMismatch {
            package: r.package.clone(),
            version: r.version.clone(),
            path: r.path.clone(),
            expected: r.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String, DebianError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn write(path: &Path, text: &str) -> Result<(), DebianError> {
    std::fs::write(path, text).map_err(io_err(path))
}

#[cfg(test)]
mod tests;
