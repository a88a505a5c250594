//! `keel run`: boots a built image in QEMU with the serial console on this terminal.
//! Ctrl-C presses the VM's power button (an orderly shutdown); a second Ctrl-C, or a VM that
//! does not stop within a minute, pulls the plug.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keel_contract::layout::config;
use keel_contract::profile::{ByteSize, LoadedProfile, ProfileError};

use crate::qemu::{QemuError, Vm, VmConfig};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{}: no disk image (expected a keel build output directory or a disk.raw)", .0.display())]
    NoImage(PathBuf),
    #[error("--disk-size: {0}")]
    DiskSize(String),
    #[error("--forward {0:?}: expected HOST:GUEST port numbers")]
    Forward(String),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("node secrets: {0}")]
    NodeSecrets(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Qemu(#[from] QemuError),
}

impl crate::error::Classify for RunError {
    fn is_bad_input(&self) -> bool {
        matches!(
            self,
            RunError::NoImage(_)
                | RunError::DiskSize(_)
                | RunError::Forward(_)
                | RunError::Profile(_)
        )
    }
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.to_string();
    move |source| RunError::Io { what, source }
}

static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
}

fn install_sigint_handler() {
    // SAFETY: the handler only touches an atomic, which is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigint as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
}

/// Copies `src` to `dst` without writing the zero blocks (the image is mostly empty space),
/// then extends `dst` to `size` bytes. The copy is owner-only (0600) from its first byte: the
/// disk may carry a node's secrets in STATE, and a running node writes more there.
pub fn sparse_copy(src: &Path, dst: &Path, size: u64) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut input = std::fs::File::open(src)?;
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dst)?;
    // An existing file keeps its mode through open(2).
    output.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            output.seek(SeekFrom::Start(offset))?;
            output.write_all(&buf[..n])?;
        }
        offset += n as u64;
    }
    output.set_len(offset.max(size))?;
    output.sync_all()
}

pub struct RunOptions {
    pub keep_disk: bool,
    pub disk_size: String,
    pub memory: u32,
    pub cpus: u8,
    pub forwards: Vec<String>,
    /// A profile whose node section (and the secrets for its role) the node gets at boot.
    pub profile: Option<PathBuf>,
    /// A cluster secrets file; overrides the profile's `image.secrets`.
    pub secrets: Option<PathBuf>,
}

/// What `--profile`/`--secrets` hand the node over fw_cfg: its node section as TOML and the
/// node secrets for its role, if any. Bad input is refused before QEMU starts.
pub fn boot_config(
    profile: &Path,
    secrets: Option<&Path>,
) -> Result<(String, Option<String>), RunError> {
    let mut loaded = LoadedProfile::load(profile)?;
    if let Some(path) = secrets {
        // The same checks as a profile naming the file (cluster name, format).
        loaded.profile.image.secrets = Some(path.to_path_buf());
    }
    let node_secrets = crate::secrets::node_secrets_for(&loaded)?
        .map(|s| s.to_toml())
        .transpose()
        .map_err(|e| RunError::NodeSecrets(e.to_string()))?;
    Ok((
        crate::initramfs::baked_profile(&loaded.profile),
        node_secrets,
    ))
}

/// Writes `text` to `path`, readable by its owner only (it may hold private keys).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    crate::io::create_new_with_mode(path, 0o600)?.write_all(text.as_bytes())
}

/// The options checked, before anything is copied or started.
struct Plan {
    image: PathBuf,
    size: ByteSize,
    forwards: Vec<(u16, u16)>,
    boot: Option<(String, Option<String>)>,
}

fn plan(path: &Path, opts: &RunOptions) -> Result<Plan, RunError> {
    let image = if path.is_dir() {
        path.join(keel_contract::output::DISK)
    } else {
        path.to_path_buf()
    };
    if !image.is_file() {
        return Err(RunError::NoImage(image));
    }
    let size: ByteSize = opts.disk_size.parse().map_err(RunError::DiskSize)?;
    let mut forwards = Vec::new();
    for f in &opts.forwards {
        let parsed = f
            .split_once(':')
            .and_then(|(h, g)| Some((h.parse().ok()?, g.parse().ok()?)));
        forwards.push(parsed.ok_or_else(|| RunError::Forward(f.clone()))?);
    }
    let boot = opts
        .profile
        .as_deref()
        .map(|p| boot_config(p, opts.secrets.as_deref()))
        .transpose()?;
    Ok(Plan {
        image,
        size,
        forwards,
        boot,
    })
}

