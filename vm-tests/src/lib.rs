//! The vm-tests harness: builds images with the real builder, boots them in QEMU under OVMF
//! (through the same launcher as `keel run`), and drives the serial console with rexpect.
//! Every VM's console log is kept under `target/vm-tests/<test>/`; QEMU is always killed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use keel_builder::build::{BuildReport, BuildRequest};
use keel_builder::progress::Reporter;
use keel_builder::qemu::{Vm, VmConfig};
use rexpect::reader::{NBReader, Options, ReadUntil};

pub mod cri_node;
pub mod fake_apiserver;

/// The workspace root (vm-tests/..).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where images, disks and console logs of tests go: `target/vm-tests`, or the directory
/// `KEEL_TEST_WORK_DIR` names (the suite runner gives each test binary its own, and deletes
/// its disks when it ends: `src/bin/keel-suite.rs`).
pub fn work_dir() -> PathBuf {
    let dir = match std::env::var_os(WORK_DIR_VAR) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target").join("vm-tests"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Set by the suite runner for each test binary: its work directory.
pub const WORK_DIR_VAR: &str = "KEEL_TEST_WORK_DIR";
/// When set, the suite runner keeps the disks and images of finished test binaries.
pub const KEEP_VAR: &str = "KEEL_TEST_KEEP";

/// A fresh directory for one test: `target/vm-tests/<name>`.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = work_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Builds a binary of this workspace as a static executable (as the image needs it), in a
/// target directory of its own so the outer `cargo test` lock is never in the way; cargo
/// itself makes concurrent builds wait. `package` should be a small one: cargo compiles its
/// library and all of its dependencies in release mode for this target (why the fakes are
/// in keel-fakes, not in this package, whose library pulls in keel-builder).
fn static_binary(package: &str, bin: &str) -> PathBuf {
    let target_dir = workspace_root().join("target").join("keel-init");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "build",
            "--release",
            "-p",
            package,
            "--bin",
            bin,
            "--target",
            keel_builder::init_binary::TARGET,
        ])
        .status()
        .unwrap_or_else(|e| panic!("running cargo to build {bin}: {e}"));
    assert!(status.success(), "building the static {bin} failed");
    target_dir
        .join(keel_builder::init_binary::TARGET)
        .join("release")
        .join(bin)
}

/// The static init, built once per test process. `KEEL_TEST_INIT=PATH` uses another one
/// (an init built from an older commit, to show a test failing before a fix).
pub fn init_binary() -> PathBuf {
    static INIT: OnceLock<PathBuf> = OnceLock::new();
    INIT.get_or_init(|| match std::env::var_os("KEEL_TEST_INIT") {
        Some(path) => PathBuf::from(path),
        None => static_binary("keel-init", "keel-init"),
    })
    .clone()
}

/// An unencrypted key pair in `dir` (tests cannot answer a passphrase prompt).
pub fn test_key(dir: &Path) -> (PathBuf, PathBuf) {
    let (secret, public, _) = keel_builder::keys::generate(dir, true).unwrap();
    (secret, public)
}

/// The package cache shared by all tests (and with `keel build`'s default).
pub fn cache_dir() -> PathBuf {
    keel_builder::userland::default_cache_dir()
}

/// The squashfs block cache beside the package cache, as `keel build` uses it, unless
/// `KEEL_NO_BLOCK_CACHE` is set (to anything but 0/false/no/off, as the CLI reads it).
pub fn block_cache() -> Option<PathBuf> {
    let off = std::env::var("KEEL_NO_BLOCK_CACHE").is_ok_and(|v| {
        !matches!(
            v.to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off" | "n" | "f"
        )
    });
    (!off).then(|| keel_builder::build::default_block_cache(&cache_dir()))
}

/// Builds `profile` into `out` with `key`.
pub fn build(
    profile: &Path,
    out: &Path,
    key: &Path,
    version: Option<&str>,
    sde: u64,
) -> BuildReport {
    build_with_init(profile, out, key, version, sde, &init_binary())
}

