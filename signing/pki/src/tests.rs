//! The PKI against independent peers: OpenSSL verifies every certificate against its CA with
//! the purpose it is for (`-x509_strict -purpose sslserver|sslclient`) and prints its
//! extensions; x509-parser reads validity, serials and SANs; a real etcd serves with the
//! derived certificates and etcdctl talks to it with the client ones.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use base64::Engine;

use super::kubeconfig::Kubeconfig;
use super::*;
use keel_contract::profile::Role;
use keel_contract::secrets::NodeSecrets;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn identity() -> NodeIdentity {
    NodeIdentity {
        hostname: "cp-1".into(),
        ips: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
        endpoint: "https://api.example.test:6443".parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        cluster_domain: "cluster.local".into(),
        extra_sans: vec!["k8s.example.test".into(), "192.0.2.7".into()],
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `openssl verify -x509_strict -purpose P -CAfile ca cert` now: Ok or OpenSSL's complaint.
fn verify(ca: &str, cert: &str, purpose: &str) -> Result<(), String> {
    verify_at(ca, cert, purpose, now())
}

/// The same as of `at` (unix seconds).
fn verify_at(ca: &str, cert: &str, purpose: &str, at: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", ca);
    let cert = write(dir.path(), "cert.pem", cert);
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", purpose])
        .args(["-attime", &at.to_string(), "-CAfile", &ca, &cert])
        .output()
        .expect("openssl is installed (vm-tests/install-host-packages)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && text.trim_end().ends_with(": OK") {
        Ok(())
    } else {
        Err(text)
    }
}

/// `openssl x509 -noout -text`.
fn x509_text(cert: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "cert.pem", cert);
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", &path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line after an extension's header in `openssl x509 -text` output.
fn extension(text: &str, header: &str) -> String {
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with(header) {
            return lines.next().unwrap_or_default().trim().to_owned();
        }
    }
    String::new()
}

fn der(pem: &str) -> Vec<u8> {
    keel_contract::secrets::pem_blocks(pem)
        .unwrap()
        .remove(0)
        .der
}

/// (not_before, not_after, serial bytes, subject) via x509-parser.
fn facts(pem: &str) -> (i64, i64, Vec<u8>, String) {
    let der = der(pem);
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    (
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
        c.raw_serial().to_vec(),
        c.subject().to_string(),
    )
}

/// The set of PEM private-key blocks (as DER) of the CAs in `s`.
fn ca_keys(s: &Secrets) -> Vec<Vec<u8>> {
    [&s.kubernetes_ca, &s.etcd_ca, &s.front_proxy_ca, &s.keel_ca]
        .iter()
        .map(|p| der(&p.key))
        .collect()
}

fn private_key_blocks(text: &str) -> Vec<Vec<u8>> {
    keel_contract::secrets::pem_blocks(text)
        .unwrap()
        .into_iter()
        .filter(|b| b.label.contains("PRIVATE KEY"))
        .map(|b| b.der)
        .collect()
}

#[test]
fn generated_secrets_verify_with_openssl() {
    let t = now();
    let s = generate("prod-1", t).unwrap();
    assert_eq!((s.cluster_name.as_str(), s.created), ("prod-1", t));
    // Round trip through the file format.
    assert_eq!(Secrets::from_toml(&s.to_toml().unwrap()).unwrap(), s);

    for (name, ca) in [
        ("kubernetes", &s.kubernetes_ca),
        ("etcd-ca", &s.etcd_ca),
        ("front-proxy-ca", &s.front_proxy_ca),
        ("keel-ca", &s.keel_ca),
    ] {
        verify(&ca.cert, &ca.cert, "any").unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = x509_text(&ca.cert);
        assert_eq!(
            extension(&text, "X509v3 Basic Constraints"),
            "CA:TRUE, pathlen:0"
        );
        assert_eq!(
            extension(&text, "X509v3 Key Usage"),
            "Digital Signature, Certificate Sign, CRL Sign"
        );
        assert!(text.contains(&format!("Subject: CN = {name}")), "{text}");
        assert!(text.contains("ASN1 OID: prime256v1"), "P-256: {text}");
        let (nb, na, _, _) = facts(&ca.cert);
        assert_eq!(nb, t as i64 - 3600);
        assert_eq!(na - nb, 3650 * 86_400);
    }
    verify(&s.kubernetes_ca.cert, &s.admin.cert, "sslclient").unwrap();
    verify(&s.etcd_ca.cert, &s.etcd_admin.cert, "sslclient").unwrap();
    verify(&s.keel_ca.cert, &s.keel_admin.cert, "sslclient").unwrap();
    verify(&s.keel_ca.cert, &s.node_api.cert, "sslserver").unwrap();
    // The test can fail: a certificate does not verify against another CA, nor for a
    // purpose it lacks.
    assert!(verify(&s.etcd_ca.cert, &s.admin.cert, "sslclient").is_err());
    assert!(verify(&s.keel_ca.cert, &s.keel_admin.cert, "sslserver").is_err());
    assert!(verify(&s.keel_ca.cert, &s.node_api.cert, "sslclient").is_err());

    let admin = x509_text(&s.admin.cert);
    assert!(
        admin.contains("Subject: O = system:masters, CN = keel-admin"),
        "{admin}"
    );
    assert_eq!(
        extension(&admin, "X509v3 Extended Key Usage"),
        "TLS Web Client Authentication"
    );
    assert_eq!(extension(&admin, "X509v3 Basic Constraints"), "CA:FALSE");
    assert_eq!(extension(&admin, "X509v3 Key Usage"), "Digital Signature");
    let node_api = x509_text(&s.node_api.cert);
    assert!(node_api.contains("Subject: CN = keel-node"), "{node_api}");
    assert_eq!(
        extension(&node_api, "X509v3 Subject Alternative Name"),
        "DNS:keel-node"
    );
    assert_eq!(
        extension(&node_api, "X509v3 Extended Key Usage"),
        "TLS Web Server Authentication"
    );
    let (nb, na, _, _) = facts(&s.node_api.cert);
    assert_eq!((nb, na - nb), (t as i64 - 3600, 365 * 86_400 + 3600));

    // Keys: PKCS#8 P-256 that OpenSSL reads; the SA public key matches its private key.
    let dir = tempfile::tempdir().unwrap();
    let private = write(dir.path(), "sa.key", &s.service_account.private);
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in", &private])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        s.service_account.public
    );

    // Token shape, and two generations differ.
    let tok = &s.bootstrap_token;
    assert!(tok.id.len() == 6 && tok.secret.len() == 16);
    assert!(
        tok.token()
            .bytes()
            .all(|b| b == b'.' || keel_contract::secrets::token_char(b))
    );
    let s2 = generate("prod-1", t).unwrap();
    assert_ne!(s2.bootstrap_token, s.bootstrap_token);
    assert_ne!(s2.kubernetes_ca, s.kubernetes_ca);

    assert!(generate("Prod", t).unwrap_err().is_bad_input());
}