/// The VM's directory (disk, firmware variables, fw_cfg files): `OUTDIR/run` with
/// `--keep-disk`, else a temporary one (kept alive by the returned guard).
fn state_dir(
    path: &Path,
    image: &Path,
    keep_disk: bool,
) -> Result<(PathBuf, Option<tempfile::TempDir>), RunError> {
    if keep_disk {
        let base = if path.is_dir() {
            path.to_path_buf()
        } else {
            image.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        return Ok((base.join("run"), None));
    }
    let t = tempfile::Builder::new()
        .prefix("keel-run-")
        .tempdir()
        .map_err(io("temporary directory"))?;
    Ok((t.path().to_path_buf(), Some(t)))
}

/// Boots the image and attaches this terminal to its serial console until the VM stops.
pub fn run(path: &Path, opts: &RunOptions) -> Result<(), RunError> {
    let plan = plan(path, opts)?;
    let (state_dir, _temp) = state_dir(path, &plan.image, opts.keep_disk)?;
    std::fs::create_dir_all(&state_dir).map_err(io(state_dir.display()))?;
    let disk = state_dir.join(keel_contract::output::DISK);
    if !disk.exists() {
        sparse_copy(&plan.image, &disk, plan.size.bytes())
            .map_err(io(format!("copying {}", plan.image.display())))?;
    }
    let mut config = VmConfig::new(&disk, &state_dir);
    config.memory_mib = opts.memory;
    config.cpus = opts.cpus;
    config.forwards = plan.forwards;
    if let Some((profile, secrets)) = plan.boot {
        for (name, entry, text) in [
            ("profile", config::FW_CFG_PROFILE, Some(profile)),
            ("secrets", config::FW_CFG_SECRETS, secrets),
        ] {
            let Some(text) = text else { continue };
            let file = state_dir.join(format!("fw-cfg-{name}.toml"));
            write_private(&file, &text).map_err(io(file.display()))?;
            config.fw_cfg.push((entry.to_owned(), file));
        }
    }
    install_sigint_handler();
    let mut vm = Vm::start(config)?;
    eprintln!(
        "keel run: {} on {} (Ctrl-C powers off; console log {})",
        plan.image.display(),
        disk.display(),
        vm.config.console_log().display()
    );
    attach_console(&vm)?;
    wait_for_power_off(&mut vm);
    let qemu_errors = vm.stderr();
    if !qemu_errors.trim().is_empty() {
        eprintln!("{}", qemu_errors.trim());
    }
    Ok(())
}

/// Copies the VM's serial output to stdout and stdin to the VM, each on its own thread.
fn attach_console(vm: &Vm) -> Result<(), RunError> {
    let serial = vm.serial()?;
    let mut from_vm = serial.try_clone().map_err(io("the serial console"))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdout = std::io::stdout();
        while let Ok(n) = from_vm.read(&mut buf) {
            if n == 0
                || stdout
                    .write_all(&buf[..n])
                    .and_then(|_| stdout.flush())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut to_vm = serial;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || to_vm.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Waits for the VM to stop: the first Ctrl-C presses the power button, a second one (or a
/// VM still running a minute later) pulls the plug.
fn wait_for_power_off(vm: &mut Vm) {
    let mut powerdown_at: Option<Instant> = None;
    loop {
        if vm.wait_timeout(Duration::from_millis(200)).is_some() {
            break;
        }
        let interrupts = INTERRUPTS.load(Ordering::SeqCst);
        if interrupts >= 2 || powerdown_at.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
            eprintln!("\nkeel run: stopping QEMU");
            vm.kill();
            break;
        }
        if interrupts == 1 && powerdown_at.is_none() {
            eprintln!("\nkeel run: pressing the power button (Ctrl-C again to pull the plug)");
            if vm.powerdown().is_err() {
                vm.kill();
                break;
            }
            powerdown_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn the_disk_copy_is_owner_only_and_sparse_copied() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("disk.raw");
        let mut bytes = vec![0u8; 3 << 20];
        bytes[5] = 1;
        bytes[(2 << 20) + 7] = 2;
        std::fs::write(&src, &bytes).unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
        let dst = dir.path().join("copy.raw");
        sparse_copy(&src, &dst, 8 << 20).unwrap();
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 8 << 20);
        let copy = std::fs::read(&dst).unwrap();
        assert_eq!(&copy[..bytes.len()], &bytes[..]);
        // Copied again over a file someone made readable: owner-only again.
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).unwrap();
        sparse_copy(&src, &dst, 0).unwrap();
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.len()), (0o600, 3 << 20));
    }
}
