//! apt's output and the names apt gives things, as pure functions (text in, data out), so
//! they can be tested without apt: error classification, suites and pin preferences, package
//! stanzas, the status file that excludes packages, the install simulation, and the archive
//! file names of the cache.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;

use super::{DebianError, ResolvedDeb};
use crate::userland::deb822::{Stanza, parse_stanzas};

pub(super) fn apt_failure(command: &str, out: &Output) -> DebianError {
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
pub(super) fn unmet_dependencies(stdout: &str) -> String {
    stdout
        .lines()
        .skip_while(|l| !(l.contains("unmet dependencies") || l.contains("could not be installed")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Passes apt's warnings on (for example that it downloaded unsandboxed because the cache is
/// not readable by the `_apt` user).
pub(super) fn log_warnings(out: &Output, log: &mut dyn FnMut(&str)) {
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if line.starts_with("W:") || line.starts_with("N:") {
            log(&format!("debian: apt: {line}"));
        }
    }
}

/// Turns apt's "no such package" failures into errors naming the package.
pub(super) fn refine_install_error(err: DebianError, suite: &str) -> DebianError {
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
pub(super) enum AptComplaint {
    Unknown(String),
    NoCandidate(String),
}

/// Recognises apt-get's messages for a name it cannot install (the first one wins).
pub(super) fn classify_apt_errors(stderr: &str) -> Option<AptComplaint> {
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

/// The components (`c=`) the host's apt sources have for `suite` (by archive or codename).
pub fn release_components(policy: &str, suite: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in policy.lines() {
        let Some(fields) = line.trim_start().strip_prefix("release ") else {
            continue;
        };
        let kv: Vec<&str> = fields.split(',').map(str::trim).collect();
        let named = kv
            .iter()
            .any(|f| f.strip_prefix("a=").or_else(|| f.strip_prefix("n=")) == Some(suite));
        if named {
            out.extend(
                kv.iter()
                    .filter_map(|f| f.strip_prefix("c="))
                    .map(String::from),
            );
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
///
/// Only the `components` given are installable from those suites.
pub fn suite_preferences(suites: &[String], components: &[&str], excluded: &[String]) -> String {
    let mut out = String::new();
    for package in excluded {
        out.push_str(&format!(
            "Package: {package}\nPin: release a=now\nPin-Priority: 1001\n\n"
        ));
    }
    for suite in suites {
        for key in ["a", "n"] {
            for c in components {
                out.push_str(&format!(
                    "Package: *\nPin: release {key}={suite},c={c}\nPin-Priority: 990\n\n"
                ));
            }
        }
    }
    out.push_str("Package: *\nPin: release *\nPin-Priority: -1\n");
    out
}

/// Relationship fields dropped from an excluded package, so apt does not try to satisfy them.
pub(super) const STRIPPED_FOR_EXCLUSION: [&str; 5] = [
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
