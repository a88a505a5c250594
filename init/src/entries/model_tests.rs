//! Model-based tests of the boot-entry state machine: every transition from a set of
//! realistic states, with a power cut after every step of `apply`, on an in-memory ESP and
//! STATE. After each cut the state read back must be the model's prediction for the steps
//! done, and must keep the invariants; the next boot's `recover` must keep them too, and an
//! upgrade started from there must still complete.

use std::collections::BTreeMap;
use std::io;

use keel_contract::layout::{BootEntry, EntryName, Slot};

use super::*;

/// An ESP and STATE in memory. `budget`: how many more mutations succeed before the power
/// is cut (every later one fails, as nothing is written after a cut).
#[derive(Debug, Clone, Default)]
struct Mem {
    esp: BTreeMap<String, Vec<u8>>,
    state: BTreeMap<String, Vec<u8>>,
    budget: Option<usize>,
}

impl Mem {
    fn spend(&mut self) -> io::Result<()> {
        match &mut self.budget {
            Some(0) => Err(io::Error::other("power cut")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Storage for Mem {
    fn list_esp(&self, dir: &str) -> io::Result<Vec<String>> {
        let prefix = format!("{dir}/");
        Ok(self
            .esp
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_owned)
            .collect())
    }
    fn esp_exists(&self, path: &str) -> bool {
        self.esp.contains_key(path)
    }
    fn read_esp(&self, path: &str) -> io::Result<Vec<u8>> {
        self.esp
            .get(path)
            .cloned()
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }
    fn read_state(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.state.get(name).cloned())
    }
    fn write_esp(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.spend()?;
        self.esp.insert(path.to_owned(), bytes.to_vec());
        Ok(())
    }
    fn rename_esp(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.spend()?;
        let bytes = self
            .esp
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_owned()))?;
        self.esp.insert(to.to_owned(), bytes);
        Ok(())
    }
    fn remove_esp(&mut self, path: &str) -> io::Result<()> {
        self.spend()?;
        self.esp.remove(path);
        Ok(())
    }
    fn write_state(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.spend()?;
        self.state.insert(name.to_owned(), bytes.to_vec());
        Ok(())
    }
    fn remove_state(&mut self, name: &str) -> io::Result<()> {
        self.spend()?;
        self.state.remove(name);
        Ok(())
    }
}

/// What a slot partition holds, which the ESP cannot show: the version written into it, and
/// whether it was completely written (and read back).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Content {
    version: Option<String>,
    intact: bool,
}

/// The machine: ESP, STATE and both partitions.
#[derive(Debug, Clone)]
struct World {
    mem: Mem,
    content: [Content; 2],
    booted: Slot,
}

fn manifest_json(version: &str) -> Vec<u8> {
    format!("{{\"name\":\"keel-worker\",\"version\":\"{version}\",\"arch\":\"x86_64\"}}")
        .into_bytes()
}

fn file_bytes(file: SlotFile, version: &str) -> Vec<u8> {
    match file {
        SlotFile::Manifest => manifest_json(version),
        other => format!("{other:?} {version}").into_bytes(),
    }
}

fn entry_text(slot: Slot, version: &str) -> BootEntry {
    BootEntry::new(slot, version, "00", &[])
}

impl World {
    fn new(booted: Slot) -> World {
        let empty = Content {
            version: None,
            intact: true,
        };
        World {
            mem: Mem::default(),
            content: [empty.clone(), empty],
            booted,
        }
    }

    /// A complete slot holding `version`, with its entry `entry`.
    fn slot(mut self, slot: Slot, version: &str, entry: Option<&str>) -> World {
        for file in SlotFile::ALL {
            self.mem
                .esp
                .insert(file.path(slot), file_bytes(file, version));
        }
        if let Some(name) = entry {
            let parsed = EntryName::parse(name).unwrap();
            assert_eq!(parsed.slot, slot);
            self.mem.esp.insert(
                entry_path(&parsed),
                entry_text(slot, version).render().into_bytes(),
            );
        }
        self.content[index(slot)] = Content {
            version: Some(version.into()),
            intact: true,
        };
        self
    }

    fn state_file(mut self, name: &str, text: &str) -> World {
        self.mem.state.insert(name.into(), text.as_bytes().to_vec());
        self
    }

    fn esp_file(mut self, path: &str, text: &str) -> World {
        self.mem.esp.insert(path.into(), text.as_bytes().to_vec());
        self
    }

