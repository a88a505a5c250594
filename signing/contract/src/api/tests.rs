//! The contract's own checks: routing round trips, refusals, status codes, JSON names.

use super::*;

fn all_requests() -> Vec<Request> {
    vec![
        Request::Version,
        Request::Status,
        Request::Logs {
            service: "containerd".into(),
            lines: 7,
        },
        Request::Reboot,
        Request::Shutdown,
        Request::Upgrade {
            force: true,
            reboot: false,
        },
        Request::Upgrade {
            force: false,
            reboot: true,
        },
        Request::Rollback,
        Request::RenewCertificate,
        Request::EtcdMembers,
        Request::EtcdSnapshot,
        Request::EtcdRemoveMember {
            name: "kt-cp-4".into(),
        },
    ]
}

#[test]
fn every_request_round_trips_through_its_target() {
    for r in all_requests() {
        let back = Request::parse(r.method().as_str(), &r.target()).unwrap();
        assert_eq!(back, r, "{}", r.target());
    }
}

#[test]
fn the_wrong_method_is_refused() {
    for r in all_requests() {
        let other = match r.method() {
            Method::Get => "POST",
            Method::Post => "GET",
        };
        assert_eq!(
            Request::parse(other, &r.target()),
            Err(RouteError::MethodNotAllowed(r.method()))
        );
    }
    assert!(matches!(
        Request::parse("DELETE", "/v1/status"),
        Err(RouteError::MethodNotAllowed(Method::Get))
    ));
}

#[test]
fn defaults_and_refusals() {
    assert_eq!(
        Request::parse("POST", "/v1/upgrade").unwrap(),
        Request::Upgrade {
            force: false,
            reboot: true
        }
    );
    assert_eq!(
        Request::parse("GET", "/v1/logs/etcd").unwrap(),
        Request::Logs {
            service: "etcd".into(),
            lines: DEFAULT_LOG_LINES
        }
    );
    for bad in [
        "/v1/upgrade?forse=1",
        "/v1/upgrade?force=yes",
        "/v1/upgrade?force=1&force=0",
        "/v1/upgrade?force=%31",
        "/v1/status?x=1",
    ] {
        let method = if bad.starts_with("/v1/upgrade") {
            "POST"
        } else {
            "GET"
        };
        assert!(
            matches!(Request::parse(method, bad), Err(RouteError::BadQuery(_))),
            "{bad}"
        );
    }
    for bad in ["lines=0", "lines=-1", "lines=100001", "lines=x"] {
        assert!(matches!(
            Request::parse("GET", &format!("/v1/logs/etcd?{bad}")),
            Err(RouteError::BadQuery(_))
        ));
    }
    for bad in [
        "/v1/logs/",
        "/v1/logs/../etc",
        "/v1/logs/a/b",
        "/v1/logs/.hidden",
        "/v2/status",
        "/v1/status/",
        "/",
    ] {
        assert!(
            matches!(Request::parse("GET", bad), Err(RouteError::NotFound(_))),
            "{bad}"
        );
    }
}

#[test]
fn status_codes_map_both_ways() {
    for status in [400, 404, 405, 409, 411, 413, 415, 422, 431, 500, 503] {
        let kind = ErrorKind::from_status(status).unwrap();
        assert_eq!(kind.status(), status);
    }
    assert_eq!(ErrorKind::from_status(418), None);
    assert_eq!(ErrorKind::Conflict.status(), 409);
    assert_eq!(ErrorKind::VerificationFailed.status(), 422);
}

