//! The init's block-device code against the real kernel: loop devices, device-mapper,
//! BLKPG, with the usual tools (veritysetup, sgdisk, losetup) as the independent peer.
//!
//! Needs root, loop devices and device-mapper with dm-verity. The project's build machines run
//! kernels without device-mapper or GPT parsing, so the tests that need them are `#[ignore]`d
//! in a plain `cargo test`, and `vm-tests/test` runs them all (`--include-ignored`) inside a
//! QEMU VM on Debian's kernel with `init/tests/vm/run`. A missing piece fails the test with a
//! message saying what is missing; nothing is skipped unless asked for by name
//! (KEEL_SKIP_KERNEL_BLOCK_TESTS=1; each skip is printed).
//!
//! Never use restart_on_corruption or panic_on_corruption here: the corruption test would
//! reboot the machine running it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel_contract::manifest::Verity;
use keel_init::block::dm::{self, Control, Target};
use keel_init::block::sysfs::{self, find_partition_on};
use keel_init::block::{OnCorruption, Roots, create_verity_root, device_size};

const MIB: u64 = 1 << 20;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("these tests need root (loop devices, device-mapper, BLKPG)");
    }
    for (path, what) in [
        ("/dev/loop-control", "loop devices (CONFIG_BLK_DEV_LOOP)"),
        ("/sys/class/block", "sysfs"),
    ] {
        assert!(Path::new(path).exists(), "{path} is missing: no {what}");
    }
}

/// A kernel feature is missing: fail, unless KEEL_SKIP_KERNEL_BLOCK_TESTS=1 asks to skip, in
/// which case say so and return false.
fn missing_kernel_feature(what: &str) -> bool {
    if std::env::var("KEEL_SKIP_KERNEL_BLOCK_TESTS").as_deref() == Ok("1") {
        // Straight to fd 2: libtest would swallow eprintln! of a passing test.
        let _ = writeln!(
            io::stderr(),
            "SKIPPED (KEEL_SKIP_KERNEL_BLOCK_TESTS=1): {what}"
        );
        return false;
    }
    panic!(
        "{what}. Run init/tests/vm/run to test on a kernel that has it, or set \
         KEEL_SKIP_KERNEL_BLOCK_TESTS=1 to skip these tests knowingly"
    );
}

