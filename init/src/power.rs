//! Requests to stop: SIGTERM / SIGINT (Ctrl-Alt-Del) / SIGPWR to PID 1, and the ACPI power
//! button, read from its input device since there is no acpid; and the stop itself
//! ([`shutdown`]): services, what no service owns, the filesystems, then power off or reboot.

use std::io::Read;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// What the node was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    PowerOff,
    Reboot,
}

static REQUEST: AtomicU8 = AtomicU8::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    let value = if sig == libc::SIGINT { 2 } else { 1 };
    REQUEST.store(value, Ordering::SeqCst);
}

/// SIGTERM, SIGPWR: power off; SIGINT (Ctrl-Alt-Del): reboot.
pub fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGPWR] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

pub fn request(r: Request) {
    REQUEST.store(if r == Request::Reboot { 2 } else { 1 }, Ordering::SeqCst);
}

pub fn pending() -> Option<Request> {
    match REQUEST.load(Ordering::SeqCst) {
        1 => Some(Request::PowerOff),
        2 => Some(Request::Reboot),
        _ => None,
    }
}

/// Finds the "Power Button" input devices and watches them on threads.
pub fn watch_power_button(log: fn(&str)) {
    let Ok(entries) = std::fs::read_dir("/sys/class/input") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let device_name =
            std::fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if device_name.trim() != "Power Button" {
            continue;
        }
        let dev = format!("/dev/input/{name}");
        std::thread::spawn(move || {
            let Ok(mut file) = std::fs::File::open(&dev) else {
                log(&format!("cannot open {dev}"));
                return;
            };
            // struct input_event: timeval (16 bytes), type u16, code u16, value i32.
            let mut event = [0u8; 24];
            loop {
                if file.read_exact(&mut event).is_err() {
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
                let kind = u16::from_le_bytes([event[16], event[17]]);
                let code = u16::from_le_bytes([event[18], event[19]]);
                let value = i32::from_le_bytes([event[20], event[21], event[22], event[23]]);
                const EV_KEY: u16 = 1;
                const KEY_POWER: u16 = 116;
                if kind == EV_KEY && code == KEY_POWER && value == 1 {
                    log("power button pressed");
                    request(Request::PowerOff);
                }
            }
        });
    }
}

/// How long a supervisor's services get to stop, in all.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long what is left (containers' processes and shims, which containerd started and no
/// supervisor owns) gets after SIGTERM, and after SIGKILL, to be gone.
const LEFTOVER_TERM_GRACE: Duration = Duration::from_secs(3);
const LEFTOVER_KILL_GRACE: Duration = Duration::from_secs(2);

/// Stops the groups (given in stop order), ends what is left, unmounts, powers off or
/// reboots.
pub fn shutdown(
    request: Request,
    stop_order: &[std::sync::Arc<crate::supervisor::Supervisor>],
    log: fn(&str),
) -> ! {
    log("stopping services");
    for s in stop_order {
        if !s.stop_all(STOP_TIMEOUT).all_gone() {
            log("warning: some services did not stop");
        }
        // Their log files are on /var: open, they kept it from being unmounted, and every
        // boot then found DATA's journal to replay.
        s.close_logs();
    }
    // A container's processes outlive its `ctr run` (SIGTERM is ignored by a container's
    // PID 1 without a handler), and with them its rootfs overlay on /var: as systemd's
    // shutdown does, everything left gets SIGTERM, then SIGKILL.
    end_leftover_processes(log);
    crate::sys::sync();
    for target in [
        "/var",
        keel_contract::layout::root::ESP_MOUNT,
        keel_contract::layout::root::STATE_MOUNT,
    ] {
        unmount_before_power_off(target, log);
    }
    let cmd = match request {
        Request::PowerOff => {
            log("powering off");
            libc::RB_POWER_OFF
        }
        Request::Reboot => {
            log("rebooting");
            libc::RB_AUTOBOOT
        }
    };
    let err = crate::sys::reboot(cmd);
    crate::fatal::fatal(&format!("{err}"))
}

/// The user-space processes other than PID 1 (kernel threads have no command line).
fn leftover_processes() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1)
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()))
        .collect()
}

/// SIGTERM to every process but PID 1, SIGKILL to those still there after a grace; the
/// reaper thread collects them. Says how many there were.
fn end_leftover_processes(log: fn(&str)) {
    let left = leftover_processes().len();
    if left == 0 {
        return;
    }
    log(&format!("ending {left} processes no service owned"));
    for (signal, grace) in [
        (libc::SIGTERM, LEFTOVER_TERM_GRACE),
        (libc::SIGKILL, LEFTOVER_KILL_GRACE),
    ] {
        // SAFETY: kill(2) with pid -1: every process this one may signal, except itself.
        unsafe { libc::kill(-1, signal) };
        let deadline = std::time::Instant::now() + grace;
        while !leftover_processes().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if leftover_processes().is_empty() {
            return;
        }
    }
    log("warning: some processes did not end");
}

/// Unmounts `target`, after the mounts that hold it ([`crate::mounts::holding`]); when
/// something still holds it, remounts it read-only (the filesystem is then clean for the
/// next boot, its journal committed) and detaches it, saying so.
fn unmount_before_power_off(target: &str, log: fn(&str)) {
    use crate::sys;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // Not mounted (a diskless node's ESP and STATE): nothing to do, nothing to say.
    let Some(holders) = crate::mounts::holding(&mountinfo, target) else {
        return;
    };
    for holder in holders {
        let _ = sys::umount(&holder, libc::MNT_DETACH);
    }
    let Err(busy) = sys::umount(target, 0) else {
        return;
    };
    let read_only = sys::mount("", target, "", libc::MS_REMOUNT | libc::MS_RDONLY, None);
    log(&format!(
        "warning: {busy}; {}",
        match read_only {
            Ok(()) => "remounted read-only, then detached".to_owned(),
            Err(e) => format!("{e}: detached as it is (the next boot checks it)"),
        }
    ));
    let _ = sys::umount(target, libc::MNT_DETACH);
}
