//! The var disk's decisions on made-up tables, and its new table checked by sgdisk.

use std::os::unix::fs::FileExt;
use std::path::Path;

use keel_contract::gpt::{Gpt, GptPartition};
use keel_contract::layout::PartitionRole;
use keel_contract::profile::{LoadedProfile, VarDisk};

use super::{Plan, plan};
use crate::install::disks::DiskInfo;

const SECTORS: u64 = 8 << 21; // 8 GiB

fn var(text: &str) -> VarDisk {
    LoadedProfile::from_text(Path::new("p.toml"), &format!("[node.var]\n{text}\n"))
        .unwrap()
        .profile
        .node
        .var
        .unwrap()
}

fn disk(name: &str, serial: &str) -> DiskInfo {
    crate::install::tests::disk(name, serial, (SECTORS * 512) >> 30)
}

fn guid(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

fn created(p: Plan) -> Gpt {
    match p {
        Plan::Create(t) => t,
        other => panic!("expected a new table, got {other:?}"),
    }
}

#[test]
fn a_blank_disk_gets_data_and_a_disk_holding_data_alone_is_used_as_it_is() {
    let table = created(plan("d", None, true, false, SECTORS, guid(1)));
    assert_eq!(table.partitions.len(), 1);
    let (number, data) = table.find(PartitionRole::Data.label()).unwrap();
    assert_eq!(number, 1);
    assert_eq!(data.first_lba, 2048, "aligned to 1 MiB");
    assert_eq!((data.last_lba + 1) % 2048, 0, "ends on a MiB");
    assert!(data.last_lba <= table.last_usable);
    assert_eq!(
        plan("d", Some(&table), false, false, SECTORS, guid(2)),
        Plan::Present
    );
    assert_eq!(
        plan("d", Some(&table), false, true, SECTORS, guid(2)),
        Plan::Present
    );
}

#[test]
fn anything_else_is_refused_unless_wiped() {
    let mut other = Gpt::new(guid(3), SECTORS).unwrap();
    other.partitions.push(GptPartition {
        type_guid: guid(4),
        guid: guid(5),
        first_lba: 2048,
        last_lba: 4095,
        attributes: 0,
        name: "windows".into(),
    });
    let Plan::Refuse(why) = plan("d", Some(&other), false, false, SECTORS, guid(6)) else {
        panic!("a foreign table must be refused");
    };
    assert!(
        why.contains("(windows)") && why.contains("wipe = true"),
        "{why}"
    );
    created(plan("d", Some(&other), false, true, SECTORS, guid(6)));
    // A DATA partition beside another one is not "Keel's DATA alone".
    let mut mixed = created(plan("d", None, true, false, SECTORS, guid(7)));
    mixed.partitions.push(other.partitions[0].clone());
    assert!(matches!(
        plan("d", Some(&mixed), false, false, SECTORS, guid(8)),
        Plan::Refuse(_)
    ));
    let Plan::Refuse(why) = plan("d", None, false, false, SECTORS, guid(9)) else {
        panic!("data without a table must be refused");
    };
    assert!(why.contains("holds data"), "{why}");
    created(plan("d", None, false, true, SECTORS, guid(9)));
    let Plan::Refuse(why) = plan("d", None, true, false, 4096, guid(10)) else {
        panic!("a 2 MiB disk has no room for /var");
    };
    assert!(why.contains("too small"), "{why}");
}

#[test]
fn exactly_one_unused_disk_must_match() {
    let choose = |var: &VarDisk, disks: &[DiskInfo]| {
        crate::install::plan::select(&var.disk, disks, None)
            .map(|d| d.disk.name.clone())
            .map_err(|r| r.to_string())
    };
    let disks = [
        disk("nvme0n1", "V1"),
        disk("nvme1n1", "V2"),
        disk("vda", "V1-B"),
    ];
    assert_eq!(
        choose(&var("disk = { serial = \"V2\" }"), &disks).unwrap(),
        "nvme1n1"
    );
    let none = choose(&var("disk = { serial = \"V9\" }"), &disks).unwrap_err();
    assert!(
        none.contains("matches no disk") && none.contains("V1-B"),
        "{none}"
    );
    let several = choose(&var("disk = { model = \"QEMU NVMe Ctrl\" }"), &disks).unwrap_err();
    assert!(several.contains("matches 3 disks"), "{several}");
    let mut busy = disks.clone();
    busy[1].in_use = Some("nvme1n1p1 is mounted at /mnt".into());
    let err = choose(&var("disk = { serial = \"V2\" }"), &busy).unwrap_err();
    assert!(err.contains("in use"), "{err}");
}

/// The new table, written as `write_table` writes it, passes sgdisk's check.
#[test]
fn the_new_table_is_one_sgdisk_accepts() {
    let table = created(plan("d", None, true, false, SECTORS, guid(11)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var.img");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(SECTORS * 512).unwrap();
    let (at, backup) = table.backup_region().unwrap();
    file.write_all_at(&backup, at).unwrap();
    file.write_all_at(&table.primary_region().unwrap(), 0)
        .unwrap();
    let out = std::process::Command::new("sgdisk")
        .arg("-p")
        .arg("-v")
        .arg(&path)
        .output()
        .expect("sgdisk (gdisk) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No problems found"), "{text}");
    assert!(text.contains(PartitionRole::Data.label()), "{text}");
}
