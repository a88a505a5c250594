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
//! - update-alternatives links (`/usr/sbin/iptables` -> `/etc/alternatives/iptables` ->
//!   `iptables-nft`), `/lib/modules/<kver>/modules.dep*` (the kernel's postinst runs depmod),
//!   `/etc/ssl/certs/ca-certificates.crt` (update-ca-certificates), `/vmlinuz` links,
//!   systemd enablement symlinks, diversions, and files a postinst creates (`/etc/modules`).
//! - Essential packages are not added implicitly: nothing depends on them, so `base-files`
//!   (`/etc/os-release`) or `dash` (`/bin/sh`) are there only if the profile lists them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

use super::deb::{self, DebError, DebStats};
use crate::tree::Tree;

/// The profile's `[[image.userland]] debian = { .. }` entry; the schema lives in the contract crate.
pub use keel_signing::profile::DebianSource;

/// One package apt chose, downloaded and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
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
/// by name. Progress goes to `log`, one line per call.
pub fn resolve_and_download(
    src: &DebianSource,
    cache_dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<ResolvedDeb>, DebianError> {
    validate(src)?;
    let apt = AptEnv::new()?;

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
    log(&format!("debian: using suites {}", suites.join(", ")));
    write(&apt.preferences, &suite_preferences(&suites, &[]))?;

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
        write(&apt.preferences, &suite_preferences(&suites, &src.exclude))?;
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
    let archives = cache_dir.join("debian").join("archives");
    let resolved =
        resolved_from_index(&planned, &String::from_utf8_lossy(&show.stdout), &archives)?;
    log(&format!(
        "debian: resolved {} packages, {} bytes of .debs",
        resolved.len(),
        resolved.iter().map(|r| r.size).sum::<u64>()
    ));

    std::fs::create_dir_all(archives.join("partial")).map_err(io_err(&archives))?;
    // apt runs with locking disabled (it would want /var/lib/dpkg/lock); this lock keeps two
    // builds sharing the cache from writing the same partial file at once.
    let _lock = CacheLock::acquire(&cache_dir.join("debian").join("lock"))?;

    // Hashing what is already there both decides whether apt must run and verifies it.
    let cached: Vec<bool> = resolved.iter().map(is_cached).collect();
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
    Ok(resolved)
}

/// Unpacks every package into `tree`, sorted by name so the result does not depend on the
/// order apt listed them. Each file is read once, checked against its SHA256 and unpacked from
/// those same bytes, so what lands in the tree is exactly what the signed index describes.
pub fn install(resolved: &[ResolvedDeb], tree: &mut Tree) -> Result<Vec<DebStats>, DebError> {
    let mut ordered: Vec<&ResolvedDeb> = resolved.iter().collect();
    ordered.sort_by(|a, b| (&a.package, &a.architecture).cmp(&(&b.package, &b.architecture)));
    // Reading, checking and decompressing (xz, one core per package) runs in parallel;
    // applying stays in name order, so the tree is the same whatever the scheduling.
    use rayon::prelude::*;
    let decoded: Vec<Result<deb::DecodedDeb, DebError>> = ordered
        .par_iter()
        .map(|r| {
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
        })
        .collect();
    let mut stats = Vec::with_capacity(ordered.len());
    for (r, decoded) in ordered.into_iter().zip(decoded) {
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
    }
    Ok(stats)
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

/// The isolated apt state: a scratch directory holding the status file, preferences and
/// extended states, and the options that point apt at them.
struct AptEnv {
    _scratch: tempfile::TempDir,
    status: PathBuf,
    preferences: PathBuf,
    options: Vec<String>,
}

impl AptEnv {
    fn new() -> Result<Self, DebianError> {
        let scratch = tempfile::Builder::new()
            .prefix("keel-apt-")
            .tempdir()
            .map_err(io_err(&std::env::temp_dir()))?;
        let dir = scratch.path();
        let status = dir.join("status");
        let preferences = dir.join("preferences");
        let preferences_d = dir.join("preferences.d");
        write(&status, "")?;
        write(&preferences, "")?;
        std::fs::create_dir(&preferences_d).map_err(io_err(&preferences_d))?;
        let o = |kv: String| ["-o".to_string(), kv];
        let options = [
            o(format!("Dir::State::status={}", status.display())),
            o(format!(
                "Dir::State::extended_states={}",
                dir.join("extended_states").display()
            )),
            o(format!("Dir::Etc::preferences={}", preferences.display())),
            o(format!(
                "Dir::Etc::PreferencesParts={}",
                preferences_d.display()
            )),
            // In-memory package cache: nothing is written under /var/cache/apt (which needs
            // root), and the host's cache never mixes with our fake status.
            o("Dir::Cache::pkgcache=".into()),
            o("Dir::Cache::srcpkgcache=".into()),
            o("Debug::NoLocking=1".into()),
            o("APT::Install-Recommends=false".into()),
            o("APT::Install-Suggests=false".into()),
            // Our preferences decide the release; a host-wide default would outrank them.
            o("APT::Default-Release=".into()),
        ]
        .concat();
        Ok(AptEnv {
            _scratch: scratch,
            status,
            preferences,
            options,
        })
    }

    fn command(&self, program: &str, args: &[String]) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("-q");
        if program == "apt-get" {
            cmd.arg("-y");
        }
        cmd.args(&self.options)
            .args(args)
            // Parsed output must not be translated.
            .env("LC_ALL", "C")
            .env_remove("LANGUAGE")
            .stdin(Stdio::null());
        cmd
    }

    fn run_unchecked(&self, program: &str, args: &[String]) -> Result<Output, DebianError> {
        self.command(program, args)
            .output()
            .map_err(|source| DebianError::Spawn {
                program: program.to_string(),
                source,
            })
    }

    fn run(&self, program: &str, args: &[String]) -> Result<Output, DebianError> {
        let out = self.run_unchecked(program, args)?;
        if out.status.success() {
            Ok(out)
        } else {
            let verb = args
                .iter()
                .find(|a| !a.starts_with('-'))
                .map_or("", String::as_str);
            Err(apt_failure(&format!("{program} {verb}"), &out))
        }
    }
}

fn apt_failure(command: &str, out: &Output) -> DebianError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut output = stderr.trim_end().to_string();
    let explanation = unmet_dependencies(&stdout);
    if !explanation.is_empty() {
        output.push('\n');
        output.push_str(&explanation);
    }
    let hint = if stderr.contains("404") || stderr.contains("Failed to fetch") {
        " (the host's package lists may be stale: run `apt-get update`)"
    } else {
        ""
    };
    DebianError::Apt {
        command: command.to_string(),
        status: out.status.to_string(),
        output,
        hint,
    }
}

