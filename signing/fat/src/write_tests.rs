//! The FAT32 writer against fatfs, fsck.vfat and mtools as readers.

use super::*;
use crate::{list_fat_dir, read_fat_file};
use std::io::Cursor;

#[test]
fn civil_dates() {
    assert_eq!(civil(0), (1970, 1, 1));
    assert_eq!(civil(19_723), (2024, 1, 1));
    let t = fat_time(1_700_000_000); // 2023-11-14T22:13:20Z
    assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
    assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
    assert_eq!(fat_time(0).date.year, 1980);
}

#[test]
fn fat32_round_trip_and_reproducible() {
    let entries = vec![
        FatEntry::Dir("/loader".into()),
        FatEntry::Dir("/loader/entries".into()),
        FatEntry::File(
            "/loader/entries/keel-a+3.conf".into(),
            b"title x\n".to_vec(),
        ),
    ];
    let spec = FatSpec {
        label: *b"ESP        ",
        volume_id: 0x1234_5678,
        source_date_epoch: 1_700_000_000,
        entries: &entries,
    };
    let mut a = Cursor::new(vec![0u8; 64 << 20]);
    write_fat(&mut a, &spec).unwrap();
    let mut b = Cursor::new(vec![0u8; 64 << 20]);
    write_fat(&mut b, &spec).unwrap();
    assert!(a.get_ref() == b.get_ref(), "same input, same bytes");
    a.set_position(0);
    assert_eq!(
        read_fat_file(&mut a, "/loader/entries/keel-a+3.conf").unwrap(),
        b"title x\n"
    );
    a.set_position(0);
    assert_eq!(
        list_fat_dir(&mut a, "/loader/entries").unwrap(),
        vec!["keel-a+3.conf"]
    );
}

fn sample() -> Vec<FatEntry> {
    vec![
        FatEntry::Dir("/EFI".into()),
        FatEntry::Dir("/EFI/BOOT".into()),
        FatEntry::File("/EFI/BOOT/BOOTX64.EFI".into(), vec![7u8; 5000]),
        FatEntry::Dir("/loader".into()),
        FatEntry::File("/loader/loader.conf".into(), b"default keel-*\n".to_vec()),
        FatEntry::Dir("/loader/entries".into()),
        FatEntry::File(
            "/loader/entries/keel-a+3.conf".into(),
            b"title a\n".to_vec(),
        ),
        FatEntry::File(
            "/loader/entries/keel-a+2-1.conf".into(),
            b"title b\n".to_vec(),
        ),
        FatEntry::File("/empty".into(), Vec::new()),
        FatEntry::File(
            "/a-rather-long-file-name-with-several-lfn-parts.minisig".into(),
            b"sig".to_vec(),
        ),
    ]
}

fn image(size: u64) -> Vec<u8> {
    let mut img = Cursor::new(vec![0u8; size as usize]);
    write(
        &mut img,
        size,
        b"ESP        ",
        0x1234,
        1_700_000_000,
        &sample(),
    )
    .unwrap();
    img.into_inner()
}

#[test]
fn geometry_keeps_fat32_cluster_counts() {
    for mib in [64u64, 128, 256, 1024] {
        let g = Geometry::new(mib << 20).unwrap();
        assert!(g.clusters >= MIN_CLUSTERS, "{mib} MiB");
    }
    assert!(Geometry::new(16 << 20).is_err());
}

#[test]
fn fatfs_reads_back_every_file_and_the_output_is_reproducible() {
    let img = image(64 << 20);
    assert_eq!(img, image(64 << 20));
    for entry in sample() {
        if let FatEntry::File(path, bytes) = entry {
            let got = read_fat_file(Cursor::new(img.clone()), &path).unwrap();
            assert_eq!(got, bytes, "{path}");
        }
    }
    let mut names = list_fat_dir(Cursor::new(img.clone()), "/loader/entries").unwrap();
    names.sort();
    assert_eq!(names, ["keel-a+2-1.conf", "keel-a+3.conf"]);
}

#[test]
fn fsck_vfat_finds_no_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("esp.img");
    std::fs::write(&path, image(64 << 20)).unwrap();
    let out = std::process::Command::new("fsck.vfat")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("fsck.vfat (dosfstools) is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("Auto-renaming") && !text.contains("Expected"),
        "{text}"
    );
    // mtools as a second reader: long names and contents.
    let out = std::process::Command::new("mtype")
        .arg("-i")
        .arg(&path)
        .arg("::/loader/entries/keel-a+3.conf")
        .output()
        .expect("mtools is installed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "title a\n");
}

#[test]
fn full_and_bad_paths_are_errors() {
    let mut img = Cursor::new(vec![0u8; 64 << 20]);
    let big = vec![FatEntry::File("/big".into(), vec![1u8; 70 << 20])];
    assert!(matches!(
        write(&mut img, 64 << 20, b"X          ", 1, 0, &big),
        Err(FatWriteError::Full { .. })
    ));
    let orphan = vec![FatEntry::File("/no/such/dir".into(), vec![])];
    assert!(matches!(
        write(&mut img, 64 << 20, b"X          ", 1, 0, &orphan),
        Err(FatWriteError::BadPath { .. })
    ));
}