#[test]
fn serials_are_positive_16_bytes_and_distinct() {
    let s = generate("keel", now()).unwrap();
    let files = derive(&s.for_role(Role::ControlPlane), &identity(), now()).unwrap();
    let mut certs: Vec<String> = [
        &s.kubernetes_ca,
        &s.etcd_ca,
        &s.front_proxy_ca,
        &s.keel_ca,
        &s.admin,
        &s.etcd_admin,
        &s.keel_admin,
        &s.node_api,
    ]
    .iter()
    .map(|p| p.cert.clone())
    .collect();
    certs.extend(
        files
            .iter()
            .filter(|f| f.path.ends_with(".crt"))
            .map(|f| String::from_utf8(f.bytes.clone()).unwrap()),
    );
    let mut seen = BTreeMap::new();
    for c in &certs {
        let (_, _, serial, subject) = facts(c);
        assert_eq!(serial.len(), 16, "{subject}");
        assert_eq!(serial[0] & 0xc0, 0x40, "positive, full length: {subject}");
        if let Some(other) = seen.insert(serial, subject.clone()) {
            // The same CA file appears twice (secrets and derived copy); anything else is a
            // duplicate serial.
            assert_eq!(other, subject);
        }
    }
    // 8 generated, 7 more derived (the 3 CA copies are the same certificates).
    assert_eq!(seen.len(), 15);
    // Deterministic from its inputs.
    let spki = [1u8, 2, 3];
    assert_eq!(serial("x", &spki, 5), serial("x", &spki, 5));
    assert_ne!(serial("x", &spki, 5), serial("y", &spki, 5));
}

