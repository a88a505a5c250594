//! Issue 10's faults, reproduced on one node that walks through them in sequence (one disk,
//! two image builds): an upload cut inside the payload, an upgrade during a trial boot, a
//! blessed slot that turns bad, a damaged DATA superblock, a DATA whose clean superblock
//! hides a broken group descriptor, and malformed secrets over fw_cfg.
//! Each must end on a good version, or in a degraded state that says why with the API up;
//! never in a reboot loop, never with /var wiped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_builder::node::{ClientCredentials, NodeClient, credentials_from_secrets};
use keel_builder::progress::Reporter;
use keel_contract::layout::test_hooks;
use keel_vm_tests::{
    CutReader, Machine, build, cluster_secrets, derived_profile, flip_byte, free_port,
    partition_window, slot_file_block_offset, test_dir, test_key, vm_disk, write_file,
};

const BOOT: Duration = Duration::from_secs(300);
/// The images' boot deadline: short, so that the test can show a degraded node outliving it.
const DEADLINE_SECS: u64 = 40;

struct Node {
    dir: PathBuf,
    disk: PathBuf,
    port: u16,
    creds: ClientCredentials,
    v1: PathBuf,
    v2: PathBuf,
}

impl Node {
    fn start(&self, name: &str, fw_cfg: &[(&str, &Path)]) -> Machine {
        Machine::start(name, &self.disk, &self.dir.join(name), |c| {
            c.forwards.push((self.port, keel_contract::api::PORT));
            for (key, path) in fw_cfg {
                c.fw_cfg.push(((*key).to_owned(), path.to_path_buf()));
            }
        })
    }

    fn client(&self) -> NodeClient {
        NodeClient::new(&format!("127.0.0.1:{}", self.port), &self.creds).unwrap()
    }

    /// Uploads `bundle`, cut after `cut` bytes of the stream when given.
    fn upgrade(
        &self,
        bundle: &Path,
        force: bool,
        reboot: bool,
        cut: Option<u64>,
    ) -> Result<keel_contract::api::UpgradeReport, String> {
        let update = keel_builder::node::open_update_file(bundle).unwrap();
        let mut reader = CutReader {
            inner: update.reader,
            left: cut.unwrap_or(u64::MAX),
        };
        self.client()
            .upgrade(&mut reader, update.len, force, reboot, &Reporter::quiet())
            .map_err(|e| e.to_string())
    }

    /// Powers the node off through its API and waits for QEMU to exit.
    fn power_off(&self, mut vm: Machine) {
        self.client().shutdown().unwrap();
        assert!(
            vm.vm.wait_timeout(Duration::from_secs(90)).is_some(),
            "{}: did not power off",
            vm.name
        );
    }
}

fn node() -> Node {
    let dir = test_dir("faults");
    let (secrets, _) = cluster_secrets(&dir.join("secrets"));
    let (key, _) = test_key(&dir.join("keys"));
    let profile = derived_profile(
        &dir.join("profile"),
        "worker",
        &format!(
            "[image]\nsecrets = \"{}\"\n\n[node]\nboot_deadline_secs = {DEADLINE_SECS}\n\n[node.cluster]\nendpoint = \"https://10.0.2.2:6443\"\n",
            secrets.display()
        ),
    );
    let (v1, v2) = (dir.join("v1"), dir.join("v2"));
    build(&profile, &v1, &key, Some("1.0.0"), 1_700_000_000);
    build(&profile, &v2, &key, Some("1.1.0"), 1_700_000_000);
    let disk = vm_disk(&v1, &dir, 6 << 30);
    Node {
        creds: credentials_from_secrets(&secrets).unwrap(),
        port: free_port(),
        dir,
        disk,
        v1,
        v2,
    }
}

#[test]
fn no_fault_traps_the_node_or_wipes_var() {
    let n = node();
    let mut vm = n.start("faults-v1", &[]);
    vm.expect("keel: ready: keel-worker 1.0.0 slot a, boot 1;", BOOT);
    n.upgrade(&n.v2.join("update"), false, true, None).unwrap();
    vm.expect("keel: ready: keel-worker 1.1.0 slot b, boot 2;", BOOT);

    let vm = cut_upload(&n, vm);
    let vm = trial_boot_refuses_upgrades(&n, vm);
    let vm = blessed_slot_turns_bad(&n, vm);
    let vm = damaged_data_superblock(&n, vm);
    let vm = malformed_secrets_over_fw_cfg(&n, vm);
    both_slots_bad(&n, vm);
}

