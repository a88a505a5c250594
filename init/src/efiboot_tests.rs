use super::*;

const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

fn esp() -> EspLocation {
    EspLocation {
        partition_number: 1,
        start_lba: 2048,
        size_lba: 0x10_0000,
        partition_guid: uuid::Uuid::parse_str("a1b2c3d4-e5f6-4718-9a2b-3c4d5e6f7081").unwrap(),
    }
}

fn var(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-{GLOBAL}"))
}

/// A variable file as efivarfs shows it: attributes 7, then `data`.
fn put(dir: &Path, name: &str, data: &[u8]) {
    let mut bytes = vec![7, 0, 0, 0];
    bytes.extend(data);
    std::fs::write(var(dir, name), bytes).unwrap();
}

fn put_order(dir: &Path, order: &[u16]) {
    let data: Vec<u8> = order.iter().flat_map(|n| n.to_le_bytes()).collect();
    put(dir, "BootOrder", &data);
}

fn read_order(dir: &Path) -> Vec<u16> {
    let bytes = std::fs::read(var(dir, "BootOrder")).unwrap();
    assert_eq!(&bytes[..4], &[7, 0, 0, 0], "BootOrder's attributes");
    bytes[4..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn boot_options(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("Boot") && n.len() == 8 + 1 + GLOBAL.len())
        .filter(|n| n[4..8].bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    names.sort();
    names
}

/// The load option for [`esp`], written out from the specification's layout by hand. efibootmgr
/// 17 writes the same bytes (checked once: `efibootmgr -c -d /dev/loop0 -p 1 -L Keel -l
/// '\EFI\BOOT\BOOTX64.EFI'` with EFIVARFS_PATH at a directory, on a loop device whose GPT
/// partition 1 is this one).
fn golden_option() -> Vec<u8> {
    let mut b = vec![];
    b.extend([0x01, 0x00, 0x00, 0x00]); // Attributes: LOAD_OPTION_ACTIVE
    b.extend([94, 0x00]); // FilePathListLength: 42 + 48 + 4
    b.extend([b'K', 0, b'e', 0, b'e', 0, b'l', 0, 0, 0]); // "Keel\0", UTF-16LE
    b.extend([0x04, 0x01, 42, 0x00]); // Hard Drive media node, 42 bytes
    b.extend([0x01, 0x00, 0x00, 0x00]); // PartitionNumber 1
    b.extend([0x00, 0x08, 0, 0, 0, 0, 0, 0]); // PartitionStart 2048
    b.extend([0x00, 0x00, 0x10, 0, 0, 0, 0, 0]); // PartitionSize 0x100000
    // a1b2c3d4-e5f6-4718-9a2b-3c4d5e6f7081 as an EFI_GUID: u32, u16, u16 LE, then 8 bytes.
    b.extend([0xd4, 0xc3, 0xb2, 0xa1, 0xf6, 0xe5, 0x18, 0x47]);
    b.extend([0x9a, 0x2b, 0x3c, 0x4d, 0x5e, 0x6f, 0x70, 0x81]);
    b.extend([0x02, 0x02]); // MBRType GPT, SignatureType GUID
    let file = r"\EFI\BOOT\BOOTX64.EFI";
    b.extend([0x04, 0x04, (4 + 2 * (file.len() + 1)) as u8, 0x00]); // File Path node
    for c in file.bytes() {
        b.extend([c, 0]);
    }
    b.extend([0, 0]);
    b.extend([0x7f, 0xff, 0x04, 0x00]); // End Entire Device Path
    b
}

#[test]
fn load_option_matches_the_specification_byte_by_byte() {
    let option = load_option(&esp(), "Keel").unwrap();
    assert_eq!(option, golden_option());
    assert_eq!(option.len(), 6 + 10 + 94);
}

#[test]
fn a_description_that_cannot_be_encoded_is_refused() {
    for bad in ["", "Ke\0el"] {
        let err = load_option(&esp(), bad).unwrap_err();
        assert!(
            matches!(err, EfiBootError::LoadOption { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn creates_the_option_puts_it_first_and_sets_boot_next() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "Boot0000", b"some other option");
    put(d, "Boot0002", b"another one");
    // Duplicates go; the file shrinks from 8 to 6 bytes of data.
    put_order(d, &[2, 0, 2, 0]);

    let n = boot_next_into(d, &esp(), "Keel").unwrap();

    assert_eq!(n, 1, "the lowest free number");
    let mut expected = vec![7, 0, 0, 0];
    expected.extend(golden_option());
    assert_eq!(std::fs::read(var(d, "Boot0001")).unwrap(), expected);
    assert_eq!(read_order(d), [1, 2, 0]);
    assert_eq!(
        std::fs::read(var(d, "BootNext")).unwrap(),
        [7, 0, 0, 0, 1, 0]
    );
}

#[test]
fn without_a_boot_order_the_option_is_the_only_one() {
    let dir = tempfile::tempdir().unwrap();
    let n = boot_next_into(dir.path(), &esp(), "Keel").unwrap();
    assert_eq!(n, 0);
    assert_eq!(read_order(dir.path()), [0]);
}

#[test]
fn an_identical_option_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "Boot0000", b"firmware's own");
    put(d, "Boot0005", &golden_option());
    put_order(d, &[0, 5]);

    assert_eq!(boot_next_into(d, &esp(), "Keel").unwrap(), 5);
    assert_eq!(read_order(d), [5, 0]);
    assert_eq!(
        boot_options(d),
        [var_name("Boot0000"), var_name("Boot0005")]
    );

    // Installing again changes nothing but BootNext.
    assert_eq!(boot_next_into(d, &esp(), "Keel").unwrap(), 5);
    assert_eq!(read_order(d), [5, 0]);
    assert_eq!(boot_options(d).len(), 2);
}

#[test]
fn another_partition_or_description_is_another_option() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = boot_next_into(d, &esp(), "Keel").unwrap();
    let other_disk = EspLocation {
        partition_guid: uuid::Uuid::from_u128(7),
        ..esp()
    };
    let second = boot_next_into(d, &other_disk, "Keel").unwrap();
    let third = boot_next_into(d, &esp(), "Keel (disk 2)").unwrap();
    assert_eq!((first, second, third), (0, 1, 2));
    assert_eq!(read_order(d), [2, 1, 0]);
}

fn var_name(name: &str) -> String {
    format!("{name}-{GLOBAL}")
}

#[test]
fn only_upper_case_global_boot_options_take_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "Boot0000", b"x");
    // Not load options: lower-case hex, another vendor's GUID, another name.
    std::fs::write(d.join(format!("Boot000a-{GLOBAL}")), [7, 0, 0, 0]).unwrap();
    let loader = keel_contract::layout::efi::LOADER_VENDOR_GUID;
    std::fs::write(d.join(format!("Boot0001-{loader}")), [7, 0, 0, 0]).unwrap();
    put(d, "BootCurrent", &[0, 0]);
    assert_eq!(boot_next_into(d, &esp(), "Keel").unwrap(), 1);
}

