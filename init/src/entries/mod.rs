//! The boot entries on the ESP and the upgrade journal on STATE, as one state machine: read
//! once ([`BootState::load`]), changed by pure transitions that return the steps to take
//! ([`Op`]s, nothing written), and written by one [`apply`] that takes them in order, each
//! step durable before the next begins. Bottlerocket's signpost does the same for its GPT
//! bits. `model_tests.rs` checks every transition, and a power cut after every step of
//! `apply`, against the invariants below, with no VM.
//!
//! The invariants (docs/boot-and-upgrades.md says why each one exists):
//! 1. A slot has a boot entry only while it is complete: not marked "being written" in the
//!    journal, and its kernel, initramfs, manifest and signature are on the ESP. An upgrade
//!    removes the entry and the manifest *before* the first payload byte (after writing the
//!    journal), and writes the entry last. Nothing ever puts an entry back.
//! 2. The running slot keeps its entry (a rollback only renames it out of tries).
//! 3. No entry stays trusted forever: stage 1 re-arms a blessed entry's counter
//!    ([`BootState::rearm`]) before it reads anything from the slot, and only the health gate
//!    blesses it again.
//! 4. At most one entry per slot.

mod apply;
mod journal;
mod storage;

#[cfg(test)]
mod model_tests;

use keel_contract::layout::{self, BootEntry, EntryName, Slot};
use serde::Deserialize;

pub use apply::{ApplyError, apply, apply_named};
pub use journal::Journal;
pub use storage::{DiskStorage, Storage};

/// The journal on STATE.
pub const JOURNAL: &str = "upgrade.json";
/// Written by a requested rollback: the version rolled back from.
pub const ROLLBACK_REQUESTED: &str = "rollback-requested";
/// Suffix of the kernel and initramfs an upgrade stages next to the slot's files before it
/// touches the slot (they are verified, then renamed into place).
pub const STAGED: &str = ".new";
/// Suffix of a file [`Storage::write_esp`] writes aside before renaming it into place.
pub const ASIDE: &str = ".tmp";
/// Suffix the init before this one gave entries it parked during an upgrade.
const LEGACY_PARKED: &str = ".parked";

/// The ESP's boot entries directory, relative to the ESP's root.
pub fn entries_dir() -> &'static str {
    layout::esp::ENTRIES_DIR.trim_start_matches('/')
}

/// A boot entry's path relative to the ESP's root.
pub fn entry_path(name: &EntryName) -> String {
    format!("{}/{}", entries_dir(), name.file_name())
}

/// The files of a slot on the ESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotFile {
    Kernel,
    Initramfs,
    Manifest,
    Signature,
}

impl SlotFile {
    pub const ALL: [SlotFile; 4] = [
        SlotFile::Kernel,
        SlotFile::Initramfs,
        SlotFile::Manifest,
        SlotFile::Signature,
    ];

    /// Relative to the ESP's root.
    pub fn path(self, slot: Slot) -> String {
        let p = match self {
            SlotFile::Kernel => slot.kernel_path(),
            SlotFile::Initramfs => slot.initramfs_path(),
            SlotFile::Manifest => slot.manifest_path(),
            SlotFile::Signature => slot.signature_path(),
        };
        p.trim_start_matches('/').to_owned()
    }

    /// Where an upgrade stages the file before the slot is touched.
    pub fn staged_path(self, slot: Slot) -> String {
        format!("{}{STAGED}", self.path(slot))
    }
}

/// One slot as the ESP shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub slot: Slot,
    pub entry: Option<EntryName>,
    /// From the slot's manifest on the ESP (not verified here: stage 1 verifies it before it
    /// boots the slot). `None` when there is none or it cannot be read.
    pub version: Option<String>,
    /// Which of the slot's files are on the ESP.
    pub files: Vec<SlotFile>,
    /// Which staged files (of an upgrade) are on the ESP.
    pub staged: Vec<SlotFile>,
}

impl SlotState {
    fn empty(slot: Slot) -> Self {
        SlotState {
            slot,
            entry: None,
            version: None,
            files: Vec::new(),
            staged: Vec::new(),
        }
    }

    pub fn has(&self, file: SlotFile) -> bool {
        self.files.contains(&file)
    }
}