/// The story of issue 10: an upload into slot a (here a forced reinstall of 1.1.0: other
/// bytes than the 1.0.0 slot a holds) cut at 60% of the stream, inside the payload. Slot a
/// must be invalid, a rollback to it refused, and a reboot must come back on 1.1.0.
fn cut_upload(n: &Node, mut vm: Machine) -> Machine {
    let len = keel_builder::node::open_update_file(&n.v2.join("update"))
        .unwrap()
        .len;
    let err = n
        .upgrade(&n.v2.join("update"), true, false, Some(len * 6 / 10))
        .unwrap_err();
    assert!(!err.is_empty());
    vm.expect_seen_or_next("upgrade: slot a invalidated", BOOT);
    // The node is done with the upload once it has answered (what was in flight is written).
    let answer = vm.expect("POST /v1/upgrade?force=1&reboot=0 -> ", BOOT);
    assert!(answer.contains("writing slot a"), "{answer}");
    let status = n.client().status().unwrap();
    let a = &status.slots[0];
    assert_eq!(
        (a.entry.as_deref(), a.version.as_deref()),
        (None, None),
        "{a:?}"
    );
    assert!(
        a.invalid.as_deref().unwrap_or("").contains("being written"),
        "{a:?}"
    );
    assert!(!a.healthy);
    let err = n.client().rollback().unwrap_err().to_string();
    assert!(
        err.contains("409") && err.contains("being written"),
        "{err}"
    );
    n.client().reboot().unwrap();
    let before = vm.expect("keel: ready: keel-worker 1.1.0 slot b, boot 3;", BOOT);
    assert!(
        before.contains("boot counted: keel-b.conf -> keel-b+2.conf"),
        "{before}"
    );
    assert!(
        before.contains("blessed keel-b+2.conf -> keel-b.conf"),
        "{before}"
    );
    assert!(before.contains("slot a: being written"), "{before}");
    vm
}

/// An upgrade while the running slot is on trial (stopped before its blessing by the test
/// hook) is refused with 503.
fn trial_boot_refuses_upgrades(n: &Node, vm: Machine) -> Machine {
    n.power_off(vm);
    let pause = write_file(&n.dir, "pause-bless", "bless");
    let mut vm = n.start("faults-trial", &[(test_hooks::FW_CFG_PAUSE_AT, &pause)]);
    vm.expect("test hook: paused at \"bless\"", BOOT);
    let status = n.client().status().unwrap();
    assert_eq!(status.slots[1].entry.as_deref(), Some("keel-b+2.conf"));
    let err = n
        .upgrade(&n.v1.join("update"), false, false, None)
        .unwrap_err();
    assert!(err.contains("503") && err.contains("on trial"), "{err}");
    vm.kill();
    // Reinstall 1.0.0 into slot a (forced: a downgrade), completely this time: slot b's
    // version 1.1.0 still sorts first, slot a is the fallback.
    let mut vm = n.start("faults-restore", &[]);
    let before = vm.expect("keel: ready: keel-worker 1.1.0 slot b, boot 5;", BOOT);
    // Killed with /var mounted: its journal is replayed by e2fsck before the mount.
    assert!(
        before.contains("its journal needs recovery: checking it with e2fsck"),
        "{before}"
    );
    n.upgrade(&n.v1.join("update"), true, false, None).unwrap();
    let status = n.client().status().unwrap();
    let a = &status.slots[0];
    assert_eq!(
        (
            a.version.as_deref(),
            a.entry.as_deref(),
            a.invalid.as_deref()
        ),
        (Some("1.0.0"), Some("keel-a+3.conf"), None)
    );
    vm
}

/// A blessed slot hit by a bad block in what stage 2 reads first: the node must come back
/// on the other slot within three failed boots, and say why.
fn blessed_slot_turns_bad(n: &Node, vm: Machine) -> Machine {
    n.power_off(vm);
    let init = std::fs::read(keel_vm_tests::init_binary()).unwrap();
    let at = slot_file_block_offset(&n.disk, "KEEL-B", &n.v2, &init)
        .expect("the init's first block in slot b");
    flip_byte(&n.disk, at);
    let mut vm = n.start("faults-bad-slot", &[]);
    let before = vm.expect("keel: ready: keel-worker 1.0.0 slot a, boot 6;", BOOT * 3);
    let restarts = before.matches("dm-verity device corrupted").count();
    assert!(
        (1..=3).contains(&restarts),
        "{restarts} restarts on the corrupted slot before falling back"
    );
    assert!(
        before.contains("boot counted: keel-b.conf -> keel-b+2.conf"),
        "{before}"
    );
    assert!(
        before.contains("rolled back from 1.1.0: it failed to boot"),
        "{before}"
    );
    let status = n.client().status().unwrap();
    assert_eq!(status.rolled_back_from.as_deref(), Some("1.1.0"));
    assert_eq!(status.quarantined, ["1.1.0"]);
    assert_eq!(status.slots[1].entry.as_deref(), Some("keel-b+0-2.conf"));
    vm
}

