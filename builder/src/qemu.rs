//! The one QEMU launcher, shared by `keel run` and the vm-tests harness: UEFI (OVMF) on a
//! q35 machine, the disk on virtio-blk (or NVMe, SATA, USB, virtio-scsi: [`DiskBus`]), user
//! networking on virtio-net (or another NIC model), the serial console on
//! a unix socket (logged to a file), and a QMP socket to press the power button.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("OVMF firmware not found (looked for {looked}); install the `ovmf` package")]
    NoOvmf { looked: String },
    #[error("qemu-system-x86_64 not found; install the `qemu-system-x86` package")]
    NoQemu,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("QEMU exited ({status}) before its console was up: {stderr}")]
    Exited { status: String, stderr: String },
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("QEMU did not create {path} within {secs}s")]
    SocketTimeout { path: String, secs: u64 },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QemuError {
    let what = what.into();
    move |source| QemuError::Io { what, source }
}

/// OVMF code (read-only) and the pristine variable store to copy per VM.
#[derive(Debug, Clone)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars_template: PathBuf,
}

pub fn find_ovmf() -> Result<Ovmf, QemuError> {
    let candidates = [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ];
    for (code, vars) in candidates {
        if Path::new(code).is_file() && Path::new(vars).is_file() {
            return Ok(Ovmf {
                code: code.into(),
                vars_template: vars.into(),
            });
        }
    }
    Err(QemuError::NoOvmf {
        looked: candidates
            .iter()
            .map(|c| c.0)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// How to accelerate: KVM only where it really works (nested KVM here fails at the first
/// guest instruction even though /dev/kvm exists), TCG otherwise. `KEEL_QEMU_ACCEL` overrides.
pub fn accelerator() -> String {
    if let Ok(accel) = std::env::var("KEEL_QEMU_ACCEL") {
        return accel;
    }
    "tcg".to_owned()
}

/// A VM's virtual CPUs unless told otherwise: two, as `talosctl cluster create` gives each
/// node and kubeadm asks of a control plane. Under TCG each vCPU is a host thread of its own
/// (QEMU's multi-threaded TCG), so stage 2's side-by-side steps (DATA's check, containerd's
/// read-ahead, the basics) really run side by side (BENCHMARKS.md, "Two vCPUs").
pub const DEFAULT_CPUS: u8 = 2;

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub disk: PathBuf,
    /// Directory for this VM's sockets, variable store and console log.
    pub state_dir: PathBuf,
    pub memory_mib: u32,
    /// Virtual CPUs ([`DEFAULT_CPUS`] unless set).
    pub cpus: u8,
    /// Host TCP port -> guest TCP port forwards (on 127.0.0.1).
    pub forwards: Vec<(u16, u16)>,
    /// `-fw_cfg name=...,file=...` entries.
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// Exit instead of rebooting (kernel panics then end the VM).
    pub no_reboot: bool,
    /// How the disk is attached (default virtio-blk).
    pub disk_bus: DiskBus,
    /// The NIC's QEMU device model (default `virtio-net-pci`; `e1000e`, `e1000`, `rtl8139`).
    pub nic_model: String,
    /// The NIC's MAC address (`52:54:00:12:34:56`, QEMU's default, when `None`): what a PXE
    /// server tells nodes apart by.
    pub mac: Option<String>,
    /// Boot from the network with no disk at all (`disk` is then unused).
    pub network_boot: Option<NetworkBoot>,
    pub extra_args: Vec<String>,
}

/// A diskless network boot: the user network's DHCP offers `bootfile` and the NIC carries
/// `romfile`, iPXE as its UEFI driver (Debian `ipxe-qemu`), as the first boot device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkBoot {
    /// The URL DHCP hands out (`http://10.0.2.2:PORT/boot.ipxe`: the host is 10.0.2.2).
    pub bootfile: String,
    pub romfile: PathBuf,
}

/// How the boot disk is attached: the controllers of real machines and clouds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskBus {
    #[default]
    VirtioBlk,
    VirtioScsi,
    Nvme,
    /// SATA on q35's built-in AHCI controller.
    Sata,
    /// A USB stick on an xHCI controller.
    Usb,
}

