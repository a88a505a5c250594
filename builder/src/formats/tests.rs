//! End-to-end tests. Our writers are checked against independent peers: `qemu-img` for qcow2
//! and VHD, GNU tar and the `tar` crate for the GCE archive. qemu-img is required (Debian:
//! qemu-utils); the tests fail rather than skip without it, so a missing peer cannot hide a
//! broken writer.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::{Command, Output};

use flate2::read::GzDecoder;

use super::*;
use crate::io::HashingReader;

const MIB: u64 = 1 << 20;
/// A whole number of sectors but not of MiB, so VHD has to pad.
const SAMPLE_SIZE: u64 = 64 * MIB + 1536;

fn opts() -> ConvertOptions {
    ConvertOptions {
        source_date_epoch: 1_700_000_000,
        unique_id_seed: *b"keel-test-seed-1",
        private: false,
    }
}

/// Deterministic bytes without zeros, so a data region never contains a zero block.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8 | 1
        })
        .collect()
}

fn make_image(path: &Path, size: u64, writes: &[(u64, Vec<u8>)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (offset, bytes) in writes {
        f.write_all_at(bytes, *offset).unwrap();
    }
}

fn sample_writes() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, noise(4096, 1)),
        // Unaligned at both ends, spanning a cluster boundary.
        (3 * BLOCK + 100, noise(70_000, 2)),
        (10 * MIB, noise(MIB as usize, 3)),
        // Allocated on the host but zero: must be detected by content, not by holes.
        (20 * MIB, vec![0; MIB as usize]),
        (33 * MIB - 10, noise(20, 4)),
        // Unaligned end of the image.
        (SAMPLE_SIZE - 777, noise(777, 5)),
    ]
}

/// Data bytes a converter should keep: every block touched by a non-zero write.
fn expected_data_bytes(size: u64, writes: &[(u64, Vec<u8>)]) -> u64 {
    let mut blocks = BTreeSet::new();
    for (offset, bytes) in writes {
        if bytes.iter().any(|&b| b != 0) {
            let end = offset + bytes.len() as u64;
            blocks.extend(offset / BLOCK..end.div_ceil(BLOCK));
        }
    }
    blocks.iter().map(|b| BLOCK.min(size - b * BLOCK)).sum()
}

fn sha256_file(path: &Path) -> [u8; 32] {
    let mut r = HashingReader::new(File::open(path).unwrap());
    io::copy(&mut r, &mut io::sink()).unwrap();
    r.finish().sha256
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); the format tests need it"))
}

