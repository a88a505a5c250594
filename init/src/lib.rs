//! Keel's init (PID 1). This first version proves the boot chain: UEFI firmware ->
//! systemd-boot -> kernel -> our initramfs -> this binary, and holds the machine there.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod console;
pub mod supervisor;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Reads the kernel command line, if /proc is mounted.
fn cmdline() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

fn mount_proc() {
    let _ = std::fs::create_dir_all("/proc");
    // SAFETY: plain mount(2) with NUL-terminated literals.
    unsafe {
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            0,
            std::ptr::null(),
        );
    }
}

/// Reaps any child that exits; PID 1 inherits every orphan.
fn reap() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
    }
}

/// Never returns: PID 1 exiting panics the kernel.
pub fn run() -> ! {
    console::line(&format!(
        "init {VERSION} starting (pid {})",
        std::process::id()
    ));
    mount_proc();
    let cmdline = cmdline();
    let slot = keel_signing::layout::cmdline::get(&cmdline, keel_signing::layout::cmdline::SLOT);
    console::line(&format!("booted slot {}", slot.unwrap_or("?")));
    console::line("stage 1 is not implemented in this version; holding");
    loop {
        reap();
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
