//! A small, blocking CRI client over the generated `k8s-cri` (tonic) stubs: the calls a
//! kubelet makes to run a pod, and the pod and container descriptions it sends.
//!
//! Shared by the fake kubelet (over containerd's Unix socket on the node) and the QEMU tests
//! of keel-vm-tests (over TCP, through a relay pod and a QEMU port forward). Blocking, because both callers are plain sequential programs; each client owns a
//! single-threaded tokio runtime.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{self as cri};
use tonic::transport::{Channel, Endpoint, Uri};

/// The kubelet's default for one CRI call (its `--runtime-request-timeout`).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub type CriResult<T> = Result<T, String>;

fn status(call: &str) -> impl FnOnce(tonic::Status) -> String + '_ {
    move |s| format!("CRI {call}: {} ({:?})", s.message(), s.code())
}

/// A connection to a CRI runtime (containerd's CRI plugin).
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Over a Unix socket, as the kubelet connects (`unix:///run/containerd/containerd.sock`).
    pub fn unix(path: &str) -> CriResult<Cri> {
        let path = path.to_owned();
        Self::connect(&format!("unix://{path}"), move |rt| {
            rt.block_on(async {
                Endpoint::try_from("http://[::]:50051")
                    .map_err(|e| e.to_string())?
                    .timeout(CALL_TIMEOUT)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
    }

    /// Over TCP (`HOST:PORT`), e.g. a relay to the socket behind a QEMU port forward.
    pub fn tcp(address: &str) -> CriResult<Cri> {
        let url = format!("http://{address}");
        Self::connect(&url.clone(), move |rt| {
            rt.block_on(async {
                Endpoint::try_from(url)
                    .map_err(|e| e.to_string())?
                    .timeout(CALL_TIMEOUT)
                    .connect_timeout(Duration::from_secs(10))
                    .connect()
                    .await
                    .map_err(|e| e.to_string())
            })
        })
    }

    fn connect(
        what: &str,
        channel: impl FnOnce(&tokio::runtime::Runtime) -> CriResult<Channel>,
    ) -> CriResult<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let channel = channel(&rt).map_err(|e| format!("connecting to {what}: {e}"))?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    pub fn version(&mut self) -> CriResult<cri::VersionResponse> {
        let req = cri::VersionRequest {
            version: "v1".into(),
        };
        self.rt
            .block_on(self.runtime.version(req))
            .map(tonic::Response::into_inner)
            .map_err(status("Version"))
    }

    /// `Status`: the runtime's conditions (`RuntimeReady`, `NetworkReady`) as
    /// (type, status, reason, message).
    pub fn conditions(&mut self) -> CriResult<Vec<(String, bool, String, String)>> {
        let req = cri::StatusRequest { verbose: false };
        let resp = self
            .rt
            .block_on(self.runtime.status(req))
            .map_err(status("Status"))?
            .into_inner();
        Ok(resp
            .status
            .map(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.r#type, c.status, c.reason, c.message))
            .collect())
    }

    /// The image's id if the runtime has it (`ImageStatus`, as the kubelet's IfNotPresent).
    pub fn image_id(&mut self, image: &str) -> CriResult<Option<String>> {
        let req = cri::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        let resp = self
            .rt
            .block_on(self.images.image_status(req))
            .map_err(status("ImageStatus"))?
            .into_inner();
        Ok(resp.image.map(|i| i.id))
    }

    /// `PullImage`; the image reference the runtime resolved.
    pub fn pull(&mut self, image: &str) -> CriResult<String> {
        let req = cri::PullImageRequest {
            image: Some(image_spec(image)),
            ..Default::default()
        };
        self.rt
            .block_on(self.images.pull_image(req))
            .map(|r| r.into_inner().image_ref)
            .map_err(status("PullImage"))
    }

    pub fn run_pod(&mut self, config: &cri::PodSandboxConfig) -> CriResult<String> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        self.rt
            .block_on(self.runtime.run_pod_sandbox(req))
            .map(|r| r.into_inner().pod_sandbox_id)
            .map_err(status("RunPodSandbox"))
    }

    pub fn pod_status(&mut self, id: &str) -> CriResult<cri::PodSandboxStatus> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        self.rt
            .block_on(self.runtime.pod_sandbox_status(req))
            .map_err(status("PodSandboxStatus"))?
            .into_inner()
            .status
            .ok_or_else(|| format!("CRI PodSandboxStatus {id}: no status"))
    }

    /// Sandboxes carrying every label in `labels`.
    pub fn pods_with_labels(&mut self, labels: &[(&str, &str)]) -> CriResult<Vec<cri::PodSandbox>> {
        let req = cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            }),
        };
        self.rt
            .block_on(self.runtime.list_pod_sandbox(req))
            .map(|r| r.into_inner().items)
            .map_err(status("ListPodSandbox"))
    }

    pub fn stop_pod(&mut self, id: &str) -> CriResult<()> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt
            .block_on(self.runtime.stop_pod_sandbox(req))
            .map(drop)
            .map_err(status("StopPodSandbox"))
    }

    pub fn remove_pod(&mut self, id: &str) -> CriResult<()> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt
            .block_on(self.runtime.remove_pod_sandbox(req))
            .map(drop)
            .map_err(status("RemovePodSandbox"))
    }

    pub fn create_container(
        &mut self,
        pod_id: &str,
        config: &cri::ContainerConfig,
        pod: &cri::PodSandboxConfig,
    ) -> CriResult<String> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod.clone()),
        };
        self.rt
            .block_on(self.runtime.create_container(req))
            .map(|r| r.into_inner().container_id)
            .map_err(status("CreateContainer"))
    }

    pub fn start_container(&mut self, id: &str) -> CriResult<()> {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        self.rt
            .block_on(self.runtime.start_container(req))
            .map(drop)
            .map_err(status("StartContainer"))
    }

    pub fn container_status(&mut self, id: &str) -> CriResult<cri::ContainerStatus> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.rt
            .block_on(self.runtime.container_status(req))
            .map_err(status("ContainerStatus"))?
            .into_inner()
            .status
            .ok_or_else(|| format!("CRI ContainerStatus {id}: no status"))
    }

    /// Polls until the container is in `state` (e.g. running, or exited); its last status.
    pub fn wait_container(
        &mut self,
        id: &str,
        state: cri::ContainerState,
        timeout: Duration,
    ) -> CriResult<cri::ContainerStatus> {
        let start = Instant::now();
        loop {
            let s = self.container_status(id)?;
            if s.state == state as i32 {
                return Ok(s);
            }
            if s.state == cri::ContainerState::ContainerExited as i32
                && state != cri::ContainerState::ContainerExited
            {
                return Err(format!(
                    "container {id} exited ({}, code {}) instead of reaching {state:?}: {}",
                    s.reason, s.exit_code, s.message
                ));
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "container {id} did not reach {state:?} within {}s (state {})",
                    timeout.as_secs(),
                    s.state
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `ExecSync`: (exit code, stdout, stderr).
    pub fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> CriResult<(i32, String, String)> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: timeout.as_secs() as i64,
        };
        let r = self
            .rt
            .block_on(self.runtime.exec_sync(req))
            .map_err(status("ExecSync"))?
            .into_inner();
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }
}