    fn stage(&mut self, slot: Slot, version: &str) {
        for file in [SlotFile::Kernel, SlotFile::Initramfs] {
            self.mem
                .esp
                .insert(file.staged_path(slot), file_bytes(file, version));
        }
    }

    fn load(&self) -> BootState {
        BootState::load(&self.mem).unwrap()
    }
}

/// The invariants of the module comment, on the state read back from `w`.
fn check(w: &World, before: &BootState, what: &str) {
    let state = w.load();
    let entries = w.mem.list_esp(entries_dir()).unwrap();
    for slot in [Slot::A, Slot::B] {
        let s = state.slot(slot);
        let content = &w.content[index(slot)];
        // 1. An entry only over a complete slot whose ESP files describe what it holds. (The
        // journal may already say "being written" while the entry is still there: no byte
        // is written before the entry is gone.)
        if s.entry.is_some() {
            assert!(content.intact, "{what}: entry of half-written slot {slot}");
            let version = content.version.as_deref().unwrap_or("?");
            assert_eq!(s.version.as_deref(), Some(version), "{what}: slot {slot}");
            for file in SlotFile::ALL {
                assert_eq!(
                    w.mem.esp.get(&file.path(slot)),
                    Some(&file_bytes(file, version)),
                    "{what}: {file:?} of slot {slot}"
                );
            }
        }
        // 4. At most one entry per slot, counted on the ESP itself.
        let count = entries
            .iter()
            .filter_map(|n| EntryName::parse(n))
            .filter(|e| e.slot == slot)
            .count();
        assert!(
            count <= 1,
            "{what}: {count} entries of slot {slot}: {entries:?}"
        );
    }
    // 2. The running slot keeps an entry.
    if before.slot(w.booted).entry.is_some() {
        assert!(
            state.slot(w.booted).entry.is_some(),
            "{what}: the running slot {} lost its entry",
            w.booted
        );
    }
}

/// Applies `ops` with the power cut after `k` steps; checks the state against the model.
fn cut(w: &World, ops: &[Op], k: usize, what: &str) -> World {
    let mut after = w.clone();
    after.mem.budget = Some(k);
    let result = apply(ops, &mut after.mem);
    assert_eq!(result.is_ok(), k >= ops.len(), "{what}");
    after.mem.budget = None;
    let predicted = w.load().after_all(&ops[..k.min(ops.len())]);
    assert_eq!(
        after.load(),
        predicted,
        "{what}: the ESP differs from the model"
    );
    after
}

/// The next boot (of the same slot: systemd-boot would boot it or the other; the checks
/// hold either way): recovery, fully applied.
fn next_boot(w: &World, what: &str) -> World {
    let mut next = w.clone();
    let before = next.load();
    let ops = before.recover(next.booted);
    apply(&ops, &mut next.mem).unwrap();
    check(&next, &before, &format!("{what}, recovered"));
    let state = next.load();
    assert!(state.strays.is_empty(), "{what}: {:?}", state.strays);
    assert!(state.slots.iter().all(|s| s.staged.is_empty()), "{what}");
    let other = next.booted.other();
    if state.journal.writing() == Some(other) {
        assert_eq!(state.slot(other).entry, None, "{what}");
        assert_eq!(state.slot(other).version, None, "{what}");
    }
    assert_ne!(state.journal.writing(), Some(next.booted), "{what}");
    next
}