/// Builds `profile` into `out` with `key` and the given static init (benchmarks compare
/// two inits side by side).
pub fn build_with_init(
    profile: &Path,
    out: &Path,
    key: &Path,
    version: Option<&str>,
    sde: u64,
    init: &Path,
) -> BuildReport {
    run_build(&BuildRequest {
        profile: profile.to_path_buf(),
        output: out.to_path_buf(),
        key: Some(key.to_path_buf()),
        version: version.map(|v| v.parse().unwrap()),
        init: Some(init.to_path_buf()),
        cache_dir: cache_dir(),
        block_cache: block_cache(),
        source_date_epoch: sde,
    })
}

/// Runs a build the test has set up itself (to change a setting [`build`] fixes).
pub fn run_build(request: &BuildRequest) -> BuildReport {
    match keel_builder::build::build(request, &Reporter::new(false)) {
        Ok(report) => report,
        Err(e) => panic!("building {}: {e}", request.profile.display()),
    }
}

/// The stock profile `profiles/<name>.toml` built once per test process, with a key made for
/// the purpose; returns the output directory and the public key.
pub fn stock_image(name: &str) -> (PathBuf, PathBuf) {
    static IMAGES: Mutex<Vec<(String, PathBuf, PathBuf)>> = Mutex::new(Vec::new());
    let mut images = IMAGES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, out, public)) = images.iter().find(|(n, _, _)| n == name) {
        return (out.clone(), public.clone());
    }
    let images_dir = work_dir().join("images");
    remove_images_of_finished_processes(&images_dir);
    let dir = images_dir.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (secret, public) = test_key(&dir.join("keys"));
    let out = dir.join("out");
    build(
        &workspace_root()
            .join("profiles")
            .join(format!("{name}.toml")),
        &out,
        &secret,
        None,
        1_700_000_000,
    );
    images.push((name.to_owned(), out.clone(), public.clone()));
    (out, public)
}

