//! Saved contexts, as kubeconfig and talosconfig have them: named sets of node API endpoints
//! and the cluster secrets file that authenticates to them, so that `keel node` needs no
//! `--endpoint` and `--secrets` on every call.
//!
//! ```toml
//! # $XDG_CONFIG_HOME/keel/config.toml (or ~/.config/keel/config.toml, or $KEEL_CONFIG)
//! current = "prod"
//!
//! [contexts.prod]
//! endpoints = ["10.0.0.5", "10.0.0.6:50000"]
//! secrets = "/home/ops/prod/cluster.secrets.toml"
//! ```
//!
//! This module is the library API a cluster command uses to write contexts:
//! [`Config::load`], [`Config::set`], [`Config::save`]. The file holds no secrets itself
//! (only the path of the secrets file) but is written with mode 0600 anyway, like kubeconfig.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use keel_contract::names::DnsLabel;
use serde::{Deserialize, Serialize};

/// Environment variable naming the file instead of the default.
pub const CONFIG_ENV: &str = "KEEL_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("no context named {name:?} (saved: {saved})")]
    Unknown { name: String, saved: String },
    #[error("no current context: pass --context NAME or run `keel context use NAME`")]
    NoCurrent,
    #[error("context name {0}")]
    BadName(String),
    #[error("context {0:?}: expected at least one endpoint")]
    NoEndpoint(String),
    #[error("no configuration directory: set {CONFIG_ENV}, XDG_CONFIG_HOME or HOME")]
    NoHome,
}

impl crate::error::Classify for ContextError {
    fn is_bad_input(&self) -> bool {
        !matches!(self, ContextError::Io { .. })
    }
}

/// One context: where the nodes' APIs are and how to prove who we are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Node API endpoints, `HOST` or `HOST:PORT`; `keel node` uses the first.
    pub endpoints: Vec<String>,
    /// The cluster secrets file (`keel secrets gen`).
    pub secrets: PathBuf,
}

/// The contexts file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// `$KEEL_CONFIG`, else `$XDG_CONFIG_HOME/keel/config.toml`, else
/// `~/.config/keel/config.toml`.
pub fn default_path() -> Result<PathBuf, ContextError> {
    if let Some(path) = std::env::var_os(CONFIG_ENV) {
        return Ok(PathBuf::from(path));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").ok_or(ContextError::NoHome)?).join(".config")
        }
    };
    Ok(base.join("keel").join("config.toml"))
}

impl Config {
    /// Reads `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Config, ContextError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ContextError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let config: Config = toml::from_str(&text).map_err(|e| ContextError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string().trim().to_owned(),
        })?;
        if let Some(current) = &config.current
            && !config.contexts.contains_key(current)
        {
            return Err(ContextError::Invalid {
                path: path.to_path_buf(),
                message: format!("current = {current:?} names no context"),
            });
        }
        Ok(config)
    }

    /// Writes the file (mode 0600, its directory 0700 when created), replacing it atomically.
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ContextError::Io { path: p, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
        let text = toml::to_string(self).map_err(|e| ContextError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let mut file = crate::io::create_new_with_mode(&tmp, 0o600).map_err(io(&tmp))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    /// Adds or replaces the context `name`. The first context becomes the current one.
    pub fn set(&mut self, name: &str, context: Context) -> Result<(), ContextError> {
        name.parse::<DnsLabel>()
            .map_err(|e| ContextError::BadName(e.replacen("invalid name ", "", 1)))?;
        if context.endpoints.is_empty() {
            return Err(ContextError::NoEndpoint(name.to_owned()));
        }
        self.contexts.insert(name.to_owned(), context);
        if self.current.is_none() {
            self.current = Some(name.to_owned());
        }
        Ok(())
    }

    /// Makes `name` the current context.
    pub fn use_context(&mut self, name: &str) -> Result<(), ContextError> {
        self.get(Some(name))?;
        self.current = Some(name.to_owned());
        Ok(())
    }

    /// Forgets `name` (and that it was current).
    pub fn remove(&mut self, name: &str) -> Result<Context, ContextError> {
        let removed = self
            .contexts
            .remove(name)
            .ok_or_else(|| self.unknown(name))?;
        if self.current.as_deref() == Some(name) {
            self.current = None;
        }
        Ok(removed)
    }

    /// The context `name`, or the current one.
    pub fn get(&self, name: Option<&str>) -> Result<(&str, &Context), ContextError> {
        let name = name
            .or(self.current.as_deref())
            .ok_or(ContextError::NoCurrent)?;
        self.contexts
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| self.unknown(name))
    }

    fn unknown(&self, name: &str) -> ContextError {
        let saved: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
        ContextError::Unknown {
            name: name.to_owned(),
            saved: if saved.is_empty() {
                "none".into()
            } else {
                saved.join(", ")
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(endpoint: &str) -> Context {
        Context {
            endpoints: vec![endpoint.into()],
            secrets: PathBuf::from("/s/cluster.secrets.toml"),
        }
    }

    #[test]
    fn set_use_get_remove_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel/config.toml");
        let mut config = Config::load(&path).unwrap();
        assert_eq!(config, Config::default());
        config.set("prod", ctx("10.0.0.5")).unwrap();
        config.set("lab", ctx("10.0.2.15:50001")).unwrap();
        assert_eq!(
            config.current.as_deref(),
            Some("prod"),
            "the first becomes current"
        );
        assert_eq!(config.get(None).unwrap().0, "prod");
        config.use_context("lab").unwrap();
        assert_eq!(config.get(None).unwrap().1.endpoints, ["10.0.2.15:50001"]);
        config.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Config::load(&path).unwrap(), config);

        let err = config.use_context("nope").unwrap_err().to_string();
        assert!(
            err.contains("\"nope\"") && err.contains("lab, prod"),
            "{err}"
        );
        config.remove("lab").unwrap();
        assert!(matches!(config.get(None), Err(ContextError::NoCurrent)));
        assert!(config.set("Bad Name", ctx("x")).is_err());
        let empty = Context {
            endpoints: vec![],
            secrets: PathBuf::new(),
        };
        assert!(matches!(
            config.set("x", empty),
            Err(ContextError::NoEndpoint(_))
        ));
    }

    #[test]
    fn bad_files_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "current = \"a\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("config.toml") && err.contains("names no context"),
            "{err}"
        );
        std::fs::write(&path, "[contexts.a]\nendpoint = \"x\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
