use super::*;
use base64::Engine;

const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIC\n-----END PRIVATE KEY-----\n";
const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMIID\n-----END PUBLIC KEY-----\n";

fn pair(tag: &str) -> CertKey {
    // Distinct bodies so tests can tell the pairs apart.
    let b64 = base64::engine::general_purpose::STANDARD.encode(tag);
    CertKey {
        cert: format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n"),
        key: format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
    }
}

fn sample() -> Secrets {
    Secrets {
        cluster_name: "prod-1".parse().unwrap(),
        created: 1_700_000_000,
        kubernetes_ca: pair("kubernetes-ca"),
        etcd_ca: pair("etcd-ca"),
        front_proxy_ca: pair("front-proxy-ca"),
        service_account: ServiceAccountKey {
            public: PUBLIC.into(),
            private: KEY.into(),
        },
        bootstrap_token: BootstrapToken {
            id: "abc123".into(),
            secret: "0123456789abcdef".into(),
            created: None,
        },
        admin: pair("admin"),
        etcd_admin: pair("etcd-admin"),
        keel_ca: pair("keel-ca"),
        keel_admin: pair("keel-admin"),
        keel_read_only: Some(pair("keel-read-only")),
        node_api: pair("node-api"),
    }
}

#[test]
fn round_trip_and_version_first() {
    let s = sample();
    let text = s.to_toml().unwrap();
    assert!(text.starts_with("version = 1\n"), "{text}");
    assert_eq!(Secrets::from_toml(&text).unwrap(), s);
    assert_eq!(s.bootstrap_token.token(), "abc123.0123456789abcdef");
    for role in [Role::ControlPlane, Role::Worker] {
        let node = s.for_role(role);
        let text = node.to_toml().unwrap();
        assert!(text.starts_with("version = 1\n"), "{text}");
        assert_eq!(NodeSecrets::from_toml(&text).unwrap(), node);
    }
}

#[test]
fn debug_elides_keys_and_token_secret() {
    let text = format!("{:?} {:?}", sample(), sample().for_role(Role::ControlPlane));
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    assert!(!text.contains("0123456789abcdef"), "{text}");
}

#[test]
fn worker_gets_no_ca_key() {
    let s = sample();
    let w = s.for_role(Role::Worker);
    assert_eq!(w.kubernetes_ca.key, None);
    assert!(w.etcd_ca.is_none() && w.front_proxy_ca.is_none());
    assert!(w.service_account.is_none());
    let text = w.to_toml().unwrap();
    let keys: Vec<PemBlock> = pem_blocks(&text)
        .unwrap()
        .into_iter()
        .filter(|b| b.label.contains("PRIVATE KEY"))
        .collect();
    // The node API key and nothing else.
    assert_eq!(keys.len(), 1);
    assert_eq!(keys, pem_blocks(&s.node_api.key).unwrap());
    let read_only = s.keel_read_only.clone().unwrap();
    for forbidden in [
        &s.keel_ca.key,
        &s.admin.key,
        &s.keel_admin.key,
        &read_only.key,
    ] {
        assert!(!text.contains(forbidden.as_str()));
    }
    let cp = s.for_role(Role::ControlPlane).to_toml().unwrap();
    assert!(cp.contains(&s.etcd_ca.key) && cp.contains(&s.kubernetes_ca.key));
    for forbidden in [
        &s.keel_ca.key,
        &s.admin.key,
        &s.keel_admin.key,
        &read_only.key,
        &s.etcd_admin.key,
    ] {
        assert!(!cp.contains(forbidden.as_str()));
    }
}

fn err(text: &str) -> String {
    Secrets::from_toml(text).unwrap_err().to_string()
}

