//! The one way PID 1 gives up: say why on the console, wait (so the message can be read and
//! systemd-boot's boot counter gets the chance to move on to the other slot), reboot.
//!
//! Unless rebooting cannot help: on a *last-resort* boot (every boot entry is out of tries, so
//! a reboot would come back to this very boot) the node stays up instead, degraded, saying
//! why, with the management API serving if it was started, and acts on reboot and power-off
//! requests. A node never reboots in a loop.
//!
//! Panics: the init's panic hook ([`on_panic`]) treats a panic as fatal, whichever thread it
//! is on (a dead reaper or supervisor thread would leave the node up but broken), except
//! inside [`contained`], where the code around it answers for the panic (an API handler
//! answers 500, a callback is dropped).

use std::cell::Cell;
use std::sync::Mutex;
use std::time::Duration;

use crate::{console, power, sys};

/// How long a fatal error stays on the console before the reboot.
pub const REBOOT_DELAY: Duration = Duration::from_secs(10);

static NO_REBOOT: Mutex<Option<String>> = Mutex::new(None);
static DEGRADED: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    static CONTAINED: Cell<u32> = const { Cell::new(0) };
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// From now on a fatal error does not reboot (`why` says why rebooting would not help).
pub fn set_no_reboot(why: &str) {
    *lock(&NO_REBOOT) = Some(why.to_owned());
}

pub fn no_reboot() -> Option<String> {
    lock(&NO_REBOOT).clone()
}

/// Records why the node is degraded (the API's status shows it).
pub fn set_degraded(why: &str) {
    *lock(&DEGRADED) = Some(why.to_owned());
}

pub fn degraded() -> Option<String> {
    lock(&DEGRADED).clone()
}

pub fn fatal(message: &str) -> ! {
    console::line(&format!("FATAL: {message}"));
    if let Some(why) = no_reboot() {
        console::line(&format!(
            "DEGRADED: not rebooting ({why}); the node stays up and says why in its status"
        ));
        set_degraded(&format!("{message} (not rebooting: {why})"));
        stay_up();
    }
    console::line(&format!("rebooting in {} seconds", REBOOT_DELAY.as_secs()));
    std::thread::sleep(REBOOT_DELAY);
    let err = sys::reboot(libc::RB_AUTOBOOT);
    console::line(&format!("FATAL: {err}; halting"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A degraded node: no services of its own, but it powers off or reboots when asked (API,
/// ACPI button, signals), after syncing and unmounting what it can.
pub fn stay_up() -> ! {
    loop {
        crate::watchdog::main_loop_alive();
        if let Some(request) = power::pending() {
            crate::watchdog::shutting_down();
            sys::sync();
            for target in [
                "/var",
                keel_contract::layout::root::ESP_MOUNT,
                keel_contract::layout::root::STATE_MOUNT,
            ] {
                let _ = sys::umount(target, libc::MNT_DETACH);
            }
            let cmd = match request {
                power::Request::PowerOff => libc::RB_POWER_OFF,
                power::Request::Reboot => libc::RB_AUTOBOOT,
            };
            console::line(&format!("{request:?} requested while degraded"));
            let err = sys::reboot(cmd);
            console::line(&format!("{err}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs `f`; a panic inside it is caught and returned instead of being fatal.
pub fn contained<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> std::thread::Result<T> {
    CONTAINED.with(|c| c.set(c.get() + 1));
    let result = std::panic::catch_unwind(f);
    CONTAINED.with(|c| c.set(c.get().saturating_sub(1)));
    result
}

fn is_contained() -> bool {
    CONTAINED.with(|c| c.get() > 0)
}

/// The panic hook of PID 1: a panic is a bug; outside [`contained`] it is fatal.
pub fn on_panic(info: &std::panic::PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed");
    console::line(&format!("BUG: thread {name}: {info}"));
    if !is_contained() {
        fatal(&format!(
            "the init panicked on thread {name} (see BUG above)"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contained_panics_are_returned_and_the_flag_is_cleared() {
        assert!(!is_contained());
        let r = contained(|| {
            assert!(is_contained());
            panic!("inside")
        });
        assert!(r.is_err());
        assert!(!is_contained());
        assert_eq!(contained(|| 3).unwrap(), 3);
    }
}
