//! Cluster secrets on the build host: `keel secrets gen`, and reading `image.secrets` for a
//! build (which puts only the node's share into STATE).

use std::io::Write;
use std::path::{Path, PathBuf};

use keel_contract::profile::{Endpoint, LoadedProfile, ProfileError};
use keel_contract::secrets::{NodeSecrets, Secrets};

/// The operator's kubeconfig, written beside the secrets file.
pub const ADMIN_KUBECONFIG: &str = "admin.kubeconfig";

#[derive(Debug, thiserror::Error)]
pub enum SecretsGenError {
    #[error("{0}: expected a file name other than {ADMIN_KUBECONFIG}")]
    BadName(PathBuf),
    #[error("{0} already exists; refusing to overwrite cluster secrets")]
    Exists(PathBuf),
    #[error(transparent)]
    Pki(#[from] keel_pki::PkiError),
    #[error("{0}")]
    Format(String),
    /// A secrets file that does not parse.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::error::Classify for SecretsGenError {
    fn is_bad_input(&self) -> bool {
        match self {
            SecretsGenError::BadName(_)
            | SecretsGenError::Exists(_)
            | SecretsGenError::Invalid { .. } => true,
            SecretsGenError::Pki(e) => e.is_bad_input(),
            SecretsGenError::Format(_) | SecretsGenError::Io { .. } => false,
        }
    }
}

/// What `keel secrets gen` wrote.
#[derive(Debug)]
pub struct Generated {
    pub secrets_path: PathBuf,
    pub kubeconfig_path: PathBuf,
    pub secrets: Secrets,
}

/// `keel secrets gen -o FILE`: new cluster secrets in FILE and the admin's kubeconfig
/// (against `endpoint`) beside it, both mode 0600. Neither file may exist: overwriting
/// either would orphan a running cluster's CA, so that is bad input, not a choice.
pub fn generate(
    output: &Path,
    cluster_name: &str,
    endpoint: &Endpoint,
    now: u64,
) -> Result<Generated, SecretsGenError> {
    let kubeconfig_path = output.with_file_name(ADMIN_KUBECONFIG);
    if output.file_name().is_none() || kubeconfig_path == output {
        return Err(SecretsGenError::BadName(output.to_path_buf()));
    }
    for p in [output, kubeconfig_path.as_path()] {
        if p.exists() {
            return Err(SecretsGenError::Exists(p.to_path_buf()));
        }
    }
    let secrets = keel_pki::generate(cluster_name, now)?;
    let text = secrets
        .to_toml()
        .map_err(|e| SecretsGenError::Format(e.to_string()))?;
    let kubeconfig = keel_pki::admin_kubeconfig(&secrets, endpoint);

    // Both files are created (exclusively) before either is filled, so a race or a failure
    // leaves neither behind.
    let mut secrets_file = create_private(output)?;
    let mut kubeconfig_file = match create_private(&kubeconfig_path) {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(output);
            return Err(e);
        }
    };
    let written = secrets_file
        .write_all(text.as_bytes())
        .and_then(|()| secrets_file.sync_all())
        .map_err(|e| (output, e))
        .and_then(|()| {
            kubeconfig_file
                .write_all(kubeconfig.as_bytes())
                .and_then(|()| kubeconfig_file.sync_all())
                .map_err(|e| (kubeconfig_path.as_path(), e))
        });
    if let Err((path, e)) = written {
        let _ = std::fs::remove_file(output);
        let _ = std::fs::remove_file(&kubeconfig_path);
        return Err(SecretsGenError::Io {
            path: path.to_path_buf(),
            source: e,
        });
    }
    Ok(Generated {
        secrets_path: output.to_path_buf(),
        kubeconfig_path,
        secrets,
    })
}