/// The block apt prints on stdout to explain an unsatisfiable request.
fn unmet_dependencies(stdout: &str) -> String {
    stdout
        .lines()
        .skip_while(|l| !(l.contains("unmet dependencies") || l.contains("could not be installed")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Passes apt's warnings on (for example that it downloaded unsandboxed because the cache is
/// not readable by the `_apt` user).
fn log_warnings(out: &Output, log: &mut dyn FnMut(&str)) {
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if line.starts_with("W:") || line.starts_with("N:") {
            log(&format!("debian: apt: {line}"));
        }
    }
}

/// Turns apt's "no such package" failures into errors naming the package.
fn refine_install_error(err: DebianError, suite: &str) -> DebianError {
    let DebianError::Apt { output, .. } = &err else {
        return err;
    };
    match classify_apt_errors(output) {
        Some(AptComplaint::Unknown(package)) => DebianError::UnknownPackage {
            package,
            suite: suite.to_string(),
        },
        Some(AptComplaint::NoCandidate(package)) => DebianError::NoCandidate {
            package,
            suite: suite.to_string(),
        },
        None => err,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum AptComplaint {
    Unknown(String),
    NoCandidate(String),
}

/// Recognises apt-get's messages for a name it cannot install (the first one wins).
fn classify_apt_errors(stderr: &str) -> Option<AptComplaint> {
    stderr.lines().find_map(|line| {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("E: Unable to locate package ") {
            return Some(AptComplaint::Unknown(name.trim().to_string()));
        }
        if let Some((name, _)) = line
            .strip_prefix("E: Package '")
            .and_then(|rest| rest.split_once("' has no installation candidate"))
        {
            return Some(AptComplaint::NoCandidate(name.to_string()));
        }
        if let Some((_, name)) = line
            .strip_prefix("E: Version '")
            .and_then(|rest| rest.split_once("' for '"))
        {
            return Some(AptComplaint::NoCandidate(
                name.trim_end_matches("' was not found").to_string(),
            ));
        }
        None
    })
}

/// Release names (archive `a=` and codename `n=`) in `apt-cache policy` output, without the
/// dpkg status pseudo-release `now`.
pub fn parse_release_suites(policy: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in policy.lines() {
        let Some(fields) = line.trim_start().strip_prefix("release ") else {
            continue;
        };
        for kv in fields.split(',') {
            if let Some(v) = kv.strip_prefix("a=").or_else(|| kv.strip_prefix("n=")) {
                let v = v.trim();
                if !v.is_empty() && v != "now" {
                    out.insert(v.to_string());
                }
            }
        }
    }
    out
}

/// `suite` plus the `-updates` and `-security` releases of it that the host knows.
pub fn companion_suites(suite: &str, known: &BTreeSet<String>) -> Vec<String> {
    [
        suite.to_string(),
        format!("{suite}-updates"),
        format!("{suite}-security"),
    ]
    .into_iter()
    .filter(|s| known.contains(s))
    .collect()
}

/// apt preferences that make `suites` the only installable releases. A plain
/// `APT::Default-Release=bookworm` is not enough: it ranks bookworm above bookworm-security, so
/// apt would pick the point-release kernel over a newer security update, and it still lets other
/// configured repositories supply packages the suite lacks.
///
/// Each `excluded` package's fake installed version (see [`exclusion_status`]) is pinned above
/// 1000 so it stays the candidate. Stripping its dependencies changes apt's hash of the version,
/// so apt sees it as a different version from the archive's one with the same number, and
/// without the pin it would "upgrade" it to the archive version, pulling in everything the
/// exclusion was meant to drop. (apt does that, for example, for udev when systemd-boot-efi,
/// from the same source package, is installed.)
pub fn suite_preferences(suites: &[String], excluded: &[String]) -> String {
    let mut out = String::new();
    for package in excluded {
        out.push_str(&format!(
            "Package: {package}\nPin: release a=now\nPin-Priority: 1001\n\n"
        ));
    }
    for suite in suites {
        for key in ["a", "n"] {
            out.push_str(&format!(
                "Package: *\nPin: release {key}={suite}\nPin-Priority: 990\n\n"
            ));
        }
    }
    out.push_str("Package: *\nPin: release *\nPin-Priority: -1\n");
    out
}

/// One paragraph of a Debian control file: fields in order, each value with its continuation
/// lines (`"first\n second"`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stanza {
    pub fields: Vec<(String, String)>,
}

impl Stanza {
    /// The value of `name` (case-insensitive, as field names are).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn to_text(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.fields {
            out.push_str(k);
            out.push(':');
            if !v.is_empty() && !v.starts_with('\n') {
                out.push(' ');
            }
            out.push_str(v);
            out.push('\n');
        }
        out
    }
}

/// Parses deb822 paragraphs (`apt-cache show`, a dpkg status file, a `control` file).
pub fn parse_stanzas(text: &str) -> Vec<Stanza> {
    let mut out = Vec::new();
    let mut current = Stanza::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.fields.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.fields.last_mut() {
                v.push('\n');
                v.push_str(line);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            current.fields.push((k.to_string(), v.trim().to_string()));
        }
    }
    if !current.fields.is_empty() {
        out.push(current);
    }
    out
}