impl DiskBus {
    pub const ALL: [DiskBus; 5] = [
        DiskBus::VirtioBlk,
        DiskBus::VirtioScsi,
        DiskBus::Nvme,
        DiskBus::Sata,
        DiskBus::Usb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DiskBus::VirtioBlk => "virtio-blk",
            DiskBus::VirtioScsi => "virtio-scsi",
            DiskBus::Nvme => "nvme",
            DiskBus::Sata => "sata",
            DiskBus::Usb => "usb",
        }
    }

    /// The `-device` arguments attaching drive `disk0` as the first boot device.
    pub fn device_args(self) -> Vec<String> {
        let devices: &[&str] = match self {
            DiskBus::VirtioBlk => &["virtio-blk-pci,drive=disk0,bootindex=1"],
            DiskBus::VirtioScsi => &[
                "virtio-scsi-pci,id=scsi0",
                "scsi-hd,drive=disk0,bus=scsi0.0,bootindex=1",
            ],
            DiskBus::Nvme => &["nvme,drive=disk0,serial=keel0,bootindex=1"],
            DiskBus::Sata => &["ide-hd,drive=disk0,bus=ide.0,bootindex=1"],
            DiskBus::Usb => &[
                "qemu-xhci,id=xhci0",
                "usb-storage,bus=xhci0.0,drive=disk0,removable=on,bootindex=1",
            ],
        };
        devices
            .iter()
            .flat_map(|d| ["-device".to_owned(), (*d).to_owned()])
            .collect()
    }
}

impl VmConfig {
    pub fn new(disk: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        VmConfig {
            disk: disk.into(),
            state_dir: state_dir.into(),
            memory_mib: 1024,
            cpus: DEFAULT_CPUS,
            forwards: Vec::new(),
            fw_cfg: Vec::new(),
            no_reboot: false,
            disk_bus: DiskBus::default(),
            nic_model: "virtio-net-pci".to_owned(),
            mac: None,
            network_boot: None,
            extra_args: Vec::new(),
        }
    }

    /// Where QEMU's serial console and QMP sockets live: beside the VM's other files when
    /// their paths fit a Unix socket address (`sun_path`, 108 bytes with the NUL), otherwise
    /// in a private directory of this user's runtime directory, named by a hash of the state
    /// directory, so that every later command (`keel cluster stop`, `destroy`) finds the same
    /// path. CI's clone put a cluster node's socket at 113 bytes, and QEMU refused to start.
    pub fn socket_dir(&self) -> PathBuf {
        if self.state_dir.join(LONGEST_SOCKET_NAME).as_os_str().len() < SUN_PATH_BYTES {
            return self.state_dir.clone();
        }
        let digest = Sha256::digest(self.state_dir.as_os_str().as_encoded_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        runtime_dir().join(format!("vm-{name}"))
    }

    /// Creates the socket directory (mode 0700) and removes stale sockets from a previous
    /// run. A shared base such as `/tmp/keel-UID` is only used while it is a directory of
    /// this user's that nobody else can enter: another user could otherwise plant it.
    pub fn prepare_sockets(&self) -> Result<(), QemuError> {
        let dir = self.socket_dir();
        if dir != self.state_dir {
            let base = runtime_dir();
            private_dir(&base)?;
            private_dir(&dir)?;
        }
        for sock in [self.serial_socket(), self.qmp_socket()] {
            let _ = std::fs::remove_file(sock);
        }
        Ok(())
    }

    /// Removes the sockets, and their directory when it is not the state directory. For
    /// after QEMU is gone.
    pub fn remove_sockets(&self) {
        for sock in [self.serial_socket(), self.qmp_socket()] {
            let _ = std::fs::remove_file(sock);
        }
        let dir = self.socket_dir();
        if dir != self.state_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
    pub fn serial_socket(&self) -> PathBuf {
        self.socket_dir().join("serial.sock")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.socket_dir().join("qmp.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.state_dir.join("console.log")
    }
    pub fn stderr_log(&self) -> PathBuf {
        self.state_dir.join("qemu.log")
    }
    pub fn vars_file(&self) -> PathBuf {
        self.state_dir.join("OVMF_VARS.fd")
    }

    /// The full command line. The variable store must exist (see [`Vm::start`]).
    pub fn command(&self, ovmf: &Ovmf) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        let mut netdev = "user,id=n0".to_owned();
        for (host, guest) in &self.forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        let mut nic = format!("{},netdev=n0", self.nic_model);
        if let Some(mac) = &self.mac {
            nic.push_str(&format!(",mac={mac}"));
        }
        if let Some(net) = &self.network_boot {
            netdev.push_str(&format!(",bootfile={}", net.bootfile));
            nic.push_str(&format!(",romfile={},bootindex=1", net.romfile.display()));
        }
        cmd.args([
            "-machine",
            "q35",
            "-nodefaults",
            "-display",
            "none",
            "-no-user-config",
        ])
        .args([
            "-accel",
            &accelerator(),
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &self.memory_mib.to_string(),
        ])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            ovmf.code.display()
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            self.vars_file().display()
        ));
        if self.network_boot.is_none() {
            cmd.arg("-drive")
                .arg(format!(
                    "if=none,id=disk0,format=raw,file={}",
                    self.disk.display()
                ))
                .args(self.disk_bus.device_args());
        }
        cmd.args(["-netdev", &netdev, "-device"])
            .arg(nic)
            .args(["-device", "virtio-rng-pci"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile={}",
                self.serial_socket().display(),
                self.console_log().display()
            ))
            .args(["-serial", "chardev:serial0"])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                self.qmp_socket().display()
            ));
        for (name, file) in &self.fw_cfg {
            cmd.arg("-fw_cfg")
                .arg(format!("name={name},file={}", file.display()));
        }
        if self.no_reboot {
            cmd.arg("-no-reboot");
        }
        cmd.args(&self.extra_args);
        cmd
    }
}

