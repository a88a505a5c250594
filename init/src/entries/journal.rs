//! The upgrade journal on STATE: which slot, if any, is being written.

use keel_contract::layout::Slot;
use serde::{Deserialize, Serialize};

/// What the journal on STATE says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Journal {
    /// No slot is being written.
    Idle,
    /// `slot` is being rewritten (with version `to`): whatever it holds cannot boot.
    Writing { slot: Slot, to: String },
}

impl Journal {
    /// Reads the journal. The init before this one wrote `{"slot","phase",...}`: its phase
    /// "writing" and "failed" (a failed install, after which it put the old entry back over a
    /// slot it had partly overwritten) both mean the slot is not to be trusted.
    pub fn parse(bytes: &[u8]) -> Journal {
        if let Ok(j) = serde_json::from_slice::<Journal>(bytes) {
            return j;
        }
        #[derive(Deserialize)]
        struct Legacy {
            slot: Slot,
            phase: String,
            #[serde(default)]
            to: String,
        }
        match serde_json::from_slice::<Legacy>(bytes) {
            Ok(l) if l.phase == "writing" || l.phase == "failed" => Journal::Writing {
                slot: l.slot,
                to: l.to,
            },
            Ok(_) => Journal::Idle,
            // Unreadable (a torn write cannot happen: it is written aside and renamed). Trust
            // nothing more than the entries themselves say.
            Err(_) => Journal::Idle,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"state\":\"idle\"}".into()) + "\n"
    }

    pub fn writing(&self) -> Option<Slot> {
        match self {
            Journal::Writing { slot, .. } => Some(*slot),
            Journal::Idle => None,
        }
    }
}
