//! Fault injection for the power-cut tests: with QEMU's fw_cfg entry `opt/keel/test/pause-at`
//! set to a step's name, the init stops (for good) before that step and says so on the
//! console, so that the test can cut the power at exactly that step. The steps
//! are those an upgrade takes through [`crate::entries::apply_named`]
//! (`upgrade remove loader/entries/keel-a.conf`, `upgrade journal: ...`), a few more points of
//! an upgrade (`upgrade payload 50%`, `upgrade read back done`) and of a boot (`bless`).
//!
//! Only QEMU has fw_cfg, and only whoever starts the machine sets it (the same party that
//! could pull the plug), so this is no way in for anyone else; without the entry it costs
//! one failed file lookup per boot.

use std::sync::OnceLock;

const PAUSE_AT: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/keel/test/pause-at/raw";

fn configured() -> Option<&'static str> {
    static PAUSE: OnceLock<Option<String>> = OnceLock::new();
    PAUSE
        .get_or_init(|| {
            std::fs::read_to_string(PAUSE_AT)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        })
        .as_deref()
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