/// Connects to one of QEMU's server sockets. QEMU creates the file when it binds and listens
/// just after, so a connect in between is refused: seen once in a suite run under load, right
/// after [`Vm::start`] saw the file. Refusals are retried for up to 5 s.
fn connect_when_listening(path: &Path) -> std::io::Result<UnixStream> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && start.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// A running VM. Dropping it kills QEMU.
pub struct Vm {
    pub config: VmConfig,
    child: Child,
}

impl Vm {
    /// Copies a fresh OVMF variable store (unless one exists: a rebooted VM keeps its
    /// variables) and starts QEMU in its own process group, so a Ctrl-C at the terminal
    /// reaches the caller, which decides how to power off.
    pub fn start(config: VmConfig) -> Result<Self, QemuError> {
        use std::os::unix::process::CommandExt;
        let ovmf = find_ovmf()?;
        std::fs::create_dir_all(&config.state_dir)
            .map_err(io_err(format!("creating {}", config.state_dir.display())))?;
        if !config.vars_file().exists() {
            std::fs::copy(&ovmf.vars_template, config.vars_file())
                .map_err(io_err(format!("copying {}", ovmf.vars_template.display())))?;
        }
        config.prepare_sockets()?;
        let mut cmd = config.command(&ovmf);
        // A file, not a pipe: nobody drains a pipe while the VM runs.
        let stderr =
            std::fs::File::create(config.stderr_log()).map_err(io_err("creating the QEMU log"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0);
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                QemuError::NoQemu
            } else {
                QemuError::Io {
                    what: "starting QEMU".into(),
                    source: e,
                }
            }
        })?;
        let mut vm = Vm { config, child };
        let serial = vm.config.serial_socket();
        vm.wait_for_socket(&serial, Duration::from_secs(20))?;
        Ok(vm)
    }

    /// Waits for QEMU to create `path`; says at once what QEMU printed if it exits first.
    fn wait_for_socket(&mut self, path: &Path, timeout: Duration) -> Result<(), QemuError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if path.exists() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(QemuError::Exited {
                    status: status.to_string(),
                    stderr: self.stderr().trim().to_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(QemuError::SocketTimeout {
            path: path.display().to_string(),
            secs: timeout.as_secs(),
        })
    }

    /// A connection to the serial console.
    pub fn serial(&self) -> Result<UnixStream, QemuError> {
        connect_when_listening(&self.config.serial_socket())
            .map_err(io_err("connecting to the serial console"))
    }

    /// Sends one QMP command and returns the reply line.
    pub fn qmp(&self, command: &str) -> Result<String, QemuError> {
        let stream = connect_when_listening(&self.config.qmp_socket())
            .map_err(io_err("connecting to QMP"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io_err("QMP"))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(io_err("QMP"))?);
        let mut writer = stream;
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(io_err("QMP greeting"))?;
        for cmd in ["qmp_capabilities", command] {
            writeln!(writer, "{{\"execute\":\"{cmd}\"}}").map_err(io_err("QMP"))?;
            loop {
                line.clear();
                reader.read_line(&mut line).map_err(io_err("QMP reply"))?;
                if line.is_empty() {
                    return Err(QemuError::Qmp("connection closed".into()));
                }
                if line.contains("\"return\"") || line.contains("\"error\"") {
                    break;
                }
            }
            if line.contains("\"error\"") {
                return Err(QemuError::Qmp(line.trim().to_owned()));
            }
        }
        Ok(line)
    }

    /// Presses the ACPI power button.
    pub fn powerdown(&self) -> Result<(), QemuError> {
        self.qmp("system_powerdown").map(|_| ())
    }

    /// Waits for QEMU to exit; `None` on timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What QEMU printed on stderr, for error reports.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.config.stderr_log()).unwrap_or_default()
    }

    /// Pulls the plug.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        self.config.remove_sockets();
    }
}

