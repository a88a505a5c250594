//! Static pods through CRI, as the kubelet runs them: the runtime must answer `Version` and
//! report itself ready (`Status`); then each manifest in staticPodPath whose images the
//! runtime has (`ImageStatus`: the kubelet's IfNotPresent) gets a sandbox
//! (`RunPodSandbox`) and its containers (`CreateContainer`, `StartContainer`) with their
//! commands, host-path volumes and limits, and must be running. A pod whose image is not
//! there is reported and left alone: a real kubelet would pull it, and the control-plane
//! images cannot be had on the test machines. Sandboxes left by an earlier run of the fake
//! (a restart, an earlier boot) are stopped and removed first, as the kubelet's garbage
//! collection would.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::Config;
use keel_fakes::cri::{ContainerSpec, Cri, PodSpec, cpu_millis, memory_bytes};

const STATIC_POD_LABEL: &str = "keel.fake-kubelet/static-pod";
const START_TIMEOUT: Duration = Duration::from_secs(120);

type Report<'a> = &'a mut dyn FnMut(String);

pub fn run_static_pods(config: &Config, out: Report<'_>) -> Result<(), String> {
    let mut cri = Cri::unix(&config.runtime_socket)?;
    let v = cri.version()?;
    out(format!(
        "ok: CRI Version: {} {} (CRI {})",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    ));
    let conditions = cri.conditions()?;
    let shown: Vec<String> = conditions
        .iter()
        .map(|(kind, ok, reason, message)| {
            if *ok {
                format!("{kind}=true")
            } else {
                format!("{kind}=false ({reason}: {message})")
            }
        })
        .collect();
    if !conditions
        .iter()
        .any(|(kind, ok, _, _)| kind == "RuntimeReady" && *ok)
    {
        return Err(format!(
            "CRI Status: the runtime is not ready: {}",
            shown.join(", ")
        ));
    }
    // Without a network the kubelet still starts (the node is NotReady until a CNI
    // DaemonSet installs one); host-network static pods run either way.
    out(format!("ok: CRI Status: {}", shown.join(", ")));
    let Some(dir) = &config.static_pod_path else {
        return Ok(());
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("staticPodPath {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && !file_name(p).starts_with('.'))
        .collect();
    files.sort();
    for path in files {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let pod: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let (spec, containers) = describe(&pod, &text, &config.hostname)
            .map_err(|e| format!("static pod {}: {e}", path.display()))?;
        let mut missing = Vec::new();
        for c in &containers {
            if cri.image_id(&c.image)?.is_none() {
                missing.push(c.image.clone());
            }
        }
        if !missing.is_empty() {
            out(format!(
                "static pod {} not started: image {} not present (a real kubelet would pull it)",
                spec.name,
                missing.join(", ")
            ));
            continue;
        }
        let running = run_pod(&mut cri, &spec, &containers, &file_name(&path))
            .map_err(|e| format!("static pod {}: {e}", spec.name))?;
        out(format!(
            "ok: static pod {} running through CRI: {running}",
            spec.name
        ));
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// The pod's sandbox and containers in CRI terms. The UID is derived from the manifest, as
/// the kubelet does for static pods; the name gets the node name appended, as mirror pods do.
pub fn describe(
    pod: &Value,
    text: &str,
    node: &str,
) -> Result<(PodSpec, Vec<ContainerSpec>), String> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or("no metadata.name")?;
    let namespace = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let uid = uid_of(text);
    let flag = |p: &str| pod.pointer(p).and_then(Value::as_bool).unwrap_or(false);
    let mut spec = PodSpec::new(&format!("{name}-{node}"), namespace, &uid);
    spec.host_network = flag("/spec/hostNetwork");
    spec.host_pid = flag("/spec/hostPID");
    let mut containers = Vec::new();
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .ok_or("no spec.containers")?
    {
        containers.push(container(pod, c)?);
    }
    spec.privileged = containers.iter().any(|c| c.privileged);
    Ok((spec, containers))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn container(pod: &Value, c: &Value) -> Result<ContainerSpec, String> {
    let s = |p: &str| c.pointer(p).and_then(Value::as_str);
    let name = s("/name").ok_or("a container without a name")?;
    let mut spec = ContainerSpec::new(
        name,
        s("/image").ok_or("a container without an image")?,
        &[],
    );
    spec.command = strings(c.get("command"));
    spec.args = strings(c.get("args"));
    if let Some(m) = s("/resources/limits/memory") {
        spec.memory_limit = memory_bytes(m).ok_or_else(|| format!("memory limit {m:?}"))?;
    }
    if let Some(cpu) = s("/resources/limits/cpu") {
        spec.cpu_limit_millis = cpu_millis(cpu).ok_or_else(|| format!("cpu limit {cpu:?}"))?;
    }
    spec.privileged = c
        .pointer("/securityContext/privileged")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array);
    for m in c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let volume = m
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a volumeMount without a name")?;
        let target = m
            .get("mountPath")
            .and_then(Value::as_str)
            .ok_or("a volumeMount without a mountPath")?;
        let host = volumes
            .into_iter()
            .flatten()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(volume))
            .and_then(|v| v.pointer("/hostPath/path"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("volume {volume:?}: the fake mounts hostPath volumes only"))?;
        let readonly = m.get("readOnly").and_then(Value::as_bool).unwrap_or(false);
        spec.mounts
            .push((host.to_owned(), target.to_owned(), readonly));
    }
    Ok(spec)
}

/// A stable UID from the manifest's bytes (32 hex digits of FNV-1a, twice).
fn uid_of(text: &str) -> String {
    let fnv = |seed: u64| {
        text.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    };
    format!(
        "{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4)
    )
}

fn run_pod(
    cri: &mut Cri,
    spec: &PodSpec,
    containers: &[ContainerSpec],
    file: &str,
) -> Result<String, String> {
    for stale in cri.pods_with_labels(&[(STATIC_POD_LABEL, file)])? {
        cri.stop_pod(&stale.id)?;
        cri.remove_pod(&stale.id)?;
    }
    let mut spec = spec.clone();
    spec.labels.push((STATIC_POD_LABEL.into(), file.into()));
    let sandbox = spec.sandbox_config();
    let pod_id = cri.run_pod(&sandbox)?;
    let ip = cri
        .pod_status(&pod_id)?
        .network
        .map(|n| n.ip)
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| "host network".into());
    let mut started = Vec::new();
    for c in containers {
        let id = cri.create_container(&pod_id, &c.config(&spec), &sandbox)?;
        cri.start_container(&id)?;
        cri.wait_container(
            &id,
            k8s_cri::v1::ContainerState::ContainerRunning,
            START_TIMEOUT,
        )?;
        started.push(format!("{} {}", c.name, short(&id)));
    }
    Ok(format!(
        "sandbox {} ({ip}), containers {}",
        short(&pod_id),
        started.join(", ")
    ))
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_pod_becomes_sandbox_and_containers() {
        let text = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"relay","namespace":"kube-system"},
            "spec":{"hostNetwork":true,"containers":[{"name":"r","image":"keel.local/probe:latest",
            "command":["/cri-relay"],"args":["0.0.0.0:1"],"securityContext":{"privileged":true},
            "resources":{"limits":{"memory":"64Mi","cpu":"250m"}},
            "volumeMounts":[{"name":"sock","mountPath":"/run/containerd","readOnly":true}]}],
            "volumes":[{"name":"sock","hostPath":{"path":"/run/containerd"}}]}}"#;
        let pod: Value = serde_json::from_str(text).unwrap();
        let (spec, containers) = describe(&pod, text, "cp1").unwrap();
        assert_eq!(spec.name, "relay-cp1");
        assert_eq!(spec.namespace, "kube-system");
        assert!(spec.host_network && spec.privileged && !spec.host_pid);
        assert_eq!(spec.uid, uid_of(text), "derived from the manifest");
        assert_ne!(uid_of(text), uid_of("{}"));
        let c = &containers[0];
        assert_eq!(c.command, ["/cri-relay"]);
        assert_eq!(c.args, ["0.0.0.0:1"]);
        assert_eq!((c.memory_limit, c.cpu_limit_millis), (64 << 20, 250));
        assert_eq!(
            c.mounts,
            [(
                "/run/containerd".to_owned(),
                "/run/containerd".to_owned(),
                true
            )]
        );
        let bad: Value = serde_json::from_str(
            r#"{"metadata":{"name":"x"},"spec":{"containers":[{"name":"c","image":"i","volumeMounts":[{"name":"v","mountPath":"/v"}]}],"volumes":[{"name":"v","emptyDir":{}}]}}"#,
        )
        .unwrap();
        let err = describe(&bad, "", "n").unwrap_err();
        assert!(err.contains("hostPath volumes only"), "{err}");
    }
}
