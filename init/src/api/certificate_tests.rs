//! Issue 11: the checks a pushed API certificate must pass, and what is kept on STATE.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use keel_contract::secrets::{CertKey, Secrets};

use super::*;

const HOST: &str = "worker-7";

fn now() -> UnixTime {
    UnixTime::now()
}

fn now_secs() -> u64 {
    now().as_secs()
}

fn cluster() -> Secrets {
    keel_pki::generate("keel", now_secs()).unwrap()
}

fn offered(c: &CertKey) -> NodeCertificate {
    NodeCertificate {
        cert: c.cert.clone(),
        key: c.key.clone(),
    }
}

fn own(secrets: &Secrets, name: &str) -> CertKey {
    keel_pki::issue_node_api(secrets, name, &["10.0.2.15".parse().unwrap()], now_secs()).unwrap()
}

#[test]
fn the_shared_certificate_and_the_nodes_own_are_accepted() {
    let s = cluster();
    let renewed = keel_pki::renew(&s, now_secs()).unwrap();
    let shared = check(&offered(&renewed.node_api), &s.keel_ca.cert, HOST, now()).unwrap();
    assert_eq!(shared.report.names, ["keel-node"]);
    assert_eq!(
        shared.report.not_after,
        keel_pki::not_after_pem(&renewed.node_api.cert).unwrap()
    );
    assert_eq!(shared.report.serial.len(), 32, "{}", shared.report.serial);
    let mine = check(&offered(&own(&s, HOST)), &s.keel_ca.cert, HOST, now()).unwrap();
    assert_eq!(mine.report.names, [HOST, "keel-node"]);
    // Host names compare without case, as DNS names do.
    check(&offered(&own(&s, HOST)), &s.keel_ca.cert, "Worker-7", now()).unwrap();
}

#[test]
fn another_clusters_certificate_is_refused() {
    let s = cluster();
    let other = cluster();
    let err = check(&offered(&other.node_api), &s.keel_ca.cert, HOST, now()).unwrap_err();
    assert!(matches!(err, CertificateError::WrongCa(_)), "{err}");
    assert!(
        err.to_string().contains("not issued by the keel CA"),
        "{err}"
    );
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let s = cluster();
    let renewed = keel_pki::renew(&s, now_secs()).unwrap();
    let mixed = NodeCertificate {
        cert: renewed.node_api.cert.clone(),
        key: s.node_api.key.clone(),
    };
    let err = check(&mixed, &s.keel_ca.cert, HOST, now()).unwrap_err();
    assert_eq!(err, CertificateError::KeyMismatch);
    let garbage = NodeCertificate {
        cert: renewed.node_api.cert.clone(),
        key: "not a key".into(),
    };
    let err = check(&garbage, &s.keel_ca.cert, HOST, now()).unwrap_err();
    assert!(matches!(err, CertificateError::Key(_)), "{err}");
    let no_cert = NodeCertificate {
        cert: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
        key: renewed.node_api.key.clone(),
    };
    assert!(check(&no_cert, &s.keel_ca.cert, HOST, now()).is_err());
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_refused() {
    let s = cluster();
    let cert = offered(&s.node_api);
    let end = keel_pki::not_after_pem(&cert.cert).unwrap();
    let after = UnixTime::since_unix_epoch(Duration::from_secs(end as u64 + 60));
    let err = check(&cert, &s.keel_ca.cert, HOST, after).unwrap_err();
    assert!(matches!(err, CertificateError::NotValid { .. }), "{err}");
    assert!(err.to_string().contains("not valid now"), "{err}");
    let before = UnixTime::since_unix_epoch(Duration::from_secs(now_secs() - 3 * 3600));
    let err = check(&cert, &s.keel_ca.cert, HOST, before).unwrap_err();
    assert!(matches!(err, CertificateError::NotValid { .. }), "{err}");
}

#[test]
fn another_nodes_certificate_is_refused() {
    let s = cluster();
    let err = check(&offered(&own(&s, "worker-8")), &s.keel_ca.cert, HOST, now()).unwrap_err();
    assert_eq!(
        err,
        CertificateError::WrongName {
            names: "worker-8, keel-node".into(),
            hostname: HOST.into()
        }
    );
    assert!(err.to_string().contains("worker-7"), "{err}");
}

#[test]
fn a_certificate_without_keel_node_is_refused() {
    // The keel CA's admin certificate: the right CA, but a client's, for no server name.
    let s = cluster();
    let err = check(&offered(&s.keel_admin), &s.keel_ca.cert, HOST, now()).unwrap_err();
    assert!(!matches!(err, CertificateError::KeyMismatch), "{err}");
}

fn log(_line: &str) {}

fn renewal(s: &Secrets, state: &Path) -> Renewal {
    Renewal {
        tls: super::super::ServerTls::from_pem(&s.node_api.cert, &s.node_api.key, &s.keel_ca.cert)
            .unwrap(),
        trusted_ca_pem: s.keel_ca.cert.clone(),
        hostname: HOST.into(),
        state: state.to_owned(),
        log,
    }
}

fn served(tls: &super::super::ServerTls) -> Vec<u8> {
    tls.serving.0.read().unwrap().cert[0].as_ref().to_vec()
}

#[test]
fn a_renewal_is_saved_then_served_and_a_refused_one_changes_nothing() {
    let s = cluster();
    let dir = tempfile::tempdir().unwrap();
    let r = renewal(&s, dir.path());
    let file = dir.path().join("api-certificate.toml");
    let first = served(&r.tls);

    let other = cluster();
    let err = r.renew(&offered(&other.node_api), now()).unwrap_err();
    assert_eq!(err.kind, keel_contract::api::ErrorKind::BadRequest);
    assert!(err.message.contains("not issued by the keel CA"), "{err}");
    assert!(!file.exists(), "nothing saved");
    assert_eq!(served(&r.tls), first, "nothing swapped");

    let mine = own(&s, HOST);
    let report = r.renew(&offered(&mine), now()).unwrap();
    assert_eq!(report.names, [HOST, "keel-node"]);
    assert_ne!(served(&r.tls), first, "the new certificate is served");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!dir.path().join("api-certificate.toml.new").exists());

    // The next boot: it wins over the older certificate in the secrets...
    let (kept, report2) = saved(
        dir.path(),
        &offered(&s.node_api),
        &s.keel_ca.cert,
        HOST,
        now(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(kept, offered(&mine));
    assert_eq!(report2, report);
    // ...but not over one in newer secrets given at boot, nor on another node.
    let later = keel_pki::renew(&s, now_secs() + 86_400).unwrap();
    assert_eq!(
        saved(
            dir.path(),
            &offered(&later.node_api),
            &s.keel_ca.cert,
            HOST,
            now()
        )
        .unwrap(),
        None
    );
    let err = saved(
        dir.path(),
        &offered(&s.node_api),
        &s.keel_ca.cert,
        "worker-9",
        now(),
    )
    .unwrap_err();
    assert!(err.contains("not used"), "{err}");
    // Nothing saved: nothing to say.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        saved(
            empty.path(),
            &offered(&s.node_api),
            &s.keel_ca.cert,
            HOST,
            now()
        )
        .unwrap(),
        None
    );
}