#[test]
fn the_timeline_reads_in_seconds_and_an_older_node_has_none() {
    let step = |step: &str, start_ms, end_ms| BootStep {
        step: step.into(),
        start_ms,
        end_ms,
    };
    let steps = [step("modules", 404, 810), step("var", 1009, 12345)];
    assert_eq!(timeline_line(&steps), "modules 0.40-0.81 var 1.00-12.34");
    assert_eq!(timeline_line(&[]), "");
    let mut json = serde_json::to_value(Status {
        name: "n".into(),
        version: "1.0.0".into(),
        slot: "a".into(),
        hostname: "h".into(),
        addresses: vec![],
        slots: vec![],
        services: vec![],
        boot: 1,
        rolled_back_from: None,
        rollback_requested: false,
        quarantined: vec![],
        uptime_secs: 1,
        degraded: None,
        warnings: vec![],
        timeline: steps.to_vec(),
        diskless: None,
        ready: true,
        vip: None,
    })
    .unwrap();
    json.as_object_mut().unwrap().remove("timeline");
    let older: Status = serde_json::from_value(json).unwrap();
    assert!(older.timeline.is_empty());
}

/// A node from before `ready` and `vip` answers without them: not ready, no virtual IP.
#[test]
fn status_from_an_older_node_has_no_ready_or_vip() {
    let text = r#"{"name":"n","version":"1.0.0","slot":"a","hostname":"h","addresses":[],"slots":[],"services":[],"boot":1,"rolled_back_from":null,"quarantined":[],"uptime_secs":1}"#;
    let older: Status = serde_json::from_str(text).unwrap();
    assert!(!older.ready);
    assert_eq!(older.vip, None);
}

#[test]
fn status_json_field_names_are_the_contract() {
    let status = Status {
        name: "keel-worker".into(),
        version: "1.0.0".into(),
        slot: "a".into(),
        hostname: "w1".into(),
        addresses: vec!["10.0.2.15/24".into()],
        slots: vec![SlotInfo {
            slot: "a".into(),
            version: Some("1.0.0".into()),
            entry: Some("keel-a.conf".into()),
            booted: true,
            healthy: true,
            invalid: None,
        }],
        services: vec![ServiceInfo {
            name: "containerd".into(),
            state: "running".into(),
            restarts: 0,
            pid: Some(42),
            message: None,
        }],
        boot: 3,
        rolled_back_from: None,
        rollback_requested: false,
        quarantined: vec![],
        uptime_secs: 61,
        degraded: Some("/var is unavailable".into()),
        warnings: vec!["w".into()],
        timeline: vec![BootStep {
            step: "var".into(),
            start_ms: 810,
            end_ms: 1954,
        }],
        diskless: Some(Diskless {
            root_url: "http://10.0.2.2:8080/root.img".into(),
            root_ram_bytes: 300 << 20,
            fetch_ms: 4200,
        }),
        ready: false,
        vip: Some("10.5.0.10".into()),
    };
    let json = serde_json::to_value(&status).unwrap();
    for key in [
        "name",
        "version",
        "slot",
        "hostname",
        "addresses",
        "slots",
        "services",
        "boot",
        "rolled_back_from",
        "quarantined",
        "uptime_secs",
        "degraded",
        "warnings",
        "timeline",
        "ready",
        "vip",
    ] {
        assert!(json.get(key).is_some(), "{key}");
    }
    assert_eq!(json["timeline"][0]["step"], "var");
    assert_eq!(json["timeline"][0]["start_ms"], 810);
    assert_eq!(json["timeline"][0]["end_ms"], 1954);
    assert_eq!(json["slots"][0]["entry"], "keel-a.conf");
    assert_eq!(json["services"][0]["pid"], 42);
    assert_eq!(
        json["diskless"]["root_url"],
        "http://10.0.2.2:8080/root.img"
    );
    assert_eq!(json["diskless"]["root_ram_bytes"], 300 << 20);
    assert_eq!(json["diskless"]["fetch_ms"], 4200);
    let back: Status = serde_json::from_value(json).unwrap();
    assert_eq!(back, status);
}