/// An upgrade of the other slot to `version`, as `upgrade::install` runs it: staged files,
/// invalidation, the payload (written, then read back), completion. A power cut after each
/// of its steps. Returns the world after a complete run.
fn install_with_cuts(start: &World, version: &str, what: &str) -> World {
    let target = start.booted.other();
    let mut staged = start.clone();
    staged.stage(target, version);
    let invalidate = staged
        .load()
        .invalidate(target, start.booted, version)
        .unwrap();
    // A cut while staging: the slot is untouched.
    check(&staged, &start.load(), &format!("{what}: staged"));
    next_boot(&staged, &format!("{what}: staged"));
    for k in 0..=invalidate.len() {
        let w = cut(
            &staged,
            &invalidate,
            k,
            &format!("{what}: invalidate, cut at {k}"),
        );
        check(
            &w,
            &staged.load(),
            &format!("{what}: invalidate, cut at {k}"),
        );
        next_boot(&w, &format!("{what}: invalidate, cut at {k}"));
    }
    let mut written = cut(&staged, &invalidate, invalidate.len(), what);
    // The payload: half written, then complete and read back.
    written.content[index(target)] = Content {
        version: Some(version.into()),
        intact: false,
    };
    check(
        &written,
        &staged.load(),
        &format!("{what}: payload half written"),
    );
    next_boot(&written, &format!("{what}: payload half written"));
    written.content[index(target)].intact = true;
    let state = written.load();
    let complete = state
        .complete(
            target,
            &manifest_json(version),
            &file_bytes(SlotFile::Signature, version),
            &entry_text(target, version),
        )
        .unwrap();
    for k in 0..=complete.len() {
        let w = cut(
            &written,
            &complete,
            k,
            &format!("{what}: complete, cut at {k}"),
        );
        check(&w, &state, &format!("{what}: complete, cut at {k}"));
        next_boot(&w, &format!("{what}: complete, cut at {k}"));
    }
    let done = cut(&written, &complete, complete.len(), what);
    let end = done.load();
    assert_eq!(end.journal, Journal::Idle, "{what}");
    assert_eq!(
        end.slot(target).entry,
        Some(EntryName::fresh(target)),
        "{what}"
    );
    assert_eq!(end.invalid(target), None, "{what}");
    assert_eq!(end.slot(target).version.as_deref(), Some(version));
    done
}

fn scenarios() -> Vec<(&'static str, World)> {
    use Slot::{A, B};
    vec![
        (
            "fresh image",
            World::new(A).slot(A, "1.0.0", Some("keel-a+2-1.conf")),
        ),
        (
            "both blessed",
            World::new(A).slot(A, "1.1.0", Some("keel-a.conf")).slot(
                B,
                "1.0.0",
                Some("keel-b.conf"),
            ),
        ),
        (
            "other slot failed",
            World::new(A).slot(A, "1.1.0", Some("keel-a+2.conf")).slot(
                B,
                "1.2.0",
                Some("keel-b+0-3.conf"),
            ),
        ),
        (
            "on trial after an upgrade",
            World::new(B).slot(A, "1.0.0", Some("keel-a.conf")).slot(
                B,
                "1.1.0",
                Some("keel-b+2-1.conf"),
            ),
        ),
        (
            "journal written, entry not yet removed",
            World::new(A)
                .slot(A, "1.1.0", Some("keel-a.conf"))
                .slot(B, "1.0.0", Some("keel-b.conf"))
                .state_file(
                    JOURNAL,
                    "{\"state\":\"writing\",\"slot\":\"b\",\"to\":\"1.2.0\"}",
                ),
        ),
        (
            "an older init's parked entry and failed journal",
            World::new(A)
                .slot(A, "1.1.0", Some("keel-a.conf"))
                .slot(B, "1.0.0", None)
                .esp_file("loader/entries/keel-b.conf.parked", "title old\n")
                .state_file(
                    JOURNAL,
                    "{\"from\":\"1.1.0\",\"to\":\"1.2.0\",\"slot\":\"b\",\"phase\":\"failed\"}",
                ),
        ),
        (
            "a rollback was requested",
            World::new(A)
                .slot(A, "1.0.0", Some("keel-a+2.conf"))
                .slot(B, "1.1.0", Some("keel-b+0-3.conf"))
                .state_file(ROLLBACK_REQUESTED, "1.1.0\n"),
        ),
    ]
}

#[test]
fn every_transition_keeps_the_invariants_at_every_power_cut() {
    for (name, world) in scenarios() {
        let state = world.load();
        check(&world, &state, name);
        let booted = world.booted;
        let mut transitions: Vec<(&str, Vec<Op>)> = vec![
            ("rearm", state.rearm(booted)),
            ("recover", state.recover(booted)),
        ];
        if let Ok(ops) = state.bless(booted) {
            transitions.push(("bless", ops));
        }
        if let Ok(ops) = state.rollback(booted, "9.9.9") {
            transitions.push(("rollback", ops));
        }
        for (t, ops) in transitions {
            for k in 0..=ops.len() {
                let what = format!("{name}: {t}, cut at {k} of {}", ops.len());
                let w = cut(&world, &ops, k, &what);
                check(&w, &state, &what);
                next_boot(&w, &what);
            }
        }
        // The upgrade runs from the state the next boot leaves (with its journal settled).
        let settled = next_boot(&world, name);
        let upgraded = install_with_cuts(&settled, "2.0.0", name);
        // And once more into the same slot.
        install_with_cuts(&upgraded, "2.1.0", &format!("{name}, again"));
    }
}