/// Removes `images/<name>-<pid>` directories whose test process has ended: every test binary
/// builds its own stock images, and a whole suite's worth would fill a CI machine's disk.
fn remove_images_of_finished_processes(images_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(images_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            let alive = Path::new("/proc").join(pid.to_string()).exists();
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Copies a built disk into `dir` as the VM's disk, grown to `size` bytes like a real disk.
pub fn vm_disk(image_dir: &Path, dir: &Path, size: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let disk = dir.join("disk.raw");
    keel_builder::run::sparse_copy(&image_dir.join("disk.raw"), &disk, size).unwrap();
    disk
}

/// A booted VM with its console.
pub struct Machine {
    pub vm: Vm,
    reader: NBReader,
    writer: std::os::unix::net::UnixStream,
    pub name: String,
    seen: String,
}

impl Machine {
    /// Starts QEMU on `disk` with state (sockets, firmware variables, logs) in `dir`.
    pub fn start(
        name: &str,
        disk: &Path,
        dir: &Path,
        configure: impl FnOnce(&mut VmConfig),
    ) -> Machine {
        let mut config = VmConfig::new(disk, dir);
        config.memory_mib = 1024;
        // One vCPU unless a test asks for more: the suite runs two lanes of VMs on a two-core
        // machine, and `keel run`'s default (two) is booted by the node test.
        config.cpus = 1;
        configure(&mut config);
        let vm = Vm::start(config).unwrap_or_else(|e| panic!("{name}: starting QEMU: {e}"));
        let serial = vm.serial().unwrap();
        let reader = NBReader::new(
            serial.try_clone().unwrap(),
            Options::new()
                .timeout_ms(Some(500))
                .strip_ansi_escape_codes(true),
        );
        Machine {
            vm,
            reader,
            writer: serial,
            name: name.to_owned(),
            seen: String::new(),
        }
    }

    /// Waits up to `timeout` for `needle` on the console; returns what came before it.
    /// On timeout the test fails with the end of the console log.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        self.try_expect(needle, timeout)
            .unwrap_or_else(|why| self.fail(&format!("waiting for {needle:?}: {why}")))
    }

    /// Like [`Machine::expect`] but returns an error instead of failing.
    pub fn try_expect(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let start = Instant::now();
        loop {
            match self
                .reader
                .read_until(&ReadUntil::String(needle.to_owned()))
            {
                Ok((before, matched)) => {
                    self.seen.push_str(&before);
                    self.seen.push_str(&matched);
                    return Ok(before);
                }
                Err(rexpect::error::Error::Timeout { .. }) if start.elapsed() < timeout => {
                    if !self.vm.is_running() {
                        return Err("QEMU exited".into());
                    }
                }
                Err(rexpect::error::Error::Timeout { .. }) => {
                    return Err(format!("timed out after {}s", timeout.as_secs()));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Like [`Machine::expect`], but also satisfied by console output already consumed (for
    /// lines from background work that may come before or after an earlier needle).
    pub fn expect_seen_or_next(&mut self, needle: &str, timeout: Duration) {
        if !self.seen.contains(needle) {
            self.expect(needle, timeout);
        }
    }

    /// Sends text to the console.
    pub fn send(&mut self, text: &str) {
        use std::io::Write;
        let _ = self.writer.write_all(text.as_bytes());
    }

    /// The whole console log so far (QEMU's own log file).
    pub fn console_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.vm.config.console_log()).unwrap_or_default())
            .into_owned()
    }

    /// Fails the test with the tail of the console log; the full log stays on disk.
    pub fn fail(&self, why: &str) -> ! {
        let log = self.console_log();
        let tail: String = log
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!(
            "{}: {why}\n--- console (last 60 lines; full log {}) ---\n{tail}\n--- qemu stderr ---\n{}",
            self.name,
            self.vm.config.console_log().display(),
            self.vm.stderr()
        );
    }

    /// Pulls the plug.
    pub fn kill(mut self) {
        self.vm.kill();
    }
}

/// A tiny OCI image layout (built with umoci) whose entrypoint is a static program printing
/// `keel-marker: <args>` and then sleeping: what a system container test runs.
pub fn marker_image(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join("marker.rs");
    std::fs::write(
        &src,
        r#"fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("keel-marker: {}", args.join(" "));
    loop { std::thread::sleep(std::time::Duration::from_secs(3600)); }
}
"#,
    )
    .unwrap();
    let bin = dir.join("marker");
    run_tool(
        Command::new("rustc")
            .args(["-O", "-C", "target-feature=+crt-static", "-o"])
            .arg(&bin)
            .arg(&src),
    );
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let _ = std::fs::remove_dir_all(&layout);
    let _ = std::fs::remove_dir_all(&bundle);
    let image = format!("{}:latest", layout.display());
    run_tool(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    );
    run_tool(Command::new("umoci").args(["new", "--image", &image]));
    run_tool(
        Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle),
    );
    std::fs::copy(&bin, bundle.join("rootfs/marker")).unwrap();
    run_tool(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
    );
    run_tool(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/marker",
    ]));
    layout
}

