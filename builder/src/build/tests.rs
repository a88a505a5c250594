//! STATE as a build writes it: the node's share of the cluster secrets and nothing more,
//! read back through `fatfs`; the two writers run side by side.

use std::io::Cursor;

use keel_contract::profile::Role;
use keel_contract::secrets::{NodeSecrets, Secrets, pem_blocks};

use super::image::{state_entries, state_partition};

fn state_for(node: Option<&NodeSecrets>) -> Vec<u8> {
    let plan = crate::disk::plan("keel-test", 64 << 20, 64 << 20, 64 << 20).unwrap();
    state_partition(&plan, &state_entries("keel-test", node).unwrap(), 0).unwrap()
}

/// The partition up to its last non-zero byte: past it there is nothing to find, and a
/// 64 MiB scan per needle is slow in a debug build.
fn used(image: &[u8]) -> &[u8] {
    &image[..image.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The base64 body of a PEM block: what a leaked key would look like anywhere in the image,
/// whatever the file around it.
fn pem_body(pem: &str) -> Vec<u8> {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>()
        .into_bytes()
}

fn ca_keys(s: &Secrets) -> [(&'static str, &str); 4] {
    [
        ("kubernetes", s.kubernetes_ca.key.as_str()),
        ("etcd", s.etcd_ca.key.as_str()),
        ("front-proxy", s.front_proxy_ca.key.as_str()),
        ("keel", s.keel_ca.key.as_str()),
    ]
}

#[test]
fn worker_state_holds_its_secrets_and_no_ca_key() {
    let secrets = keel_pki::generate("keel", 1_700_000_000).unwrap();
    let worker = secrets.for_role(Role::Worker);
    let image = state_for(Some(&worker));

    let text = crate::fat::read_fat_file(
        Cursor::new(image.clone()),
        keel_contract::layout::state::SECRETS,
    )
    .unwrap();
    let text = String::from_utf8(text).unwrap();
    assert_eq!(NodeSecrets::from_toml(&text).unwrap(), worker);
    // One private key in the file: the node API's.
    let keys: Vec<_> = pem_blocks(&text)
        .unwrap()
        .into_iter()
        .filter(|b| b.label.contains("PRIVATE KEY"))
        .collect();
    assert_eq!(keys, pem_blocks(&secrets.node_api.key).unwrap());
    // No CA key (nor an operator credential) anywhere in the partition's bytes, and the
    // check would see one: the node API key is there.
    let lines_of = |pem: &str| pem_body(pem)[..64].to_vec();
    let full = image.clone();
    let image = used(&full);
    for (name, key) in ca_keys(&secrets) {
        assert!(
            !contains(image, &lines_of(key)),
            "{name} CA key in a worker's STATE"
        );
    }
    for key in [
        &secrets.admin.key,
        &secrets.etcd_admin.key,
        &secrets.keel_admin.key,
    ] {
        assert!(!contains(image, &lines_of(key)));
    }
    assert!(!contains(
        image,
        &lines_of(&secrets.service_account.private)
    ));
    assert!(contains(image, &lines_of(&secrets.node_api.key)));
    assert!(
        crate::fat::read_fat_file(Cursor::new(full), keel_contract::layout::state::MARKER).is_ok(),
        "the format marker stays"
    );
}

#[test]
fn control_plane_state_holds_the_ca_keys_it_signs_with_but_not_keels() {
    let secrets = keel_pki::generate("keel", 1_700_000_000).unwrap();
    let cp = secrets.for_role(Role::ControlPlane);
    let image = state_for(Some(&cp));
    let text = crate::fat::read_fat_file(
        Cursor::new(image.clone()),
        keel_contract::layout::state::SECRETS,
    )
    .unwrap();
    assert_eq!(
        NodeSecrets::from_toml(std::str::from_utf8(&text).unwrap()).unwrap(),
        cp
    );
    let lines_of = |pem: &str| pem_body(pem)[..64].to_vec();
    let image = used(&image);
    for (name, key) in &ca_keys(&secrets)[..3] {
        assert!(contains(image, &lines_of(key)), "{name}");
    }
    assert!(!contains(image, &lines_of(&secrets.keel_ca.key)));
    assert!(!contains(image, &lines_of(&secrets.admin.key)));
}

#[test]
fn without_secrets_state_has_only_the_marker() {
    let image = state_for(None);
    assert_eq!(
        crate::fat::list_fat_dir(Cursor::new(image), "/").unwrap(),
        vec!["keel-state"]
    );
}

#[test]
fn side_by_side_runs_both_writers_and_reports_either_failure_or_panic() {
    use super::{BuildError, side_by_side};
    use std::sync::atomic::{AtomicBool, Ordering};
    let second_ran = AtomicBool::new(false);
    let result = side_by_side(
        || Err(BuildError::Input("disk".into())),
        || {
            second_ran.store(true, Ordering::SeqCst);
            Ok(())
        },
    );
    assert!(matches!(result, Err(BuildError::Input(m)) if m == "disk"));
    assert!(
        second_ran.load(Ordering::SeqCst),
        "a failed disk does not stop the other"
    );
    let result = side_by_side(|| Ok(()), || Err(BuildError::Input("bundle".into())));
    assert!(matches!(result, Err(BuildError::Input(m)) if m == "bundle"));
    assert!(side_by_side(|| Ok(()), || Ok(())).is_ok());
    let panicked = std::panic::catch_unwind(|| side_by_side(|| Ok(()), || panic!("beside")));
    assert!(
        panicked.is_err(),
        "a panic on the other thread is raised again"
    );
}
