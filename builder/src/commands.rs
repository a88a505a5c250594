//! What each subcommand does; `main.rs` only parses and maps errors to exit codes.

use std::path::{Path, PathBuf};

use keel_contract::profile::{
    Diagnostic, KernelSpec, LoadedProfile, OutputFormat, Profile, UserlandSource,
};

use crate::build::BuildError;
use crate::progress::Reporter;

/// Errors from the CLI, each knowing its exit code: 2 for bad input, 1 for failures.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Failed(String),
}

impl CommandError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::BadInput(_) => 2,
            CommandError::Failed(_) => 1,
        }
    }
}

impl From<BuildError> for CommandError {
    fn from(e: BuildError) -> Self {
        if e.is_bad_input() {
            CommandError::BadInput(e.to_string())
        } else {
            CommandError::Failed(e.to_string())
        }
    }
}

/// Host paths the profile names that do not exist, as diagnostics pointing at the field.
/// With `key_overridden` (a `--key` on the command line) the profile's own key is not needed.
pub fn missing_profile_paths(loaded: &LoadedProfile, key_overridden: bool) -> Vec<Diagnostic> {
    let image = &loaded.profile.image;
    let mut out = Vec::new();
    let mut check = |field: String, path: &Path, want_dir: bool| {
        let ok = if want_dir {
            path.is_dir()
        } else {
            path.exists()
        };
        if !ok {
            let kind = if want_dir { "directory" } else { "file" };
            out.push(loaded.diagnostic(
                &field,
                format!("{} does not exist (expected a {kind})", path.display()),
            ));
        }
    };
    if let Some(key) = image.signing_key.as_ref().filter(|_| !key_overridden) {
        check("image.signing_key".into(), key, false);
    }
    for (i, k) in image.trusted_keys.iter().enumerate() {
        check(format!("image.trusted_keys[{i}]"), k, false);
    }
    if let KernelSpec::Path { path, modules } = &image.kernel {
        check("image.kernel.path".into(), path, false);
        if let Some(m) = modules {
            check("image.kernel.modules".into(), m, true);
        }
    }
    for (i, source) in image.userland.iter().enumerate() {
        if let UserlandSource::Oci(oci) = source {
            if let Some(l) = &oci.layout {
                check(format!("image.userland[{i}].oci.layout"), l, true);
            }
            if let Some(a) = &oci.archive {
                check(format!("image.userland[{i}].oci.archive"), a, false);
            }
        }
    }
    for (i, img) in image.container_images.iter().enumerate() {
        if let Some(l) = &img.layout {
            check(format!("image.container_images[{i}].layout"), l, true);
        }
        if let Some(a) = &img.archive {
            check(format!("image.container_images[{i}].archive"), a, false);
        }
    }
    if let Some(secrets) = &image.secrets {
        check("image.secrets".into(), secrets, false);
    }
    for (i, f) in image.files.iter().enumerate() {
        check(format!("image.files[{i}].src"), &f.src, false);
    }
    out
}

/// The node section as baked into the initramfs (no build-host paths).
pub fn baked_profile(profile: &Profile) -> String {
    #[derive(serde::Serialize)]
    struct Baked<'a> {
        node: &'a keel_contract::profile::Node,
    }
    toml::to_string(&Baked {
        node: &profile.node,
    })
    .unwrap_or_default()
}

/// `keel profile check`.
pub fn profile_check(file: &Path, rep: &Reporter) -> Result<(), CommandError> {
    let loaded = LoadedProfile::load(file).map_err(|e| CommandError::BadInput(e.to_string()))?;
    let missing = missing_profile_paths(&loaded, false);
    if !missing.is_empty() {
        let text: Vec<String> = missing.iter().map(ToString::to_string).collect();
        return Err(CommandError::BadInput(text.join("\n")));
    }
    crate::secrets::node_secrets_for(&loaded).map_err(|e| CommandError::BadInput(e.to_string()))?;
    let image = &loaded.profile.image;
    if image.version.is_none() {
        return Err(CommandError::BadInput(
            loaded.diagnostic("image.version", "not set: expected a semantic version like \"1.0.0\" (or pass --version to keel build)".into()).to_string(),
        ));
    }
    if image.userland.is_empty() {
        return Err(CommandError::BadInput(
            loaded
                .diagnostic(
                    "image.userland",
                    "expected at least one userland source".into(),
                )
                .to_string(),
        ));
    }
    rep.note(&format!(
        "{}: ok ({} {}, role {}, {} file(s) in the extends chain)",
        file.display(),
        image.name,
        image
            .version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        loaded.profile.node.role.as_str(),
        loaded.layers.len()
    ));
    Ok(())
}