#[test]
fn an_odd_boot_order_is_an_error_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "BootOrder", &[1, 0, 2]);

    let err = boot_next_into(d, &esp(), "Keel").unwrap_err();

    match &err {
        EfiBootError::Malformed { path, .. } => assert_eq!(path, &var(d, "BootOrder")),
        other => panic!("expected Malformed, got {other}"),
    }
    assert!(err.to_string().contains("BootOrder-"), "{err}");
    assert_eq!(
        std::fs::read(var(d, "BootOrder")).unwrap(),
        [7, 0, 0, 0, 1, 0, 2]
    );
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 1, "only BootOrder");
}

#[test]
fn boot_current_is_read_when_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(boot_current(d), None);
    put(d, "BootCurrent", &[0x0a, 0x00]);
    assert_eq!(boot_current(d), Some(10));
    put(d, "BootCurrent", &[0x0a]);
    assert_eq!(boot_current(d), None);
}

/// Clears the immutable flag when the test ends, or the temporary directory stays behind.
struct Mutable(PathBuf);
impl Drop for Mutable {
    fn drop(&mut self) {
        if let Ok(file) = File::open(&self.0) {
            let flags = get_flags(&file).unwrap_or(0);
            let _ = set_flags(&file, flags & !FS_IMMUTABLE_FL);
        }
    }
}

#[test]
fn an_immutable_variable_is_rewritten_and_stays_immutable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put_order(d, &[4]);
    let order = var(d, "BootOrder");
    let _guard = Mutable(order.clone());
    let file = File::open(&order).unwrap();
    let set = get_flags(&file).and_then(|f| set_flags(&file, f | FS_IMMUTABLE_FL));
    if let Err(e) = set {
        // Needs CAP_LINUX_IMMUTABLE and a filesystem with inode flags (ext4, tmpfs >= 6.0).
        skipped(&format!(
            "cannot make {} immutable here: {e}",
            order.display()
        ));
        return;
    }
    assert!(
        std::fs::write(&order, [7, 0, 0, 0]).is_err(),
        "really immutable"
    );

    assert_eq!(boot_next_into(d, &esp(), "Keel").unwrap(), 0);

    assert_eq!(read_order(d), [0, 4]);
    let flags = get_flags(&File::open(&order).unwrap()).unwrap();
    assert_ne!(flags & FS_IMMUTABLE_FL, 0, "the flag is put back");
}

/// efibootmgr (through libefivar, which reads efivarfs at EFIVARFS_PATH) decodes what was
/// written: an independent reading of the load option, BootOrder and BootNext.
#[test]
fn efibootmgr_reads_the_variables() {
    let Ok(efibootmgr) = which("efibootmgr") else {
        skipped("efibootmgr is not installed (Debian package efibootmgr)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "Boot0000", &other_option());
    put_order(d, &[0]);
    let n = boot_next_into(d, &esp(), "Keel").unwrap();
    assert_eq!(n, 1);

    let out = std::process::Command::new(efibootmgr)
        .arg("-v")
        .env("EFIVARFS_PATH", format!("{}/", d.display()))
        .env("LIBEFIVAR_OPS", "efivarfs")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("BootNext: 0001\n"), "{stdout}");
    assert!(stdout.contains("BootOrder: 0001,0000\n"), "{stdout}");
    let entry = "Boot0001* Keel\tHD(1,GPT,a1b2c3d4-e5f6-4718-9a2b-3c4d5e6f7081,0x800,0x100000)\
                 /File(\\EFI\\BOOT\\BOOTX64.EFI)";
    assert!(stdout.lines().any(|l| l == entry), "{stdout}");
}

/// A valid option of another kind, so that efibootmgr has two entries to list.
fn other_option() -> Vec<u8> {
    let other = EspLocation {
        partition_number: 2,
        ..esp()
    };
    load_option(&other, "Other").unwrap()
}

/// Straight to fd 2: libtest swallows eprintln! of a passing test.
fn skipped(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

fn which(program: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}
