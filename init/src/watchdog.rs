//! The hardware watchdog (`[node.watchdog]`): PID 1 arms `/dev/watchdogN` with the profile's
//! timeout and a thread pets it. Once the node is ready, the thread pets only while PID 1's
//! main loop (the ready loop, or the degraded one) keeps calling [`main_loop_alive`]: a PID 1
//! whose main loop hangs, or a kernel that stops scheduling, stops the pets, and the hardware
//! resets the machine. After the reset the node boots again with its boot number moved on, and
//! on a trial boot systemd-boot's counter moves on, so a version that hangs is rolled back like
//! one that fails its health gate.
//!
//! Before the ready line the thread pets unconditionally: a boot that hangs there is the boot
//! deadline's to end (`deadline.rs`), which reboots and counts the try. During an orderly
//! shutdown it pets unconditionally again ([`shutting_down`]), so that a slow service stop
//! cannot turn a power-off into a reset.
//!
//! The device is never closed: PID 1 never exits, and a close without the magic character
//! would leave the timer running anyway (`nowayout` drivers) or disarm it (the others).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_contract::profile::Watchdog;

use crate::sys;

/// `/sys/class/watchdog`: the watchdog devices the kernel has registered.
const CLASS: &str = "/sys/class/watchdog";

/// `linux/watchdog.h`: `_IOR('W', 5, int)` and `_IOWR('W', 6, int)`.
const WDIOC_KEEPALIVE: libc::c_ulong = 0x8004_5705;
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

/// Milliseconds since boot of the main loop's last turn; 0 while nobody watches it (before
/// ready, and during a shutdown).
static HEARTBEAT_MS: AtomicU64 = AtomicU64::new(0);

/// Called by PID 1's main loop on every turn once the node is ready (or degraded).
pub fn main_loop_alive() {
    HEARTBEAT_MS.store(now_ms().max(1), Ordering::Relaxed);
}

/// An orderly shutdown has begun: the thread pets until the kernel stops the machine.
pub fn shutting_down() {
    HEARTBEAT_MS.store(0, Ordering::Relaxed);
}

fn now_ms() -> u64 {
    // Seconds since boot as f64: whole milliseconds are plenty, and `as` saturates.
    (sys::boottime() * 1000.0) as u64
}

/// Which device to arm: the one the profile names, else the lowest-numbered one.
pub fn choose_device(found: &[String], wanted: Option<&str>) -> Result<Option<String>, String> {
    match wanted {
        Some(name) if found.iter().any(|f| f == name) => Ok(Some(name.to_owned())),
        Some(name) => Err(format!(
            "node.watchdog.device = {name:?}, but the machine has {}",
            if found.is_empty() {
                "no watchdog".to_owned()
            } else {
                found.join(", ")
            }
        )),
        None => Ok(found
            .iter()
            .min_by_key(|n| {
                n.strip_prefix("watchdog")
                    .and_then(|d| d.parse::<u32>().ok())
            })
            .cloned()),
    }
}

/// Whether to pet now: always while nobody watches the main loop, else only if its last turn
/// is less than half the timeout ago (so the hardware resets at most 1.5 timeouts after a
/// hang, and a loop that turns every 250 ms never comes near).
pub fn should_pet(now_ms: u64, heartbeat_ms: u64, timeout_secs: u32) -> bool {
    heartbeat_ms == 0 || now_ms.saturating_sub(heartbeat_ms) < u64::from(timeout_secs) * 500
}

/// How often the thread pets: four times per timeout.
pub fn pet_interval(timeout_secs: u32) -> Duration {
    Duration::from_millis(u64::from(timeout_secs) * 250)
}

fn registered_devices() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(CLASS) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("watchdog"))
        .collect()
}

