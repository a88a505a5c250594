use super::*;

const MIB: u64 = 1 << 20;
const MIB_SECTORS: u64 = MIB / SECTOR;
const DISK_GUID: &str = "0d4c5b6a-7f00-4e4e-9a7a-3b8f6f0e9c11";

fn part(name: &str, type_guid: &str, guid: u128, first: u64, last: u64) -> GptPartition {
    GptPartition {
        type_guid: type_guid.parse().unwrap(),
        guid: format!("00000000-0000-4000-8000-{guid:012x}")
            .parse()
            .unwrap(),
        first_lba: first,
        last_lba: last,
        attributes: 0,
        name: name.into(),
    }
}

/// A table like the builder's: ESP, KEEL-A, KEEL-B, STATE back to back from 1 MiB, with
/// 1 MiB at the end for the backup table. Sizes in MiB.
fn image(esp: u64, slot: u64, state: u64) -> Gpt {
    let mut at = MIB_SECTORS;
    let mut parts = Vec::new();
    for (i, (name, ty, size)) in [
        ("ESP", type_guid::ESP, esp),
        ("KEEL-A", type_guid::ROOT_X86_64, slot),
        ("KEEL-B", type_guid::ROOT_X86_64, slot),
        ("STATE", type_guid::LINUX_DATA, state),
    ]
    .into_iter()
    .enumerate()
    {
        parts.push(part(
            name,
            ty,
            i as u128 + 1,
            at,
            at + size * MIB_SECTORS - 1,
        ));
        at += size * MIB_SECTORS;
    }
    let mut gpt = Gpt::new(DISK_GUID.parse().unwrap(), at + MIB_SECTORS).unwrap();
    gpt.partitions = parts;
    gpt
}

fn create(plan: DataPlan) -> (Gpt, u32, GptPartition) {
    match plan {
        DataPlan::Create {
            table,
            number,
            partition,
        } => (table, number, partition),
        other => panic!("expected Create, got {other:?}"),
    }
}

#[test]
fn data_fills_a_bigger_disk_after_state() {
    let old = image(256, 1024, 64);
    let disk = 20 * 1024 * MIB_SECTORS; // 20 GiB
    let (table, number, data) = create(plan_data_partition(&old, disk).unwrap());
    assert_eq!(number, 5);
    assert_eq!(table.total_sectors, disk);
    assert_eq!(table.last_usable, disk - 34);
    assert_eq!(&table.partitions[..4], &old.partitions[..]);
    assert_eq!(table.partitions[4], data);
    // STATE ends at 1 + 256 + 2048 + 64 MiB; DATA runs to the last MiB boundary before the
    // backup table, which is the disk's last MiB.
    assert_eq!(data.first_lba, 2369 * MIB_SECTORS);
    assert_eq!(data.last_lba, disk - MIB_SECTORS - 1);
    assert_eq!(data.name, "DATA");
    assert_eq!(
        data.type_guid.hyphenated().to_string().to_uppercase(),
        type_guid::VAR
    );
    assert_eq!(data.attributes, 0);
    assert_eq!(
        *data.guid.as_bytes(),
        derive_guid(table.disk_guid.as_bytes(), 5)
    );
    // What we will write parses back to the same table, and the backup lands at the end.
    let primary = table.primary_region().unwrap();
    assert_eq!(Gpt::parse_primary(&primary, disk).unwrap(), table);
    let (offset, backup) = table.backup_region().unwrap();
    assert_eq!(offset + backup.len() as u64, disk * SECTOR);
}

#[test]
fn boundaries_are_aligned_to_a_mebibyte() {
    let mut old = image(1, 4, 2);
    // STATE ending off a MiB boundary pushes DATA's start up to the next one.
    old.partitions[3].last_lba -= 100;
    // A disk that is not a whole number of MiB: the end rounds down.
    let disk = 100 * MIB_SECTORS + 777;
    let (table, _, data) = create(plan_data_partition(&old, disk).unwrap());
    assert_eq!(data.first_lba, 12 * MIB_SECTORS);
    assert_eq!(data.last_lba, 100 * MIB_SECTORS - 1);
    assert!(data.last_lba <= table.last_usable);
    assert_eq!(data.first_lba % MIB_SECTORS, 0);
    assert_eq!((data.last_lba + 1) % MIB_SECTORS, 0);
}

#[test]
fn existing_data_is_left_alone() {
    let old = image(1, 4, 2);
    let (grown, _, data) = create(plan_data_partition(&old, 64 * MIB_SECTORS).unwrap());
    assert_eq!(
        plan_data_partition(&grown, 64 * MIB_SECTORS).unwrap(),
        DataPlan::Present {
            number: 5,
            partition: data.clone()
        }
    );
    // Even on a disk that grew again: DATA is not resized behind the filesystem's back.
    assert_eq!(
        plan_data_partition(&grown, 128 * MIB_SECTORS).unwrap(),
        DataPlan::Present {
            number: 5,
            partition: data
        }
    );
}

