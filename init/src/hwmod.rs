//! Drivers for the devices this machine has: every device's sysfs `modalias` matched against
//! `modules.alias`, the matching modules loaded with their dependencies (`modules.dep`), as
//! udev and modprobe would. Loading a bus driver (virtio_pci, xhci_pci, a SCSI HBA) makes new
//! devices appear, so this runs in rounds until nothing new shows up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use keel_contract::layout::modules;

use crate::kmod::ModuleDeps;
use crate::modalias::{self, Aliases};
use crate::sys;

/// Where the devices are.
pub const SYS_DEVICES: &str = "/sys/devices";
/// Buses whose aliases are not drivers: `cpu:` matches CPU features (kvm, accelerated
/// crypto), which a node does not need at boot and which cost seconds to load under TCG.
const SKIPPED_BUSES: &[&str] = &["cpu"];
/// Never loaded for a device: Debian's blacklist (kmod's /etc/modprobe.d/blacklist.conf:
/// debugging aids, drivers superseded by better ones, the PC speaker).
const BLACKLIST: &[&str] = &[
    "evbug",
    "usbmouse",
    "usbkbd",
    "eepro100",
    "de4x5",
    "eth1394",
    "snd_intel8x0m",
    "snd_aw2",
    "prism54",
    "bcm43xx",
    "garmin_gps",
    "asus_acpi",
    "snd_pcsp",
    "pcspkr",
    "amd76x_edac",
];
/// Drivers no step before ready needs, matched by where their file is: CPU frequency
/// scaling. They are set aside by [`Hardware::settle`] and loaded after the health gate
/// ([`load_after_ready`]). On a VM they decline (ENODEV) after probing the platform:
/// `acpi_cpufreq` and `pcc_cpufreq` cost 90 ms of stage 2 under TCG, measured per module.
const AFTER_READY_DIRS: &[&str] = &["/kernel/drivers/cpufreq/"];

/// Drivers set aside for after ready: each module with its files, dependencies first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AfterReady(pub Vec<(String, Vec<PathBuf>)>);

/// Rounds of [`Hardware::settle`]: the deepest chain seen is PCI HBA -> USB/SCSI bus ->
/// disk driver; more rounds only guard against a surprise, never a loop.
const MAX_ROUNDS: usize = 4;

/// Loads a module file (the real one is `sys::finit_module`; tests record the calls).
pub type LoadFn<'a> = dyn FnMut(&Path) -> Result<(), sys::SysError> + 'a;

pub struct Hardware {
    deps: ModuleDeps,
    aliases: Aliases,
    /// Modaliases already handled.
    seen: BTreeSet<String>,
    /// Loaded drivers and how many devices asked for each.
    pub drivers: BTreeMap<String, usize>,
    /// Drivers a device asked for that this image does not have.
    pub missing: BTreeSet<String>,
    /// Drivers that would not load (ENODEV: not for this variant of the device).
    pub declined: BTreeSet<String>,
    /// Drivers a device asked for that wait until after ready ([`AFTER_READY_DIRS`]).
    pub after_ready: BTreeMap<String, Vec<PathBuf>>,
    /// Whether the kernel has a module already (stage 1 loaded it): `/sys/module/NAME`.
    pub is_loaded: fn(&str) -> bool,
}

