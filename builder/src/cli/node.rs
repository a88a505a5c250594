//! `keel node ...`: the node API client's answers as a person or a script reads them.

use std::path::Path;

use keel_contract::api::{OperatorRole, Request, Status};

use super::args::{NodeCommand, NodeConnection};
use super::error::CommandError;
use crate::context::Config;
use crate::node::{
    NodeClient, NodeError, UpdateStream, credentials_for, node_certificate_from, open_update_file,
};
use crate::progress::Reporter;

pub(super) fn client(conn: &NodeConnection) -> Result<NodeClient, CommandError> {
    let (Some(endpoint), Some(secrets)) = (&conn.endpoint, &conn.secrets) else {
        return Err(CommandError::BadInput(
            "no node to talk to: pass --endpoint and --secrets, or save a context (keel context set NAME -e HOST --secrets FILE)".into(),
        ));
    };
    let role = if conn.read_only {
        OperatorRole::ReadOnly
    } else {
        OperatorRole::Admin
    };
    let creds = credentials_for(secrets, role).map_err(CommandError::BadInput)?;
    match &conn.node {
        Some(name) => Ok(NodeClient::for_node(
            endpoint,
            &creds,
            name,
            conn.own_certificate_only,
        )?),
        None => Ok(NodeClient::new(endpoint, &creds)?),
    }
}

impl NodeCommand {
    fn connection(&mut self) -> &mut NodeConnection {
        match self {
            NodeCommand::Status { conn, .. }
            | NodeCommand::Version { conn, .. }
            | NodeCommand::Logs { conn, .. }
            | NodeCommand::Reboot { conn }
            | NodeCommand::Shutdown { conn }
            | NodeCommand::Rollback { conn, .. }
            | NodeCommand::Upgrade { conn, .. }
            | NodeCommand::RenewCertificate { conn, .. } => conn,
            NodeCommand::Etcd(command) => command.connection(),
        }
    }
}

/// Fills what the command line left out from the saved context: `--context NAME`, else the
/// current one. Flags and their environment variables win over the context.
pub fn with_context(
    mut command: NodeCommand,
    config: &Config,
    name: Option<&str>,
) -> Result<NodeCommand, CommandError> {
    let conn = command.connection();
    if conn.endpoint.is_some() && conn.secrets.is_some() {
        return Ok(command);
    }
    if name.is_none() && config.current.is_none() {
        return Ok(command);
    }
    let (_, context) = config.get(name)?;
    if conn.endpoint.is_none() {
        conn.endpoint = context.endpoints.first().cloned();
    }
    if conn.secrets.is_none() {
        conn.secrets = Some(context.secrets.clone());
    }
    Ok(command)
}

/// Runs a `keel node` subcommand, printing its result on stdout.
pub fn run(command: NodeCommand, rep: &Reporter) -> Result<(), CommandError> {
    run_with(command, rep, &open_update_file, &mut std::io::stdout())
}

/// As [`run`], with the function that opens an update for upload and the output given.
pub fn run_with(
    command: NodeCommand,
    rep: &Reporter,
    open_update: &dyn Fn(&Path) -> Result<UpdateStream, NodeError>,
    out: &mut dyn std::io::Write,
) -> Result<(), CommandError> {
    let text = match command {
        NodeCommand::Status { conn, json } => {
            let node = client(&conn)?;
            if json {
                ensure_newline(node.request(&Request::Status, None)?.text())
            } else {
                let status = node.status()?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                format_status(&status) + &format_certificates(&node.certificate_expiry(), now)
            }
        }
        NodeCommand::Version { conn, json } => {
            let node = client(&conn)?;
            if json {
                ensure_newline(node.request(&Request::Version, None)?.text())
            } else {
                let v = node.version()?;
                format!(
                    "{} {} ({}, slot {}), keel-init {}\n",
                    v.name, v.version, v.arch, v.slot, v.keel
                )
            }
        }
        NodeCommand::Logs {
            conn,
            service,
            lines,
        } => client(&conn)?.logs(&service, lines)?,
        NodeCommand::Reboot { conn } => {
            let node = client(&conn)?;
            let ack = node.reboot()?;
            format!("{}: {}\n", node.endpoint(), ack.message)
        }
        NodeCommand::Shutdown { conn } => {
            let node = client(&conn)?;
            let ack = node.shutdown()?;
            format!("{}: {}\n", node.endpoint(), ack.message)
        }
        NodeCommand::Rollback { conn, json } => rollback(&client(&conn)?, json)?,
        NodeCommand::Etcd(command) => super::node_etcd::run(command, &client)?,
        NodeCommand::RenewCertificate { from, conn, json } => {
            let file = from.as_ref().or(conn.secrets.as_ref()).cloned();
            let node = client(&conn)?;
            let file = file.ok_or_else(|| {
                CommandError::BadInput("no certificate to send: pass --from FILE".into())
            })?;
            let offered = node_certificate_from(&file)?;
            renewed(&node, &offered, json)?
        }
        NodeCommand::Upgrade {
            conn,
            bundle,
            force,
            no_reboot,
            json,
        } => {
            let node = client(&conn)?;
            let mut update = open_update(&bundle)?;
            let reply = node.upgrade_raw(&mut update.reader, update.len, force, !no_reboot, rep)?;
            if json {
                ensure_newline(reply.text())
            } else {
                upgraded(&node, &reply.body)?
            }
        }
    };
    out.write_all(text.as_bytes())
        .map_err(|e| CommandError::Failed(format!("writing the output: {e}")))
}