/// The boot entries, the slots' files on the ESP, and the journal, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    /// Slot a, then slot b.
    pub slots: [SlotState; 2],
    pub journal: Journal,
    /// The version a requested rollback left, while its demoted entry is there.
    pub rollback_requested: Option<String>,
    /// ESP files no state accounts for (files written aside, entries an older init parked, a
    /// second entry of one slot): [`BootState::recover`] removes them.
    pub strays: Vec<String>,
}

/// A transition that is not possible in this state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// One durable step of [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    WriteJournal(Journal),
    WriteRollbackRequested(String),
    RemoveRollbackRequested,
    RenameEntry {
        from: EntryName,
        to: EntryName,
    },
    RemoveEntry(EntryName),
    WriteEntry {
        name: EntryName,
        text: String,
    },
    RemoveSlotFile(Slot, SlotFile),
    WriteSlotFile(Slot, SlotFile, Vec<u8>),
    /// Renames a staged file into place.
    PromoteStaged(Slot, SlotFile),
    RemoveStaged(Slot, SlotFile),
    RemoveStray(String),
}

/// The version field of a manifest, read leniently: a newer manifest schema must not make an
/// older init lose track of what a slot holds.
fn manifest_version(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        version: String,
    }
    serde_json::from_slice::<Head>(bytes)
        .ok()
        .map(|h| h.version)
}

impl BootState {
    /// Reads the entries directory, both slots' directories and the journal.
    pub fn load(storage: &dyn Storage) -> std::io::Result<BootState> {
        let mut slots = [SlotState::empty(Slot::A), SlotState::empty(Slot::B)];
        let mut strays = Vec::new();
        let mut names = storage.list_esp(entries_dir())?;
        names.sort();
        for name in names {
            match EntryName::parse(&name) {
                Some(entry) => {
                    let slot = &mut slots[index(entry.slot)];
                    match slot.entry {
                        None => slot.entry = Some(entry),
                        // Two entries of one slot cannot come from this init; keep the one
                        // trusted least and let `recover` remove the other.
                        Some(kept) => {
                            let (keep, drop) = if trust(&entry) < trust(&kept) {
                                (entry, kept)
                            } else {
                                (kept, entry)
                            };
                            slot.entry = Some(keep);
                            strays.push(entry_path(&drop));
                        }
                    }
                }
                None if name.starts_with("keel-")
                    && (name.ends_with(ASIDE) || name.ends_with(LEGACY_PARKED)) =>
                {
                    strays.push(format!("{}/{name}", entries_dir()));
                }
                None => {}
            }
        }
        for slot in &mut slots {
            for file in SlotFile::ALL {
                if storage.esp_exists(&file.path(slot.slot)) {
                    slot.files.push(file);
                }
                if storage.esp_exists(&file.staged_path(slot.slot)) {
                    slot.staged.push(file);
                }
                let aside = format!("{}{ASIDE}", file.path(slot.slot));
                if storage.esp_exists(&aside) {
                    strays.push(aside);
                }
            }
            if slot.has(SlotFile::Manifest) {
                slot.version = storage
                    .read_esp(&SlotFile::Manifest.path(slot.slot))
                    .ok()
                    .and_then(|b| manifest_version(&b));
            }
        }
        let journal = storage
            .read_state(JOURNAL)?
            .map(|b| Journal::parse(&b))
            .unwrap_or(Journal::Idle);
        let rollback_requested = storage
            .read_state(ROLLBACK_REQUESTED)?
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .filter(|v| !v.is_empty());
        Ok(BootState {
            slots,
            journal,
            rollback_requested,
            strays,
        })
    }

