//! Issue 11: a profile or secrets given at boot by URL or config drive must be signed by a
//! key the node trusts, must not be older than what the node applied, and a URL never
//! delivers secrets; fw_cfg stays trusted as it is.

use keel_contract::profile::Role;
use keel_minisign::{SecretKey, TrustedKeys};

use super::*;

const URL: &str = "http://10.0.2.2:8080/n1.toml";

fn profile(role: &str, hostname: &str, generation: u64) -> String {
    format!(
        "[node]\nrole = \"{role}\"\nhostname = \"{hostname}\"\nconfig_generation = {generation}\n"
    )
}

fn sign(key: &SecretKey, text: &str) -> String {
    keel_minisign::sign_bytes(key, text.as_bytes(), "timestamp:0\tfile:x\thashed")
        .unwrap()
        .to_file_string()
}

fn worker_secrets() -> String {
    keel_pki::generate("keel", 1_700_000_000)
        .unwrap()
        .for_role(Role::Worker)
        .to_toml()
        .unwrap()
}

struct Node {
    state: tempfile::TempDir,
    baked: std::path::PathBuf,
    key: SecretKey,
    keys: TrustedKeys,
}

impl Node {
    fn new() -> Node {
        let state = tempfile::tempdir().unwrap();
        let baked = state.path().join("baked.toml");
        std::fs::write(&baked, profile("worker", "baked", 0)).unwrap();
        let (key, public) = SecretKey::generate().unwrap();
        let keys = TrustedKeys::new([public]).unwrap();
        Node {
            state,
            baked,
            key,
            keys,
        }
    }

    fn boot(&self, found: Option<Found>) -> NodeConfig {
        choose(found, self.state.path(), &self.baked, Some(&self.keys))
    }

    fn url(&self, text: &str, signed: bool) -> Option<Found> {
        Some(Found {
            source: Source::Url(URL.into()),
            profile: Some(text.into()),
            profile_sig: signed.then(|| sign(&self.key, text)),
            ..Found::default()
        })
    }

    fn drive(&self, text: Option<&str>, secrets: Option<&str>) -> Found {
        Found {
            source: Source::ConfigDrive("/dev/vdb".into()),
            profile: text.map(str::to_owned),
            profile_sig: text.map(|t| sign(&self.key, t)),
            secrets: secrets.map(str::to_owned),
            secrets_sig: secrets.map(|t| sign(&self.key, t)),
        }
    }

    fn saved(&self) -> String {
        std::fs::read_to_string(layout::on_volume(self.state.path(), STATE_PROFILE)).unwrap()
    }

    fn hostname(c: &NodeConfig) -> &str {
        c.node.hostname.as_ref().map(|h| h.as_str()).unwrap_or("")
    }
}

fn fw_cfg(text: &str) -> Option<Found> {
    Some(Found {
        source: Source::FwCfg,
        profile: Some(text.into()),
        ..Found::default()
    })
}

#[test]
fn an_unsigned_profile_by_url_is_refused_and_the_saved_one_kept() {
    let n = Node::new();
    let good = profile("controlplane", "cp1", 1);
    assert_eq!(n.boot(n.url(&good, true)).source, Source::Url(URL.into()));
    let c = n.boot(n.url(&profile("worker", "evil", 2), false));
    assert_eq!((&c.source, Node::hostname(&c)), (&Source::State, "cp1"));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains(URL) && w.contains("not signed")),
        "{:?}",
        c.warnings
    );
    assert_eq!(n.saved(), good, "STATE keeps the applied profile");
}

#[test]
fn a_profile_signed_by_another_key_or_tampered_with_is_refused() {
    let n = Node::new();
    let good = profile("controlplane", "cp1", 1);
    n.boot(n.url(&good, true));
    let evil = profile("worker", "evil", 2);
    let (other, _) = SecretKey::generate().unwrap();
    let mut found = n.url(&evil, false).unwrap();
    found.profile_sig = Some(sign(&other, &evil));
    let c = n.boot(Some(found));
    assert_eq!(Node::hostname(&c), "cp1");
    assert!(
        c.warnings.iter().any(|w| w.contains("not a trusted key")),
        "{:?}",
        c.warnings
    );
    // A trusted signature over different content (the body was changed on the way).
    let mut found = n.url(&evil, false).unwrap();
    found.profile_sig = Some(sign(&n.key, &profile("worker", "evil", 1)));
    let c = n.boot(Some(found));
    assert_eq!(Node::hostname(&c), "cp1");
    assert!(
        c.warnings.iter().any(|w| w.contains("signature")),
        "{:?}",
        c.warnings
    );
    // Garbage where the signature should be.
    let mut found = n.url(&evil, false).unwrap();
    found.profile_sig = Some("<html>404</html>".into());
    assert_eq!(Node::hostname(&n.boot(Some(found))), "cp1");
    assert_eq!(n.saved(), good);
}