pub fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

/// What a pod needs from its sandbox, in the kubelet's terms.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub host_network: bool,
    pub host_pid: bool,
    /// Needed for any privileged container in it.
    pub privileged: bool,
    pub labels: Vec<(String, String)>,
}

impl PodSpec {
    pub fn new(name: &str, namespace: &str, uid: &str) -> PodSpec {
        PodSpec {
            name: name.into(),
            namespace: namespace.into(),
            uid: uid.into(),
            ..Default::default()
        }
    }

    /// The sandbox configuration the kubelet would send: metadata, the log directory
    /// `/var/log/pods/<namespace>_<name>_<uid>`, the cgroup parent `/kubepods/pod<uid>`
    /// (cgroupfs driver), namespaces, labels.
    pub fn sandbox_config(&self) -> cri::PodSandboxConfig {
        let node = |on: bool| {
            if on {
                cri::NamespaceMode::Node as i32
            } else {
                cri::NamespaceMode::Pod as i32
            }
        };
        let mut labels: HashMap<String, String> = self.labels.iter().cloned().collect();
        labels.insert("io.kubernetes.pod.name".into(), self.name.clone());
        labels.insert("io.kubernetes.pod.namespace".into(), self.namespace.clone());
        labels.insert("io.kubernetes.pod.uid".into(), self.uid.clone());
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            hostname: if self.host_network {
                String::new()
            } else {
                self.name.clone()
            },
            log_directory: self.log_directory(),
            labels,
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/pod{}", self.uid),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: node(self.host_network),
                        pid: node(self.host_pid),
                        ipc: node(false),
                        ..Default::default()
                    }),
                    privileged: self.privileged,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn log_directory(&self) -> String {
        format!(
            "/var/log/pods/{}_{}_{}",
            self.namespace, self.name, self.uid
        )
    }
}