/// `sun_path`'s size: a socket path must be shorter, for its NUL.
const SUN_PATH_BYTES: usize = 108;
/// The longer of the two socket names.
const LONGEST_SOCKET_NAME: &str = "serial.sock";

/// This user's base for VM sockets: `$XDG_RUNTIME_DIR/keel` (private by the XDG rules) or
/// else `TMPDIR/keel-UID`.
fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("keel"),
        // SAFETY: getuid(2) cannot fail.
        _ => std::env::temp_dir().join(format!("keel-{}", unsafe { libc::getuid() })),
    }
}

/// Creates `dir` with mode 0700, or checks that the existing one is a real directory of this
/// user's that nobody else can enter.
fn private_dir(dir: &Path) -> Result<(), QemuError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let what = || format!("the VM socket directory {}", dir.display());
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(what())(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_err(what()))?;
    // SAFETY: getuid(2) cannot fail.
    let uid = unsafe { libc::getuid() };
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(QemuError::Io {
            what: what(),
            source: std::io::Error::other(format!(
                "not a directory of uid {uid} closed to others (mode 0700); remove it"
            )),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_stay_beside_the_vm_unless_their_paths_are_too_long_to_bind() {
        let short = VmConfig::new("/d.raw", "/var/tmp/vm");
        assert_eq!(short.socket_dir(), Path::new("/var/tmp/vm"));
        let deep = format!("/{}", "x".repeat(120));
        let long = VmConfig::new("/d.raw", &deep);
        let dir = long.socket_dir();
        assert!(!dir.starts_with(&deep));
        assert!(long.serial_socket().as_os_str().len() < SUN_PATH_BYTES);
        // The same state directory always gets the same sockets; another gets others.
        assert_eq!(VmConfig::new("/e.raw", &deep).socket_dir(), dir);
        assert_ne!(
            VmConfig::new("/d.raw", format!("{deep}y")).socket_dir(),
            dir
        );
    }

    #[test]
    fn a_socket_directory_others_can_enter_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = private_dir(&open).unwrap_err().to_string();
        assert!(err.contains("open") && err.contains("0700"), "{err}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        assert!(private_dir(&link).is_err());
        let fresh = tmp.path().join("fresh");
        private_dir(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        private_dir(&fresh).unwrap();
    }

    #[test]
    fn a_network_boot_has_no_disk_and_boots_the_nic_first() {
        let ovmf = Ovmf {
            code: "/c.fd".into(),
            vars_template: "/v.fd".into(),
        };
        let args = |c: &VmConfig| -> String {
            c.command(&ovmf)
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut config = VmConfig::new("/d.raw", "/s");
        assert!(args(&config).contains("file=/d.raw"));
        config.network_boot = Some(NetworkBoot {
            bootfile: "http://10.0.2.2:8080/boot.ipxe".into(),
            romfile: "/usr/lib/ipxe/qemu/efi-virtio.rom".into(),
        });
        config.mac = Some("52:54:00:12:34:0b".into());
        let line = args(&config);
        assert!(!line.contains("disk0") && !line.contains("d.raw"), "{line}");
        assert!(
            line.contains("user,id=n0,bootfile=http://10.0.2.2:8080/boot.ipxe"),
            "{line}"
        );
        assert!(
            line.contains(
                "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:0b,romfile=/usr/lib/ipxe/qemu/efi-virtio.rom,bootindex=1"
            ),
            "{line}"
        );
    }

    #[test]
    fn two_vcpus_unless_told_otherwise_and_one_smp_option() {
        let ovmf = Ovmf {
            code: "/c.fd".into(),
            vars_template: "/v.fd".into(),
        };
        let smp = |c: &VmConfig| -> Vec<String> {
            let args: Vec<String> = c
                .command(&ovmf)
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            args.windows(2)
                .filter(|w| w[0] == "-smp")
                .map(|w| w[1].clone())
                .collect()
        };
        let mut config = VmConfig::new("/d.raw", "/s");
        assert_eq!(smp(&config), ["2"]);
        config.cpus = 1;
        assert_eq!(smp(&config), ["1"]);
    }
}