/// Converts `disk.raw` to one more output format (raw is already there).
pub fn convert_format(
    format: OutputFormat,
    raw: &Path,
    out_dir: &Path,
    sde: u64,
    disk_guid: &uuid::Uuid,
    rep: &Reporter,
) -> Result<(), BuildError> {
    if format == OutputFormat::Raw {
        return Ok(());
    }
    let phase = rep.phase(format.name(), None);
    let dest = out_dir.join(format.file_name());
    let summary = crate::formats::convert(
        raw,
        format,
        &dest,
        &crate::formats::ConvertOptions {
            source_date_epoch: sde,
            unique_id_seed: *disk_guid.as_bytes(),
        },
    )
    .map_err(|e| BuildError::Format {
        format: format.name().to_owned(),
        message: e.to_string(),
    })?;
    phase.finish(&format!(
        "{} {}",
        format.file_name(),
        crate::progress::human_bytes(summary.size)
    ));
    Ok(())
}

/// The package cache: `$KEEL_CACHE_DIR`, `$XDG_CACHE_HOME/keel` or `~/.cache/keel`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEEL_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("keel");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/keel"))
        .unwrap_or_else(|| PathBuf::from(".keel-cache"))
}

/// SOURCE_DATE_EPOCH, or 0 so that builds are reproducible by default.
pub fn source_date_epoch() -> Result<u64, CommandError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().map_err(|_| {
            CommandError::BadInput(format!(
                "SOURCE_DATE_EPOCH={v:?}: expected a number of seconds"
            ))
        }),
        Err(_) => Ok(0),
    }
}

/// `keel sign FILE --key K`: writes FILE.minisig.
pub fn sign(
    file: &Path,
    key: &Path,
    trusted_comment: Option<&str>,
    rep: &Reporter,
) -> Result<(), CommandError> {
    let secret =
        crate::keys::load_secret(key).map_err(|e| CommandError::BadInput(e.to_string()))?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let comment = match trusted_comment {
        Some(c) => c.to_owned(),
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("timestamp:{now}\tfile:{name}\thashed")
        }
    };
    let sig = keel_minisign::sign_file(&secret, file, &comment)
        .map_err(|e| CommandError::BadInput(e.to_string()))?;
    let mut out = file.as_os_str().to_owned();
    out.push(".minisig");
    let out = PathBuf::from(out);
    std::fs::write(&out, sig.to_file_string())
        .map_err(|e| CommandError::Failed(format!("{}: {e}", out.display())))?;
    rep.note(&format!(
        "signed {} with key ID {}: {}",
        file.display(),
        secret.key_id(),
        out.display()
    ));
    Ok(())
}

/// `keel verify PATH --pub P...`.
pub fn verify(path: &Path, public: &[PathBuf], rep: &Reporter) -> Result<(), CommandError> {
    let trusted = crate::verify::load_trusted(public)?;
    if path.is_dir() {
        let report = if crate::bundle::is_bundle(path) {
            crate::verify::verify_bundle(path, &trusted)?
        } else {
            crate::verify::verify_output_dir(path, &trusted)?
        };
        for item in &report.checked {
            rep.note(&format!("ok  {item}"));
        }
        rep.note(&format!(
            "verified {} {}: signed by key ID {} ({})",
            report.manifest.name,
            report.manifest.version,
            report.verified.key_id,
            report.verified.trusted_comment
        ));
    } else {
        if !path.exists() {
            return Err(CommandError::BadInput(format!(
                "{}: no such file or directory",
                path.display()
            )));
        }
        let verified = crate::verify::verify_file(path, &trusted)?;
        rep.note(&format!(
            "verified {}: signed by key ID {} ({})",
            path.display(),
            verified.key_id,
            verified.trusted_comment
        ));
    }
    Ok(())
}