/// Which CA signed each derived certificate, and its purpose for OpenSSL.
fn expected_issuers() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("pki/ca.crt", "pki/ca.crt", "any"),
        ("pki/apiserver.crt", "pki/ca.crt", "sslserver"),
        (
            "pki/apiserver-kubelet-client.crt",
            "pki/ca.crt",
            "sslclient",
        ),
        (
            "pki/apiserver-etcd-client.crt",
            "pki/etcd/ca.crt",
            "sslclient",
        ),
        ("pki/front-proxy-ca.crt", "pki/front-proxy-ca.crt", "any"),
        (
            "pki/front-proxy-client.crt",
            "pki/front-proxy-ca.crt",
            "sslclient",
        ),
        ("pki/etcd/ca.crt", "pki/etcd/ca.crt", "any"),
        ("pki/etcd/server.crt", "pki/etcd/ca.crt", "sslserver"),
        ("pki/etcd/server.crt", "pki/etcd/ca.crt", "sslclient"),
        ("pki/etcd/peer.crt", "pki/etcd/ca.crt", "sslserver"),
        ("pki/etcd/peer.crt", "pki/etcd/ca.crt", "sslclient"),
        (
            "pki/etcd/healthcheck-client.crt",
            "pki/etcd/ca.crt",
            "sslclient",
        ),
    ]
}