fn identity(device: &str) -> String {
    std::fs::read_to_string(Path::new(CLASS).join(device).join("identity"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn ioctl_int(file: &File, request: libc::c_ulong, value: &mut libc::c_int) -> std::io::Result<()> {
    // SAFETY: both requests take a pointer to one int, which lives across the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, value as *mut libc::c_int) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Arms the watchdog the profile asks for, if the machine has one, and starts petting it.
/// Every outcome is one console line; none of them stops the boot.
pub fn arm(config: &Watchdog, log: &dyn Fn(&str)) {
    if !config.enabled {
        log("watchdog: off (node.watchdog.enabled = false)");
        return;
    }
    let found = registered_devices();
    let device = match choose_device(&found, config.device.as_ref().map(|d| d.as_str())) {
        Ok(Some(device)) => device,
        Ok(None) => {
            log("watchdog: none on this machine (no /sys/class/watchdog device)");
            return;
        }
        Err(e) => {
            log(&format!("warning: watchdog: {e}; none armed"));
            return;
        }
    };
    let path = Path::new("/dev").join(&device);
    let file = match File::options().write(true).open(&path) {
        Ok(file) => file,
        Err(e) => {
            log(&format!(
                "warning: watchdog: opening {}: {e}; none armed",
                path.display()
            ));
            return;
        }
    };
    let mut timeout = libc::c_int::try_from(config.timeout_secs.secs()).unwrap_or(60);
    if let Err(e) = ioctl_int(&file, WDIOC_SETTIMEOUT, &mut timeout) {
        log(&format!(
            "warning: watchdog: {device} refused a {} s timeout ({e}); keeping its own ({timeout} s)",
            config.timeout_secs.secs()
        ));
    }
    // The driver may round the timeout; pet by what it set.
    let timeout = u32::try_from(timeout)
        .unwrap_or(config.timeout_secs.secs())
        .max(1);
    log(&format!(
        "watchdog: armed {device} ({}) with a {timeout} s timeout; after ready it is petted only while PID 1's main loop runs",
        identity(&device)
    ));
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || pet_forever(file, device, timeout));
    if let Err(e) = spawned {
        log(&format!("warning: watchdog: no petting thread: {e}"));
    }
}

fn pet_forever(file: File, device: String, timeout: u32) -> ! {
    let mut stopped = false;
    loop {
        let pet = should_pet(now_ms(), HEARTBEAT_MS.load(Ordering::Relaxed), timeout);
        if pet {
            let mut ignored = 0;
            if let Err(e) = ioctl_int(&file, WDIOC_KEEPALIVE, &mut ignored) {
                crate::console::line(&format!("warning: watchdog: petting {device}: {e}"));
            }
            stopped = false;
        } else if !stopped {
            crate::console::line(&format!(
                "watchdog: PID 1's main loop has not turned for {} s: no longer petting {device}; the hardware resets the node",
                timeout / 2
            ));
            stopped = true;
        }
        std::thread::sleep(pet_interval(timeout));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_named_device_or_the_lowest_numbered_one() {
        let found = names(&["watchdog10", "watchdog2"]);
        assert_eq!(choose_device(&found, None), Ok(Some("watchdog2".into())));
        assert_eq!(
            choose_device(&found, Some("watchdog10")),
            Ok(Some("watchdog10".into()))
        );
        let err = choose_device(&found, Some("watchdog0")).unwrap_err();
        assert!(err.contains("watchdog10, watchdog2"), "{err}");
        assert_eq!(choose_device(&[], None), Ok(None));
        let err = choose_device(&[], Some("watchdog0")).unwrap_err();
        assert!(err.contains("no watchdog"), "{err}");
    }

    #[test]
    fn petting_stops_half_a_timeout_after_the_main_loop_does() {
        // Nobody watches the main loop yet (before ready, or shutting down): always pet.
        assert!(should_pet(1_000_000, 0, 10));
        // A loop that turned 4.9 s ago with a 10 s timeout: pet; 5 s ago: stop.
        assert!(should_pet(1_004_900, 1_000_000, 10));
        assert!(!should_pet(1_005_000, 1_000_000, 10));
        // A clock that went backwards never stops the pets.
        assert!(should_pet(999_000, 1_000_000, 10));
        assert_eq!(pet_interval(60), Duration::from_secs(15));
    }
}