fn qemu_img(args: &[&str]) -> String {
    let out = run("qemu-img", args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn virtual_size(info_args: &[&str]) -> u64 {
    let mut args = vec!["info", "--output=json"];
    args.extend_from_slice(info_args);
    let info: serde_json::Value = serde_json::from_str(&qemu_img(&args)).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn check_qcow2(raw: &Path, qcow2: &Path, raw_size: u64) {
    let check = qemu_img(&["check", "-f", "qcow2", s(qcow2)]);
    assert!(check.contains("No errors were found"), "{check}");
    assert_refcounts_cover_exactly_the_file(qcow2);
    let cmp = qemu_img(&["compare", "-f", "raw", "-F", "qcow2", s(raw), s(qcow2)]);
    assert!(cmp.contains("Images are identical"), "{cmp}");
    assert_eq!(virtual_size(&["-f", "qcow2", s(qcow2)]), raw_size);
}

/// qemu-img check ignores refcounts of clusters past the end of the file; we want none, and
/// exactly 1 for every cluster in it.
fn assert_refcounts_cover_exactly_the_file(qcow2: &Path) {
    let file = fs::read(qcow2).unwrap();
    let be64 = |at: usize| u64::from_be_bytes(file[at..at + 8].try_into().unwrap());
    let be32 = |at: usize| u32::from_be_bytes(file[at..at + 4].try_into().unwrap());
    let cluster = 1usize << be32(20);
    assert_eq!(be32(96), 4, "expected 16-bit refcounts");
    assert_eq!(file.len() % cluster, 0, "file is not whole clusters");
    let table = be64(48) as usize;
    let table_len = be32(56) as usize * cluster;
    let mut refcounts = Vec::new();
    for entry in file[table..table + table_len].chunks_exact(8) {
        let block = u64::from_be_bytes(entry.try_into().unwrap()) as usize;
        if block == 0 {
            break;
        }
        refcounts.extend(
            file[block..block + cluster]
                .chunks_exact(2)
                .map(|r| u16::from_be_bytes([r[0], r[1]])),
        );
    }
    let clusters = file.len() / cluster;
    assert!(refcounts[..clusters].iter().all(|&r| r == 1));
    assert!(refcounts[clusters..].iter().all(|&r| r == 0));
}

fn check_vhd(raw: &Path, vhd: &Path, disk_size: u64) {
    // qemu sizes VHDs from unknown creators by their CHS geometry; the image opts make it use
    // the footer's current size (as Azure does). Both must agree.
    let by_size = format!(
        "driver=vpc,force_size_calc=current_size,file.filename={}",
        s(vhd)
    );
    assert_eq!(virtual_size(&["-f", "vpc", s(vhd)]), disk_size);
    assert_eq!(virtual_size(&["--image-opts", &by_size]), disk_size);
    // The VHD is larger (padding); compare checks the extra part reads as zeros.
    let cmp = qemu_img(&["compare", "-f", "raw", "-F", "vpc", s(raw), s(vhd)]);
    assert!(cmp.contains("Images are identical"), "{cmp}");
}

/// Reads the archive with the `tar` crate and checks it holds exactly `disk.raw` with the raw
/// image's bytes, as an old-GNU sparse entry.
fn check_gce_archive(raw: &Path, gz: &Path) {
    let raw_size = fs::metadata(raw).unwrap().len();
    let mut archive = tar::Archive::new(GzDecoder::new(File::open(gz).unwrap()));
    let mut entries = archive.entries().unwrap();
    {
        let entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap(), Path::new("disk.raw"));
        assert_eq!(entry.header().entry_type(), tar::EntryType::GNUSparse);
        assert!(entry.header().as_gnu().is_some(), "not an old GNU header");
        assert_eq!(entry.header().mtime().unwrap(), opts().source_date_epoch);
        assert_eq!(entry.size(), raw_size);
        let mut r = HashingReader::new(entry);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let content = r.finish();
        assert_eq!(content.len, raw_size);
        assert_eq!(content.sha256, sha256_file(raw), "disk.raw content differs");
    }
    assert!(entries.next().is_none(), "more than one entry");
}

/// GNU tar lists and extracts the archive to the same bytes.
fn check_gce_with_gnu_tar(raw: &Path, gz: &Path, scratch: &Path) {
    let raw_size = fs::metadata(raw).unwrap().len();
    let list = run("tar", &["-tzvf", s(gz)]);
    assert!(list.status.success(), "{list:?}");
    let list = String::from_utf8(list.stdout).unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 1, "{list}");
    let fields: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(fields[0], "-rw-r--r--", "{list}");
    assert_eq!(fields[1], "root/root", "{list}");
    assert_eq!(fields[2], raw_size.to_string(), "{list}");
    assert_eq!(fields.last(), Some(&"disk.raw"), "{list}");

    let out = scratch.join("extracted");
    fs::create_dir_all(&out).unwrap();
    let x = run("tar", &["-xzf", s(gz), "-C", s(&out)]);
    assert!(x.status.success(), "{x:?}");
    let extracted = out.join("disk.raw");
    assert_eq!(fs::metadata(&extracted).unwrap().len(), raw_size);
    assert_eq!(sha256_file(&extracted), sha256_file(raw));
}

fn assert_summary_matches_file(summary: &ConvertSummary) {
    assert_eq!(summary.size, fs::metadata(&summary.path).unwrap().len());
    assert_eq!(summary.sha256, sha256_file(&summary.path));
}

#[test]
fn formats_names_round_trip() {
    for f in OutputFormat::ALL {
        assert_eq!(f.to_string().parse::<OutputFormat>().unwrap(), f);
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, format!("\"{f}\""));
        assert_eq!(serde_json::from_str::<OutputFormat>(&json).unwrap(), f);
    }
    assert_eq!(OutputFormat::Gce.file_name(), "disk.tar.gz");
    assert_eq!(OutputFormat::Vhd.file_name(), "disk.vhd");
    assert!("VHD".parse::<OutputFormat>().is_err());
    assert!("vmdk".parse::<OutputFormat>().is_err());
    assert_eq!("pxe".parse::<OutputFormat>().unwrap(), OutputFormat::Pxe);
    assert!(!OutputFormat::Pxe.is_disk());
    assert!(OutputFormat::DISKS.iter().all(|f| f.is_disk()));
}