#[test]
fn transitions_do_what_they_say() {
    use Slot::{A, B};
    // Re-arm only a blessed entry; bless any counted one.
    let w = World::new(A).slot(A, "1.0.0", Some("keel-a.conf")).slot(
        B,
        "0.9.0",
        Some("keel-b+1-2.conf"),
    );
    let s = w.load();
    assert_eq!(
        s.rearm(A),
        [Op::RenameEntry {
            from: EntryName::blessed(A),
            to: EntryName::rearmed(A)
        }]
    );
    assert!(s.rearm(B).is_empty(), "counted by systemd-boot already");
    assert!(s.bless(A).unwrap().is_empty());
    let rearmed = s.after_all(&s.rearm(A));
    assert_eq!(
        rearmed.bless(A).unwrap(),
        [Op::RenameEntry {
            from: EntryName::rearmed(A),
            to: EntryName::blessed(A)
        }]
    );
    assert!(World::new(A).load().bless(A).is_err());

    // Last resort: every entry out of tries, the booted one included.
    let both_failed = World::new(B)
        .slot(A, "1.0.0", Some("keel-a+0-3.conf"))
        .slot(B, "1.1.0", Some("keel-b+0-4.conf"))
        .load();
    assert!(both_failed.last_resort(B));
    let alone = World::new(A)
        .slot(A, "1.0.0", Some("keel-a+0-3.conf"))
        .load();
    assert!(alone.last_resort(A));
    assert!(!s.last_resort(A));
    let last_try = World::new(A)
        .slot(A, "1.0.0", Some("keel-a+0-3.conf"))
        .slot(B, "0.9.0", Some("keel-b.conf"))
        .load();
    assert!(
        !last_try.last_resort(A),
        "slot b is still there to fall back to"
    );

    // Rollback refuses an empty, a failed and a half-written slot, and demotes otherwise.
    let fresh = World::new(A).slot(A, "1.0.0", Some("keel-a.conf"));
    let err = fresh.load().rollback(A, "1.0.0").unwrap_err();
    assert!(err.0.contains("empty"), "{err}");
    let failed = World::new(A).slot(A, "1.0.0", Some("keel-a.conf")).slot(
        B,
        "1.1.0",
        Some("keel-b+0-3.conf"),
    );
    let err = failed.load().rollback(A, "1.0.0").unwrap_err();
    assert!(err.0.contains("failed to boot"), "{err}");
    let writing = World::new(A)
        .slot(A, "1.0.0", Some("keel-a.conf"))
        .slot(B, "1.1.0", Some("keel-b.conf"))
        .state_file(
            JOURNAL,
            "{\"state\":\"writing\",\"slot\":\"b\",\"to\":\"2\"}",
        );
    let err = writing.load().rollback(A, "1.0.0").unwrap_err();
    assert!(err.0.contains("being written"), "{err}");
    let good =
        World::new(B)
            .slot(A, "1.0.0", Some("keel-a.conf"))
            .slot(B, "1.1.0", Some("keel-b.conf"));
    let ops = good.load().rollback(B, "1.1.0").unwrap();
    let after = good.load().after_all(&ops);
    assert_eq!(after.slot(B).entry, Some(EntryName::demoted(B)));
    assert_eq!(after.rollback_requested.as_deref(), Some("1.1.0"));

    // An invalidated slot is invalid in every way the API shows.
    let ops = good.load().invalidate(A, B, "2.0.0").unwrap();
    let after = good.load().after_all(&ops);
    assert_eq!(after.slot(A).entry, None);
    assert_eq!(after.slot(A).version, None);
    assert!(after.invalid(A).unwrap().contains("being written"));
    assert!(
        good.load().invalidate(B, B, "2.0.0").is_err(),
        "never the running slot"
    );
    // Completing needs the journal and the staged files.
    assert!(
        good.load()
            .complete(A, b"{}", b"", &entry_text(A, "2"))
            .is_err()
    );
    assert!(after.complete(A, b"{}", b"", &entry_text(A, "2")).is_err());
}