fn run_tool(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (installed? see vm-tests/install-host-packages)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a profile that extends `profiles/<base>.toml` with `extra` TOML appended.
pub fn derived_profile(dir: &Path, base: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{base}-test.toml"));
    let text = format!(
        "extends = \"{}\"\n{extra}",
        workspace_root()
            .join("profiles")
            .join(format!("{base}.toml"))
            .display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Reads a file from the ESP of a (stopped) VM disk.
pub fn esp_file(disk: &Path, path: &str) -> Option<Vec<u8>> {
    let (offset, size) = esp_window(disk)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .ok()?;
    let window = keel_builder::io::Window::new(file, offset, size).ok()?;
    keel_builder::fat::read_fat_file(window, path).ok()
}

/// Lists a directory of the ESP of a (stopped) VM disk.
pub fn esp_list(disk: &Path, dir: &str) -> Vec<String> {
    let Some((offset, size)) = esp_window(disk) else {
        return Vec::new();
    };
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
    else {
        return Vec::new();
    };
    let Ok(window) = keel_builder::io::Window::new(file, offset, size) else {
        return Vec::new();
    };
    let mut names = keel_builder::fat::list_fat_dir(window, dir).unwrap_or_default();
    names.sort();
    names
}

fn esp_window(disk: &Path) -> Option<(u64, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(disk).ok()?;
    let size = f.metadata().ok()?.len();
    let mut head = vec![0u8; 34 * 512];
    f.read_exact(&mut head).ok()?;
    let gpt = keel_contract::gpt::Gpt::parse_primary(&head, size / 512).ok()?;
    let (_, esp) = gpt.find("ESP")?;
    Some((esp.offset(), esp.size()))
}

/// Disk offset of the first data block of `file` inside KEEL-A's squashfs, found by storing
/// that block the way the builder's squashfs writer does and searching for the bytes.
pub fn root_file_block_offset(out: &Path, file: &[u8]) -> Option<u64> {
    let manifest = keel_contract::manifest::Manifest::from_json(
        &std::fs::read(out.join("manifest.json")).ok()?,
    )
    .ok()?;
    let slot = manifest.partition("KEEL-A")?;
    let options = keel_builder::squashfs::SquashfsOptions::default();
    let block = file.get(..options.block_size as usize)?;
    let stored = keel_builder::squashfs::stored_block(block, &options).ok()?;
    let disk = std::fs::read(out.join("disk.raw")).ok()?;
    let root = disk.get(slot.offset as usize..(slot.offset + manifest.root.size) as usize)?;
    let at = root
        .windows(stored.len())
        .position(|w| w == stored.as_slice())?;
    Some(slot.offset + at as u64 + stored.len() as u64 / 2)
}

/// Offset and size of the partition labelled `label` in a disk image.
pub fn partition_window(disk: &Path, label: &str) -> Option<(u64, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(disk).ok()?;
    let size = f.metadata().ok()?.len();
    let mut head = vec![0u8; 34 * 512];
    f.read_exact(&mut head).ok()?;
    let gpt = keel_contract::gpt::Gpt::parse_primary(&head, size / 512).ok()?;
    let (_, part) = gpt.find(label)?;
    Some((part.offset(), part.size()))
}

/// Disk offset of the first data block of `file` inside the squashfs in partition `label` of
/// a VM disk (which `out`'s image was written to, in that slot), found as
/// [`root_file_block_offset`] finds it.
pub fn slot_file_block_offset(disk: &Path, label: &str, out: &Path, file: &[u8]) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let manifest = keel_contract::manifest::Manifest::from_json(
        &std::fs::read(out.join("manifest.json")).ok()?,
    )
    .ok()?;
    let options = keel_builder::squashfs::SquashfsOptions::default();
    let block = file.get(..options.block_size as usize)?;
    let stored = keel_builder::squashfs::stored_block(block, &options).ok()?;
    let (offset, _) = partition_window(disk, label)?;
    let mut f = std::fs::File::open(disk).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut root = vec![0u8; manifest.root.size as usize];
    f.read_exact(&mut root).ok()?;
    let at = root
        .windows(stored.len())
        .position(|w| w == stored.as_slice())?;
    Some(offset + at as u64 + stored.len() as u64 / 2)
}

/// A reader that fails after `left` bytes, as a connection cut mid-upload does.
pub struct CutReader<R> {
    pub inner: R,
    pub left: u64,
}

impl<R: std::io::Read> std::io::Read for CutReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the test cut the upload here",
            ));
        }
        let n = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..n])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Flips every bit of the byte at `at`.
pub fn flip_byte(path: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[!byte[0]]).unwrap();
}

/// The fake kubelet (a test double: the real kubelet cannot be downloaded on these machines;
/// package keel-fakes, `fakes/`), built static so it runs in the image as `/usr/bin/kubelet`.
pub fn fake_kubelet() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| static_binary("keel-fakes", "fake-kubelet"))
        .clone()
}

/// `cri-relay` (a test tool: TCP to a Unix socket; package keel-fakes), built static for the
/// probe image.
pub fn cri_relay() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| static_binary("keel-fakes", "cri-relay"))
        .clone()
}

