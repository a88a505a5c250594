//! Which configuration given at boot the node may apply (issue 11). fw_cfg is trusted as it
//! is: whoever sets it controls the hypervisor, and so the node's memory. A URL or a config
//! drive is anyone's who answers the request or plugs in a disk, so what they give applies
//! only when it is signed (minisign, `FILE.minisig` beside it) by a key baked into the
//! verified initramfs, is not older than what the node applied before, and, for a URL,
//! carries no secrets. A config drive is read at the first boot, later only when newer.

use std::path::Path;

use keel_contract::layout::config as contract;
use keel_minisign::{SignatureFile, TrustedKeys};

use crate::config::{Found, Source};

/// Why a boot-time configuration was not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error(
        "{file} from {from} is not signed (no {signature}); sign it with `keel sign` and a key the image trusts"
    )]
    Unsigned {
        from: Source,
        file: &'static str,
        signature: String,
    },
    #[error("{file} from {from}: its signature does not verify: {error}")]
    BadSignature {
        from: Source,
        file: &'static str,
        error: String,
    },
    #[error("{from}: the node has no trusted keys, so no signature can be checked")]
    NoTrustedKeys { from: Source },
    #[error(
        "{from}: a URL never delivers secrets (use fw_cfg, a config drive or the build); the profile is refused with them"
    )]
    SecretsByUrl { from: Source },
    #[error(
        "the profile from {from} has generation {given}, lower than the {applied} applied before (an old configuration replayed?)"
    )]
    OlderGeneration {
        from: Source,
        given: u64,
        applied: u64,
    },
}

/// What to do with a boot-time source.
#[derive(Debug)]
pub enum Verdict {
    Apply(Found),
    /// Not a problem: a config drive left attached after it was applied.
    Ignore(String),
    Refuse(Refused),
}

/// What the node applied before: the generation of STATE's profile, or of the baked one
/// when STATE has none (`first_boot`: no configuration was ever given at boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub generation: u64,
    pub first_boot: bool,
}

/// The generation a profile's text declares (0 when absent); `None` when it does not
/// parse, which [`crate::config::choose`] then reports with the parser's own words.
pub fn generation_of(text: &str) -> Option<u64> {
    crate::config::parse("profile", text)
        .ok()
        .map(|n| n.config_generation)
}

/// Judges `found` against the trusted keys and what the node applied before.
pub fn admit(found: Found, keys: Option<&TrustedKeys>, applied: Applied) -> Verdict {
    let source = found.source.clone();
    match source {
        Source::FwCfg | Source::State | Source::Baked | Source::Default => {
            return Verdict::Apply(found);
        }
        Source::Url(_) if found.secrets.is_some() => {
            return Verdict::Refuse(Refused::SecretsByUrl { from: source });
        }
        Source::Url(_) | Source::ConfigDrive(_) => {}
    }
    let given = found.profile.as_deref().and_then(generation_of);
    if let Source::ConfigDrive(dev) = &source
        && !applied.first_boot
        && given.is_none_or(|g| g <= applied.generation)
    {
        return Verdict::Ignore(format!(
            "config drive {dev} ignored: it is read at the first boot, later only with a higher config_generation than the {} applied",
            applied.generation
        ));
    }
    let Some(keys) = keys else {
        return Verdict::Refuse(Refused::NoTrustedKeys { from: source });
    };
    let files = [
        (
            contract::DRIVE_PROFILE,
            found.profile.as_deref(),
            found.profile_sig.as_deref(),
        ),
        (
            contract::DRIVE_SECRETS,
            found.secrets.as_deref(),
            found.secrets_sig.as_deref(),
        ),
    ];
    for (file, text, sig) in files {
        if let Some(text) = text
            && let Err(refused) = check_signature(keys, &source, file, text, sig)
        {
            return Verdict::Refuse(refused);
        }
    }
    match given {
        Some(given) if given < applied.generation => Verdict::Refuse(Refused::OlderGeneration {
            from: source,
            given,
            applied: applied.generation,
        }),
        _ => Verdict::Apply(found),
    }
}

fn check_signature(
    keys: &TrustedKeys,
    source: &Source,
    file: &'static str,
    text: &str,
    sig: Option<&str>,
) -> Result<(), Refused> {
    let bad = |error: String| Refused::BadSignature {
        from: source.clone(),
        file,
        error,
    };
    let Some(sig) = sig else {
        let signature = match source {
            Source::Url(url) => contract::signature_of(url),
            _ => contract::signature_of(file),
        };
        return Err(Refused::Unsigned {
            from: source.clone(),
            file,
            signature,
        });
    };
    let sig = SignatureFile::parse(sig).map_err(|e| bad(e.to_string()))?;
    keel_minisign::verify_bytes(keys, &sig, text.as_bytes())
        .map(|_| ())
        .map_err(|e| bad(e.to_string()))
}

/// What the node applied before, from STATE (or the copy kept before it) and else the
/// baked profile.
pub fn applied(state: &Path, baked: &Path) -> Applied {
    let saved = [
        crate::config::STATE_PROFILE.to_owned(),
        crate::config::previous(crate::config::STATE_PROFILE),
    ]
    .into_iter()
    .find_map(|name| {
        let text = std::fs::read_to_string(keel_contract::layout::on_volume(state, &name)).ok()?;
        crate::config::parse_saved("STATE", &text).ok()
    });
    match saved {
        Some((node, _)) => Applied {
            generation: node.config_generation,
            first_boot: false,
        },
        None => Applied {
            generation: std::fs::read_to_string(baked)
                .ok()
                .and_then(|t| generation_of(&t))
                .unwrap_or(0),
            first_boot: true,
        },
    }
}