#[test]
fn formats_qcow2_is_clean_identical_and_small() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let writes = sample_writes();
    make_image(&raw, SAMPLE_SIZE, &writes);
    let dest = dir.path().join("disk.qcow2");
    let summary = convert(&raw, OutputFormat::Qcow2, &dest, &opts()).unwrap();

    check_qcow2(&raw, &dest, SAMPLE_SIZE);
    assert_summary_matches_file(&summary);
    let data = expected_data_bytes(SAMPLE_SIZE, &writes);
    assert_eq!(summary.data_bytes, data);
    assert_eq!(summary.virtual_size, SAMPLE_SIZE);
    // Data rounded up to clusters plus a handful of metadata clusters, nothing for the zeros.
    let data_clusters = data.div_ceil(BLOCK) + 1;
    assert!(
        summary.size <= (data_clusters + 6) * BLOCK,
        "{} bytes for {data} data bytes",
        summary.size
    );
}

#[test]
fn formats_vhd_is_identical_mib_aligned_and_host_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    make_image(&raw, SAMPLE_SIZE, &sample_writes());
    let dest = dir.path().join("disk.vhd");
    let summary = convert(&raw, OutputFormat::Vhd, &dest, &opts()).unwrap();

    let disk_size = summary.virtual_size;
    assert_eq!(disk_size % MIB, 0);
    // Small disks use the 17-sectors-per-track geometries, whose CHS-exact sizes are sparse:
    // 64 MiB rounds up to 155 MiB (1-2 GiB disks pad by at most 63 MiB).
    assert_eq!(disk_size, 155 * MIB);
    assert_eq!(summary.size, disk_size + 512);
    check_vhd(&raw, &dest, disk_size);
    assert_summary_matches_file(&summary);

    let footer = &fs::read(&dest).unwrap()[disk_size as usize..];
    assert_eq!(&footer[..8], b"conectix");
    assert_eq!(&footer[28..32], b"keel");
    assert_eq!(u32::from_be_bytes(footer[60..64].try_into().unwrap()), 2);
    let cylinders = u64::from(u16::from_be_bytes([footer[56], footer[57]]));
    let chs = cylinders * u64::from(footer[58]) * u64::from(footer[59]);
    assert_eq!(
        chs * 512,
        disk_size,
        "geometry does not describe the whole disk"
    );
    // The zeros were seeked over, as long as the host filesystem keeps holes at all (the
    // sparse input tells).
    let raw_blocks = fs::metadata(&raw).unwrap().blocks() * 512;
    if raw_blocks < SAMPLE_SIZE / 4 {
        let vhd_blocks = fs::metadata(&dest).unwrap().blocks() * 512;
        assert!(vhd_blocks < 8 * MIB, "VHD occupies {vhd_blocks} bytes");
    }
}

#[test]
fn formats_gce_archive_holds_exactly_disk_raw() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let writes = sample_writes();
    make_image(&raw, SAMPLE_SIZE, &writes);
    let dest = dir.path().join("disk.tar.gz");
    let summary = convert(&raw, OutputFormat::Gce, &dest, &opts()).unwrap();

    assert_summary_matches_file(&summary);
    assert_eq!(
        summary.data_bytes,
        expected_data_bytes(SAMPLE_SIZE, &writes)
    );
    check_gce_archive(&raw, &dest);
    check_gce_with_gnu_tar(&raw, &dest, dir.path());
    let gz = fs::read(&dest).unwrap();
    // gzip header: no timestamp, OS fixed to Unix.
    assert_eq!(&gz[4..8], &[0; 4]);
    assert_eq!(gz[9], 3);
}