#[test]
fn control_plane_derivation_verifies_and_has_the_right_names() {
    let t = now();
    let s = generate("prod-1", t).unwrap();
    let node = s.for_role(Role::ControlPlane);
    // Derived a day later: leaves start then, CAs stay.
    let later = t + 86_400;
    let files = derive(&node, &identity(), later).unwrap();
    let by_path: BTreeMap<&str, &DerivedFile> =
        files.iter().map(|f| (f.path.as_str(), f)).collect();
    let text = |p: &str| String::from_utf8(by_path[p].bytes.clone()).unwrap();

    let expected_paths = [
        "pki/ca.crt",
        "pki/ca.key",
        "pki/apiserver.crt",
        "pki/apiserver.key",
        "pki/apiserver-kubelet-client.crt",
        "pki/apiserver-kubelet-client.key",
        "pki/apiserver-etcd-client.crt",
        "pki/apiserver-etcd-client.key",
        "pki/front-proxy-ca.crt",
        "pki/front-proxy-ca.key",
        "pki/front-proxy-client.crt",
        "pki/front-proxy-client.key",
        "pki/sa.key",
        "pki/sa.pub",
        "pki/etcd/ca.crt",
        "pki/etcd/ca.key",
        "pki/etcd/server.crt",
        "pki/etcd/server.key",
        "pki/etcd/peer.crt",
        "pki/etcd/peer.key",
        "pki/etcd/healthcheck-client.crt",
        "pki/etcd/healthcheck-client.key",
        "admin.conf",
        "controller-manager.conf",
        "scheduler.conf",
        "kubelet.conf",
    ];
    let mut got: Vec<&str> = by_path.keys().copied().collect();
    let mut want = expected_paths.to_vec();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(files.len(), expected_paths.len(), "no path twice");

    // Modes: keys and kubeconfigs 0600, certificates and the SA public key 0644.
    for f in &files {
        let private = f.path.ends_with(".key") || f.path.ends_with(".conf");
        assert_eq!(f.mode, if private { 0o600 } else { 0o644 }, "{}", f.path);
        let has_key = !private_key_blocks(&String::from_utf8_lossy(&f.bytes)).is_empty();
        assert_eq!(has_key, f.path.ends_with(".key"), "{}", f.path);
    }

    // Every certificate against its CA, for its purpose; and against a wrong CA it fails.
    for (cert, ca, purpose) in expected_issuers() {
        verify_at(&text(ca), &text(cert), purpose, later)
            .unwrap_or_else(|e| panic!("{cert} by {ca} for {purpose}: {e}"));
    }
    let fails = |ca: &str, cert: &str, purpose: &str| {
        verify_at(&text(ca), &text(cert), purpose, later).is_err()
    };
    assert!(fails("pki/etcd/ca.crt", "pki/apiserver.crt", "sslserver"));
    assert!(fails("pki/ca.crt", "pki/apiserver.crt", "sslclient"));
    assert!(fails(
        "pki/ca.crt",
        "pki/apiserver-kubelet-client.crt",
        "sslserver"
    ));
    // Not yet valid at the time it was asked for (now, a day earlier than `later`).
    assert!(verify(&text("pki/ca.crt"), &text("pki/apiserver.crt"), "sslserver").is_err());
    // The CAs are the cluster's, unchanged.
    assert_eq!(text("pki/ca.crt"), s.kubernetes_ca.cert);
    assert_eq!(text("pki/ca.key"), s.kubernetes_ca.key);
    assert_eq!(text("pki/etcd/ca.key"), s.etcd_ca.key);
    assert_eq!(text("pki/front-proxy-ca.key"), s.front_proxy_ca.key);
    assert_eq!(text("pki/sa.key"), s.service_account.private);
    assert_eq!(text("pki/sa.pub"), s.service_account.public);

    let api = x509_text(&text("pki/apiserver.crt"));
    assert_eq!(
        extension(&api, "X509v3 Subject Alternative Name"),
        "DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, \
         DNS:kubernetes.default.svc.cluster.local, DNS:cp-1, DNS:localhost, \
         IP Address:10.96.0.1, DNS:api.example.test, IP Address:10.0.0.5, \
         IP Address:FD00:0:0:0:0:0:0:5, IP Address:127.0.0.1, DNS:k8s.example.test, \
         IP Address:192.0.2.7"
    );
    assert_eq!(
        extension(&api, "X509v3 Extended Key Usage"),
        "TLS Web Server Authentication"
    );
    assert_eq!(extension(&api, "X509v3 Basic Constraints"), "CA:FALSE");
    assert!(api.contains("Subject: CN = kube-apiserver"), "{api}");
    assert!(api.contains("X509v3 Authority Key Identifier"), "{api}");
    for stem in ["server", "peer"] {
        let etcd = x509_text(&text(&format!("pki/etcd/{stem}.crt")));
        assert_eq!(
            extension(&etcd, "X509v3 Subject Alternative Name"),
            "DNS:localhost, DNS:cp-1, IP Address:10.0.0.5, IP Address:FD00:0:0:0:0:0:0:5, \
             IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1",
            "{stem}"
        );
        assert_eq!(
            extension(&etcd, "X509v3 Extended Key Usage"),
            "TLS Web Server Authentication, TLS Web Client Authentication"
        );
        assert!(etcd.contains("Subject: CN = cp-1"), "{etcd}");
    }
    for (file, subject) in [
        (
            "pki/apiserver-kubelet-client.crt",
            "Subject: O = system:masters, CN = kube-apiserver-kubelet-client",
        ),
        (
            "pki/apiserver-etcd-client.crt",
            "Subject: CN = kube-apiserver-etcd-client",
        ),
        (
            "pki/front-proxy-client.crt",
            "Subject: CN = front-proxy-client",
        ),
        (
            "pki/etcd/healthcheck-client.crt",
            "Subject: CN = kube-etcd-healthcheck-client",
        ),
    ] {
        let x = x509_text(&text(file));
        assert!(x.contains(subject), "{file}: {x}");
        assert_eq!(
            extension(&x, "X509v3 Extended Key Usage"),
            "TLS Web Client Authentication"
        );
        assert_eq!(
            extension(&x, "X509v3 Subject Alternative Name"),
            "",
            "{file}"
        );
    }

    // Leaves: valid from an hour before `later`, for a year.
    let (nb, na, _, _) = facts(&text("pki/apiserver.crt"));
    assert_eq!((nb, na), (later as i64 - 3600, later as i64 + 365 * 86_400));

    // Kubeconfigs: the endpoint, the CA, a client certificate with the right subject.
    let ca_data = base64::engine::general_purpose::STANDARD.encode(s.kubernetes_ca.cert.as_bytes());
    for (file, subject) in [
        (
            "admin.conf",
            "Subject: O = system:masters, CN = kubernetes-admin",
        ),
        (
            "controller-manager.conf",
            "Subject: CN = system:kube-controller-manager",
        ),
        ("scheduler.conf", "Subject: CN = system:kube-scheduler"),
        (
            "kubelet.conf",
            "Subject: O = system:nodes, CN = system:node:cp-1",
        ),
    ] {
        let conf = Kubeconfig::from_json(&text(file)).unwrap();
        assert_eq!(conf.clusters[0].name, "prod-1");
        assert_eq!(
            conf.clusters[0].cluster.server,
            "https://api.example.test:6443"
        );
        assert_eq!(conf.clusters[0].cluster.certificate_authority_data, ca_data);
        assert_eq!(conf.current_context, conf.contexts[0].name);
        let user = &conf.users[0].user;
        let decode = |b: &Option<String>| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(b.as_ref().unwrap())
                    .unwrap(),
            )
            .unwrap()
        };
        let cert = decode(&user.client_certificate_data);
        let key = decode(&user.client_key_data);
        verify_at(&s.kubernetes_ca.cert, &cert, "sslclient", later)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let x = x509_text(&cert);
        assert!(x.contains(subject), "{file}: {x}");
        // The key is the certificate's.
        let dir = tempfile::tempdir().unwrap();
        let k = write(dir.path(), "k.pem", &key);
        let c = write(dir.path(), "c.pem", &cert);
        let pub_of = |args: &[&str]| Command::new("openssl").args(args).output().unwrap().stdout;
        assert_eq!(
            pub_of(&["pkey", "-pubout", "-in", &k]),
            pub_of(&["x509", "-noout", "-pubkey", "-in", &c]),
            "{file}"
        );
    }
}

