//! The management API's answers on a running node: version and status from what stage 2
//! knows, logs from /var/log/keel, and the power, upgrade and rollback actions.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use keel_contract::api::{
    CertificateReport, NodeCertificate, RollbackReport, ServiceInfo, SlotInfo, Status,
    UpgradeReport, Version,
};
use keel_contract::layout::Slot;

use crate::api::{ApiError, NodeApi};
use crate::entries::{BootState, DiskStorage};
use crate::supervisor::Supervisor;
use crate::{power, upgrade};

/// Set once this boot passed the health gate ([`mark_ready`]).
static READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The health gate passed: status says ready from now on.
pub fn mark_ready() {
    READY.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// What the node is (from the verified manifest, by stage 1).
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub slot: Slot,
}

/// What this boot found out, for the status.
#[derive(Debug, Clone, Default)]
pub struct BootFacts {
    pub hostname: String,
    pub addresses: Vec<String>,
    /// This boot's number on the disk; 0 when the history could not be read.
    pub boot: u64,
    pub rolled_back_from: Option<upgrade::RolledBack>,
    pub warnings: Vec<String>,
    /// Set for a network boot: no disk, nothing to upgrade or roll back.
    pub diskless: Option<keel_contract::api::Diskless>,
}

/// What the API reads and does; filled in by stage 2.
pub struct Node {
    pub identity: Identity,
    pub facts: BootFacts,
    pub esp: PathBuf,
    pub state: PathBuf,
    pub log_dir: PathBuf,
    pub started: Instant,
    /// What an upgrade writes into; `None` when the other slot cannot be found.
    pub target: Option<upgrade::Target>,
    pub supervisors: Mutex<Vec<Arc<Supervisor>>>,
    /// Why the node is degraded, when it is (see [`Status::degraded`]).
    pub degraded: Mutex<Option<String>>,
    /// One upgrade or rollback at a time.
    busy: Mutex<()>,
    /// Where a renewed API certificate goes; set once the API serves.
    pub renewal: OnceLock<crate::api::certificate::Renewal>,
    pub log: fn(&str),
}

impl Node {
    pub fn new(
        identity: Identity,
        facts: BootFacts,
        (esp, state, log_dir): (PathBuf, PathBuf, PathBuf),
        target: Option<upgrade::Target>,
        log: fn(&str),
    ) -> Self {
        Node {
            identity,
            facts,
            esp,
            state,
            log_dir,
            started: Instant::now(),
            target,
            supervisors: Mutex::new(Vec::new()),
            degraded: Mutex::new(None),
            busy: Mutex::new(()),
            renewal: OnceLock::new(),
            log,
        }
    }

    fn boot_state(&self) -> Option<BootState> {
        let storage = DiskStorage {
            esp: self.esp.clone(),
            state: Some(self.state.clone()),
        };
        BootState::load(&storage).ok()
    }

    fn slot_info(&self, boot: Option<&BootState>, slot: Slot) -> SlotInfo {
        let s = boot.map(|b| b.slot(slot));
        let entry = s.and_then(|s| s.entry);
        let invalid = match boot {
            Some(b) => b.invalid(slot),
            None => Some("the ESP could not be read".into()),
        };
        SlotInfo {
            slot: slot.to_string(),
            version: s.and_then(|s| s.version.clone()),
            entry: entry.map(|e| e.file_name()),
            booted: slot == self.identity.slot,
            // Blessed: its entry has no counter any more.
            healthy: invalid.is_none() && entry.is_some_and(|e| e.is_blessed()),
            invalid,
        }
    }

