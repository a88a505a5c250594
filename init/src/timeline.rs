//! The init's timeline: when each step of this boot started and ended, on `CLOCK_BOOTTIME`
//! (monotonic, from the kernel's start). Stage 1 hands its steps to stage 2 in the
//! [`crate::bootinfo::Handoff`]; stage 2 adds its own, from whichever thread runs them, and
//! prints the whole at `ready` and serves it in the status (`keel_contract::api::BootStep`).

use std::sync::Mutex;

use keel_contract::api::BootStep;

/// Steps recorded so far; shared by the threads of a stage.
pub struct Timeline {
    steps: Mutex<Vec<BootStep>>,
    clock: fn() -> f64,
}

/// Seconds (the clock's unit) to whole milliseconds; a clock that failed (0 or less) gives 0.
fn millis(secs: f64) -> u64 {
    if secs.is_finite() && secs > 0.0 {
        (secs * 1000.0).round() as u64
    } else {
        0
    }
}

impl Timeline {
    pub const fn new(clock: fn() -> f64) -> Timeline {
        Timeline {
            steps: Mutex::new(Vec::new()),
            clock,
        }
    }

    /// The clock, in seconds.
    pub fn now(&self) -> f64 {
        (self.clock)()
    }

    /// Records a step that ran from `start` to `end` (seconds of the clock).
    pub fn mark(&self, step: &str, start: f64, end: f64) {
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        steps.push(BootStep {
            step: step.to_owned(),
            start_ms: millis(start),
            end_ms: millis(end).max(millis(start)),
        });
    }

    /// Runs `f` as the step `step`, recording its start and end whatever it returns.
    pub fn step<T>(&self, step: &str, f: impl FnOnce() -> T) -> T {
        let start = self.now();
        let out = f();
        self.mark(step, start, self.now());
        out
    }

    /// Adds steps recorded elsewhere (stage 1's, from the hand-off).
    pub fn extend(&self, earlier: &[BootStep]) {
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        steps.extend_from_slice(earlier);
    }

    /// The steps so far, in the order they started (a step that ran in parallel with
    /// another overlaps it).
    pub fn steps(&self) -> Vec<BootStep> {
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner()).clone();
        steps.sort_by_key(|s| s.start_ms);
        steps
    }
}

/// This process's timeline (stage 1 and stage 2 are each one process).
pub static BOOT: Timeline = Timeline::new(crate::sys::boottime);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static NOW_MS: AtomicU64 = AtomicU64::new(0);
    fn fake_clock() -> f64 {
        NOW_MS.fetch_add(250, Ordering::SeqCst) as f64 / 1000.0
    }

    #[test]
    fn steps_from_threads_and_the_handoff_come_out_in_start_order() {
        let t = Timeline::new(fake_clock);
        NOW_MS.store(2000, Ordering::SeqCst);
        // Recorded out of order, as parallel threads finish.
        std::thread::scope(|s| {
            s.spawn(|| t.mark("containerd", 3.0, 4.5));
            s.spawn(|| t.mark("var", 2.0, 3.0));
        });
        let got = t.step("gate", || 7);
        assert_eq!(got, 7, "the step's value is passed through");
        t.extend(&[BootStep {
            step: "modules".into(),
            start_ms: 400,
            end_ms: 810,
        }]);
        let names: Vec<(String, u64, u64)> = t
            .steps()
            .into_iter()
            .map(|s| (s.step, s.start_ms, s.end_ms))
            .collect();
        assert_eq!(
            names,
            [
                ("modules".into(), 400, 810),
                ("var".into(), 2000, 3000),
                ("gate".into(), 2000, 2250),
                ("containerd".into(), 3000, 4500),
            ]
        );
        assert_eq!(
            keel_contract::api::timeline_line(&t.steps()),
            "modules 0.40-0.81 var 2.00-3.00 gate 2.00-2.25 containerd 3.00-4.50"
        );
    }

    #[test]
    fn a_failed_clock_or_a_backwards_end_gives_no_negative_span() {
        let t = Timeline::new(fake_clock);
        t.mark("x", -1.0, f64::NAN);
        t.mark("y", 2.0, 1.0);
        let steps = t.steps();
        assert_eq!((steps[0].start_ms, steps[0].end_ms), (0, 0));
        assert_eq!((steps[1].start_ms, steps[1].end_ms), (2000, 2000));
    }
}