fn rollback(node: &NodeClient, json: bool) -> Result<String, CommandError> {
    if json {
        return Ok(ensure_newline(
            node.request(&Request::Rollback, None)?.text(),
        ));
    }
    let r = node.rollback()?;
    let then = if r.reboot { "; rebooting" } else { "" };
    Ok(format!(
        "{}: next boot is slot {} ({}, was {}){then}\n",
        node.endpoint(),
        r.slot,
        r.to,
        r.from
    ))
}

fn renewed(
    node: &NodeClient,
    offered: &keel_contract::api::NodeCertificate,
    json: bool,
) -> Result<String, CommandError> {
    let reply = node.renew_certificate_raw(offered)?;
    if json {
        return Ok(ensure_newline(reply.text()));
    }
    let r: keel_contract::api::CertificateReport = serde_json::from_slice(&reply.body)
        .map_err(|e| CommandError::Failed(format!("the node's answer: {e}")))?;
    Ok(format!(
        "{}: serves the certificate for {} (serial {}) until {} on new connections, and after reboots\n",
        node.endpoint(),
        r.names.join(", "),
        r.serial,
        keel_pki::utc_date(r.not_after)
    ))
}

/// The upgrade's answer, as a person reads it.
fn upgraded(node: &NodeClient, body: &[u8]) -> Result<String, CommandError> {
    let r: keel_contract::api::UpgradeReport = serde_json::from_slice(body)
        .map_err(|e| CommandError::Failed(format!("the node's answer: {e}")))?;
    let then = if r.reboot {
        "; rebooting into it"
    } else {
        "; boots on the next reboot"
    };
    Ok(format!(
        "{}: installed {} in slot {} (was {}, {} received){then}\n",
        node.endpoint(),
        r.to,
        r.slot,
        r.from,
        crate::progress::human_bytes(r.bytes)
    ))
}