    pub fn slot(&self, slot: Slot) -> &SlotState {
        &self.slots[index(slot)]
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut SlotState {
        &mut self.slots[index(slot)]
    }

    /// Why `slot` cannot boot, or be rolled back to; `None` when it can (its entry may still
    /// be out of tries: see [`BootState::rollback`]).
    pub fn invalid(&self, slot: Slot) -> Option<String> {
        let s = self.slot(slot);
        if self.journal.writing() == Some(slot) {
            return Some(
                "being written by an upgrade that did not finish; it cannot boot until an upgrade into it completes"
                    .into(),
            );
        }
        if s.files.is_empty() && s.entry.is_none() {
            return Some("empty".into());
        }
        if let Some(missing) = SlotFile::ALL.iter().find(|f| !s.has(**f)) {
            return Some(format!("incomplete: /{} is missing", missing.path(slot)));
        }
        if s.entry.is_none() {
            return Some("no boot entry".into());
        }
        None
    }

    /// The state after `op` (what [`apply`] makes of the ESP and STATE, computed).
    pub fn after(&self, op: &Op) -> BootState {
        let mut next = self.clone();
        match op {
            Op::WriteJournal(j) => next.journal = j.clone(),
            Op::WriteRollbackRequested(v) => next.rollback_requested = Some(v.clone()),
            Op::RemoveRollbackRequested => next.rollback_requested = None,
            Op::RenameEntry { to, .. } => next.slot_mut(to.slot).entry = Some(*to),
            Op::RemoveEntry(e) => next.slot_mut(e.slot).entry = None,
            Op::WriteEntry { name, .. } => next.slot_mut(name.slot).entry = Some(*name),
            Op::RemoveSlotFile(slot, file) => {
                let s = next.slot_mut(*slot);
                s.files.retain(|f| f != file);
                if *file == SlotFile::Manifest {
                    s.version = None;
                }
            }
            Op::WriteSlotFile(slot, file, bytes) => {
                let s = next.slot_mut(*slot);
                if !s.has(*file) {
                    s.files.push(*file);
                    s.files.sort();
                }
                if *file == SlotFile::Manifest {
                    s.version = manifest_version(bytes);
                }
            }
            Op::PromoteStaged(slot, file) => {
                let s = next.slot_mut(*slot);
                s.staged.retain(|f| f != file);
                if !s.has(*file) {
                    s.files.push(*file);
                    s.files.sort();
                }
            }
            Op::RemoveStaged(slot, file) => next.slot_mut(*slot).staged.retain(|f| f != file),
            Op::RemoveStray(path) => next.strays.retain(|p| p != path),
        }
        next
    }

    /// The state after all of `ops`.
    pub fn after_all(&self, ops: &[Op]) -> BootState {
        ops.iter().fold(self.clone(), |s, op| s.after(op))
    }

    /// Stage 1, before anything is read from the slot: a blessed entry of the booted slot is
    /// counted again (`keel-a.conf` -> `keel-a+2.conf`), so that if the slot has turned bad
    /// since it was blessed, systemd-boot falls back to the other slot after
    /// [`layout::BOOT_TRIES`] failed boots. A counted entry was counted by systemd-boot
    /// already.
    pub fn rearm(&self, booted: Slot) -> Vec<Op> {
        match self.slot(booted).entry {
            Some(entry) if entry.is_blessed() => vec![Op::RenameEntry {
                from: entry,
                to: EntryName::rearmed(booted),
            }],
            _ => Vec::new(),
        }
    }

    /// This boot is the last resort: the booted slot's entry is out of tries and no other
    /// entry has any left, so a reboot would come back here. Failing now must not reboot.
    pub fn last_resort(&self, booted: Slot) -> bool {
        self.slot(booted).entry.is_some_and(|e| e.exhausted())
            && self
                .slots
                .iter()
                .filter_map(|s| s.entry)
                .all(|e| e.exhausted())
    }

    /// The health gate passed: the booted slot's entry loses its counter.
    pub fn bless(&self, booted: Slot) -> Result<Vec<Op>, Refused> {
        match self.slot(booted).entry {
            Some(entry) if entry.is_blessed() => Ok(Vec::new()),
            Some(entry) => Ok(vec![Op::RenameEntry {
                from: entry,
                to: EntryName::blessed(booted),
            }]),
            None => Err(Refused(format!(
                "slot {booted} has no boot entry in /{}",
                entries_dir()
            ))),
        }
    }

    /// At boot, before anything else looks at the entries: finishes what an interrupted
    /// upgrade left. A journal naming the booted slot is stale (systemd-boot booted its entry,
    /// so the upgrade never got to remove it, let alone write a byte); a journal naming the
    /// other slot means it stays invalid: its entry and manifest go, if they are still there.
    /// Staged and aside files and parked entries are removed.
    pub fn recover(&self, booted: Slot) -> Vec<Op> {
        let mut ops = Vec::new();
        match self.journal.writing() {
            Some(slot) if slot == booted => ops.push(Op::WriteJournal(Journal::Idle)),
            Some(slot) => ops.extend(self.invalidation_steps(slot)),
            None => {}
        }
        for s in &self.slots {
            for file in &s.staged {
                ops.push(Op::RemoveStaged(s.slot, *file));
            }
        }
        for stray in &self.strays {
            ops.push(Op::RemoveStray(stray.clone()));
        }
        ops
    }

    /// Removes `slot`'s entry, then its manifest and signature: after these steps nothing
    /// points at the slot, and nothing could tell what it held.
    fn invalidation_steps(&self, slot: Slot) -> Vec<Op> {
        let s = self.slot(slot);
        let mut ops = Vec::new();
        if let Some(entry) = s.entry {
            ops.push(Op::RemoveEntry(entry));
        }
        for file in [SlotFile::Manifest, SlotFile::Signature] {
            if s.has(file) {
                ops.push(Op::RemoveSlotFile(slot, file));
            }
        }
        ops
    }

    /// Before the first payload byte of an upgrade into `slot`: the journal says the slot is
    /// being written, then its entry and manifest go. A requested rollback's marker goes too
    /// (it named the version this slot held).
    pub fn invalidate(&self, slot: Slot, booted: Slot, to: &str) -> Result<Vec<Op>, Refused> {
        if slot == booted {
            return Err(Refused(format!("slot {slot} is the running slot")));
        }
        let mut ops = vec![Op::WriteJournal(Journal::Writing {
            slot,
            to: to.to_owned(),
        })];
        if self.rollback_requested.is_some() {
            ops.push(Op::RemoveRollbackRequested);
        }
        ops.extend(self.invalidation_steps(slot));
        Ok(ops)
    }

    /// After the payload was written and read back: the staged kernel and initramfs go into
    /// place, then the signature and the manifest, then the journal is cleared, and the
    /// entry is written last.
    pub fn complete(
        &self,
        slot: Slot,
        manifest: &[u8],
        signature: &[u8],
        entry: &BootEntry,
    ) -> Result<Vec<Op>, Refused> {
        if self.journal.writing() != Some(slot) {
            return Err(Refused(format!(
                "the journal does not say slot {slot} is being written"
            )));
        }
        let s = self.slot(slot);
        let mut ops = Vec::new();
        for file in [SlotFile::Kernel, SlotFile::Initramfs] {
            if !s.staged.contains(&file) {
                return Err(Refused(format!(
                    "/{} was not staged",
                    file.staged_path(slot)
                )));
            }
            ops.push(Op::PromoteStaged(slot, file));
        }
        ops.push(Op::WriteSlotFile(
            slot,
            SlotFile::Signature,
            signature.to_vec(),
        ));
        ops.push(Op::WriteSlotFile(
            slot,
            SlotFile::Manifest,
            manifest.to_vec(),
        ));
        ops.push(Op::WriteJournal(Journal::Idle));
        ops.push(Op::WriteEntry {
            name: EntryName::fresh(slot),
            text: entry.render(),
        });
        Ok(ops)
    }

    /// `keel node rollback`: the running entry is put out of tries, so that systemd-boot
    /// boots the other slot next. Refused unless the other slot is complete, has its entry,
    /// and that entry has tries left.
    pub fn rollback(&self, booted: Slot, running: &str) -> Result<Vec<Op>, Refused> {
        let other = booted.other();
        if let Some(why) = self.invalid(other) {
            return Err(Refused(format!("slot {other} cannot boot: {why}")));
        }
        let other_entry = self.slot(other).entry;
        if let Some(e) = other_entry.filter(|e| e.exhausted()) {
            return Err(Refused(format!(
                "slot {other} failed to boot before ({})",
                e.file_name()
            )));
        }
        let current = self
            .slot(booted)
            .entry
            .ok_or_else(|| Refused(format!("slot {booted} has no boot entry")))?;
        Ok(vec![
            Op::WriteRollbackRequested(running.to_owned()),
            Op::RenameEntry {
                from: current,
                to: EntryName::demoted(booted),
            },
        ])
    }
}

fn index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

/// Lower is trusted less: out of tries, then fewer tries left, then blessed.
fn trust(entry: &EntryName) -> u32 {
    entry.counter.map_or(u32::MAX, |c| c.left)
}