/// Cluster secrets written to `dir/cluster.secrets.toml`.
pub fn cluster_secrets(dir: &Path) -> (PathBuf, keel_contract::secrets::Secrets) {
    std::fs::create_dir_all(dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let secrets = keel_pki::generate("keel", now).unwrap();
    let path = dir.join("cluster.secrets.toml");
    std::fs::write(&path, secrets.to_toml().unwrap()).unwrap();
    (path, secrets)
}

/// Writes `text` to `dir/name` and returns the path (for fw_cfg entries and the like).
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes `text` to `dir/name`, signs it the way `keel sign` does (the same code) and
/// returns the `.minisig` text; the stock `minisign` tool checks it with `public`, so a
/// signature the node accepts is one an operator's tools accept too.
pub fn sign_text(dir: &Path, name: &str, text: &str, key: &Path, public: &Path) -> String {
    let path = write_file(dir, name, text);
    let (sig, _) = keel_builder::keys::sign_file(&path, key, None).unwrap();
    let out = Command::new("minisign")
        .arg("-V")
        .arg("-p")
        .arg(public)
        .arg("-m")
        .arg(&path)
        .output()
        .expect("minisign is installed");
    assert!(out.status.success(), "minisign -V: {out:?}");
    std::fs::read_to_string(sig).unwrap()
}

/// A free TCP port on 127.0.0.1 (for QEMU port forwards).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads a file from the STATE partition of a disk image.
pub fn state_file(disk: &Path, path: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(disk).ok()?;
    let size = f.metadata().ok()?.len();
    let mut head = vec![0u8; 34 * 512];
    f.read_exact(&mut head).ok()?;
    let gpt = keel_contract::gpt::Gpt::parse_primary(&head, size / 512).ok()?;
    let (_, state) = gpt.find("STATE")?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .ok()?;
    let window = keel_builder::io::Window::new(file, state.offset(), state.size()).ok()?;
    keel_builder::fat::read_fat_file(window, path).ok()
}

/// A config drive as a person would make one for a bare-metal node: a small FAT image
/// labelled KEELCFG (made with the standard mkfs.vfat and mcopy) holding `files`
/// (`profile.toml`, `secrets.toml`).
pub fn config_drive(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let image = dir.join("config-drive.img");
    let _ = std::fs::remove_file(&image);
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?}: {out:?}");
    };
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", keel_contract::layout::config::DRIVE_LABEL])
        .arg(&image)
        .arg("2048"));
    for (name, text) in files {
        let src = write_file(dir, name, text);
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&image)
            .arg(&src)
            .arg(format!("::{name}")));
    }
    image
}

/// QEMU arguments attaching `image` as a second, read-only virtio disk.
pub fn extra_disk_args(image: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "if=none,id=extra0,format=raw,readonly=on,file={}",
            image.display()
        ),
        "-device".into(),
        "virtio-blk-pci,drive=extra0".into(),
    ]
}

/// The host's etcdctl (API 3, an independent client) against `https://127.0.0.1:PORT` with
/// the etcd CA and admin certificate in `certs` (`etcd-ca.crt`, `etcd-admin.crt`,
/// `etcd-admin.key`: see [`write_etcd_admin`]); its output, or an error naming the call.
pub fn etcdctl(certs: &Path, port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://127.0.0.1:{port}"))
        .arg(format!("--cacert={}", certs.join("etcd-ca.crt").display()))
        .arg(format!("--cert={}", certs.join("etcd-admin.crt").display()))
        .arg(format!("--key={}", certs.join("etcd-admin.key").display()))
        .args(["--dial-timeout=20s", "--command-timeout=60s"])
        .args(args)
        .output()
        .expect("etcdctl (etcd-client) is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("etcdctl {args:?}: {text}"))
    }
}

/// Writes the etcd CA and the etcd admin's certificate and key of `secrets` into `certs`, for
/// [`etcdctl`].
pub fn write_etcd_admin(certs: &Path, secrets: &keel_contract::secrets::Secrets) {
    write_file(certs, "etcd-ca.crt", &secrets.etcd_ca.cert);
    write_file(certs, "etcd-admin.crt", &secrets.etcd_admin.cert);
    write_file(certs, "etcd-admin.key", &secrets.etcd_admin.key);
}