/// Relationship fields dropped from an excluded package, so apt does not try to satisfy them.
const STRIPPED_FOR_EXCLUSION: [&str; 5] = [
    "Depends",
    "Pre-Depends",
    "Recommends",
    "Suggests",
    "Enhances",
];

/// The dpkg status file that marks the packages in `show` (output of
/// `apt-cache show --no-all-versions PKG...`) as installed, without their dependencies.
/// `Provides` is kept so virtual dependencies (`linux-initramfs-tool`) stay satisfied, and
/// `Conflicts`/`Breaks` are kept so apt reports a clash rather than hiding it.
pub fn exclusion_status(show: &str) -> String {
    let mut out = String::new();
    for stanza in parse_stanzas(show) {
        let Some(package) = stanza.field("Package") else {
            continue;
        };
        let mut fields = vec![
            ("Package".to_string(), package.to_string()),
            ("Status".to_string(), "install ok installed".to_string()),
        ];
        fields.extend(
            stanza
                .fields
                .iter()
                .filter(|(k, _)| {
                    !k.eq_ignore_ascii_case("Package")
                        && !k.eq_ignore_ascii_case("Status")
                        && !STRIPPED_FOR_EXCLUSION
                            .iter()
                            .any(|s| k.eq_ignore_ascii_case(s))
                })
                .cloned(),
        );
        out.push_str(&Stanza { fields }.to_text());
        out.push('\n');
    }
    out
}