pub(super) fn ensure_newline(mut text: String) -> String {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// `3d 4h`, `2h 03m`, `5m 12s`, `40s`.
pub fn format_uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Left-aligned columns, two spaces apart, no trailing spaces.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// The status as a person reads it.
/// Certificates this close to their end are warned about.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// When the node's and the operator's certificates end, and a warning for either within
/// [`EXPIRY_WARNING_DAYS`] of it.
pub fn format_certificates(expiry: &crate::node::CertificateExpiry, now: i64) -> String {
    let mut out = String::from("\n");
    let mut warnings = String::new();
    for (label, what, fix, end) in [
        (
            "node cert",
            "the node's API certificate",
            "`keel secrets renew` (the shared one) or `keel secrets node` (its own), then give the node its new secrets",
            expiry.node,
        ),
        (
            "your cert",
            "your operator certificate",
            "`keel secrets renew`",
            expiry.operator,
        ),
    ] {
        let Some(end) = end else { continue };
        let days = (end - now).div_euclid(86_400);
        let date = keel_pki::utc_date(end);
        if end <= now {
            out.push_str(&format!("{label}  EXPIRED on {date}\n"));
            warnings.push_str(&format!("WARNING    {what} has expired: {fix}\n"));
        } else {
            out.push_str(&format!("{label}  valid until {date} ({days} days)\n"));
            if days < EXPIRY_WARNING_DAYS {
                warnings.push_str(&format!(
                    "WARNING    {what} expires in {days} days, on {date}: {fix}\n"
                ));
            }
        }
    }
    out + &warnings
}

pub fn format_status(s: &Status) -> String {
    let dash = || "-".to_owned();
    let boot = match &s.diskless {
        Some(_) => "from the network, no disk".to_owned(),
        None => format!("{} of this disk", s.boot),
    };
    let mut out = format!(
        "node       {} ({} {}, slot {})\nboot       {boot}, up {}\naddresses  {}\n",
        s.hostname,
        s.name,
        s.version,
        s.slot,
        format_uptime(s.uptime_secs),
        if s.addresses.is_empty() {
            dash()
        } else {
            s.addresses.join(" ")
        }
    );
    if !s.ready && s.degraded.is_none() {
        out.push_str("ready      not yet (booting)\n");
    }
    if let Some(vip) = &s.vip {
        out.push_str(&format!(
            "vip        {vip} (held here: this node's etcd member leads)\n"
        ));
    }
    if let Some(d) = &s.diskless {
        out.push_str(&format!(
            "diskless   root from {} in RAM ({:.1} MiB, fetched and verified in {:.1}s); /var on tmpfs; upgrades by serving a new version\n",
            d.root_url,
            d.root_ram_bytes as f64 / f64::from(1 << 20),
            d.fetch_ms as f64 / 1000.0
        ));
    }
    if let Some(from) = &s.rolled_back_from {
        let why = if s.rollback_requested {
            "as requested"
        } else {
            "it failed to boot"
        };
        out.push_str(&format!("rolled back from {from} ({why})\n"));
    }
    if !s.quarantined.is_empty() {
        out.push_str(&format!("quarantined {}\n", s.quarantined.join(" ")));
    }
    if let Some(why) = &s.degraded {
        out.push_str(&format!("DEGRADED   {why}\n"));
    }
    for warning in &s.warnings {
        out.push_str(&format!("warning    {warning}\n"));
    }
    if !s.timeline.is_empty() {
        out.push_str(&format!(
            "timeline   {}\n",
            keel_contract::api::timeline_line(&s.timeline)
        ));
    }
    out.push('\n');
    let slots: Vec<Vec<String>> = s
        .slots
        .iter()
        .map(|slot| {
            vec![
                if slot.booted {
                    format!("{} *", slot.slot)
                } else {
                    slot.slot.clone()
                },
                slot.version.clone().unwrap_or_else(|| "(empty)".into()),
                slot.entry.clone().unwrap_or_else(dash),
                if slot.healthy { "yes" } else { "no" }.into(),
                slot.invalid
                    .as_ref()
                    .map(|why| format!("invalid: {why}"))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    // A diskless node has no slots.
    if !slots.is_empty() {
        out.push_str(&table(
            &["SLOT", "VERSION", "BOOT ENTRY", "HEALTHY", "NOTE"],
            &slots,
        ));
        out.push('\n');
    }
    let services: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|svc| {
            vec![
                svc.name.clone(),
                svc.state.clone(),
                svc.restarts.to_string(),
                svc.pid.map(|p| p.to_string()).unwrap_or_else(dash),
                svc.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["SERVICE", "STATE", "RESTARTS", "PID", "MESSAGE"],
        &services,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_contract::api::{ServiceInfo, SlotInfo};

    #[test]
    fn uptime() {
        assert_eq!(format_uptime(40), "40s");
        assert_eq!(format_uptime(312), "5m 12s");
        assert_eq!(format_uptime(2 * 3600 + 3 * 60 + 9), "2h 03m");
        assert_eq!(format_uptime(3 * 86400 + 4 * 3600 + 1), "3d 4h");
    }

    #[test]
    fn status_table() {
        let status = Status {
            name: "keel-worker".into(),
            version: "1.1.0".into(),
            slot: "a".into(),
            hostname: "worker-1".into(),
            addresses: vec!["10.0.2.15/24".into()],
            slots: vec![
                SlotInfo {
                    slot: "a".into(),
                    version: Some("1.1.0".into()),
                    entry: Some("keel-a.conf".into()),
                    booted: true,
                    healthy: true,
                    invalid: None,
                },
                SlotInfo {
                    slot: "b".into(),
                    version: Some("1.2.0".into()),
                    entry: Some("keel-b+0-3.conf".into()),
                    booted: false,
                    healthy: false,
                    invalid: None,
                },
            ],
            services: vec![
                ServiceInfo {
                    name: "containerd".into(),
                    state: "running".into(),
                    restarts: 0,
                    pid: Some(412),
                    message: None,
                },
                ServiceInfo {
                    name: "etcd".into(),
                    state: "backoff".into(),
                    restarts: 3,
                    pid: None,
                    message: Some("exited with 1".into()),
                },
            ],
            boot: 7,
            rolled_back_from: Some("1.2.0".into()),
            rollback_requested: false,
            quarantined: vec!["1.2.0".into()],
            uptime_secs: 7500,
            degraded: None,
            warnings: vec![],
            timeline: vec![],
            diskless: None,
            ready: true,
            vip: None,
        };
        let text = format_status(&status);
        let expected = "\
node       worker-1 (keel-worker 1.1.0, slot a)
boot       7 of this disk, up 2h 05m
addresses  10.0.2.15/24
rolled back from 1.2.0 (it failed to boot)
quarantined 1.2.0

SLOT  VERSION  BOOT ENTRY       HEALTHY  NOTE
a *   1.1.0    keel-a.conf      yes
b     1.2.0    keel-b+0-3.conf  no

SERVICE     STATE    RESTARTS  PID  MESSAGE
containerd  running  0         412
etcd        backoff  3         -    exited with 1
";
        assert_eq!(text, expected, "\n{text}");

        // A degraded node with an invalid slot says so.
        let mut degraded = status.clone();
        degraded.degraded = Some("/var is unavailable: e2fsck exited with 8".into());
        degraded.warnings = vec!["secrets from fw_cfg refused".into()];
        degraded.timeline = vec![keel_contract::api::BootStep {
            step: "var".into(),
            start_ms: 1200,
            end_ms: 1500,
        }];
        degraded.slots[1] = SlotInfo {
            slot: "b".into(),
            version: None,
            entry: None,
            booted: false,
            healthy: false,
            invalid: Some("being written by an upgrade that did not finish".into()),
        };
        let text = format_status(&degraded);
        for line in [
            "DEGRADED   /var is unavailable: e2fsck exited with 8\n",
            "warning    secrets from fw_cfg refused\ntimeline   var 1.20-1.50\n",
            "b     (empty)  -            no       invalid: being written by an upgrade that did not finish\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }

        // A diskless node says so, and has no slot table.
        let mut diskless = status.clone();
        diskless.slots = vec![];
        diskless.diskless = Some(keel_contract::api::Diskless {
            root_url: "http://10.0.2.2:8080/root.img".into(),
            root_ram_bytes: 300 << 20,
            fetch_ms: 4200,
        });
        let text = format_status(&diskless);
        assert!(
            text.contains("boot       from the network, no disk, up 2h 05m\n"),
            "{text}"
        );
        assert!(
            text.contains("diskless   root from http://10.0.2.2:8080/root.img in RAM (300.0 MiB, fetched and verified in 4.2s)"),
            "{text}"
        );
        assert!(!text.contains("SLOT"), "{text}");
    }

    #[test]
    fn certificate_expiry_is_shown_and_warned_about() {
        let now = 1_800_000_000;
        let day = 86_400;
        let text = format_certificates(
            &crate::node::CertificateExpiry {
                node: Some(now + 200 * day + 5),
                operator: Some(now + 29 * day + 5),
            },
            now,
        );
        assert!(
            text.contains("node cert  valid until 2027-08-03 (200 days)\n"),
            "{text}"
        );
        assert!(text.contains("your cert  valid until"), "{text}");
        assert!(
            text.contains("WARNING    your operator certificate expires in 29 days"),
            "{text}"
        );
        assert!(!text.contains("node's API certificate expires"), "{text}");
        let text = format_certificates(
            &crate::node::CertificateExpiry {
                node: Some(now - 1),
                operator: None,
            },
            now,
        );
        assert!(text.contains("node cert  EXPIRED on"), "{text}");
        assert!(
            text.contains("WARNING    the node's API certificate has expired"),
            "{text}"
        );
        assert!(!text.contains("your cert"), "{text}");
    }
}
