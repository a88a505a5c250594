//! Issue 11, signed configuration, in QEMU: a profile named by `keel.config=` on the kernel
//! command line is applied only when `URL.minisig` verifies with a key the image trusts and
//! its `config_generation` is not lower than the one applied. Whoever answers the request
//! (here, the test's own HTTP server playing the attacker on the network) can neither give
//! an unsigned profile nor replay an old signed one: the node keeps its saved configuration,
//! says why on the console, and its management API still starts.
//!
//! Issue 11, renewal, on the same boots: the node takes a renewed API certificate of its own
//! through its API (`keel node renew-certificate`), serves it on the next connection
//! without a reboot, and keeps serving it after one; a client asking for another node
//! (`keel node --node url-node-2`) is refused it.
//!
//! One image, one disk, three boots. The image needs `keel.config=` baked into its command
//! line (systemd-boot allows no editing), so it is its own build rather than the stock one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_builder::node::{ClientCredentials, NodeClient, credentials_from_secrets};
use keel_contract::api::NodeCertificate;
use keel_contract::profile::Role;
use keel_contract::secrets::Secrets;
use keel_vm_tests::{
    Machine, build, cluster_secrets, derived_profile, fake_kubelet, free_port, sign_text, test_dir,
    test_key, vm_disk, write_file,
};

const BOOT: Duration = Duration::from_secs(300);
const PATH: &str = "/nodes/url-node-1.toml";

/// A tiny HTTP/1.0 server answering from `files` (404 for anything else) and logging the
/// request lines, for as long as the test runs.
fn serve(
    listener: std::net::TcpListener,
    files: Arc<Mutex<HashMap<String, String>>>,
    seen: Arc<Mutex<Vec<String>>>,
) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && matches!(stream.read(&mut byte), Ok(1)) {
                request.push(byte[0]);
            }
            let line = String::from_utf8_lossy(&request)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            seen.lock().unwrap().push(line);
            let body = files.lock().unwrap().get(&path).cloned();
            let _ = match body {
                Some(body) => write!(
                    stream,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
                None => write!(
                    stream,
                    "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                ),
            };
        }
    });
}

fn profile(hostname: &str, generation: u64) -> String {
    format!(
        "[node]\nrole = \"worker\"\nhostname = \"{hostname}\"\nconfig_generation = {generation}\n\n[node.cluster]\nendpoint = \"https://10.0.2.2:6443\"\n"
    )
}

fn shut_down(mut vm: Machine) {
    vm.vm.powerdown().unwrap();
    assert!(
        vm.vm.wait_timeout(Duration::from_secs(90)).is_some(),
        "the node did not power off"
    );
}

fn assert_has(console: &str, wants: &[&str]) {
    for want in wants {
        assert!(console.contains(want), "{want:?} missing:\n{console}");
    }
}

/// Whether a new connection is served a certificate naming `name` (`keel node --node NAME
/// --own-certificate-only`).
fn serves_its_own(port: u16, creds: &ClientCredentials, name: &str) -> Result<(), String> {
    NodeClient::for_node(&format!("127.0.0.1:{port}"), creds, name, true)
        .unwrap()
        .version()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Renews the node's API certificate with one of its own through `keel node`, the way an
/// operator does; returns when the new one ends.
fn renew_own_certificate(
    dir: &std::path::Path,
    port: u16,
    secrets_path: &std::path::Path,
    secrets: &Secrets,
    name: &str,
) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut own = secrets.for_role(Role::Worker);
    own.node_api = keel_pki::issue_node_api(secrets, name, &[], now).unwrap();
    let file = write_file(dir, "own.secrets.toml", &own.to_toml().unwrap());
    let mut out = Vec::new();
    keel_builder::cli::node::run_with(
        keel_builder::cli::NodeCommand::RenewCertificate {
            from: Some(file.clone()),
            conn: keel_builder::cli::NodeConnection {
                endpoint: Some(format!("127.0.0.1:{port}")),
                secrets: Some(secrets_path.to_owned()),
                read_only: false,
                node: None,
                own_certificate_only: false,
            },
            json: true,
        },
        &keel_builder::progress::Reporter::quiet(),
        &keel_builder::node::open_update_file,
        &mut out,
    )
    .unwrap();
    let report: keel_contract::api::CertificateReport = serde_json::from_slice(&out).unwrap();
    assert_eq!(report.names, [name, "keel-node"]);
    assert_eq!(
        keel_builder::node::node_certificate_from(&file).unwrap(),
        NodeCertificate {
            cert: own.node_api.cert.clone(),
            key: own.node_api.key.clone()
        }
    );
    report.not_after
}