/// A package apt's simulation would install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub package: String,
    pub version: String,
    pub architecture: String,
}

/// Reads the `Inst` lines of `apt-get -s install` output:
/// `Inst libcap2 (1:2.66-4 Debian:12.11/stable [amd64])`, optionally with the installed version
/// in brackets after the name. Sorted by name; other lines are ignored.
pub fn parse_simulation(text: &str) -> Result<Vec<Planned>, DebianError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let bad = || DebianError::Parse {
            line: line.to_string(),
        };
        let (name, rest) = rest.split_once(' ').ok_or_else(bad)?;
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            // Upgrade of an installed version: `Inst pkg [old] (new ...)`.
            rest = rest.split_once("] ").ok_or_else(bad)?.1.trim_start();
        }
        let inner = rest
            .strip_prefix('(')
            .and_then(|r| r.split_once(')'))
            .ok_or_else(bad)?
            .0;
        let version = inner.split_whitespace().next().ok_or_else(bad)?;
        let architecture = inner
            .rsplit_once('[')
            .and_then(|(_, a)| a.strip_suffix(']'))
            .ok_or_else(bad)?;
        // Foreign-architecture packages are printed as `name:arch`.
        let package = name.split_once(':').map_or(name, |(n, _)| n);
        out.push(Planned {
            package: package.to_string(),
            version: version.to_string(),
            architecture: architecture.to_string(),
        });
    }
    out.sort_by(|a, b| (&a.package, &a.architecture).cmp(&(&b.package, &b.architecture)));
    Ok(out)
}

/// Joins the planned packages with their index entries (`apt-cache show PKG=VER...` output)
/// into the resolved list, sorted by name, with the paths they have in `archives`.
pub fn resolved_from_index(
    planned: &[Planned],
    show: &str,
    archives: &Path,
) -> Result<Vec<ResolvedDeb>, DebianError> {
    let mut index: BTreeMap<(String, String, String), Stanza> = BTreeMap::new();
    for stanza in parse_stanzas(show) {
        if let (Some(p), Some(v), Some(a)) = (
            stanza.field("Package"),
            stanza.field("Version"),
            stanza.field("Architecture"),
        ) {
            let key = (p.to_string(), v.to_string(), a.to_string());
            // The same version in two releases (bookworm and bookworm-security) is one file;
            // the first entry is as good as any.
            index.entry(key).or_insert(stanza);
        }
    }
    let mut out = Vec::with_capacity(planned.len());
    for p in planned {
        let problem = |problem: &str| DebianError::Index {
            package: p.package.clone(),
            version: p.version.clone(),
            problem: problem.to_string(),
        };
        let key = (p.package.clone(), p.version.clone(), p.architecture.clone());
        let stanza = index
            .get(&key)
            .ok_or_else(|| problem(&format!("for {} is missing", p.architecture)))?;
        let sha256 = stanza
            .field("SHA256")
            .ok_or_else(|| problem("has no SHA256 field"))?
            .to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(problem(&format!("has a malformed SHA256 {sha256:?}")));
        }
        let size = stanza
            .field("Size")
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| problem("has no valid Size field"))?;
        let pool = stanza
            .field("Filename")
            .ok_or_else(|| problem("has no Filename field"))?;
        let filename = archive_file_name(&p.package, &p.version, &p.architecture, pool);
        out.push(ResolvedDeb {
            package: p.package.clone(),
            version: p.version.clone(),
            architecture: p.architecture.clone(),
            path: archives.join(&filename),
            filename,
            sha256,
            size,
        });
    }
    out.sort_by(|a, b| (&a.package, &a.architecture).cmp(&(&b.package, &b.architecture)));
    Ok(out)
}

/// The name apt stores a package under in its archives directory (apt's `QuoteString` of
/// name, version and architecture, then the pool file's extension), e.g. an epoch's `:` becomes
/// `%3a`.
pub fn archive_file_name(package: &str, version: &str, arch: &str, pool_filename: &str) -> String {
    fn quote(s: &str, bad: &[u8]) -> String {
        let mut out = String::new();
        for &b in s.as_bytes() {
            if bad.contains(&b) || b == b'%' || b <= 0x20 || b >= 0x7f {
                out.push_str(&format!("%{b:02x}"));
            } else {
                out.push(b as char);
            }
        }
        out
    }
    let ext = pool_filename.rsplit_once('.').map_or("deb", |(_, e)| e);
    format!(
        "{}_{}_{}.{ext}",
        quote(package, b"_:"),
        quote(version, b"_:"),
        quote(arch, b"_:.")
    )
}

