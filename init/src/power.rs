//! Requests to stop: SIGTERM / SIGINT (Ctrl-Alt-Del) / SIGPWR to PID 1, and the ACPI power
//! button, read from its input device since there is no acpid.

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