/// For a file whose data regions GNU tar and we map identically (64 KiB-aligned runs), our
/// archive is byte for byte what `tar --format=oldgnu -S` writes, sparse map extension blocks
/// included.
#[test]
fn formats_gce_tar_matches_gnu_tar_oldgnu_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let raw = src.join("disk.raw");
    let size = 4 * MIB;
    let mut writes: Vec<(u64, Vec<u8>)> = (0..20u64)
        .map(|i| (i * 3 * BLOCK, noise(((1 + i % 2) * BLOCK) as usize, 10 + i)))
        .collect();
    writes.push((size - BLOCK, noise(BLOCK as usize, 99)));
    make_image(&raw, size, &writes);
    fs::set_permissions(&raw, Permissions::from_mode(0o644)).unwrap();

    let dest = dir.path().join("disk.tar.gz");
    convert(&raw, OutputFormat::Gce, &dest, &opts()).unwrap();
    let mut ours = Vec::new();
    GzDecoder::new(File::open(&dest).unwrap())
        .read_to_end(&mut ours)
        .unwrap();

    let gnu_path = dir.path().join("gnu.tar");
    let mtime = format!("--mtime=@{}", opts().source_date_epoch);
    let gnu = run(
        "tar",
        &[
            "--format=oldgnu",
            "--sparse",
            "--create",
            "--file",
            s(&gnu_path),
            &mtime,
            "--owner=root:0",
            "--group=root:0",
            "-C",
            s(&src),
            "disk.raw",
        ],
    );
    assert!(gnu.status.success(), "{gnu:?}");
    let gnu = fs::read(&gnu_path).unwrap();
    let first_difference = ours.iter().zip(&gnu).position(|(a, b)| a != b);
    assert_eq!(
        (first_difference, ours.len()),
        (None, gnu.len()),
        "our archive differs from GNU tar's"
    );
    check_gce_archive(&raw, &dest);
}

#[test]
fn formats_raw_copy_is_identical_and_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    make_image(&raw, SAMPLE_SIZE, &sample_writes());
    let dest = dir.path().join("out").join("disk.raw");
    fs::create_dir(dest.parent().unwrap()).unwrap();
    let summary = convert(&raw, OutputFormat::Raw, &dest, &opts()).unwrap();
    assert_summary_matches_file(&summary);
    assert_eq!(summary.size, SAMPLE_SIZE);
    assert_eq!(summary.sha256, sha256_file(&raw));
}

/// Output is a function of the bytes and options only: converting twice, or converting a copy
/// of the image that the host stores without holes, gives identical files.
#[test]
fn formats_output_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let sparse = dir.path().join("sparse.raw");
    make_image(&sparse, SAMPLE_SIZE, &sample_writes());
    let dense = dir.path().join("dense.raw");
    let mut bytes = Vec::new();
    File::open(&sparse)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    fs::write(&dense, &bytes).unwrap();

    for format in OutputFormat::DISKS {
        let name = format.file_name();
        let a = convert(
            &sparse,
            format,
            &dir.path().join(format!("a-{name}")),
            &opts(),
        )
        .unwrap();
        let b = convert(
            &sparse,
            format,
            &dir.path().join(format!("b-{name}")),
            &opts(),
        )
        .unwrap();
        let c = convert(
            &dense,
            format,
            &dir.path().join(format!("c-{name}")),
            &opts(),
        )
        .unwrap();
        let a_bytes = fs::read(&a.path).unwrap();
        assert_eq!(a_bytes, fs::read(&b.path).unwrap(), "{format}: run to run");
        assert_eq!(
            a_bytes,
            fs::read(&c.path).unwrap(),
            "{format}: sparse vs dense"
        );
        assert_eq!((a.sha256, a.size), (b.sha256, b.size));
    }

    // The options are inputs too: another seed gives another VHD unique id.
    let other = ConvertOptions {
        unique_id_seed: [0xAB; 16],
        ..opts()
    };
    let x = convert(
        &sparse,
        OutputFormat::Vhd,
        &dir.path().join("x.vhd"),
        &opts(),
    )
    .unwrap();
    let y = convert(
        &sparse,
        OutputFormat::Vhd,
        &dir.path().join("y.vhd"),
        &other,
    )
    .unwrap();
    assert_ne!(x.sha256, y.sha256);
}