#[test]
fn journal_reads_this_and_the_older_format() {
    assert_eq!(Journal::parse(b"{\"state\":\"idle\"}"), Journal::Idle);
    let w = Journal::Writing {
        slot: Slot::B,
        to: "1.2.0".into(),
    };
    assert_eq!(Journal::parse(w.to_json().as_bytes()), w);
    for phase in ["writing", "failed"] {
        let legacy =
            format!("{{\"from\":\"1.1.0\",\"to\":\"1.2.0\",\"slot\":\"b\",\"phase\":\"{phase}\"}}");
        assert_eq!(Journal::parse(legacy.as_bytes()), w, "{phase}");
    }
    let installed = "{\"from\":\"1\",\"to\":\"2\",\"slot\":\"a\",\"phase\":\"installed\"}";
    assert_eq!(Journal::parse(installed.as_bytes()), Journal::Idle);
    assert_eq!(Journal::parse(b"garbage"), Journal::Idle);
}

#[test]
fn disk_storage_applies_the_same_steps_to_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp");
    let state = dir.path().join("state");
    std::fs::create_dir_all(esp.join("loader/entries")).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let mut disk = DiskStorage {
        esp: esp.clone(),
        state: Some(state.clone()),
    };
    let mut mem = Mem::default();
    let slot = Slot::A;
    for file in SlotFile::ALL {
        let path = file.path(slot);
        disk.write_esp(&path, &file_bytes(file, "1.0.0")).unwrap();
        mem.write_esp(&path, &file_bytes(file, "1.0.0")).unwrap();
    }
    let entry = entry_path(&EntryName::blessed(slot));
    disk.write_esp(&entry, b"title\n").unwrap();
    mem.write_esp(&entry, b"title\n").unwrap();
    let ops = BootState::load(&disk).unwrap().rearm(slot);
    apply(&ops, &mut disk).unwrap();
    apply(&ops, &mut mem).unwrap();
    assert_eq!(
        BootState::load(&disk).unwrap(),
        BootState::load(&mem).unwrap()
    );
    assert!(esp.join("loader/entries/keel-a+2.conf").exists());
    let ops = BootState::load(&disk)
        .unwrap()
        .invalidate(Slot::B, slot, "2")
        .unwrap();
    apply(&ops, &mut disk).unwrap();
    assert!(
        std::fs::read_to_string(state.join(JOURNAL))
            .unwrap()
            .contains("\"writing\"")
    );
    // Removing what is not there is not an error; a stray aside file is found and removed.
    disk.remove_esp("keel/b/manifest.json").unwrap();
    std::fs::write(esp.join("loader/entries/keel-b+3.conf.tmp"), "x").unwrap();
    let s = BootState::load(&disk).unwrap();
    assert_eq!(s.strays, ["loader/entries/keel-b+3.conf.tmp"]);
    apply(&s.recover(slot), &mut disk).unwrap();
    assert!(!esp.join("loader/entries/keel-b+3.conf.tmp").exists());
    // Stage 1 has no STATE: the journal reads as idle there.
    let stage1 = DiskStorage { esp, state: None };
    assert_eq!(BootState::load(&stage1).unwrap().journal, Journal::Idle);
}

/// The names `vm-tests/tests/upgrade.rs` pauses at (through `testhooks::pause_at`): an
/// upgrade of slot a over a blessed 1.0.0.
#[test]
fn step_names_of_an_upgrade_are_the_ones_the_power_cut_test_uses() {
    use Slot::{A, B};
    let mut w =
        World::new(B)
            .slot(A, "1.0.0", Some("keel-a.conf"))
            .slot(B, "1.1.0", Some("keel-b.conf"));
    w.stage(A, "1.3.0");
    let s = w.load();
    let invalidate = s.invalidate(A, B, "1.3.0").unwrap();
    let mid = s.after_all(&invalidate);
    let complete = mid
        .complete(A, &manifest_json("1.3.0"), b"sig", &entry_text(A, "1.3.0"))
        .unwrap();
    let names: Vec<String> = invalidate
        .iter()
        .chain(&complete)
        .map(|op| format!("upgrade {op}"))
        .collect();
    assert_eq!(
        names,
        [
            "upgrade journal: {\"state\":\"writing\",\"slot\":\"a\",\"to\":\"1.3.0\"}",
            "upgrade remove loader/entries/keel-a.conf",
            "upgrade remove keel/a/manifest.json",
            "upgrade remove keel/a/manifest.json.minisig",
            "upgrade rename keel/a/vmlinuz.new into place",
            "upgrade rename keel/a/initramfs.new into place",
            "upgrade write keel/a/manifest.json.minisig",
            "upgrade write keel/a/manifest.json",
            "upgrade journal: {\"state\":\"idle\"}",
            "upgrade write loader/entries/keel-a+3.conf",
        ]
    );
}