#[test]
fn worker_derivation_holds_no_ca_key() {
    let s = generate("prod-1", now()).unwrap();
    let node = s.for_role(Role::Worker);
    let text = node.to_toml().unwrap();
    // The worker's secrets: exactly one private key, the node API's; none of a CA.
    let keys = private_key_blocks(&text);
    assert_eq!(keys, vec![der(&s.node_api.key)]);
    for ca in ca_keys(&s) {
        assert!(!keys.contains(&ca));
    }
    assert_eq!(NodeSecrets::from_toml(&text).unwrap(), node);

    let files = derive(&node, &identity(), now()).unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["pki/ca.crt", "bootstrap-kubelet.conf"]);
    assert_eq!((files[0].mode, files[1].mode), (0o644, 0o600));
    for f in &files {
        assert!(private_key_blocks(&String::from_utf8_lossy(&f.bytes)).is_empty());
    }
    let conf = Kubeconfig::from_json(std::str::from_utf8(&files[1].bytes).unwrap()).unwrap();
    assert_eq!(
        conf.users[0].user.token.as_deref(),
        Some(s.bootstrap_token.token().as_str())
    );
    assert_eq!(conf.users[0].user.client_key_data, None);
    assert_eq!(
        conf.clusters[0].cluster.server,
        "https://api.example.test:6443"
    );

    // The control plane's secrets hold the CA keys it signs with, never the keel CA's.
    let cp = private_key_blocks(&s.for_role(Role::ControlPlane).to_toml().unwrap());
    let all = ca_keys(&s);
    for k in &all[..3] {
        assert!(cp.contains(k));
    }
    assert!(!cp.contains(&all[3]), "keel CA key");
}