    /// A diskless node has no slot to write or to go back to (409).
    fn refuse_if_diskless(&self) -> Result<(), ApiError> {
        match self.facts.diskless {
            Some(_) => Err(ApiError::conflict(keel_contract::api::DISKLESS_UPGRADE)),
            None => Ok(()),
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

fn upgrade_error(e: upgrade::UpgradeError) -> ApiError {
    match e {
        upgrade::UpgradeError::Rejected(m) => ApiError::verification_failed(m),
        upgrade::UpgradeError::Refused(m) => ApiError::conflict(m),
        upgrade::UpgradeError::Unavailable(m) => ApiError::unavailable(m),
        e @ upgrade::UpgradeError::Io { .. } => ApiError::internal(e.to_string()),
    }
}

/// What a failed call to the local etcd means for the API client: etcd not answering is
/// for now (503); certificates that cannot be read or a reply that makes no sense is the
/// node's failure (500).
fn etcd_error(e: crate::etcd_client::EtcdError) -> ApiError {
    use crate::etcd_client::EtcdError;
    match e {
        e @ EtcdError::Io { .. } => ApiError::unavailable(e.to_string()),
        e => ApiError::internal(e.to_string()),
    }
}

impl Node {
    /// A client of the node's own etcd, when the node runs one and it is up: 409 otherwise
    /// (not a control plane, or etcd not running), which no retry right now would change.
    fn local_etcd(&self) -> Result<crate::etcd_client::EtcdClient, ApiError> {
        use crate::supervisor::ServiceState;
        let etcd = self
            .supervisors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find_map(|s| s.service(crate::roles::etcd::SERVICE));
        let Some(etcd) = etcd else {
            return Err(ApiError::conflict(keel_contract::api::NOT_A_CONTROL_PLANE));
        };
        if !matches!(etcd.state, ServiceState::Running | ServiceState::Healthy) {
            let why = etcd.message.map(|m| format!(": {m}")).unwrap_or_default();
            return Err(ApiError::conflict(format!(
                "etcd is not running on this node (it is {}{why}); see `keel node logs etcd`",
                etcd.state
            )));
        }
        crate::etcd_client::EtcdClient::new(crate::etcd_client::EtcdEndpoint::local())
            .map_err(etcd_error)
    }
}

impl NodeApi for Node {
    fn version(&self) -> Version {
        Version {
            name: self.identity.name.clone(),
            version: self.identity.version.clone(),
            slot: self.identity.slot.to_string(),
            arch: self.identity.arch.clone(),
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
        let boot = self.boot_state();
        let facts = &self.facts;
        let degraded = self
            .degraded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .or_else(crate::fatal::degraded);
        Status {
            name: self.identity.name.clone(),
            version: self.identity.version.clone(),
            slot: self.identity.slot.to_string(),
            hostname: facts.hostname.clone(),
            addresses: facts.addresses.clone(),
            slots: if facts.diskless.is_some() {
                Vec::new()
            } else {
                vec![
                    self.slot_info(boot.as_ref(), Slot::A),
                    self.slot_info(boot.as_ref(), Slot::B),
                ]
            },
            services,
            boot: facts.boot,
            rolled_back_from: facts.rolled_back_from.as_ref().map(|r| r.from.clone()),
            rollback_requested: facts.rolled_back_from.as_ref().is_some_and(|r| r.requested),
            quarantined: upgrade::quarantined(&self.state),
            uptime_secs: self.started.elapsed().as_secs(),
            degraded,
            warnings: facts.warnings.clone(),
            timeline: crate::timeline::BOOT.steps(),
            diskless: facts.diskless.clone(),
            ready: READY.load(std::sync::atomic::Ordering::SeqCst),
            vip: crate::net::vip::held().map(|ip| ip.to_string()),
        }
    }

    fn etcd_members(&self) -> Result<keel_contract::api::EtcdMembers, ApiError> {
        self.local_etcd()?.members().map_err(etcd_error)
    }

    fn etcd_remove_member(&self, name: &str) -> Result<keel_contract::api::EtcdMembers, ApiError> {
        let etcd = self.local_etcd()?;
        let before = etcd.members().map_err(etcd_error)?;
        let id = crate::etcd_join::member_to_remove(&before, name).map_err(ApiError::conflict)?;
        (self.log)(&format!(
            "etcd: removing member {name} ({id:x}) through the API"
        ));
        etcd.member_remove(id).map_err(etcd_error)?;
        etcd.members().map_err(etcd_error)
    }

    fn etcd_snapshot(&self) -> Result<Box<dyn Read + Send>, ApiError> {
        (self.log)("etcd snapshot requested through the API");
        self.local_etcd()?.snapshot().map_err(etcd_error)
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

    fn upgrade_admissible(&self, force: bool) -> Result<(), ApiError> {
        self.refuse_if_diskless()?;
        if self.busy.try_lock().is_err() {
            return Err(ApiError::conflict(
                "an upgrade or rollback is already running",
            ));
        }
        let target = self
            .target
            .as_ref()
            .ok_or_else(|| ApiError::unavailable("the inactive slot was not found"))?;
        upgrade::admissible(target, force).map_err(upgrade_error)
    }

    fn upgrade(
        &self,
        body: &mut dyn Read,
        _len: u64,
        force: bool,
        reboot: bool,
    ) -> Result<UpgradeReport, ApiError> {
        self.refuse_if_diskless()?;
        let _busy = self
            .busy
            .try_lock()
            .map_err(|_| ApiError::conflict("an upgrade or rollback is already running"))?;
        let target = self
            .target
            .as_ref()
            .ok_or_else(|| ApiError::unavailable("the inactive slot was not found"))?;
        let installed =
            upgrade::install(body, target, force, &|m| (self.log)(m)).map_err(upgrade_error)?;
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

    fn renew_certificate(&self, offered: &NodeCertificate) -> Result<CertificateReport, ApiError> {
        let renewal = self
            .renewal
            .get()
            .ok_or_else(|| ApiError::unavailable("the API is still starting"))?;
        renewal.renew(offered, rustls::pki_types::UnixTime::now())
    }

    fn rollback(&self) -> Result<RollbackReport, ApiError> {
        self.refuse_if_diskless()?;
        let _busy = self
            .busy
            .try_lock()
            .map_err(|_| ApiError::conflict("an upgrade or rollback is already running"))?;
        let slot = self.identity.slot;
        let to = upgrade::rollback(&self.esp, &self.state, slot, &self.identity.version).map_err(
            |e| match e {
                upgrade::UpgradeError::Io { .. } => ApiError::internal(e.to_string()),
                other => ApiError::conflict(other.to_string()),
            },
        )?;
        (self.log)(&format!(
            "rollback to {to} in slot {} requested; rebooting",
            slot.other()
        ));
        self.reboot_soon(power::Request::Reboot);
        Ok(RollbackReport {
            from: self.identity.version.clone(),
            to,
            slot: slot.other().to_string(),
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

    #[test]
    fn a_diskless_node_refuses_upgrades_and_rollbacks_with_409_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity {
            name: "keel".into(),
            version: "1.0.0".into(),
            arch: "x86_64".into(),
            slot: Slot::A,
        };
        let facts = BootFacts {
            diskless: Some(keel_contract::api::Diskless {
                root_url: "http://10.0.2.2:8080/root.img".into(),
                root_ram_bytes: 1 << 20,
                fetch_ms: 10,
            }),
            ..BootFacts::default()
        };
        let p = dir.path().to_path_buf();
        let node = Node::new(identity, facts, (p.clone(), p.clone(), p), None, |_| {});
        for e in [
            node.upgrade_admissible(false).unwrap_err(),
            node.upgrade(&mut &b""[..], 0, false, false).unwrap_err(),
            node.rollback().unwrap_err(),
        ] {
            assert_eq!(
                e.kind,
                keel_contract::api::ErrorKind::Conflict,
                "{}",
                e.message
            );
            assert!(e.message.contains("served a new version"), "{}", e.message);
        }
        let status = node.status();
        assert!(status.slots.is_empty());
        // No supervisor runs etcd here: not a control plane, 409.
        for e in [
            node.etcd_members().unwrap_err(),
            node.etcd_snapshot().err().unwrap(),
        ] {
            assert_eq!(e.kind, keel_contract::api::ErrorKind::Conflict);
            assert!(e.message.contains("not a control plane"), "{}", e.message);
        }
        assert_eq!(
            status.diskless.map(|d| d.root_url).as_deref(),
            Some("http://10.0.2.2:8080/root.img")
        );
    }
}
