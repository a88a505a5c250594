//! `keel profile check`: everything a build checks before it starts the long work, without
//! building: the profile and its `extends` chain, the host files it names, its secrets file,
//! and what a build needs beyond a valid profile (a version, a userland).

use std::path::{Path, PathBuf};

use keel_contract::profile::{Diagnostic, KernelSpec, LoadedProfile, ProfileError, UserlandSource};
use serde::Serialize;

/// What a successful check found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub file: PathBuf,
    pub name: String,
    pub version: String,
    pub role: String,
    /// The files of the `extends` chain, the named one first.
    pub layers: Vec<PathBuf>,
}

/// Checks `file` as `keel build` would before building.
pub fn check_profile(file: &Path) -> Result<CheckReport, ProfileError> {
    let loaded = LoadedProfile::load(file)?;
    let missing = missing_profile_paths(&loaded, false);
    if !missing.is_empty() {
        return Err(ProfileError::Invalid(missing));
    }
    crate::secrets::node_secrets_for(&loaded)?;
    let image = &loaded.profile.image;
    let Some(version) = &image.version else {
        return Err(ProfileError::Invalid(vec![loaded.diagnostic(
            "image.version",
            "not set: expected a semantic version like \"1.0.0\" (or pass --version to keel build)"
                .into(),
        )]));
    };
    require_userland(&loaded)?;
    pxe_cmdline(&loaded)?;
    Ok(CheckReport {
        file: file.to_path_buf(),
        name: image.name.to_string(),
        version: version.to_string(),
        role: loaded.profile.node.role.as_str().to_owned(),
        layers: loaded.layers.iter().map(|l| l.path.clone()).collect(),
    })
}

/// With `image.formats = ["pxe"]`, every `image.cmdline` argument must mean the same to
/// iPXE as to the kernel (the boot script carries them).
pub fn pxe_cmdline(loaded: &LoadedProfile) -> Result<(), ProfileError> {
    let image = &loaded.profile.image;
    if !image
        .formats
        .contains(&keel_contract::profile::OutputFormat::Pxe)
    {
        return Ok(());
    }
    let problems: Vec<_> = image
        .cmdline
        .iter()
        .enumerate()
        .filter_map(|(i, arg)| {
            let e = crate::pxe::script::check_argument(arg).err()?;
            Some(loaded.diagnostic(&format!("image.cmdline[{i}]"), e.to_string()))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ProfileError::Invalid(problems))
    }
}

/// A build needs at least one userland source (a base profile alone may have none).
pub fn require_userland(loaded: &LoadedProfile) -> Result<(), ProfileError> {
    if loaded.profile.image.userland.is_empty() {
        return Err(ProfileError::Invalid(vec![loaded.diagnostic(
            "image.userland",
            "expected at least one userland source".into(),
        )]));
    }
    Ok(())
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
