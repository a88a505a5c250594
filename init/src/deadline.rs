//! The boot deadline: a boot that does not pass its health gate soon enough reboots, so that a
//! version that hangs is treated like one that fails (the boot counter moves on to the other
//! slot).
//!
//! It is armed first thing in stage 2, with [`DEFAULT_SECS`] since the kernel started, and
//! covers every step after it (mounts, DATA's creation and formatting, the configuration
//! fetch, the network, the services). Once the node's profile is known, its
//! `node.boot_deadline_secs` replaces the default. A node that goes degraded (its `/var`
//! cannot be mounted: not the slot's fault, and the other slot would fail the same way)
//! suspends it: it neither passes nor fails, and it does not reboot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// Until the profile says otherwise (the schema's default too).
pub const DEFAULT_SECS: u64 = 300;

const ARMED: u8 = 0;
const PASSED: u8 = 1;
const SUSPENDED: u8 = 2;

#[derive(Debug)]
struct Inner {
    secs: AtomicU64,
    state: AtomicU8,
    /// CLOCK_BOOTTIME of the kernel's start of the init.
    since: f64,
}

/// A running deadline; cheap to clone.
#[derive(Debug, Clone)]
pub struct BootDeadline(Arc<Inner>);

/// Whether a deadline of `secs` counted from `since` has passed at `now` (boot-time seconds).
pub fn expired(since: f64, secs: u64, now: f64) -> bool {
    now >= since + secs as f64
}

impl BootDeadline {
    /// Arms the deadline; `on_expiry` runs on the deadline's thread when it passes before
    /// [`BootDeadline::passed`] or [`BootDeadline::suspend`] was called.
    pub fn arm(secs: u64, since: f64, now: fn() -> f64, on_expiry: fn(u64)) -> BootDeadline {
        let inner = Arc::new(Inner {
            secs: AtomicU64::new(secs),
            state: AtomicU8::new(ARMED),
            since,
        });
        let watched = inner.clone();
        let spawned = std::thread::Builder::new()
            .name("keel-deadline".into())
            .spawn(move || {
                loop {
                    if watched.state.load(Ordering::SeqCst) != ARMED {
                        return;
                    }
                    let secs = watched.secs.load(Ordering::SeqCst);
                    if expired(watched.since, secs, now()) {
                        on_expiry(secs);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
        if let Err(e) = spawned {
            crate::console::line(&format!("warning: no boot deadline: {e}"));
        }
        BootDeadline(inner)
    }

    /// The profile's deadline replaces the default (counted from the same start).
    pub fn set_secs(&self, secs: u64) {
        self.0.secs.store(secs, Ordering::SeqCst);
    }

    pub fn secs(&self) -> u64 {
        self.0.secs.load(Ordering::SeqCst)
    }

    /// The health gate passed.
    pub fn passed(&self) {
        self.0.state.store(PASSED, Ordering::SeqCst);
    }

    /// The node is degraded for a reason that rebooting would not cure.
    pub fn suspend(&self) {
        self.0.state.store(SUSPENDED, Ordering::SeqCst);
    }
}

/// What stage 2 does when the deadline passes.
pub fn reboot_on_expiry(secs: u64) {
    crate::fatal::fatal(&format!(
        "the health gate did not pass within {secs} seconds of boot"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn expiry_counts_from_the_kernel_start() {
        assert!(!expired(2.0, 300, 301.9));
        assert!(expired(2.0, 300, 302.0));
    }

    fn wait_for(flag: &AtomicBool, within: Duration) -> bool {
        let start = std::time::Instant::now();
        while !flag.load(Ordering::SeqCst) && start.elapsed() < within {
            std::thread::sleep(Duration::from_millis(50));
        }
        flag.load(Ordering::SeqCst)
    }

    #[test]
    fn the_profile_value_replaces_the_default() {
        static FIRED: AtomicBool = AtomicBool::new(false);
        static CLOCK: AtomicU64 = AtomicU64::new(29);
        let d = BootDeadline::arm(
            300,
            0.0,
            || CLOCK.load(Ordering::SeqCst) as f64,
            |_| FIRED.store(true, Ordering::SeqCst),
        );
        d.set_secs(30);
        assert!(!wait_for(&FIRED, Duration::from_millis(700)));
        CLOCK.store(31, Ordering::SeqCst);
        assert!(
            wait_for(&FIRED, Duration::from_secs(5)),
            "the shortened deadline fired"
        );
        assert_eq!(d.secs(), 30);
    }

    #[test]
    fn passing_the_gate_or_going_degraded_disarms_it() {
        static FIRED: AtomicBool = AtomicBool::new(false);
        static CLOCK: AtomicU64 = AtomicU64::new(0);
        let passed = BootDeadline::arm(
            10,
            0.0,
            || CLOCK.load(Ordering::SeqCst) as f64,
            |_| FIRED.store(true, Ordering::SeqCst),
        );
        let suspended = BootDeadline::arm(
            10,
            0.0,
            || CLOCK.load(Ordering::SeqCst) as f64,
            |_| FIRED.store(true, Ordering::SeqCst),
        );
        passed.passed();
        suspended.suspend();
        std::thread::sleep(Duration::from_millis(700));
        CLOCK.store(1000, Ordering::SeqCst);
        assert!(!wait_for(&FIRED, Duration::from_millis(1500)));
    }
}