#[test]
fn errors_name_the_field_and_what_was_expected() {
    let good = sample().to_toml().unwrap();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            good.replace("id = \"abc123\"", "id = \"ABC123\""),
            "`bootstrap_token.id`: \"ABC123\" is not valid",
            "6 characters of a-z 0-9",
        ),
        (
            good.replace("secret = \"0123456789abcdef\"", "secret = \"short\""),
            "`bootstrap_token.secret`: a value of 5 characters is not valid",
            "16 characters",
        ),
        (
            good.replace("version = 1", "version = 2"),
            "`version`: 2 is not supported",
            "expected 1",
        ),
        (
            good.replace("version = 1", "version = \"1\""),
            "`version`: is a string",
            "expected version = 1",
        ),
        (
            good.replace("cluster_name = \"prod-1\"", "cluster_name = \"Prod\""),
            "`cluster_name`: \"Prod\" is not a cluster name",
            "lower-case",
        ),
        (
            good.replace("created = 1700000000", "created = -5"),
            "`created`: -5 is negative",
            "unix seconds",
        ),
        (
            good.replace("[etcd_ca]", "[etcd_ca]\nextra = 1"),
            "`etcd_ca.extra`: unknown field",
            "one of cert, key",
        ),
        (
            good.replace("version = 1", "version = 1\ncolour = \"red\""),
            "`colour`: unknown field",
            "one of version",
        ),
        (
            good.replacen(&sample().admin.key, &sample().admin.cert, 1),
            "`admin.key`: is a CERTIFICATE block",
            "PKCS#8 PEM private key",
        ),
        (
            good.replace("-----END PUBLIC KEY-----", ""),
            "`service_account.public`: PUBLIC KEY block has no END line",
            "a PEM public key",
        ),
    ];
    for (text, want, expected) in cases {
        let e = err(&text);
        assert!(e.contains(want), "{e:?} should contain {want:?}");
        assert!(e.contains(expected), "{e:?} should contain {expected:?}");
    }
    // A missing table and a missing key in a table.
    let mut t: toml::Table = toml::from_str(&good).unwrap();
    t.remove("keel_admin");
    let e = err(&toml::to_string(&t).unwrap());
    assert!(
        e.starts_with("`keel_admin`: missing: expected a table"),
        "{e}"
    );
    let mut t: toml::Table = toml::from_str(&good).unwrap();
    t["front_proxy_ca"].as_table_mut().unwrap().remove("key");
    let e = err(&toml::to_string(&t).unwrap());
    assert!(
        e.starts_with("`front_proxy_ca.key`: missing: expected a PKCS#8"),
        "{e}"
    );
    assert!(err("version = ").starts_with("not valid TOML"));
}

#[test]
fn node_files_must_match_their_role() {
    let s = sample();
    // A worker file carrying a CA key is refused, naming the field.
    let mut w: toml::Table = toml::from_str(&s.for_role(Role::Worker).to_toml().unwrap()).unwrap();
    w["kubernetes_ca"]
        .as_table_mut()
        .unwrap()
        .insert("key".into(), s.kubernetes_ca.key.clone().into());
    let e = NodeSecrets::from_toml(&toml::to_string(&w).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("`kubernetes_ca.key`: present in a worker's secrets"),
        "{e}"
    );
    let mut w: toml::Table = toml::from_str(&s.for_role(Role::Worker).to_toml().unwrap()).unwrap();
    w.insert("etcd_ca".into(), toml::Value::try_from(&s.etcd_ca).unwrap());
    let e = NodeSecrets::from_toml(&toml::to_string(&w).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("`etcd_ca`: present in a worker's secrets"),
        "{e}"
    );
    // The keel CA key never travels to a node.
    let mut w: toml::Table = toml::from_str(&s.for_role(Role::Worker).to_toml().unwrap()).unwrap();
    w["keel_ca"]
        .as_table_mut()
        .unwrap()
        .insert("key".into(), s.keel_ca.key.clone().into());
    let e = NodeSecrets::from_toml(&toml::to_string(&w).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("`keel_ca.key`: unknown field"), "{e}");
    // A control plane without its service-account key is refused.
    let mut c: toml::Table =
        toml::from_str(&s.for_role(Role::ControlPlane).to_toml().unwrap()).unwrap();
    c.remove("service_account");
    let e = NodeSecrets::from_toml(&toml::to_string(&c).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("`service_account`: missing"), "{e}");
    let mut c: toml::Table =
        toml::from_str(&s.for_role(Role::ControlPlane).to_toml().unwrap()).unwrap();
    c["role"] = "leader".into();
    let e = NodeSecrets::from_toml(&toml::to_string(&c).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("`role`: \"leader\" is not a role"), "{e}");
}

#[test]
fn pem_parsing() {
    assert_eq!(pem_blocks(CERT).unwrap()[0].label, "CERTIFICATE");
    assert_eq!(pem_blocks(&format!("junk\n{CERT}{KEY}")).unwrap().len(), 2);
    assert!(pem_blocks("-----BEGIN X-----\n!!\n-----END X-----\n").is_err());
    assert!(pem_blocks("-----BEGIN X-----\nAAAA\n-----END Y-----\n").is_err());
    assert!(check_pem(&format!("{CERT}{CERT}"), "CERTIFICATE").is_err());
    assert!(check_pem("", "CERTIFICATE").is_err());
}

#[test]
fn a_file_from_before_read_only_operators_still_parses() {
    let mut s = sample();
    s.keel_read_only = None;
    let text = s.to_toml().unwrap();
    assert!(!text.contains("keel_read_only"), "{text}");
    assert_eq!(Secrets::from_toml(&text).unwrap(), s);
}
