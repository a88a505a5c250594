//! libsodium's `crypto_pwhash_scryptsalsa208sha256`, which minisign uses to turn a passphrase
//! into the keystream that encrypts a secret key. The file stores libsodium's abstract
//! (opslimit, memlimit) pair rather than scrypt's (N, r, p), so the conversion must be the one
//! libsodium performs, or keys would decrypt to garbage.

use super::error::SecretKeyError;

/// The cost parameters stored in an encrypted secret key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfLimits {
    pub opslimit: u64,
    pub memlimit: u64,
}

impl KdfLimits {
    /// What `minisign -G` uses (libsodium's `*_SENSITIVE`): scrypt N=2^20, r=8, p=1, 1 GiB of
    /// memory and a few seconds. Keys meant for people should use this.
    pub const MINISIGN_DEFAULT: KdfLimits = KdfLimits {
        opslimit: 33_554_432,
        memlimit: 1_073_741_824,
    };

    /// libsodium's `*_INTERACTIVE`: N=2^14, 16 MiB.
    pub const INTERACTIVE: KdfLimits = KdfLimits {
        opslimit: 524_288,
        memlimit: 16_777_216,
    };

    /// libsodium's lowest accepted values: N=2^10, 1 MiB, about a millisecond. Only for tests
    /// and throw-away keys; it offers almost no protection for a stolen key file.
    pub const MINIMUM: KdfLimits = KdfLimits {
        opslimit: 32_768,
        memlimit: 16_777_216,
    };
}

/// The scrypt parameters libsodium derives from a [`KdfLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScryptParams {
    pub log_n: u32,
    pub r: u32,
    pub p: u32,
}

/// A port of libsodium's `pickparams()` (crypto_pwhash/scryptsalsa208sha256/pwhash_scryptsalsa208sha256.c).
pub(crate) fn pick_params(limits: KdfLimits) -> ScryptParams {
    let opslimit = limits.opslimit.max(32_768);
    let memlimit = limits.memlimit;
    let r: u32 = 8;
    if opslimit < memlimit / 32 {
        let max_n = opslimit / (u64::from(r) * 4);
        ScryptParams {
            log_n: smallest_log2_above(max_n / 2),
            r,
            p: 1,
        }
    } else {
        let max_n = memlimit / (u64::from(r) * 128);
        let log_n = smallest_log2_above(max_n / 2);
        let max_rp = ((opslimit / 4) / (1u64 << log_n)).min(0x3fff_ffff);
        // The clamp above makes the narrowing exact, as in libsodium's `(uint32_t) maxrp`.
        let p = u32::try_from(max_rp).unwrap_or(0x3fff_ffff) / r;
        ScryptParams { log_n, r, p }
    }
}

fn smallest_log2_above(limit: u64) -> u32 {
    let mut log_n = 1;
    while log_n < 63 {
        if (1u64 << log_n) > limit {
            break;
        }
        log_n += 1;
    }
    log_n
}

/// scrypt's memory use (128·r·N bytes) beyond which a key file is refused. minisign's default
/// needs 1 GiB; without a cap, a corrupted or hostile memlimit would make us allocate
/// terabytes and abort instead of returning an error.
const MAX_MEMORY: u64 = 4 << 30;
/// Likewise for the work (N·r·p), at 16 times minisign's default.
const MAX_WORK: u64 = 16 << 23;

/// Fills `out` with the scrypt keystream for `passphrase`.
pub(crate) fn derive(
    passphrase: &[u8],
    salt: &[u8; 32],
    limits: KdfLimits,
    out: &mut [u8],
) -> Result<(), SecretKeyError> {
    let too_expensive = |reason| SecretKeyError::KdfTooExpensive {
        opslimit: limits.opslimit,
        memlimit: limits.memlimit,
        reason,
    };
    let failed = || SecretKeyError::KdfFailed {
        opslimit: limits.opslimit,
        memlimit: limits.memlimit,
    };
    let params = pick_params(limits);
    let n = 1u64 << params.log_n;
    let memory = n
        .checked_mul(128 * u64::from(params.r))
        .ok_or(too_expensive("memory overflows"))?;
    if memory > MAX_MEMORY {
        return Err(too_expensive("more than 4 GiB of memory"));
    }
    let work = n
        .checked_mul(u64::from(params.r) * u64::from(params.p))
        .ok_or(too_expensive("work overflows"))?;
    if work > MAX_WORK {
        return Err(too_expensive("more than 16 times minisign's default work"));
    }
    let log_n = u8::try_from(params.log_n).map_err(|_| failed())?;
    // The length argument only matters for scrypt's PHC strings; the output length is `out`.
    let scrypt_params = scrypt::Params::new(log_n, params.r, params.p, 64).map_err(|_| failed())?;
    scrypt::scrypt(passphrase, salt, &scrypt_params, out).map_err(|_| failed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_params_matches_libsodium() {
        // Values computed by hand from libsodium's pickparams().
        assert_eq!(
            pick_params(KdfLimits::MINISIGN_DEFAULT),
            ScryptParams {
                log_n: 20,
                r: 8,
                p: 1
            }
        );
        assert_eq!(
            pick_params(KdfLimits::INTERACTIVE),
            ScryptParams {
                log_n: 14,
                r: 8,
                p: 1
            }
        );
        assert_eq!(
            pick_params(KdfLimits::MINIMUM),
            ScryptParams {
                log_n: 10,
                r: 8,
                p: 1
            }
        );
        // opslimit below libsodium's floor is raised to 32768 first.
        assert_eq!(
            pick_params(KdfLimits {
                opslimit: 0,
                memlimit: 16_777_216
            }),
            pick_params(KdfLimits::MINIMUM)
        );
        // More operations than memory allows are spent on parallelism.
        assert_eq!(
            pick_params(KdfLimits {
                opslimit: 1 << 28,
                memlimit: 1 << 30
            }),
            ScryptParams {
                log_n: 20,
                r: 8,
                p: 8
            }
        );
        // Zero memlimit still yields scrypt parameters, as in libsodium.
        assert_eq!(
            pick_params(KdfLimits {
                opslimit: 32_768,
                memlimit: 0
            }),
            ScryptParams {
                log_n: 1,
                r: 8,
                p: 512
            }
        );
    }

    #[test]
    fn parallelism_from_opslimit() {
        // Chosen so that libsodium arrives at RFC 7914's second test vector (N=1024, r=8,
        // p=16): memlimit caps N, and the remaining operations become parallelism.
        let limits = KdfLimits {
            opslimit: 4 * 128 * 1024,
            memlimit: 1024 * 1024 + 1,
        };
        assert_eq!(
            pick_params(limits),
            ScryptParams {
                log_n: 10,
                r: 8,
                p: 16
            }
        );
    }

    #[test]
    fn refuses_absurd_costs() {
        let mut out = [0u8; 104];
        let err = derive(
            b"pw",
            &[0; 32],
            KdfLimits {
                opslimit: 1 << 40,
                memlimit: 1 << 40,
            },
            &mut out,
        )
        .unwrap_err();
        assert!(
            matches!(err, SecretKeyError::KdfTooExpensive { .. }),
            "{err}"
        );
        let err = derive(
            b"pw",
            &[0; 32],
            KdfLimits {
                opslimit: 1 << 40,
                memlimit: 1 << 24,
            },
            &mut out,
        )
        .unwrap_err();
        assert!(
            matches!(err, SecretKeyError::KdfTooExpensive { .. }),
            "{err}"
        );
    }
}
