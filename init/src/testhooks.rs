//! Fault injection for tests (`keel_contract::layout::test_hooks`).
//!
//! The power-cut tests: with QEMU's fw_cfg entry `opt/keel/test/pause-at` set to a step's name, the init stops (for good) before that step and says so on the
//! console, so that the test can cut the power at exactly that step. The steps
//! are those an upgrade takes through [`crate::entries::apply_named`]
//! (`upgrade remove loader/entries/keel-a.conf`, `upgrade journal: ...`), a few more points of
//! an upgrade (`upgrade payload 50%`, `upgrade read back done`) and of a boot (`bless`).
//!
//! Only QEMU has fw_cfg, and only whoever starts the machine sets it (the same party that
//! could pull the plug), so this is no way in for anyone else; without the entry it costs
//! one failed file lookup per boot.

//!
//! The watchdog test: with `opt/keel/test/hang-after-ready` set to a boot number, PID 1's main
//! loop stops after that boot's ready line, as a hung PID 1 would, and the watchdog is no
//! longer petted.

use std::sync::OnceLock;

use keel_contract::layout::test_hooks;

fn read_entry(name: &str) -> Option<String> {
    std::fs::read_to_string(test_hooks::fw_cfg_file(name))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

fn configured() -> Option<&'static str> {
    static PAUSE: OnceLock<Option<String>> = OnceLock::new();
    PAUSE
        .get_or_init(|| read_entry(test_hooks::FW_CFG_PAUSE_AT))
        .as_deref()
}

/// Whether the test asked PID 1's main loop to hang after the ready line of `boot`.
pub fn hang_after_ready(boot: u64) -> bool {
    read_entry(test_hooks::FW_CFG_HANG_AFTER_READY)
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|wanted| wanted == boot)
}

/// Stops here for good if the test asked for this step (named exactly).
pub fn pause_at(step: &str) {
    if let Some(want) = configured()
        && step == want
    {
        crate::console::line(&format!("test hook: paused at {step:?}"));
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
