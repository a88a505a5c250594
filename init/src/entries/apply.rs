//! Taking the steps of a transition, in order, each durable before the next.

use super::{JOURNAL, Op, ROLLBACK_REQUESTED, Storage, entry_path};

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::WriteJournal(j) => write!(f, "journal: {}", j.to_json().trim_end()),
            Op::WriteRollbackRequested(v) => write!(f, "record the rollback from {v}"),
            Op::RemoveRollbackRequested => f.write_str("forget the requested rollback"),
            Op::RenameEntry { from, to } => {
                write!(f, "rename {} to {}", entry_path(from), entry_path(to))
            }
            Op::RemoveEntry(e) => write!(f, "remove {}", entry_path(e)),
            Op::WriteEntry { name, .. } => write!(f, "write {}", entry_path(name)),
            Op::RemoveSlotFile(s, file) => write!(f, "remove {}", file.path(*s)),
            Op::WriteSlotFile(s, file, _) => write!(f, "write {}", file.path(*s)),
            Op::PromoteStaged(s, file) => write!(f, "rename {} into place", file.staged_path(*s)),
            Op::RemoveStaged(s, file) => write!(f, "remove {}", file.staged_path(*s)),
            Op::RemoveStray(p) => write!(f, "remove {p}"),
        }
    }
}

/// A step of [`apply`] that failed, and the steps that were done before it.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source} (after {done} of {total} steps)")]
pub struct ApplyError {
    pub op: String,
    pub done: usize,
    pub total: usize,
    pub source: std::io::Error,
}

/// Takes the steps in order; each is durable (written, renamed, synced) before the next
/// begins, so a power cut leaves the state after some prefix of them.
pub fn apply(ops: &[Op], storage: &mut dyn Storage) -> Result<(), ApplyError> {
    apply_named(ops, storage, None)
}

/// [`apply`], with each step named `<name> <step>` for the power-cut tests' hook
/// ([`crate::testhooks::pause_at`]): `upgrade remove loader/entries/keel-a.conf`.
pub fn apply_named(
    ops: &[Op],
    storage: &mut dyn Storage,
    name: Option<&str>,
) -> Result<(), ApplyError> {
    for (done, op) in ops.iter().enumerate() {
        if let Some(name) = name {
            crate::testhooks::pause_at(&format!("{name} {op}"));
        }
        step(op, storage).map_err(|source| ApplyError {
            op: op.to_string(),
            done,
            total: ops.len(),
            source,
        })?;
    }
    Ok(())
}

fn step(op: &Op, storage: &mut dyn Storage) -> std::io::Result<()> {
    match op {
        Op::WriteJournal(j) => storage.write_state(JOURNAL, j.to_json().as_bytes()),
        Op::WriteRollbackRequested(v) => {
            storage.write_state(ROLLBACK_REQUESTED, format!("{v}\n").as_bytes())
        }
        Op::RemoveRollbackRequested => storage.remove_state(ROLLBACK_REQUESTED),
        Op::RenameEntry { from, to } => storage.rename_esp(&entry_path(from), &entry_path(to)),
        Op::RemoveEntry(e) => storage.remove_esp(&entry_path(e)),
        Op::WriteEntry { name, text } => storage.write_esp(&entry_path(name), text.as_bytes()),
        Op::RemoveSlotFile(slot, file) => storage.remove_esp(&file.path(*slot)),
        Op::WriteSlotFile(slot, file, bytes) => storage.write_esp(&file.path(*slot), bytes),
        Op::PromoteStaged(slot, file) => {
            storage.rename_esp(&file.staged_path(*slot), &file.path(*slot))
        }
        Op::RemoveStaged(slot, file) => storage.remove_esp(&file.staged_path(*slot)),
        Op::RemoveStray(path) => storage.remove_esp(path),
    }
}