/// Sizes that are not whole sectors: qcow2 rounds the virtual size up to a sector as qemu
/// does, VHD pads, GCE keeps the exact size.
#[test]
fn formats_unaligned_image_size() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let size = 3 * MIB + 100;
    make_image(
        &raw,
        size,
        &[(size - 300, noise(300, 7)), (MIB, noise(10, 8))],
    );

    let qcow2 = dir.path().join("disk.qcow2");
    let summary = convert(&raw, OutputFormat::Qcow2, &qcow2, &opts()).unwrap();
    assert_eq!(summary.virtual_size, 3 * MIB + 512);
    let check = qemu_img(&["check", "-f", "qcow2", s(&qcow2)]);
    assert!(check.contains("No errors were found"), "{check}");
    let cmp = qemu_img(&["compare", "-f", "raw", "-F", "qcow2", s(&raw), s(&qcow2)]);
    assert!(cmp.contains("Images are identical"), "{cmp}");

    let vhd = dir.path().join("disk.vhd");
    let summary = convert(&raw, OutputFormat::Vhd, &vhd, &opts()).unwrap();
    check_vhd(&raw, &vhd, summary.virtual_size);

    let gz = dir.path().join("disk.tar.gz");
    convert(&raw, OutputFormat::Gce, &gz, &opts()).unwrap();
    check_gce_archive(&raw, &gz);
    check_gce_with_gnu_tar(&raw, &gz, dir.path());
}

#[test]
fn formats_failed_conversion_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();

    let missing = dir.path().join("missing.raw");
    let err = convert(&missing, OutputFormat::Qcow2, &out.join("a"), &opts()).unwrap_err();
    assert!(
        matches!(&err, FormatError::Io { path, .. } if path == &missing),
        "{err}"
    );

    // A directory opens but fails on read, after the temporary file exists.
    for format in OutputFormat::DISKS {
        let dest = out.join(format.file_name());
        let err = convert(dir.path(), format, &dest, &opts()).unwrap_err();
        assert!(err.to_string().contains(s(dir.path())), "{err}");
    }
    // The network-boot directory is no disk: nothing converts one into it.
    let err = convert(dir.path(), OutputFormat::Pxe, &out.join("pxe"), &opts()).unwrap_err();
    assert!(matches!(err, FormatError::NotADisk { .. }), "{err}");
    let empty = dir.path().join("empty.raw");
    File::create(&empty).unwrap();
    let err = convert(&empty, OutputFormat::Vhd, &out.join("e"), &opts()).unwrap_err();
    assert!(matches!(err, FormatError::EmptyImage { .. }), "{err}");

    let left: Vec<_> = fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A realistically sized image: 1 GiB, mostly holes, a few MiB of data. Converting all
/// formats must stay quick because only data is read, hashed and written.
#[test]
fn formats_real_size_sparse_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let size = 1024 * MIB;
    let writes = vec![
        (0, noise(4 * MIB as usize, 20)),
        (600 * MIB + 12_345, noise(2 * MIB as usize, 21)),
        (size - 100 * 1024, noise(100 * 1024, 22)),
    ];
    make_image(&raw, size, &writes);
    let data = expected_data_bytes(size, &writes);

    let qcow2 = dir.path().join("disk.qcow2");
    let summary = convert(&raw, OutputFormat::Qcow2, &qcow2, &opts()).unwrap();
    assert_eq!(summary.data_bytes, data);
    assert!(summary.size < data + 16 * BLOCK);
    check_qcow2(&raw, &qcow2, size);

    let vhd = dir.path().join("disk.vhd");
    let summary = convert(&raw, OutputFormat::Vhd, &vhd, &opts()).unwrap();
    check_vhd(&raw, &vhd, summary.virtual_size);

    let gz = dir.path().join("disk.tar.gz");
    let summary = convert(&raw, OutputFormat::Gce, &gz, &opts()).unwrap();
    assert!(summary.size < data + MIB);
    check_gce_archive(&raw, &gz);
}

/// An image holding secrets converts to owner-only files; others to shareable ones.
#[test]
fn private_images_convert_to_owner_only_files() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    make_image(&raw, 4 * MIB, &[(0, noise(BLOCK as usize, 1))]);
    for (private, mode) in [(true, 0o600), (false, 0o644)] {
        for format in [OutputFormat::Qcow2, OutputFormat::Vhd, OutputFormat::Gce] {
            let dest = dir.path().join(format!("{private}-{}", format.file_name()));
            convert(&raw, format, &dest, &ConvertOptions { private, ..opts() }).unwrap();
            let found = fs::metadata(&dest).unwrap().mode() & 0o777;
            assert_eq!(found, mode, "{}", dest.display());
        }
    }
}