pub fn in_sys_module(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

impl Hardware {
    pub fn new(deps: ModuleDeps, aliases: Aliases) -> Self {
        Hardware {
            deps,
            aliases,
            seen: BTreeSet::new(),
            drivers: BTreeMap::new(),
            missing: BTreeSet::new(),
            declined: BTreeSet::new(),
            after_ready: BTreeMap::new(),
            is_loaded: in_sys_module,
        }
    }

    /// The running kernel's `modules.dep` and `modules.alias`; the error names the file.
    pub fn for_running_kernel() -> Result<Self, String> {
        let dir = crate::kmod::running_kernel_dir().ok_or("no /proc/sys/kernel/osrelease")?;
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let deps = ModuleDeps::parse(&dir, &read(modules::DEP)?);
        Ok(Self::new(deps, Aliases::parse(&read(modules::ALIAS)?)))
    }

    /// Loads the drivers for the modaliases not seen before; returns how many module files
    /// were loaded (dependencies included). Drivers the kernel has already (stage 1 loaded
    /// them) are left out. `loaded` is shared with the by-name loading so
    /// no file is loaded twice.
    pub fn load_for(
        &mut self,
        found: BTreeSet<String>,
        loaded: &mut BTreeSet<PathBuf>,
        load: &mut LoadFn<'_>,
        log: &dyn Fn(&str),
    ) -> usize {
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for alias in found {
            let bus = alias.split_once(':').map_or("", |(b, _)| b);
            if SKIPPED_BUSES.contains(&bus) || self.seen.contains(&alias) {
                continue;
            }
            for module in self.aliases.modules_for(&alias) {
                wanted
                    .entry(module.to_owned())
                    .or_default()
                    .push(alias.clone());
            }
            self.seen.insert(alias);
        }
        let mut count = 0;
        for (module, devices) in wanted {
            if self.missing.contains(&module)
                || self.declined.contains(&module)
                || BLACKLIST.contains(&module.as_str())
                || self.after_ready.contains_key(&module)
            {
                continue;
            }
            if let Some(files) = self.deps.load_order(&module).filter(|f| is_after_ready(f)) {
                self.after_ready.insert(module, files);
                continue;
            }
            match self.load_one(&module, loaded, load) {
                Ok(None) => {}
                Ok(Some(n)) => {
                    count += n;
                    *self.drivers.entry(module).or_default() += devices.len();
                }
                Err(Failure::Missing(why)) => {
                    log(&format!(
                        "driver {module} for {} is not in this image ({why}): device left without it",
                        devices.join(", ")
                    ));
                    self.missing.insert(module);
                }
                Err(Failure::Declined) => {
                    self.declined.insert(module);
                }
                Err(Failure::Other(e)) => log(&format!("warning: driver {module}: {e}")),
            }
        }
        count
    }

    fn load_one(
        &self,
        module: &str,
        loaded: &mut BTreeSet<PathBuf>,
        load: &mut LoadFn<'_>,
    ) -> Result<Option<usize>, Failure> {
        let files = self.deps.load_order(module);
        // Loaded here already (as a dependency of another driver: uas needs usb_storage): a
        // driver of this device all the same, named. Loaded before (by stage 1): not named.
        if files
            .as_ref()
            .and_then(|f| f.last())
            .is_some_and(|own| loaded.contains(own))
        {
            return Ok(Some(0));
        }
        if (self.is_loaded)(module) {
            return Ok(None);
        }
        let files = files.ok_or_else(|| Failure::Missing(format!("not in {}", modules::DEP)))?;
        load_files(&files, loaded, self.is_loaded, load).map(Some)
    }

    /// The drivers set aside for after ready, taken out of this scan.
    pub fn take_after_ready(&mut self) -> AfterReady {
        AfterReady(std::mem::take(&mut self.after_ready).into_iter().collect())
    }

    /// Rounds of scanning `sys_devices` and loading, until a round loads nothing.
    pub fn settle(
        &mut self,
        sys_devices: &Path,
        loaded: &mut BTreeSet<PathBuf>,
        load: &mut LoadFn<'_>,
        log: &dyn Fn(&str),
    ) -> usize {
        let mut total = 0;
        for _ in 0..MAX_ROUNDS {
            let n = self.load_for(modalias::device_modaliases(sys_devices), loaded, load, log);
            total += n;
            if n == 0 {
                break;
            }
        }
        total
    }

    /// `virtio_pci (3 devices), virtio_blk`: the drivers loaded and for how many devices.
    pub fn summary(&self) -> String {
        if self.drivers.is_empty() {
            return "none".to_owned();
        }
        let names: Vec<String> = self
            .drivers
            .iter()
            .map(|(m, n)| match n {
                1 => m.clone(),
                n => format!("{m} ({n} devices)"),
            })
            .collect();
        names.join(", ")
    }
}

/// Whether a module's own file (the last of its load order) is under [`AFTER_READY_DIRS`].
fn is_after_ready(files: &[PathBuf]) -> bool {
    files.last().is_some_and(|own| {
        let own = own.to_string_lossy();
        AFTER_READY_DIRS.iter().any(|dir| own.contains(dir))
    })
}

/// Loads `files` (one module, dependencies first), skipping those in `loaded` or known to the
/// kernel; each file loaded joins `loaded`. Returns how many were loaded.
fn load_files(
    files: &[PathBuf],
    loaded: &mut BTreeSet<PathBuf>,
    is_loaded: fn(&str) -> bool,
    load: &mut LoadFn<'_>,
) -> Result<usize, Failure> {
    let mut count = 0;
    for file in files {
        let name = crate::kmod::name_of(&file.display().to_string());
        if loaded.contains(file) || is_loaded(&name) {
            continue;
        }
        match load(file) {
            Ok(()) => {
                count += 1;
                loaded.insert(file.clone());
            }
            Err(e) => {
                return Err(match e.source.raw_os_error() {
                    Some(libc::ENOENT) => Failure::Missing(e.to_string()),
                    Some(libc::ENODEV) => Failure::Declined,
                    _ => Failure::Other(e.to_string()),
                });
            }
        }
    }
    Ok(count)
}

/// Loads the drivers set aside by [`Hardware::settle`] (skipping files in `loaded` or known
/// to the kernel); one line says which loaded and which declined (not for this machine).
pub fn load_after_ready(
    late: &AfterReady,
    loaded: &mut BTreeSet<PathBuf>,
    is_loaded: fn(&str) -> bool,
    load: &mut LoadFn<'_>,
    log: &dyn Fn(&str),
) -> usize {
    let (mut drivers, mut declined, mut count) = (Vec::new(), Vec::new(), 0);
    for (module, files) in &late.0 {
        match load_files(files, loaded, is_loaded, load) {
            Ok(n) => {
                count += n;
                drivers.push(module.as_str());
            }
            Err(Failure::Missing(_) | Failure::Declined) => declined.push(module.as_str()),
            Err(Failure::Other(e)) => {
                log(&format!("warning: driver {module}: {e}"));
                declined.push(module.as_str());
            }
        }
    }
    if !late.0.is_empty() {
        let list = |v: &[&str]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        log(&format!(
            "drivers after ready: loaded {}; not for this machine {}",
            list(&drivers),
            list(&declined)
        ));
    }
    count
}

enum Failure {
    Missing(String),
    Declined,
    Other(String),
}

/// The real loader.
pub fn finit(path: &Path) -> Result<(), sys::SysError> {
    sys::finit_module(path, "")
}

#[cfg(test)]
#[path = "hwmod_tests.rs"]
mod tests;