/// Whether to run the device-mapper tests.
fn require_dm() -> bool {
    require_root();
    Path::new("/dev/mapper/control").exists()
        || missing_kernel_feature(
            "/dev/mapper/control is missing: this kernel has no device-mapper (CONFIG_BLK_DEV_DM)",
        )
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "keel-block-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A loop device, detached on drop (also when the test fails).
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["--find", "--show"];
        args.extend(extra);
        let file = file.to_str().unwrap();
        args.push(file);
        Loop(PathBuf::from(run("losetup", &args).trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A device-mapper device, removed on drop (declare it after the loop device under it, so it
/// goes first).
struct DmGuard(String);

impl Drop for DmGuard {
    fn drop(&mut self) {
        if let Ok(control) = Control::open(&Roots::default())
            && let Ok(Some(_)) = control.status(&self.0)
            && let Err(e) = control.remove(&self.0)
        {
            eprintln!("cleanup: {e}");
        }
    }
}

fn unique_name(tag: &str) -> String {
    format!("keel-test-{tag}-{}", std::process::id())
}

/// Deterministic, non-repeating bytes (xorshift64*), so every block hashes differently.
fn varied_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Reads `len` bytes at `offset` with O_DIRECT, so no page cache stands between us and the
/// device-mapper target.
fn read_direct(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    // O_DIRECT needs a buffer aligned to the logical block size; 4096 covers every device.
    let mut raw = vec![0u8; len + 4096];
    let skip = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[skip..skip + len];
    file.read_exact_at(buf, offset)?;
    Ok(buf.to_vec())
}

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} in:\n{text}"))
}

/// Builds an 8 MiB slot (data, then the verity superblock and tree from veritysetup) and
/// returns its path, the data and the manifest-style parameters.
fn verity_slot(dir: &Path) -> (PathBuf, Vec<u8>, Verity) {
    let data = varied_bytes(8 * MIB as usize, 0x6b65_656c);
    let path = dir.join("slot");
    fs::write(&path, &data).unwrap();
    let out = run(
        "veritysetup",
        &[
            "format",
            path.to_str().unwrap(),
            path.to_str().unwrap(),
            &format!("--hash-offset={}", data.len()),
        ],
    );
    let v = Verity {
        algorithm: field(&out, "Hash algorithm:").to_owned(),
        data_block_size: field(&out, "Data block size:").parse().unwrap(),
        hash_block_size: field(&out, "Hash block size:").parse().unwrap(),
        data_blocks: field(&out, "Data blocks:").parse().unwrap(),
        hash_offset: data.len() as u64,
        salt: field(&out, "Salt:").to_owned(),
        root_hash: field(&out, "Root hash:").parse().unwrap(),
        uuid: field(&out, "UUID:").to_owned(),
    };
    assert_eq!((v.data_blocks, v.data_block_size), (2048, 4096), "{out}");
    (path, data, v)
}

#[test]
#[ignore = "needs device-mapper and GPT parsing in the kernel: vm-tests/test runs it in a VM (init/tests/vm/run)"]
fn verity_device_reads_the_data_and_fails_on_a_flipped_byte() {
    if !require_dm() {
        return;
    }
    let roots = Roots::default();
    let dir = TempDir::new("verity");
    let (slot, data, v) = verity_slot(&dir.0);
    let lo = Loop::attach(&slot, &["--read-only"]);
    let name = unique_name("verity");
    let guard = DmGuard(name.clone());
    let device = create_verity_root(
        &roots,
        &name,
        &format!("KEEL-TEST-{name}"),
        &lo.0,
        &v,
        OnCorruption::Eio,
    )
    .unwrap();

    assert_eq!(device.major, dm_major(&device.path));
    let sys = PathBuf::from(format!("/sys/block/dm-{}", device.minor));
    assert_eq!(
        fs::read_to_string(sys.join("dm/name")).unwrap().trim(),
        name
    );
    assert_eq!(fs::read_to_string(sys.join("ro")).unwrap().trim(), "1");
    let file = File::open(&device.path).unwrap();
    assert_eq!(device_size(&file, &device.path).unwrap(), data.len() as u64);
    drop(file);
    assert!(read_direct(&device.path, 0, data.len()).unwrap() == data);

    // Flip one byte of block 5 behind the device's back. The loop device reads the file
    // through its page cache, which the write updates; O_DIRECT keeps the dm device's cache
    // out of the way.
    let block = 4096u64;
    let at = 5 * block + 123;
    let backing = File::options().read(true).write(true).open(&slot).unwrap();
    let mut byte = [0u8; 1];
    backing.read_exact_at(&mut byte, at).unwrap();
    backing.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    backing.sync_all().unwrap();

    let err = read_direct(&device.path, 5 * block, block as usize).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let next = read_direct(&device.path, 6 * block, block as usize).unwrap();
    assert!(next == data[6 * 4096..7 * 4096]);
    assert!(read_direct(&device.path, 5 * block, block as usize).is_err());

    // Put it back: the same block reads again, so the failure was the hash, not the device.
    backing.write_all_at(&byte, at).unwrap();
    backing.sync_all().unwrap();
    let fixed = read_direct(&device.path, 5 * block, block as usize).unwrap();
    assert!(fixed == data[5 * 4096..6 * 4096]);

    drop(guard);
    let control = Control::open(&roots).unwrap();
    assert_eq!(control.status(&name).unwrap(), None, "device left behind");
}

fn dm_major(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    libc::major(fs::metadata(path).unwrap().rdev())
}

#[test]
#[ignore = "needs device-mapper and GPT parsing in the kernel: vm-tests/test runs it in a VM (init/tests/vm/run)"]
fn verity_with_a_wrong_root_hash_fails_every_read() {
    if !require_dm() {
        return;
    }
    let roots = Roots::default();
    let dir = TempDir::new("verity-root");
    let (slot, _, mut v) = verity_slot(&dir.0);
    v.root_hash.0[0] ^= 1;
    let lo = Loop::attach(&slot, &["--read-only"]);
    let name = unique_name("badroot");
    let _guard = DmGuard(name.clone());
    let device = create_verity_root(&roots, &name, &name, &lo.0, &v, OnCorruption::Eio).unwrap();
    let err = read_direct(&device.path, 0, 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

#[test]
#[ignore = "needs device-mapper and GPT parsing in the kernel: vm-tests/test runs it in a VM (init/tests/vm/run)"]
fn a_rejected_table_names_the_ioctl_and_leaves_no_device() {
    if !require_dm() {
        return;
    }
    let roots = Roots::default();
    let dir = TempDir::new("verity-bad");
    let (slot, _, _) = verity_slot(&dir.0);
    let lo = Loop::attach(&slot, &["--read-only"]);
    let dev = keel_init::block::verity::dev_spec(&lo.0).unwrap();
    let name = unique_name("rejected");
    let _guard = DmGuard(name.clone());
    let target = Target {
        start: 0,
        length: 16384,
        target_type: "verity".into(),
        // "zz" is not a root digest.
        params: format!("1 {dev} {dev} 4096 4096 2048 2049 sha256 zz -"),
    };
    let err = dm::create_read_only(&roots, &name, &name, &[target])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("DM_TABLE_LOAD {name}: Invalid argument")),
        "{err}"
    );
    assert!(err.contains("kernel log"), "{err}");
    assert_eq!(Control::open(&roots).unwrap().status(&name).unwrap(), None);

    // And a name that exists already is refused by DM_DEV_CREATE.
    let good = Target {
        start: 0,
        length: 8,
        target_type: "linear".into(),
        params: format!("{dev} 0"),
    };
    dm::create_read_only(&roots, &name, &name, std::slice::from_ref(&good)).unwrap();
    let err = dm::create_read_only(&roots, &name, &format!("{name}-2"), &[good])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("DM_DEV_CREATE {name}: Device or resource busy")),
        "{err}"
    );
    dm::remove(&roots, &name).unwrap();
}

