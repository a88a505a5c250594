//! What the init writes for Kubernetes (the control plane's static pods) and creates in the
//! cluster (the bootstrap token Secret, the join RBAC bindings), checked against the official
//! OpenAPI-derived JSON schemas of the profile's Kubernetes version, offline, with
//! `kubernetes-validate --strict` (PyPI; `vm-tests/install-host-packages` puts it in
//! `target/tools/py`). Strict: a field the schema does not know is an error.
//!
//! The KubeletConfiguration is not an API-server type and has no schema there; the fake
//! kubelet's contract tests check it instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use keel_contract::profile::{Node, Role};
use keel_contract::secrets::BootstrapToken;
use keel_init::roles::{self, NodeFacts, cluster_bootstrap};

fn validator() -> PathBuf {
    let installed = keel_vm_tests::workspace_root().join("target/tools/py/bin/kubernetes-validate");
    let path = std::env::var_os("KEEL_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or(installed);
    assert!(
        path.exists(),
        "{} is missing: run vm-tests/install-host-packages (it installs kubernetes-validate from PyPI)",
        path.display()
    );
    path
}

/// `1.31.4` -> `1.31.0`: the schemas are per minor version.
fn schema_version(version: &str) -> String {
    let mut parts = version.split('.');
    format!(
        "{}.{}.0",
        parts.next().unwrap(),
        parts.next().unwrap_or("0")
    )
}

/// Runs the validator on `files`; (success, output).
fn validate(version: &str, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(validator())
        .args(["--strict", "--no-warn", "-k", &schema_version(version)])
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The control plane's static pod manifests as the init renders them.
fn static_pods(dir: &Path, node: &Node) -> Vec<PathBuf> {
    let root = dir.join("root");
    for b in ["usr/bin/kubelet", "usr/bin/etcd"] {
        let path = root.join(b);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let facts = NodeFacts {
        hostname: "cp-1".into(),
        ips: vec!["10.0.0.5".parse::<IpAddr>().unwrap()],
        root,
        etcd_joined: None,
    };
    let plan = roles::plan(node, &facts).unwrap();
    let manifests: Vec<PathBuf> = plan
        .files
        .iter()
        .filter(|f| f.path.starts_with(roles::paths::MANIFESTS_DIR))
        .map(|f| {
            let out = dir.join(f.path.file_name().unwrap());
            std::fs::write(&out, &f.contents).unwrap();
            out
        })
        .collect();
    assert_eq!(manifests.len(), 3, "three static pods");
    manifests
}

#[test]
fn static_pods_and_join_objects_match_the_official_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node {
        role: Role::ControlPlane,
        ..Node::default()
    };
    let mut files = static_pods(dir.path(), &node);
    let token = BootstrapToken {
        id: "abcdef".into(),
        secret: "0123456789abcdef".into(),
        created: None,
    };
    for (i, object) in cluster_bootstrap::objects(&token)
        .unwrap()
        .iter()
        .enumerate()
    {
        let path = dir.path().join(format!("join-{i}.json"));
        std::fs::write(&path, &object.body).unwrap();
        files.push(path);
    }
    let (ok, out) = validate(&node.kubernetes.version.to_string(), &files);
    assert!(ok, "kubernetes-validate refused:\n{out}");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(
            out.lines()
                .any(|l| l.contains(&*name) && l.contains("passed for resource")),
            "no verdict for {name}:\n{out}"
        );
    }
}

/// The peer is not a rubber stamp: a field the Pod schema does not have, and a wrong type,
/// are refused.
#[test]
fn the_validator_refuses_a_broken_pod() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node {
        role: Role::ControlPlane,
        ..Node::default()
    };
    let good = static_pods(dir.path(), &node).remove(0);
    let pod: serde_json::Value = serde_json::from_slice(&std::fs::read(&good).unwrap()).unwrap();
    for (name, breakage) in [("unknown-field", "hostNetwrk"), ("wrong-type", "priority")] {
        let mut broken = pod.clone();
        let spec = broken["spec"].as_object_mut().unwrap();
        spec.insert(breakage.into(), "yes".into());
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, serde_json::to_vec(&broken).unwrap()).unwrap();
        let (ok, out) = validate(&node.kubernetes.version.to_string(), &[path]);
        assert!(!ok, "{name} must be refused:\n{out}");
        assert!(
            out.contains(breakage),
            "{name}: the error names the field:\n{out}"
        );
    }
}