#[test]
fn a_read_only_role_reads_and_an_admin_does_everything() {
    for r in all_requests() {
        assert!(OperatorRole::Admin.allows(&r), "{r:?}");
        let reads = matches!(
            r,
            Request::Version | Request::Status | Request::Logs { .. } | Request::EtcdMembers
        );
        assert_eq!(OperatorRole::ReadOnly.allows(&r), reads, "{r:?}");
    }
    assert_eq!(OperatorRole::from_organizations([]), OperatorRole::Admin);
    assert_eq!(
        OperatorRole::from_organizations(["keel:admin"]),
        OperatorRole::Admin
    );
    assert_eq!(
        OperatorRole::from_organizations(["keel:admin", "keel:read-only"]),
        OperatorRole::ReadOnly
    );
    for role in [OperatorRole::ReadOnly, OperatorRole::Admin] {
        assert_eq!(
            OperatorRole::from_organizations([role.organization()]),
            role
        );
    }
    assert_eq!(ErrorKind::from_status(403), Some(ErrorKind::Forbidden));
}

#[test]
fn the_etcd_routes_are_gets_and_a_snapshot_is_for_admins() {
    assert_eq!(
        Request::parse("GET", "/v1/etcd/members"),
        Ok(Request::EtcdMembers)
    );
    assert_eq!(
        Request::parse("GET", "/v1/etcd/snapshot"),
        Ok(Request::EtcdSnapshot)
    );
    assert_eq!(
        Request::parse("POST", "/v1/etcd/snapshot"),
        Err(RouteError::MethodNotAllowed(Method::Get))
    );
    assert!(matches!(
        Request::parse("GET", "/v1/etcd/snapshot?revision=3"),
        Err(RouteError::BadQuery(_))
    ));
    assert!(!Request::EtcdSnapshot.changes_the_node());
    assert!(Request::EtcdSnapshot.admin_only());
    assert!(!OperatorRole::ReadOnly.allows(&Request::EtcdSnapshot));
    assert!(OperatorRole::ReadOnly.allows(&Request::EtcdMembers));
    assert!(OperatorRole::Admin.allows(&Request::EtcdSnapshot));
}

#[test]
fn removing_an_etcd_member_is_a_post_for_admins_naming_the_member() {
    let remove = Request::EtcdRemoveMember {
        name: "kt-cp-4".into(),
    };
    assert_eq!(
        Request::parse("POST", "/v1/etcd/members/remove?name=kt-cp-4"),
        Ok(remove.clone())
    );
    assert!(remove.admin_only() && !OperatorRole::ReadOnly.allows(&remove));
    for bad in [
        "/v1/etcd/members/remove",
        "/v1/etcd/members/remove?name=",
        "/v1/etcd/members/remove?name=Not_A_Node",
        "/v1/etcd/members/remove?name=a&id=3",
    ] {
        assert!(
            matches!(Request::parse("POST", bad), Err(RouteError::BadQuery(_))),
            "{bad}"
        );
    }
    assert_eq!(
        Request::parse("GET", "/v1/etcd/members/remove?name=kt-cp-4"),
        Err(RouteError::MethodNotAllowed(Method::Post))
    );
}

#[test]
fn etcd_members_json_names_are_the_contract() {
    let members = EtcdMembers {
        cluster_id: 15118495548433857066,
        member_id: 13668033151171901709,
        leader_id: 13668033151171901709,
        raft_term: 2,
        healthy: true,
        version: "3.4.23".into(),
        members: vec![EtcdMember {
            id: 13668033151171901709,
            name: "cp1".into(),
            peer_urls: vec!["https://10.0.0.5:2380".into()],
            client_urls: vec!["https://10.0.0.5:2379".into()],
            learner: false,
        }],
    };
    let json = serde_json::to_value(&members).unwrap();
    assert_eq!(json["member_id"], 13668033151171901709u64);
    assert_eq!(json["members"][0]["peer_urls"][0], "https://10.0.0.5:2380");
    assert_eq!(json["members"][0]["learner"], false);
    let back: EtcdMembers = serde_json::from_value(json).unwrap();
    assert_eq!(back, members);
    assert_eq!(back.member(13668033151171901709).unwrap().name, "cp1");
}
