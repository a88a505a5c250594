//! The management API's answers on a running node: version and status from what stage 2
//! knows, logs from /var/log/keel, and the power, upgrade and rollback actions.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keel_contract::api::{RollbackReport, ServiceInfo, SlotInfo, Status, UpgradeReport, Version};
use keel_contract::layout::Slot;

use crate::api::{ApiError, NodeApi};
use crate::supervisor::Supervisor;
use crate::{power, upgrade};

/// What the API reads and does; filled in by stage 2.
pub struct Node {
    pub name: String,
    pub version: String,
    pub slot: Slot,
    pub hostname: String,
    pub addresses: Vec<String>,
    pub boot: u64,
    pub rolled_back_from: Option<upgrade::RolledBack>,
    pub esp: PathBuf,
    pub state: PathBuf,
    pub log_dir: PathBuf,
    pub started: Instant,
    /// What an upgrade writes into; `None` when the other slot cannot be found.
    pub target: Option<upgrade::Target>,
    pub supervisors: Mutex<Vec<Arc<Supervisor>>>,
    /// One upgrade or rollback at a time.
    busy: Mutex<()>,
    pub log: fn(&str),
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        (name, version, slot): (String, String, Slot),
        hostname: String,
        addresses: Vec<String>,
        boot: u64,
        rolled_back_from: Option<upgrade::RolledBack>,
        (esp, state, log_dir): (PathBuf, PathBuf, PathBuf),
        target: Option<upgrade::Target>,
        log: fn(&str),
    ) -> Self {
        Node {
            name,
            version,
            slot,
            hostname,
            addresses,
            boot,
            rolled_back_from,
            esp,
            state,
            log_dir,
            started: Instant::now(),
            target,
            supervisors: Mutex::new(Vec::new()),
            busy: Mutex::new(()),
            log,
        }
    }

    fn slot_info(&self, slot: Slot) -> SlotInfo {
        let entry = upgrade::slot_entry(&self.esp, slot);
        SlotInfo {
            slot: slot.to_string(),
            version: upgrade::slot_version(&self.esp, slot),
            entry: entry.map(|e| e.file_name()),
            booted: slot == self.slot,
            // Blessed: its entry has no counter any more.
            healthy: entry.is_some_and(|e| e.counter.is_none()),
        }
    }

    fn reboot_soon(&self, request: power::Request) {
        // After the reply has gone out.
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(1));
            power::request(request);
        });
    }
}

/// The last `lines` lines of `path`.
pub fn tail(path: &Path, lines: usize) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    Ok(all[start..].iter().map(|l| format!("{l}\n")).collect())
}

impl NodeApi for Node {
    fn version(&self) -> Version {
        Version {
            name: self.name.clone(),
            version: self.version.clone(),
            slot: self.slot.to_string(),
            arch: "x86_64".into(),
            keel: crate::VERSION.into(),
        }
    }

    fn status(&self) -> Status {
        let supervisors = self.supervisors.lock().unwrap_or_else(|e| e.into_inner());
        let services = supervisors
            .iter()
            .flat_map(|s| s.status())
            .map(|s| ServiceInfo {
                name: s.name.clone(),
                state: s.state.to_string(),
                restarts: s.restarts,
                pid: s.pid.and_then(|p| u32::try_from(p).ok()),
                message: s.message.clone(),
            })
            .collect();
        Status {
            name: self.name.clone(),
            version: self.version.clone(),
            slot: self.slot.to_string(),
            hostname: self.hostname.clone(),
            addresses: self.addresses.clone(),
            slots: vec![self.slot_info(Slot::A), self.slot_info(Slot::B)],
            services,
            boot: self.boot,
            rolled_back_from: self.rolled_back_from.as_ref().map(|r| r.from.clone()),
            rollback_requested: self.rolled_back_from.as_ref().is_some_and(|r| r.requested),
            quarantined: upgrade::quarantined(&self.state),
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }

    fn logs(&self, service: &str, lines: usize) -> Result<String, ApiError> {
        let path = self.log_dir.join(format!("{service}.log"));
        tail(&path, lines).map_err(|e| ApiError::not_found(format!("no log for {service:?}: {e}")))
    }

    fn reboot(&self) -> Result<(), ApiError> {
        (self.log)("reboot requested through the API");
        self.reboot_soon(power::Request::Reboot);
        Ok(())
    }

    fn shutdown(&self) -> Result<(), ApiError> {
        (self.log)("shutdown requested through the API");
        self.reboot_soon(power::Request::PowerOff);
        Ok(())
    }

    fn upgrade(
        &self,
        body: &mut dyn Read,
        _len: u64,
        force: bool,
        reboot: bool,
    ) -> Result<UpgradeReport, ApiError> {
        let _busy = self
            .busy
            .try_lock()
            .map_err(|_| ApiError::conflict("an upgrade or rollback is already running"))?;
        let target = self
            .target
            .as_ref()
            .ok_or_else(|| ApiError::unavailable("the inactive slot was not found"))?;
        let installed =
            upgrade::install(body, target, force, &|m| (self.log)(m)).map_err(|e| match e {
                upgrade::UpgradeError::Rejected(m) => ApiError::verification_failed(m),
                upgrade::UpgradeError::Refused(m) => ApiError::conflict(m),
                e @ upgrade::UpgradeError::Io { .. } => ApiError::internal(e.to_string()),
            })?;
        if reboot {
            (self.log)(&format!("upgrade to {} installed; rebooting", installed.to));
            self.reboot_soon(power::Request::Reboot);
        }
        Ok(UpgradeReport {
            from: installed.from,
            to: installed.to,
            slot: installed.slot.to_string(),
            bytes: installed.bytes,
            reboot,
        })
    }

    fn rollback(&self) -> Result<RollbackReport, ApiError> {
        let _busy = self
            .busy
            .try_lock()
            .map_err(|_| ApiError::conflict("an upgrade or rollback is already running"))?;
        let to = upgrade::rollback(&self.esp, &self.state, self.slot).map_err(|e| match e {
            upgrade::UpgradeError::Io { .. } => ApiError::internal(e.to_string()),
            other => ApiError::conflict(other.to_string()),
        })?;
        (self.log)(&format!(
            "rollback to {to} in slot {} requested; rebooting",
            self.slot.other()
        ));
        self.reboot_soon(power::Request::Reboot);
        Ok(RollbackReport {
            from: self.version.clone(),
            to,
            slot: self.slot.other().to_string(),
            reboot: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&path, 2).unwrap(), "b\nc\n");
        assert_eq!(tail(&path, 10).unwrap(), "a\nb\nc\n");
        assert!(tail(&dir.path().join("none"), 1).is_err());
    }
}
