//! Keel's init (PID 1).
//!
//! Stage 1 runs from the initramfs: it verifies the booted slot's signed manifest, puts
//! dm-verity over the slot and switches into it. Stage 2 is the same binary executed from
//! the verified root: mounts, DATA at /var, network, containerd and system containers under
//! a supervisor, the health gate and blessing, and an orderly shutdown.
//!
//! PID 1 never panics and never exits: every error ends in [`fatal::fatal`], which prints
//! the reason, waits, and reboots (or, when a reboot would only come back to the same
//! failure, stays up degraded and says why). A panic on any thread is fatal too.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod block;
pub mod bootinfo;
pub mod cni;
pub mod config;
pub mod config_trust;
pub mod console;
pub mod containerd;
pub mod deadline;
pub mod efiboot;
pub mod entries;
pub mod etcd_client;
pub mod etcd_join;
pub mod etcd_restore;
pub mod fatal;
pub mod history;
pub mod hwmod;
pub mod install;
pub mod kmod;
pub mod kube_client;
pub mod kubelet_host;
pub mod modalias;
pub mod mounts;
pub mod net;
pub mod netroot;
pub mod node_api;
pub mod pause_image;
pub mod power;
pub mod roles;
pub mod services;
pub mod stage1;
pub mod stage2;
pub mod startup;
pub mod storage;
pub mod supervisor;
pub mod sys;
pub mod testhooks;
pub mod timeline;
pub mod upgrade;
pub mod var;
pub mod vardisk;
pub mod watchdog;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The init inside the root filesystem, executed by stage 1 (the builder puts it there).
pub const INIT_IN_ROOT: &str = keel_contract::layout::root::INIT;
pub const STAGE2_ARG: &str = "--stage2";
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The entry point of the binary.
pub fn main() -> ! {
    // A panic anywhere (a bug) must not kill PID 1, nor leave it without the thread that
    // panicked (the reaper, a supervisor): it is fatal, on whatever thread it happens.
    std::panic::set_hook(Box::new(fatal::on_panic));
    sys::keep_malloc_compact();
    let stage2 = std::env::args().any(|a| a == STAGE2_ARG);
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        console::line("keel-init is the node's PID 1; it does nothing as an ordinary process");
        std::process::exit(2);
    }
    let result = std::panic::catch_unwind(|| {
        if stage2 {
            stage2::main()
        } else {
            stage1::main()
        }
    });
    match result {
        Ok(never) => never,
        Err(_) => fatal::fatal("the init panicked (see BUG above)"),
    }
}