/// Zeroed magic in DATA's superblock: not formatted; the node comes up degraded with its
/// API, and stays up past its boot deadline; once repaired from a backup superblock (on the
/// host), /var is back with its history. The repaired boot also meets a broken checksum of
/// group descriptor 0 behind the now clean superblock: the superblock says no check is due,
/// the kernel refuses the mount, and e2fsck runs after all.
fn damaged_data_superblock(n: &Node, vm: Machine) -> Machine {
    n.power_off(vm);
    let (data, _) = partition_window(&n.disk, "DATA").expect("DATA");
    zero_magic(&n.disk, data + 1080);
    let started = Instant::now();
    let mut vm = n.start("faults-data", &[]);
    let before = vm.expect("DEGRADED: /var is unavailable", BOOT);
    assert!(!before.contains("formatting"), "{before}");
    let status = n.client().status().unwrap();
    let why = status.degraded.unwrap_or_default();
    assert!(why.contains("no ext4 superblock"), "{why}");
    assert_eq!(status.boot, 0);
    // Past the boot deadline: no reboot.
    let wait = Duration::from_secs(DEADLINE_SECS + 15).saturating_sub(started.elapsed());
    assert!(
        vm.try_expect("rebooting", wait).is_err(),
        "a degraded node rebooted"
    );
    assert!(n.client().status().unwrap().degraded.is_some());
    n.power_off(vm);
    repair_from_backup(&n.disk, data);
    break_group_descriptor_checksum(&n.disk, data);
    let mut vm = n.start("faults-data-repaired", &[]);
    let before = vm.expect("keel: ready: keel-worker 1.0.0 slot a, boot 7;", BOOT);
    let refused = before.lines().find(|l| l.contains("warning: mounting"));
    assert!(
        refused.is_some_and(
            |l| l.contains("Structure needs cleaning") && l.contains("checking it with e2fsck")
        ),
        "the kernel's refusal and the check after it: {before}"
    );
    assert!(!before.contains("mounted without e2fsck"), "{before}");
    vm
}

/// Flips the checksum of DATA's group descriptor 0 (4 KiB blocks, as `repair_from_backup`
/// assumes: the table is block 1, `bg_checksum` at 0x1E), leaving the superblock alone.
fn break_group_descriptor_checksum(disk: &Path, data: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let at = data + 4096 + 0x1E;
    let mut checksum = [0u8; 2];
    f.read_exact_at(&mut checksum, at).unwrap();
    f.write_all_at(&checksum.map(|b| !b), at).unwrap();
}

fn zero_magic(disk: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&[0, 0], at).unwrap();
}

/// What an operator does: e2fsck from a backup superblock (here on the host, on the disk
/// image at DATA's offset). When the journal holds data, e2fsck 1.47 replays it and then
/// fails to re-open the filesystem through the damaged primary superblock (exit 12); the
/// second run repairs it.
fn repair_from_backup(disk: &Path, data: u64) {
    let mut outputs = Vec::new();
    for _ in 0..2 {
        // /usr/sbin is not on every user's PATH.
        let e2fsck = ["/usr/sbin/e2fsck", "/sbin/e2fsck"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("e2fsck (e2fsprogs, see vm-tests/install-host-packages)");
        let out = std::process::Command::new(e2fsck)
            .args(["-fy", "-b", "32768", "-B", "4096"])
            .arg(format!("{}?offset={data}", disk.display()))
            .output()
            .expect("e2fsck (e2fsprogs)");
        if out.status.code().is_some_and(|c| c <= 1) {
            return;
        }
        outputs.push(out);
    }
    panic!("e2fsck could not repair DATA: {outputs:?}");
}

/// Secrets over fw_cfg that do not parse: refused, the good copy stays (the API, which
/// needs it, answers); the next boot without fw_cfg is normal.
fn malformed_secrets_over_fw_cfg(n: &Node, vm: Machine) -> Machine {
    n.power_off(vm);
    let bad = write_file(&n.dir, "bad-secrets.toml", "version = 1\n[kubernetes_ca\n");
    let mut vm = n.start("faults-secrets", &[("opt/keel/secrets", &bad)]);
    let before = vm.expect("keel: ready: keel-worker 1.0.0 slot a, boot 8;", BOOT);
    assert!(before.contains("were refused"), "{before}");
    let status = n.client().status().unwrap();
    assert!(
        status.warnings.iter().any(|w| w.contains("were refused")),
        "{:?}",
        status.warnings
    );
    n.power_off(vm);
    let mut vm = n.start("faults-secrets-after", &[]);
    vm.expect("keel: ready: keel-worker 1.0.0 slot a, boot 9;", BOOT);
    assert!(n.client().status().unwrap().warnings.is_empty());
    vm
}

/// Slot b failed above; now slot a's root turns bad too. Once every entry is out of tries the
/// node must not loop: dm-verity returns EIO instead of restarting, and the init stays up,
/// degraded, saying why.
fn both_slots_bad(n: &Node, vm: Machine) {
    n.power_off(vm);
    let init = std::fs::read(keel_vm_tests::init_binary()).unwrap();
    let at = slot_file_block_offset(&n.disk, "KEEL-A", &n.v1, &init)
        .expect("the init's first block in slot a");
    flip_byte(&n.disk, at);
    let mut vm = n.start("faults-both-bad", &[]);
    let before = vm.expect("DEGRADED: not rebooting", BOOT * 3);
    let restarts = before.matches("dm-verity device corrupted").count();
    assert!(restarts <= 3, "{restarts} restarts");
    assert!(before.contains("last resort"), "{before}");
    assert!(
        vm.try_expect("Restarting system", Duration::from_secs(30))
            .is_err(),
        "the node rebooted on its last resort"
    );
    assert!(vm.vm.is_running());
    vm.kill();
}