/// One container of a pod, in the kubelet's terms.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// (host path, container path, read-only)
    pub mounts: Vec<(String, String, bool)>,
    /// Bytes; 0: no limit.
    pub memory_limit: i64,
    /// Millicores; 0: no limit. Becomes a CFS quota over the kubelet's 100 ms period.
    pub cpu_limit_millis: i64,
    pub privileged: bool,
}

impl ContainerSpec {
    pub fn new(name: &str, image: &str, command: &[&str]) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    /// The container configuration the kubelet would send for it in `pod`: its log at
    /// `<name>/0.log` under the pod's log directory, the limits as cgroup values, the pod's
    /// namespaces.
    pub fn config(&self, pod: &PodSpec) -> cri::ContainerConfig {
        let period = 100_000;
        let resources = cri::LinuxContainerResources {
            cpu_period: if self.cpu_limit_millis > 0 { period } else { 0 },
            cpu_quota: self.cpu_limit_millis * period / 1000,
            cpu_shares: 2,
            memory_limit_in_bytes: self.memory_limit,
            ..Default::default()
        };
        let namespaces = pod
            .sandbox_config()
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options);
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: self.name.clone(),
                attempt: 0,
            }),
            image: Some(image_spec(&self.image)),
            command: self.command.clone(),
            args: self.args.clone(),
            mounts: self
                .mounts
                .iter()
                .map(|(host, container, readonly)| cri::Mount {
                    host_path: host.clone(),
                    container_path: container.clone(),
                    readonly: *readonly,
                    ..Default::default()
                })
                .collect(),
            labels: [("io.kubernetes.container.name".to_owned(), self.name.clone())]
                .into_iter()
                .collect(),
            log_path: format!("{}/0.log", self.name),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(resources),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    privileged: self.privileged,
                    namespace_options: namespaces,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }
}

/// A Kubernetes quantity as the kubelet turns it into bytes (`128Mi`, `1G`, `512`).
pub fn memory_bytes(quantity: &str) -> Option<i64> {
    let q = quantity.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let n: i64 = n.parse().ok()?;
    let mult: i64 = match unit {
        "" => 1,
        "k" => 1000,
        "M" => 1000_i64.pow(2),
        "G" => 1000_i64.pow(3),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A CPU quantity in millicores (`500m`, `2`).
pub fn cpu_millis(quantity: &str) -> Option<i64> {
    let q = quantity.trim();
    match q.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => q.parse::<i64>().ok().and_then(|c| c.checked_mul(1000)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(memory_bytes("128Mi"), Some(128 << 20));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(memory_bytes("512"), Some(512));
        assert_eq!(memory_bytes("1.5Gi"), None);
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("x"), None);
    }

    #[test]
    fn limits_and_namespaces_as_the_kubelet_sends_them() {
        let mut pod = PodSpec::new("p", "ns", "u1");
        pod.host_network = true;
        let sandbox = pod.sandbox_config();
        let linux = sandbox.linux.as_ref().unwrap();
        assert_eq!(linux.cgroup_parent, "/kubepods/podu1");
        assert_eq!(sandbox.log_directory, "/var/log/pods/ns_p_u1");
        let ns = linux
            .security_context
            .as_ref()
            .unwrap()
            .namespace_options
            .clone()
            .unwrap();
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
        assert_eq!(ns.pid, cri::NamespaceMode::Pod as i32);
        let mut c = ContainerSpec::new("c", "img", &["/bin/true"]);
        c.memory_limit = 32 << 20;
        c.cpu_limit_millis = 250;
        let config = c.config(&pod);
        let r = config.linux.unwrap().resources.unwrap();
        assert_eq!((r.cpu_quota, r.cpu_period), (25_000, 100_000));
        assert_eq!(r.memory_limit_in_bytes, 32 << 20);
        assert_eq!(config.log_path, "c/0.log");
    }
}