#[test]
fn a_signed_profile_is_accepted_and_saved() {
    let n = Node::new();
    let good = profile("controlplane", "cp1", 0);
    let c = n.boot(n.url(&good, true));
    assert_eq!(c.source, Source::Url(URL.into()));
    assert_eq!(c.node.role, Role::ControlPlane);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(n.saved(), good);
}

#[test]
fn without_trusted_keys_nothing_signed_can_apply() {
    let n = Node::new();
    let c = choose(
        n.url(&profile("controlplane", "cp1", 1), true),
        n.state.path(),
        &n.baked,
        None,
    );
    assert_eq!(c.source, Source::Baked);
    assert!(
        c.warnings.iter().any(|w| w.contains("trusted keys")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn a_lower_generation_is_refused_even_when_signed() {
    let n = Node::new();
    n.boot(n.url(&profile("controlplane", "cp5", 5), true));
    let c = n.boot(n.url(&profile("worker", "old", 3), true));
    assert_eq!((&c.source, Node::hostname(&c)), (&Source::State, "cp5"));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("generation 3") && w.contains("5")),
        "{:?}",
        c.warnings
    );
    // The same generation again (the server answers every boot) and a newer one apply.
    let same = n.boot(n.url(&profile("controlplane", "cp5", 5), true));
    assert_eq!(same.source, Source::Url(URL.into()));
    assert!(same.warnings.is_empty(), "{:?}", same.warnings);
    let newer = n.boot(n.url(&profile("worker", "w6", 6), true));
    assert_eq!(Node::hostname(&newer), "w6");
}

#[test]
fn a_url_never_delivers_secrets() {
    let n = Node::new();
    let secrets = worker_secrets();
    let mut found = n.url(&profile("worker", "w1", 1), true).unwrap();
    found.secrets_sig = Some(sign(&n.key, &secrets));
    found.secrets = Some(secrets);
    let c = n.boot(Some(found));
    assert!(c.secrets.is_none());
    assert!(!layout::on_volume(n.state.path(), STATE_SECRETS).exists());
    assert!(
        c.warnings.iter().any(|w| w.contains("never")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn a_config_drive_applies_at_first_boot_and_later_only_when_newer_and_signed() {
    let n = Node::new();
    let secrets = worker_secrets();
    let first = profile("worker", "rack4-7", 1);
    let c = n.boot(Some(n.drive(Some(&first), Some(&secrets))));
    assert_eq!(c.source, Source::ConfigDrive("/dev/vdb".into()));
    assert!(c.secrets.is_some());
    // Left attached: a later boot ignores it (the same generation), quietly.
    let c = n.boot(Some(n.drive(Some(&first), Some(&secrets))));
    assert_eq!(c.source, Source::State);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(
        c.notes.iter().any(|m| m.contains("ignored")),
        "{:?}",
        c.notes
    );
    // Another disk with secrets only, signed: not the first boot, so ignored.
    let other = worker_secrets();
    let c = n.boot(Some(n.drive(None, Some(&other))));
    assert_eq!(
        c.secrets.as_ref().map(|s| s.to_toml().unwrap()),
        Some(secrets.clone())
    );
    // A newer generation, unsigned: refused, loudly.
    let newer = profile("controlplane", "evil", 2);
    let mut unsigned = n.drive(Some(&newer), Some(&other));
    unsigned.profile_sig = None;
    unsigned.secrets_sig = None;
    let c = n.boot(Some(unsigned));
    assert_eq!(Node::hostname(&c), "rack4-7");
    assert!(
        c.warnings.iter().any(|w| w.contains("not signed")),
        "{:?}",
        c.warnings
    );
    // Signed profile but unsigned secrets: the whole drive is refused.
    let mut half = n.drive(Some(&newer), Some(&other));
    half.secrets_sig = None;
    let c = n.boot(Some(half));
    assert_eq!(Node::hostname(&c), "rack4-7");
    assert_eq!(
        std::fs::read_to_string(layout::on_volume(n.state.path(), STATE_SECRETS)).unwrap(),
        secrets
    );
    // Newer and signed: applied.
    let c = n.boot(Some(n.drive(Some(&newer), Some(&other))));
    assert_eq!(Node::hostname(&c), "evil");
    assert_eq!(
        std::fs::read_to_string(layout::on_volume(n.state.path(), STATE_SECRETS)).unwrap(),
        other
    );
}

#[test]
fn fw_cfg_is_accepted_unsigned_whatever_its_generation() {
    let n = Node::new();
    n.boot(n.url(&profile("controlplane", "cp5", 5), true));
    let c = n.boot(fw_cfg(&profile("worker", "vm1", 0)));
    assert_eq!((&c.source, Node::hostname(&c)), (&Source::FwCfg, "vm1"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn the_generation_is_a_typed_profile_field() {
    assert_eq!(
        parse("p", &profile("worker", "w", 7))
            .unwrap()
            .config_generation,
        7
    );
    let e = parse("p", "[node]\nconfig_generation = -1\n").unwrap_err();
    assert!(e.contains("config_generation"), "{e}");
}