#[test]
fn unexpected_tables_are_refused() {
    let mut three = image(1, 4, 2);
    three.partitions.pop();
    assert_eq!(
        plan_data_partition(&three, 64 * MIB_SECTORS),
        Err(PlanError::UnexpectedCount { count: 3, want: 5 })
    );
    let mut data_first = image(1, 4, 2);
    data_first.partitions[0].name = "DATA".into();
    assert_eq!(
        plan_data_partition(&data_first, 64 * MIB_SECTORS),
        Err(PlanError::WrongNumber { found: 1, want: 5 })
    );
}

#[test]
fn a_disk_the_size_of_the_image_has_no_room() {
    let old = image(1, 4, 2);
    let err = plan_data_partition(&old, old.total_sectors).unwrap_err();
    assert_eq!(
        err,
        PlanError::NoSpace {
            start: 12 * MIB_SECTORS,
            end: 12 * MIB_SECTORS
        }
    );
    assert!(err.to_string().contains("no room for DATA"));
}

#[test]
fn a_smaller_disk_is_an_error() {
    let old = image(1, 4, 2);
    assert!(matches!(
        plan_data_partition(&old, 10 * MIB_SECTORS),
        Err(PlanError::Gpt(GptError::OutOfRange { .. }))
    ));
}

#[test]
fn derived_guids_are_stable_v8_and_distinct() {
    let disk: [u8; 16] = *image(1, 4, 2).disk_guid.as_bytes();
    let g = derive_guid(&disk, 5);
    assert_eq!(g, derive_guid(&disk, 5));
    assert_eq!(g[6] >> 4, 8, "version 8");
    assert_eq!(g[8] >> 6, 0b10, "RFC variant");
    assert_ne!(g, derive_guid(&disk, 6));
    let mut other = disk;
    other[15] ^= 1;
    assert_ne!(g, derive_guid(&other, 5));
    // Pinned: changing the derivation would give existing nodes' DATA a different GUID than
    // a fresh install of the same image.
    assert_eq!(hyphenated(&g), GOLDEN_GUID);
}

const GOLDEN_GUID: &str = "6c856129-d574-8fa7-a28d-99446f079741";

#[test]
fn holes_in_the_entry_array_are_found() {
    let table = image(1, 4, 2);
    let mut primary = table.primary_region().unwrap();
    check_no_holes(&primary).unwrap();
    // Empty entry 2 (bytes of entry i start at 1024 + 128 * i).
    primary[1024 + 128..1024 + 256].fill(0);
    assert_eq!(
        check_no_holes(&primary),
        Err(PlanError::Holes { empty: 2, used: 3 })
    );
    assert!(check_no_holes(&primary[..1000]).is_err());
}

#[test]
fn blkpg_structs_have_the_kernel_layout() {
    assert_eq!(std::mem::size_of::<BlkpgPartition>(), 152);
    assert_eq!(std::mem::size_of::<BlkpgIoctlArg>(), 24);
    let p = blkpg_partition(5, 13 * MIB, 50 * MIB, "DATA").unwrap();
    assert_eq!((p.start, p.length, p.pno), (13 << 20, 50 << 20, 5));
    assert_eq!(&p.volname[..5], b"DATA\0");
    assert!(blkpg_partition(5, u64::MAX, 1, "DATA").is_err());
}

#[test]
fn ensure_data_table_on_an_image_file() {
    let dir = std::env::temp_dir().join(format!("keel-data-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.img");
    let old = image(1, 4, 2);
    let file = File::create(&path).unwrap();
    file.set_len(old.total_sectors * SECTOR).unwrap();
    file.write_all_at(&old.primary_region().unwrap(), 0)
        .unwrap();
    let (offset, backup) = old.backup_region().unwrap();
    file.write_all_at(&backup, offset).unwrap();
    file.set_len(64 * MIB).unwrap();
    drop(file);

    assert!(!data_in_table(&path).unwrap());
    let made = ensure_data_table(&path).unwrap();
    assert!(made.created);
    assert!(data_in_table(&path).unwrap());
    assert_eq!(made.number, 5);
    assert_eq!(made.partition.last_lba, 63 * MIB_SECTORS - 1);
    let bytes = std::fs::read(&path).unwrap();
    let disk = 64 * MIB_SECTORS;
    let now = Gpt::parse_primary(&bytes[..34 * 512], disk).unwrap();
    assert_eq!(now.find("DATA").unwrap().1, &made.partition);
    // The backup header is in the last sector and points back at LBA 1.
    let last = &bytes[bytes.len() - 512..];
    assert_eq!(&last[..8], b"EFI PART");
    assert_eq!(
        u64::from_le_bytes(last[24..32].try_into().unwrap()),
        disk - 1
    );
    assert_eq!(u64::from_le_bytes(last[32..40].try_into().unwrap()), 1);

    let again = ensure_data_table(&path).unwrap();
    assert!(!again.created);
    assert_eq!(again.partition, made.partition);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // Garbage is reported with the path and the reason.
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let e = ensure_data_table(&path).unwrap_err().to_string();
    assert!(
        e.contains("disk.img") && e.contains("no GPT signature"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