#[test]
fn a_node_applies_only_signed_and_not_older_profiles_from_its_keel_config_url() {
    let dir = test_dir("config_trust");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // QEMU's user network shows the host's loopback as 10.0.2.2.
    let url = format!("http://10.0.2.2:{port}{PATH}");
    let (secrets_path, secrets) = cluster_secrets(&dir.join("secrets"));
    let port = free_port();
    let creds = credentials_from_secrets(&secrets_path).unwrap();
    let image_profile = derived_profile(
        &dir,
        "worker",
        &format!(
            "[image]\nsecrets = \"{}\"\ncmdline = [\"console=ttyS0,115200\", \"panic=10\", \"keel.config={url}\"]\n\n[[image.files]]\nsrc = \"{}\"\ndst = \"/usr/bin/kubelet\"\nmode = \"0755\"\n\n[node.cluster]\nendpoint = \"https://10.0.2.2:6443\"\n",
            secrets_path.display(),
            fake_kubelet().display()
        ),
    );
    let (key, public) = test_key(&dir.join("keys"));
    let out = dir.join("out");
    build(&image_profile, &out, &key, None, 1_700_000_000);

    let files = Arc::new(Mutex::new(HashMap::new()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    serve(listener, files.clone(), seen.clone());
    let publish = |text: &str, sig: Option<String>| {
        let mut files = files.lock().unwrap();
        files.clear();
        files.insert(PATH.to_owned(), text.to_owned());
        if let Some(sig) = sig {
            files.insert(format!("{PATH}.minisig"), sig);
        }
    };
    let signed = |name: &str, text: &str| sign_text(&dir.join("served"), name, text, &key, &public);
    let disk = vm_disk(&out, &dir, 4 << 30);
    let api = "management API on port";

    // Boot 1: a signed profile, generation 2, applies and is saved.
    let good = profile("url-node-1", 2);
    publish(&good, Some(signed("good.toml", &good)));
    let mut vm = Machine::start("config_trust-signed", &disk, &dir.join("vm"), |c| {
        c.forwards.push((port, keel_contract::api::PORT))
    });
    let console = vm.expect("keel: ready", BOOT);
    let applied = format!("profile from {url}: role worker");
    assert_has(&console, &[&applied, "hostname url-node-1", api]);
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests.contains(&format!("GET {PATH} HTTP/1.1"))
            && requests.contains(&format!("GET {PATH}.minisig HTTP/1.1")),
        "{requests:?}"
    );
    // Renewal: the built-in shared certificate, then the node's own, served at once.
    let node = NodeClient::new(&format!("127.0.0.1:{port}"), &creds).unwrap();
    node.version().unwrap();
    let built = node.certificate_expiry().node;
    let err = serves_its_own(port, &creds, "url-node-1").unwrap_err();
    assert!(err.contains("shared keel-node certificate"), "{err}");
    let renewed_end = renew_own_certificate(&dir, port, &secrets_path, &secrets, "url-node-1");
    vm.expect_seen_or_next("API certificate renewed: url-node-1, keel-node", BOOT);
    serves_its_own(port, &creds, "url-node-1").unwrap();
    // Identities: this node's own certificate cannot pass for another node.
    let err = serves_its_own(port, &creds, "url-node-2").unwrap_err();
    assert!(err.contains("is not for url-node-2"), "{err}");
    node.version().unwrap();
    assert_eq!(node.certificate_expiry().node, Some(renewed_end));
    assert_ne!(built, Some(renewed_end));
    shut_down(vm);

    // Boot 2: whoever answers now serves an unsigned profile (no .minisig): refused.
    publish(&profile("evil-node", 3), None);
    let mut vm = Machine::start("config_trust-unsigned", &disk, &dir.join("vm"), |c| {
        c.forwards.push((port, keel_contract::api::PORT))
    });
    let console = vm.expect("keel: ready", BOOT);
    let refused = format!(
        "warning: refused, the node keeps the configuration it had: profile.toml from {url} is not signed"
    );
    assert_has(
        &console,
        &[
            &refused,
            "profile from STATE (applied at an earlier boot): role worker",
            "hostname url-node-1",
            "management API: serving the renewed certificate",
            api,
        ],
    );
    assert!(!console.contains("evil-node"), "{console}");
    // The renewed certificate survived the reboot.
    serves_its_own(port, &creds, "url-node-1").unwrap();
    shut_down(vm);

    // Boot 3: an old profile, correctly signed (a replay): refused for its generation.
    let old = profile("old-node", 1);
    publish(&old, Some(signed("old.toml", &old)));
    let mut vm = Machine::start("config_trust-replay", &disk, &dir.join("vm"), |_| {});
    let console = vm.expect("keel: ready", BOOT);
    assert_has(
        &console,
        &[
            "has generation 1, lower than the 2 applied before",
            "profile from STATE (applied at an earlier boot): role worker",
            "hostname url-node-1",
            api,
        ],
    );
    vm.kill();
}