/// An exclusive `flock` on a file in the cache, released when dropped (or when the process
/// dies, which a lock file with a pid inside would not handle).
struct CacheLock {
    _file: File,
}

impl CacheLock {
    fn acquire(path: &Path) -> Result<Self, DebianError> {
        use std::os::fd::AsRawFd;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        loop {
            // SAFETY: flock only reads the descriptor, which `file` keeps open.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(io_err(path)(err));
            }
        }
        Ok(CacheLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "\
Package files:
 100 /var/lib/dpkg/status
     release a=now
 500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
     release v=12,o=Debian,a=oldstable-security,n=bookworm-security,l=Debian-Security,c=main,b=amd64
     origin deb.debian.org
 500 http://deb.debian.org/debian bookworm/main amd64 Packages
     release v=12.15,o=Debian,a=oldstable,n=bookworm,l=Debian,c=main,b=amd64
     origin deb.debian.org
Pinned packages:
";

    #[test]
    fn release_suites_come_from_archive_and_codename() {
        let known = parse_release_suites(POLICY);
        let want: BTreeSet<String> = [
            "bookworm",
            "bookworm-security",
            "oldstable",
            "oldstable-security",
        ]
        .map(String::from)
        .into();
        assert_eq!(known, want);
        assert_eq!(
            companion_suites("bookworm", &known),
            ["bookworm", "bookworm-security"]
        );
        assert!(companion_suites("trixie", &known).is_empty());
    }

    #[test]
    fn preferences_pin_the_suites_and_forbid_everything_else() {
        let prefs = suite_preferences(
            &["bookworm".into(), "bookworm-security".into()],
            &["udev".into()],
        );
        assert!(prefs.contains("Pin: release n=bookworm-security\nPin-Priority: 990"));
        assert!(prefs.contains("Pin: release a=bookworm\nPin-Priority: 990"));
        assert!(prefs.starts_with("Package: udev\nPin: release a=now\nPin-Priority: 1001\n\n"));
        // apt uses the first matching generic pin, so the catch-all must come last.
        assert!(
            prefs
                .trim_end()
                .ends_with("Pin: release *\nPin-Priority: -1")
        );
        let stanzas = parse_stanzas(&prefs);
        assert_eq!(stanzas.len(), 6);
    }

    const SHOW_EXCLUDED: &str = "\
Package: initramfs-tools
Version: 0.142+deb12u3
Installed-Size: 55
Maintainer: Debian kernel team <debian-kernel@lists.debian.org>
Architecture: all
Provides: linux-initramfs-tool
Depends: initramfs-tools-core (= 0.142+deb12u3), linux-base
Suggests: bash-completion
Breaks: e2fsprogs (<< 1.42.1-1~), upstart (<< 1.13.2-0ubuntu10~)
Description: generic modular initramfs generator (automation)
 This package builds a bootable initramfs for Linux kernel packages. The
 initramfs is loaded along with the kernel.
Multi-Arch: foreign
Filename: pool/main/i/initramfs-tools/initramfs-tools_0.142+deb12u3_all.deb
Size: 16028
SHA256: 1b2cd6a4bd62bb8a2e8dfae0f3b2b29a2b3ed0dd95e5e5b6f4d2d7e9f0b54c11

Package: perl
Version: 5.36.0-7+deb12u4
Architecture: amd64
Pre-Depends: dpkg (>= 1.17.17)
Depends: perl-base (= 5.36.0-7+deb12u4),
 perl-modules-5.36 (>= 5.36.0-7+deb12u4)
Recommends: netbase
Provides: libansicolor-perl (= 5.01), libarchive-tar-perl (= 2.40)
Priority: standard
";

    #[test]
    fn exclusion_status_marks_installed_and_drops_dependencies() {
        let status = exclusion_status(SHOW_EXCLUDED);
        let stanzas = parse_stanzas(&status);
        assert_eq!(stanzas.len(), 2);
        let initramfs = &stanzas[0];
        assert_eq!(
            initramfs.fields[0],
            ("Package".into(), "initramfs-tools".into())
        );
        assert_eq!(initramfs.field("Status"), Some("install ok installed"));
        assert_eq!(initramfs.field("Version"), Some("0.142+deb12u3"));
        assert_eq!(initramfs.field("Architecture"), Some("all"));
        assert_eq!(initramfs.field("Provides"), Some("linux-initramfs-tool"));
        assert!(initramfs.field("Breaks").is_some());
        assert_eq!(initramfs.field("Depends"), None);
        assert_eq!(initramfs.field("Suggests"), None);
        // Multi-line values survive intact.
        assert!(
            initramfs
                .field("Description")
                .is_some_and(|d| d.ends_with("\n initramfs is loaded along with the kernel."))
        );
        let perl = &stanzas[1];
        assert_eq!(perl.field("Status"), Some("install ok installed"));
        for gone in ["Depends", "Pre-Depends", "Recommends"] {
            assert_eq!(perl.field(gone), None, "{gone}");
        }
        // The continuation line of the dropped Depends must not leak into another field.
        assert!(!status.contains("perl-modules-5.36"));
        assert!(
            perl.field("Provides")
                .is_some_and(|p| p.contains("libarchive-tar-perl"))
        );
    }

    const SIMULATION: &str = "\
NOTE: This is only a simulation!
      apt-get needs root privileges for real execution.
Reading package lists...
Building dependency tree...
The following NEW packages will be installed:
  libc6 libcap2 libseccomp2 runc
0 upgraded, 4 newly installed, 0 to remove and 0 not upgraded.
Inst libc6 (2.36-9+deb12u10 Debian:12.11/stable [amd64]) []
Inst libseccomp2 (2.5.4-1+deb12u1 Debian:12.11/stable [amd64])
Inst runc (1.1.5+ds1-1+deb12u1 Debian:12.11/stable, Debian-Security:12/stable-security [amd64])
Inst libcap2 [1:2.66-4] (1:2.66-4+deb12u1 Debian:12.11/stable [amd64])
Inst tzdata (2025b-0+deb12u1 Debian:12.11/stable-updates [all])
Conf libc6 (2.36-9+deb12u10 Debian:12.11/stable [amd64])
Conf runc (1.1.5+ds1-1+deb12u1 Debian:12.11/stable [amd64])
";

    const SHOW_RESOLVED: &str = "\
Package: runc
Version: 1.1.5+ds1-1+deb12u1
Architecture: amd64
Filename: pool/main/r/runc/runc_1.1.5+ds1-1+deb12u1_amd64.deb
Size: 2709960
SHA256: A00351F8C0318DE0B424ECF5CD0FDB69880A89F3511CAE4F6FFF7DE3E57881C5

Package: libc6
Version: 2.36-9+deb12u10
Architecture: amd64
Filename: pool/main/g/glibc/libc6_2.36-9+deb12u10_amd64.deb
Size: 2757936
SHA256: 1111111111111111111111111111111111111111111111111111111111111111

Package: libc6
Version: 2.36-9+deb12u10
Architecture: i386
Filename: pool/main/g/glibc/libc6_2.36-9+deb12u10_i386.deb
Size: 2600000
SHA256: 9999999999999999999999999999999999999999999999999999999999999999

Package: libseccomp2
Version: 2.5.4-1+deb12u1
Architecture: amd64
Filename: pool/main/libs/libseccomp/libseccomp2_2.5.4-1+deb12u1_amd64.deb
Size: 46808
SHA256: 2222222222222222222222222222222222222222222222222222222222222222

Package: libcap2
Version: 1:2.66-4+deb12u1
Architecture: amd64
Filename: pool/main/libc/libcap2/libcap2_2.66-4+deb12u1_amd64.deb
Size: 27708
SHA256: 3333333333333333333333333333333333333333333333333333333333333333

Package: tzdata
Version: 2025b-0+deb12u1
Architecture: all
Filename: pool/main/t/tzdata/tzdata_2025b-0+deb12u1_all.deb
Size: 255000
SHA256: 4444444444444444444444444444444444444444444444444444444444444444
";

    #[test]
    fn simulation_and_index_give_the_sorted_resolved_list() {
        let planned = parse_simulation(SIMULATION).unwrap();
        let names: Vec<&str> = planned.iter().map(|p| p.package.as_str()).collect();
        assert_eq!(names, ["libc6", "libcap2", "libseccomp2", "runc", "tzdata"]);
        assert_eq!(planned[1].version, "1:2.66-4+deb12u1");
        assert_eq!(planned[4].architecture, "all");

        let resolved =
            resolved_from_index(&planned, SHOW_RESOLVED, Path::new("/cache/archives")).unwrap();
        let libc = &resolved[0];
        assert_eq!(libc.architecture, "amd64");
        assert_eq!(
            libc.sha256,
            "1".repeat(64),
            "the amd64 entry, not the i386 one"
        );
        let libcap = &resolved[1];
        assert_eq!(libcap.filename, "libcap2_1%3a2.66-4+deb12u1_amd64.deb");
        assert_eq!(
            libcap.path,
            Path::new("/cache/archives/libcap2_1%3a2.66-4+deb12u1_amd64.deb")
        );
        let runc = &resolved[3];
        assert_eq!(runc.size, 2709960);
        assert_eq!(
            runc.sha256,
            "a00351f8c0318de0b424ecf5cd0fdb69880a89f3511cae4f6fff7de3e57881c5"
        );
        assert_eq!(resolved[4].filename, "tzdata_2025b-0+deb12u1_all.deb");
    }

    #[test]
    fn a_package_missing_from_the_index_is_an_error_naming_it() {
        let planned = parse_simulation(SIMULATION).unwrap();
        let show = SHOW_RESOLVED.replace("Package: tzdata", "Package: tzdata-legacy");
        let err = resolved_from_index(&planned, &show, Path::new("/c")).unwrap_err();
        assert!(
            matches!(&err, DebianError::Index { package, .. } if package == "tzdata"),
            "{err}"
        );
    }

    #[test]
    fn malformed_inst_line_is_reported() {
        let err = parse_simulation("Inst broken-line-without-version\n").unwrap_err();
        assert!(matches!(err, DebianError::Parse { .. }), "{err}");
    }

    #[test]
    fn apt_error_messages_name_the_package() {
        assert_eq!(
            classify_apt_errors("W: something\nE: Unable to locate package nosuchpkg\n"),
            Some(AptComplaint::Unknown("nosuchpkg".into()))
        );
        assert_eq!(
            classify_apt_errors("E: Package 'linux-initramfs-tool' has no installation candidate"),
            Some(AptComplaint::NoCandidate("linux-initramfs-tool".into()))
        );
        assert_eq!(
            classify_apt_errors("E: Version '9' for 'hello' was not found"),
            Some(AptComplaint::NoCandidate("hello".into()))
        );
        assert_eq!(
            classify_apt_errors("E: Sub-process returned an error"),
            None
        );
    }

    #[test]
    fn package_names_are_validated() {
        for ok in [
            "libc6",
            "g++",
            "libstdc++6",
            "linux-image-6.1.0-21-amd64",
            "e2fsprogs",
        ] {
            assert!(is_package_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "-o",
            "Foo",
            "pkg=1.0",
            "pkg/bookworm",
            "pkg:amd64",
            "a b",
        ] {
            assert!(!is_package_name(bad), "{bad}");
        }
        let src = DebianSource {
            suite: "bookworm".into(),
            packages: vec!["runc".into(), "perl".into()],
            exclude: vec!["perl".into()],
        };
        assert!(matches!(
            validate(&src),
            Err(DebianError::RequestedAndExcluded { package }) if package == "perl"
        ));
    }

    #[test]
    fn archive_names_quote_like_apt() {
        assert_eq!(
            archive_file_name(
                "libcap2",
                "1:2.66-4",
                "amd64",
                "pool/x/libcap2_2.66-4_amd64.deb"
            ),
            "libcap2_1%3a2.66-4_amd64.deb"
        );
        assert_eq!(
            archive_file_name("foo", "1.0", "all", "pool/f/foo_1.0_all.udeb"),
            "foo_1.0_all.udeb"
        );
    }

    #[test]
    fn profile_syntax_deserialises() {
        let src: DebianSource = toml::from_str(
            r#"suite = "bookworm"
packages = ["runc"]
exclude = ["perl"]"#,
        )
        .unwrap();
        assert_eq!(src.exclude, ["perl"]);
        let src: DebianSource = toml::from_str("suite = \"bookworm\"\npackages = []").unwrap();
        assert!(src.exclude.is_empty());
        assert!(toml::from_str::<DebianSource>("suite = \"x\"\npackages = []\nextra = 1").is_err());
    }
}
