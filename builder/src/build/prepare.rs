//! Everything that can be checked cheaply, checked before the long work starts: the profile,
//! the files it names, its secrets, the signing key (and its passphrase), the trusted keys
//! and the init binary.

use keel_contract::profile::{LoadedProfile, ProfileError};
use keel_contract::secrets::NodeSecrets;
use keel_minisign::{SecretKey, TrustedKeys};

use super::{BuildError, BuildRequest};

/// Inputs checked and loaded.
pub(super) struct Prepared {
    pub loaded: LoadedProfile,
    pub version: semver::Version,
    pub secret: SecretKey,
    pub trusted: TrustedKeys,
    pub init: Vec<u8>,
    /// The node's share of `image.secrets`, for STATE.
    pub node_secrets: Option<NodeSecrets>,
}

pub(super) fn prepare(req: &BuildRequest) -> Result<Prepared, BuildError> {
    let loaded = LoadedProfile::load(&req.profile)?;
    let image = &loaded.profile.image;
    let version = match (&req.version, &image.version) {
        (Some(v), _) | (None, Some(v)) => v.clone(),
        (None, None) => {
            return Err(BuildError::Profile(ProfileError::Invalid(vec![
                loaded.diagnostic(
                    "image.version",
                    "not set: expected a semantic version like \"1.0.0\" here or --version".into(),
                ),
            ])));
        }
    };
    crate::check::require_userland(&loaded)?;
    crate::check::pxe_cmdline(&loaded)?;
    let missing = crate::check::missing_profile_paths(&loaded, req.key.is_some());
    if !missing.is_empty() {
        return Err(BuildError::Profile(ProfileError::Invalid(missing)));
    }
    let node_secrets = crate::secrets::node_secrets_for(&loaded)?;
    let key_path = req.key.clone().or_else(|| image.signing_key.clone()).ok_or_else(|| {
        BuildError::Profile(ProfileError::Invalid(vec![loaded.diagnostic(
            "image.signing_key",
            "no signing key: set image.signing_key or pass --key (create one with `keel key gen`)".into(),
        )]))
    })?;
    let secret = crate::keys::load_secret(&key_path)?;
    let (_, public) = crate::keys::public_for_secret(&key_path, &secret)?;
    let trusted = crate::keys::trusted_set(&public, &image.trusted_keys)?;
    let (_, init) = crate::init_binary::load(req.init.as_deref())?;
    Ok(Prepared {
        loaded,
        version,
        secret,
        trusted,
        init,
        node_secrets,
    })
}