fn read_cluster(path: &Path) -> Result<Secrets, SecretsGenError> {
    let text = std::fs::read_to_string(path).map_err(|e| SecretsGenError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Secrets::from_toml(&text).map_err(|e| SecretsGenError::Invalid {
        path: path.to_path_buf(),
        message: format!("{e} (expected cluster secrets from `keel secrets gen`)"),
    })
}

/// Writes `text` into a new file (mode 0600), leaving nothing behind on failure.
fn write_new_private(path: &Path, text: &str) -> Result<(), SecretsGenError> {
    let mut file = create_private(path)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            let _ = std::fs::remove_file(path);
            SecretsGenError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        })
}

/// `keel secrets node NAME --ip ... --secrets CLUSTER --role ROLE -o OUT`: the node secrets
/// file (what a node keeps as STATE's `/secrets.toml`) for one node, its API certificate its
/// own (see [`keel_pki::issue_node_api`]). Given at boot (fw_cfg, a config drive), it replaces
/// the node's secrets; the node then serves that certificate.
pub fn node_file(
    cluster: &Path,
    name: &str,
    ips: &[std::net::IpAddr],
    role: keel_contract::profile::Role,
    output: &Path,
    now: u64,
) -> Result<NodeSecrets, SecretsGenError> {
    let secrets = read_cluster(cluster)?;
    let mut node = secrets.for_role(role);
    node.node_api = keel_pki::issue_node_api(&secrets, name, ips, now)?;
    let text = node
        .to_toml()
        .map_err(|e| SecretsGenError::Format(e.to_string()))?;
    write_new_private(output, &text)?;
    Ok(node)
}

/// `keel secrets renew FILE`: every leaf certificate in FILE issued again (the CAs, keys and
/// token kept: [`keel_pki::renew`]). FILE is replaced whole (a new file renamed over it), so
/// a failure leaves the old one.
pub fn renew(path: &Path, now: u64) -> Result<Secrets, SecretsGenError> {
    let renewed = keel_pki::renew(&read_cluster(path)?, now)?;
    let text = renewed
        .to_toml()
        .map_err(|e| SecretsGenError::Format(e.to_string()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".renewing");
    let tmp = PathBuf::from(tmp);
    // Left by a renewal that died: it holds nothing the file does not.
    let _ = std::fs::remove_file(&tmp);
    write_new_private(&tmp, &text)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        SecretsGenError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })?;
    Ok(renewed)
}

/// Creates a new file with mode 0600 (never opening an existing one).
fn create_private(path: &Path) -> Result<std::fs::File, SecretsGenError> {
    crate::io::create_new_with_mode(path, 0o600).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            SecretsGenError::Exists(path.to_path_buf())
        } else {
            SecretsGenError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })
}

/// The node's share of the profile's `image.secrets` (none without it), as the TOML that
/// goes to STATE. Errors point at `image.secrets` in the profile.
pub fn node_secrets_for(loaded: &LoadedProfile) -> Result<Option<NodeSecrets>, ProfileError> {
    let Some(path) = &loaded.profile.image.secrets else {
        return Ok(None);
    };
    let invalid =
        |message: String| ProfileError::Invalid(vec![loaded.diagnostic("image.secrets", message)]);
    let text =
        std::fs::read_to_string(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    let secrets = Secrets::from_toml(&text).map_err(|e| {
        invalid(format!(
            "{}: {e} (create the file with `keel secrets gen`)",
            path.display()
        ))
    })?;
    // The kubeconfigs a node derives carry the secrets' cluster name; a profile naming a
    // different cluster is almost certainly pointing at the wrong secrets file.
    match &loaded.profile.node.cluster.name {
        Some(name) if *name != secrets.cluster_name => {
            return Err(ProfileError::Invalid(vec![loaded.diagnostic(
                "node.cluster.name",
                format!(
                    "{name:?} differs from the cluster name {:?} in {}: expected the same cluster",
                    secrets.cluster_name,
                    path.display()
                ),
            )]));
        }
        _ => {}
    }
    Ok(Some(secrets.for_role(loaded.profile.node.role)))
}