const ROOT_TYPE: &str = keel_contract::layout::type_guid::ROOT_X86_64;

/// A 64 MiB image laid out like Keel's (smaller), then grown to 256 MiB so its backup GPT is
/// no longer at the end.
fn grown_image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    File::create(&path).unwrap().set_len(64 * MIB).unwrap();
    let p = path.to_str().unwrap();
    run(
        "sgdisk",
        &[
            "-o",
            "-n",
            "1:2048:+8M",
            "-t",
            "1:EF00",
            "-c",
            "1:ESP",
            "-n",
            "2:0:+16M",
            "-t",
            &format!("2:{ROOT_TYPE}"),
            "-c",
            "2:KEEL-A",
            "-n",
            "3:0:+16M",
            "-t",
            &format!("3:{ROOT_TYPE}"),
            "-c",
            "3:KEEL-B",
            "-n",
            "4:0:+8M",
            "-t",
            "4:8300",
            "-c",
            "4:STATE",
            p,
        ],
    );
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(256 * MIB)
        .unwrap();
    path
}

fn sgdisk_verify(disk: &Path) -> String {
    // sgdisk -v exits 0 even when it finds problems; the text is what counts.
    let out = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks the table with sgdisk: no problems, DATA is partition 5 from 49 MiB to the last
/// MiB boundary before the backup table.
fn check_table(disk: &Path) {
    let verify = sgdisk_verify(disk);
    assert!(verify.contains("No problems found"), "{verify}");
    let print = run("sgdisk", &["-p", disk.to_str().unwrap()]);
    let line = print
        .lines()
        .find(|l| l.split_whitespace().next() == Some("5"))
        .unwrap_or_else(|| panic!("no partition 5:\n{print}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    let (start, end): (u64, u64) = (cols[1].parse().unwrap(), cols[2].parse().unwrap());
    assert_eq!(cols.last(), Some(&"DATA"), "{line}");
    assert_eq!(start, 49 * 2048, "{line}");
    assert_eq!(end, 255 * 2048 - 1, "{line}");
    // Within the last MiB plus the 33 sectors of backup table of the disk's end.
    assert!(256 * 2048 - end <= 2048 + 34, "{line}");
    let info = run("sgdisk", &["-i", "5", disk.to_str().unwrap()]);
    assert!(
        info.contains("Partition GUID code: 4D21B016-B534-45C2-A9FB-5C16E091FD2D"),
        "{info}"
    );
    assert!(info.contains("Partition name: 'DATA'"), "{info}");
}

#[test]
fn data_partition_on_an_image_file() {
    let dir = TempDir::new("gpt-file");
    let img = grown_image(&dir.0);
    let before = sgdisk_verify(&img);
    assert!(!before.contains("No problems found"), "{before}");

    let made = keel_init::block::ensure_data_table(&img).unwrap();
    assert!(made.created);
    check_table(&img);
    let bytes = fs::read(&img).unwrap();
    let again = keel_init::block::ensure_data_table(&img).unwrap();
    assert!(!again.created);
    assert_eq!(again.partition, made.partition);
    assert!(
        fs::read(&img).unwrap() == bytes,
        "second run changed the image"
    );
}

#[test]
#[ignore = "needs device-mapper and GPT parsing in the kernel: vm-tests/test runs it in a VM (init/tests/vm/run)"]
fn data_partition_through_a_loop_device_with_blkpg() {
    require_root();
    let roots = Roots::default();
    let dir = TempDir::new("gpt-loop");
    let img = grown_image(&dir.0);
    let lo = Loop::attach(&img, &["--partscan"]);
    let disk = keel_init::block::disk_for(&roots, &lo.0).unwrap();
    assert_eq!(disk.path, lo.0);
    // losetup --partscan returns after the kernel scanned the table; a short wait suffices.
    let a = match sysfs::wait_for_partition_number(&roots, &disk, 2, Duration::from_secs(3)) {
        Ok(a) => a,
        Err(e) => {
            missing_kernel_feature(&format!(
                "{e}: the kernel did not find the image's GPT partitions \
                 (CONFIG_EFI_PARTITION)"
            ));
            return;
        }
    };
    assert_eq!(a.label.as_deref(), Some("KEEL-A"));
    assert_eq!(keel_init::block::disk_for(&roots, &a.path).unwrap(), disk);

    // Hold KEEL-A open, as the mounted root would be: the kernel then refuses to re-read the
    // table, which is why the init uses BLKPG.
    let in_use = File::open(&a.path).unwrap();
    let reread = Command::new("blockdev")
        .arg("--rereadpt")
        .arg(&lo.0)
        .output()
        .unwrap();
    assert!(
        !reread.status.success(),
        "BLKRRPART worked with a partition open"
    );

    let (data, created) =
        keel_init::block::ensure_data_partition(&roots, &disk, Duration::from_secs(10)).unwrap();
    assert!(created, "this call wrote DATA into the table");
    assert_eq!(data.number, 5);
    assert_eq!(data.disk, disk);
    assert!(data.path.exists(), "{} has no node", data.path.display());
    let part_sys = PathBuf::from("/sys/class/block").join(&data.name);
    let uevent = fs::read_to_string(part_sys.join("uevent")).unwrap();
    assert!(uevent.contains("PARTN=5"), "{uevent}");
    // BLKPG carries no name: the kernel learns it when it next reads the table.
    assert_eq!(data.label, None, "{uevent}");
    assert_eq!(
        sysfs::partition_extent(&roots, &data).unwrap(),
        (49 * 2048, 206 * 2048)
    );
    check_table(&lo.0);
    // Idempotent: the table and the kernel both have DATA now.
    assert_eq!(
        keel_init::block::ensure_data_partition(&roots, &disk, Duration::from_secs(1)).unwrap(),
        (data.clone(), false)
    );

    // What the next boot sees: with nothing open, re-read the table; DATA has its label.
    drop(in_use);
    run("blockdev", &["--rereadpt", lo.0.to_str().unwrap()]);
    let labelled = sysfs::wait_for_partition_number(&roots, &disk, 5, Duration::from_secs(10))
        .and_then(|_| find_partition_on(&roots, &disk, "DATA").map(|p| p.expect("DATA by label")))
        .unwrap();
    assert_eq!(labelled.name, data.name);
    let uevent = fs::read_to_string(part_sys.join("uevent")).unwrap();
    assert!(uevent.contains("PARTNAME=DATA"), "{uevent}");
}