#[test]
fn written_files_have_their_modes() {
    let s = generate("keel", now()).unwrap();
    let files = derive(&s.for_role(Role::ControlPlane), &identity(), now()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("etc/kubernetes");
    // A pre-existing world-readable key must not keep its mode.
    std::fs::create_dir_all(root.join("pki")).unwrap();
    std::fs::write(root.join("pki/ca.key"), "old").unwrap();
    std::fs::set_permissions(
        root.join("pki/ca.key"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    write_files(&root, &files).unwrap();
    for f in &files {
        let path = root.join(&f.path);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, f.mode, "{}", f.path);
        assert_eq!(std::fs::read(&path).unwrap(), f.bytes, "{}", f.path);
    }
    let etcd_dir = std::fs::metadata(root.join("pki/etcd")).unwrap();
    assert!(etcd_dir.is_dir());
    // No temporary files left.
    let leftovers: Vec<_> = std::fs::read_dir(root.join("pki"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    let bad = [DerivedFile {
        path: "../escape".into(),
        bytes: vec![],
        mode: 0o600,
    }];
    assert!(write_files(&root, &bad).is_err());
}

#[test]
fn bad_secrets_and_identities_are_named() {
    let s = generate("keel", now()).unwrap();
    let mut node = s.for_role(Role::ControlPlane);
    // The etcd CA's certificate with the Kubernetes CA's key.
    node.etcd_ca.as_mut().unwrap().key = s.kubernetes_ca.key.clone();
    let e = derive(&node, &identity(), now()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "`etcd_ca`: the key does not belong to the certificate"
    );
    let mut node = s.for_role(Role::ControlPlane);
    node.kubernetes_ca.cert = s.admin.cert.clone();
    node.kubernetes_ca.key = Some(s.admin.key.clone());
    let e = derive(&node, &identity(), now()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "`kubernetes_ca`: the certificate is not a CA"
    );
    let mut node = s.for_role(Role::ControlPlane);
    node.service_account = None;
    let e = derive(&node, &identity(), now()).unwrap_err();
    assert!(
        e.to_string().starts_with("`service_account`: missing"),
        "{e}"
    );
    // Past the CA's end.
    let e = derive(
        &s.for_role(Role::ControlPlane),
        &identity(),
        s.created + 3650 * 86_400,
    )
    .unwrap_err();
    assert!(e.to_string().contains("expires"), "{e}");

    let node = s.for_role(Role::ControlPlane);
    for (mutate, want) in [
        (
            Box::new(|i: &mut NodeIdentity| i.hostname = "bad_host".into())
                as Box<dyn Fn(&mut NodeIdentity)>,
            "invalid hostname \"bad_host\"",
        ),
        (
            Box::new(|i: &mut NodeIdentity| i.extra_sans.push("not a name".into())),
            "\"not a name\" cannot go into a certificate",
        ),
        (
            Box::new(|i: &mut NodeIdentity| i.service_cidr = "10.96.0.1/32".parse().unwrap()),
            "service network 10.96.0.1/32 has no room",
        ),
    ] {
        let mut id = identity();
        mutate(&mut id);
        let e = derive(&node, &id, now()).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
        assert!(e.is_bad_input());
    }
}

#[test]
fn leaf_validity_is_cut_at_the_ca_end() {
    let s = generate("keel", 1_700_000_000).unwrap();
    let ca_end = facts(&s.kubernetes_ca.cert).1;
    let late = (ca_end - 100 * 86_400) as u64;
    let files = derive(&s.for_role(Role::ControlPlane), &identity(), late).unwrap();
    let api = files
        .iter()
        .find(|f| f.path == "pki/apiserver.crt")
        .unwrap();
    let (nb, na, _, _) = facts(std::str::from_utf8(&api.bytes).unwrap());
    assert_eq!((nb, na), (late as i64 - 3600, ca_end));
}

#[test]
fn first_service_ips() {
    let ip = |c: &str| first_service_ip(&c.parse().unwrap());
    assert_eq!(
        ip("10.96.0.0/12"),
        Some("10.96.0.1".parse::<IpAddr>().unwrap())
    );
    assert_eq!(ip("10.100.7.9/16"), Some("10.100.0.1".parse().unwrap()));
    assert_eq!(
        ip("fd00:10:96::/108"),
        Some("fd00:10:96::1".parse().unwrap())
    );
    assert_eq!(ip("0.0.0.0/0"), Some("0.0.0.1".parse().unwrap()));
    assert_eq!(ip("10.0.0.0/31"), None);
    assert_eq!(ip("fd00::/128"), None);
}

#[test]
fn admin_kubeconfig_points_at_the_endpoint() {
    let s = generate("prod-1", now()).unwrap();
    let text = admin_kubeconfig(&s, &"https://10.0.0.1:6443".parse().unwrap());
    let conf = Kubeconfig::from_json(&text).unwrap();
    assert_eq!(conf.clusters[0].cluster.server, "https://10.0.0.1:6443");
    assert_eq!(conf.users[0].name, "keel-admin");
    assert_eq!(conf.current_context, "keel-admin@prod-1");
    let key = base64::engine::general_purpose::STANDARD
        .decode(conf.users[0].user.client_key_data.as_ref().unwrap())
        .unwrap();
    assert_eq!(key, s.admin.key.as_bytes());
}

/// Kills the etcd this test started (by its own child handle) however the test ends.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real etcd (Go's TLS) serves with the derived server and peer certificates and requires
/// client certificates; etcdctl gets in with the API server's, the health check's and the
/// operator's, and not with a Kubernetes-CA certificate.
#[test]
fn etcd_serves_with_the_derived_certificates() {
    let s = generate("keel", now()).unwrap();
    let mut id = identity();
    id.ips = vec!["127.0.0.1".parse().unwrap()];
    let files = derive(&s.for_role(Role::ControlPlane), &id, now()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("k");
    write_files(&root, &files).unwrap();
    let p = |rel: &str| root.join(rel).to_str().unwrap().to_owned();
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("https://127.0.0.1:{peer}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    let _etcd = Child(
        Command::new("etcd")
            .args([
                "--name=cp-1",
                &format!("--data-dir={}", dir.path().join("data").display()),
                &format!("--listen-client-urls={client_url}"),
                &format!("--advertise-client-urls={client_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=cp-1={peer_url}"),
                &format!("--cert-file={}", p("pki/etcd/server.crt")),
                &format!("--key-file={}", p("pki/etcd/server.key")),
                &format!("--trusted-ca-file={}", p("pki/etcd/ca.crt")),
                "--client-cert-auth",
                &format!("--peer-cert-file={}", p("pki/etcd/peer.crt")),
                &format!("--peer-key-file={}", p("pki/etcd/peer.key")),
                &format!("--peer-trusted-ca-file={}", p("pki/etcd/ca.crt")),
                "--peer-client-cert-auth",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (vm-tests/install-host-packages: etcd-server)"),
    );
    std::fs::write(dir.path().join("admin.crt"), &s.etcd_admin.cert).unwrap();
    std::fs::write(dir.path().join("admin.key"), &s.etcd_admin.key).unwrap();
    std::fs::write(dir.path().join("k8s.crt"), &s.admin.cert).unwrap();
    std::fs::write(dir.path().join("k8s.key"), &s.admin.key).unwrap();
    let etcdctl = |cert: &str, key: &str, args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                &format!("--endpoints={client_url}"),
                &format!("--cacert={}", p("pki/etcd/ca.crt")),
                &format!("--cert={cert}"),
                &format!("--key={key}"),
                "--dial-timeout=2s",
                "--command-timeout=3s",
            ])
            .args(args)
            .output()
            .expect("etcdctl is installed (vm-tests/install-host-packages: etcd-client)")
    };
    let (hc, hk) = (
        p("pki/etcd/healthcheck-client.crt"),
        p("pki/etcd/healthcheck-client.key"),
    );
    let mut healthy = false;
    for _ in 0..40 {
        if etcdctl(&hc, &hk, &["endpoint", "health"]).status.success() {
            healthy = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let log = || std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
    assert!(healthy, "etcd never became healthy:\n{}", log());
    let (ac, ak) = (
        p("pki/apiserver-etcd-client.crt"),
        p("pki/apiserver-etcd-client.key"),
    );
    let put = etcdctl(&ac, &ak, &["put", "/keel", "ok"]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let admin_c = dir.path().join("admin.crt");
    let admin_k = dir.path().join("admin.key");
    let get = etcdctl(
        admin_c.to_str().unwrap(),
        admin_k.to_str().unwrap(),
        &["get", "/keel", "--print-value-only"],
    );
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "ok");
    // A client certificate from another CA is refused.
    let k8s_c = dir.path().join("k8s.crt");
    let k8s_k = dir.path().join("k8s.key");
    let refused = etcdctl(
        k8s_c.to_str().unwrap(),
        k8s_k.to_str().unwrap(),
        &["get", "/keel"],
    );
    assert!(
        !refused.status.success(),
        "etcd accepted a Kubernetes-CA client certificate"
    );
}

#[test]
fn operator_certificates_carry_their_role() {
    let s = generate("keel", now()).unwrap();
    let read_only = s.keel_read_only.clone().unwrap();
    verify(&s.keel_ca.cert, &read_only.cert, "sslclient").unwrap();
    assert!(verify(&s.keel_ca.cert, &read_only.cert, "sslserver").is_err());
    let text = x509_text(&read_only.cert);
    assert!(
        text.contains("Subject: O = keel:read-only, CN = keel-read-only"),
        "{text}"
    );
    let text = x509_text(&s.keel_admin.cert);
    assert!(
        text.contains("Subject: O = keel:admin, CN = keel-admin"),
        "{text}"
    );
    assert_eq!(
        operator_role(&der(&read_only.cert)).unwrap(),
        OperatorRole::ReadOnly
    );
    assert_eq!(
        operator_role(&der(&s.keel_admin.cert)).unwrap(),
        OperatorRole::Admin
    );
    // An admin certificate from before roles: no organisation, still an admin.
    let keel = Ca::load("keel_ca", &s.keel_ca.cert, &s.keel_ca.key).unwrap();
    let legacy = keel
        .issue(
            &Leaf::client("keel-admin", names::ADMIN, None),
            unix(now()).unwrap(),
        )
        .unwrap();
    assert!(x509_text(&legacy.cert).contains("Subject: CN = keel-admin"));
    assert_eq!(
        operator_role(&der(&legacy.cert)).unwrap(),
        OperatorRole::Admin
    );
    assert!(operator_role(b"not DER").is_err());
}

#[test]
fn renewal_keeps_the_cas_and_issues_new_leaves() {
    let t = now();
    let mut s = generate("keel", t - 300 * 86_400).unwrap();
    s.keel_read_only = None;
    let r = renew(&s, t).unwrap();
    for (old, new) in [
        (&s.kubernetes_ca, &r.kubernetes_ca),
        (&s.etcd_ca, &r.etcd_ca),
        (&s.front_proxy_ca, &r.front_proxy_ca),
        (&s.keel_ca, &r.keel_ca),
    ] {
        assert_eq!(old, new);
    }
    assert_eq!(s.service_account, r.service_account);
    assert_ne!(s.bootstrap_token, r.bootstrap_token);
    assert_eq!(s.bootstrap_token.created, None);
    assert_eq!(r.bootstrap_token.created, Some(t));
    assert_eq!(r.bootstrap_token.expires(r.created, 24), Some(t + 86_400));
    assert_eq!(
        s.bootstrap_token.expires(s.created, 24),
        Some(s.created + 86_400)
    );
    assert_eq!(r.bootstrap_token.expires(r.created, 0), None);
    assert_eq!(rfc3339(1_700_000_000).unwrap(), "2023-11-14T22:13:20Z");
    for (ca, old, new, purpose) in [
        (&r.kubernetes_ca, &s.admin, &r.admin, "sslclient"),
        (&r.etcd_ca, &s.etcd_admin, &r.etcd_admin, "sslclient"),
        (&r.keel_ca, &s.keel_admin, &r.keel_admin, "sslclient"),
        (&r.keel_ca, &s.node_api, &r.node_api, "sslserver"),
    ] {
        assert_ne!(old.key, new.key);
        verify(&ca.cert, &new.cert, purpose).unwrap();
        assert_eq!(not_after_pem(&new.cert).unwrap(), facts(&new.cert).1);
        assert!(not_after_pem(&new.cert).unwrap() > not_after_pem(&old.cert).unwrap());
    }
    let ro = r.keel_read_only.unwrap();
    verify(&r.keel_ca.cert, &ro.cert, "sslclient").unwrap();
    assert_eq!(
        operator_role(&der(&ro.cert)).unwrap(),
        OperatorRole::ReadOnly
    );
}

#[test]
fn a_node_certificate_names_the_node_and_its_addresses() {
    let s = generate("keel", now()).unwrap();
    let ip: IpAddr = "10.0.2.15".parse().unwrap();
    let c = issue_node_api(&s, "worker-1", &[ip], now()).unwrap();
    verify(&s.keel_ca.cert, &c.cert, "sslserver").unwrap();
    let text = x509_text(&c.cert);
    assert!(text.contains("Subject: CN = worker-1"), "{text}");
    assert_eq!(
        extension(&text, "X509v3 Subject Alternative Name"),
        "DNS:worker-1, DNS:keel-node, IP Address:10.0.2.15"
    );
    let names = cert_names(&der(&c.cert)).unwrap();
    assert_eq!(names.dns, ["worker-1", "keel-node"]);
    assert_eq!(names.ips, [ip]);
    assert!(issue_node_api(&s, "keel-node", &[], now()).is_err());
    assert!(issue_node_api(&s, "not a name", &[], now()).is_err());
}
