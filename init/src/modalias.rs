//! Which drivers this machine needs: the `modalias` strings the kernel publishes for every
//! device in sysfs, matched against `modules.alias` the way modprobe matches them (fnmatch
//! glob patterns: `*`, `?`, `[...]`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The device aliases of `modules.alias`, grouped by bus (`pci`, `virtio`, `acpi*`...) so a
/// device is compared only with its bus's patterns: the generic kernel has ~25,000 lines and
/// under TCG comparing each device with all of them costs seconds.
#[derive(Debug, Default)]
pub struct Aliases {
    /// bus prefix (text before the first `:`) -> (pattern, module), in file order.
    by_bus: BTreeMap<String, Vec<(String, String)>>,
    /// Patterns whose bus part is itself a glob (`acpi*:PNP0C0C:*`).
    wild: Vec<(String, String)>,
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl Aliases {
    /// Reads `alias PATTERN MODULE` lines. Only device aliases (`bus:...`) are kept: the others
    /// (`fs-vfat`, `char-major-10-236`, `devname:...`) name no device sysfs could show.
    pub fn parse(text: &str) -> Self {
        let mut out = Aliases::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some("alias"), Some(pattern), Some(module), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                continue;
            };
            let Some((bus, _)) = pattern.split_once(':') else {
                continue;
            };
            if bus == "devname" || bus.is_empty() {
                continue;
            }
            let entry = (pattern.to_owned(), module.replace('-', "_"));
            if is_glob(bus) {
                out.wild.push(entry);
            } else {
                out.by_bus.entry(bus.to_owned()).or_default().push(entry);
            }
        }
        out
    }

    /// The modules whose aliases match `modalias`, each once, in file order.
    pub fn modules_for(&self, modalias: &str) -> Vec<&str> {
        let bus = modalias.split_once(':').map_or("", |(b, _)| b);
        let mut out: Vec<&str> = Vec::new();
        let candidates = self.by_bus.get(bus).into_iter().flatten();
        for (pattern, module) in candidates.chain(&self.wild) {
            if !out.contains(&module.as_str())
                && glob_match(pattern.as_bytes(), modalias.as_bytes())
            {
                out.push(module);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.by_bus.is_empty() && self.wild.is_empty()
    }
}

/// fnmatch(3) without flags, as kmod uses it for `modules.alias`.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match class(&pattern[p..], text[t]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                None => (text[t] == b'[').then_some(1),
            },
            Some(&c) => (c == text[t]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                p += len;
                t += 1;
            }
            (None, Some((sp, st))) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// A bracket expression at the start of `pattern`: whether `c` matches and the expression's
/// length; `None` when the bracket is not closed (then it is a literal `[`).
fn class(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *pattern.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        match (pattern.get(i + 1), pattern.get(i + 2)) {
            (Some(b'-'), Some(&hi)) if hi != b']' => {
                matched |= (lo..=hi).contains(&c);
                i += 3;
            }
            _ => {
                matched |= lo == c;
                i += 1;
            }
        }
    }
}

/// Every device's modalias under `sys_devices` (`/sys/devices`; the `/sys/bus/*/devices/*`
/// entries are links into it, so walking it alone sees each device once). Links are not
/// followed, and the depth is bounded: sysfs has loops through `subsystem` and `driver`.
pub fn device_modaliases(sys_devices: &Path) -> BTreeSet<String> {
    const MAX_DEPTH: usize = 24;
    let mut out = BTreeSet::new();
    let mut stack = vec![(sys_devices.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < MAX_DEPTH {
                stack.push((entry.path(), depth + 1));
            } else if kind.is_file()
                && entry.file_name() == "modalias"
                && let Ok(text) = std::fs::read_to_string(entry.path())
            {
                let alias = text.trim();
                if !alias.is_empty() {
                    out.insert(alias.to_owned());
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "modalias_tests.rs"]
mod tests;
