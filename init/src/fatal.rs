//! The one way PID 1 gives up: say why on the console, wait (so the message can be read and
//! systemd-boot's boot counter gets the chance to move on to the other slot), reboot.

use std::time::Duration;

use crate::{console, sys};

/// How long a fatal error stays on the console before the reboot.
pub const REBOOT_DELAY: Duration = Duration::from_secs(10);

pub fn fatal(message: &str) -> ! {
    console::line(&format!("FATAL: {message}"));
    console::line(&format!("rebooting in {} seconds", REBOOT_DELAY.as_secs()));
    std::thread::sleep(REBOOT_DELAY);
    let err = sys::reboot(libc::RB_AUTOBOOT);
    console::line(&format!("FATAL: {err}; halting"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
