//! Key handling for the CLI: generating key pairs, loading the signing key (asking for its
//! passphrase), and collecting the public keys a node will trust.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use keel_minisign::{FileError, PublicKey, SecretKey, SecretKeyError, SecretKeyFile, TrustedKeys};

pub const SECRET_FILE: &str = "keel.key";
pub const PUBLIC_FILE: &str = "keel.pub";
/// Environment variable holding the secret key's passphrase (for CI and scripts).
pub const PASSPHRASE_ENV: &str = "KEEL_KEY_PASSPHRASE";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {source}")]
    Secret {
        path: PathBuf,
        source: SecretKeyError,
    },
    #[error(
        "{path} is passphrase-protected: set {PASSPHRASE_ENV} or run keel from a terminal to be asked"
    )]
    NoPassphrase { path: PathBuf },
    #[error(
        "refusing to write an unprotected secret key without --unencrypted (or give a passphrase with {PASSPHRASE_ENV} or at the prompt)"
    )]
    NeedPassphraseOrUnencrypted,
    #[error("{path}: {source}")]
    WriteSignature {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the passphrases do not match")]
    Mismatch,
    #[error("no public key found for the signing key {secret}: expected {candidates}")]
    NoPublicKey { secret: PathBuf, candidates: String },
    #[error(
        "{public} (key ID {public_id}) is not the public half of {secret} (key ID {secret_id})"
    )]
    WrongPublicKey {
        public: PathBuf,
        public_id: String,
        secret: PathBuf,
        secret_id: String,
    },
}

impl crate::error::Classify for KeyError {
    fn is_bad_input(&self) -> bool {
        // Keys, passphrases and key files are the operator's input; writing a signature
        // beside a file that was readable is the only failure.
        !matches!(self, KeyError::WriteSignature { .. })
    }
}

/// `keel sign FILE --key K`: writes `FILE.minisig` (minisign's prehashed format) and returns
/// its path and the signing key's ID. The trusted comment defaults to what minisign writes.
pub fn sign_file(
    file: &Path,
    key: &Path,
    trusted_comment: Option<&str>,
) -> Result<(PathBuf, keel_minisign::KeyId), KeyError> {
    let secret = load_secret(key)?;
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
    let sig = keel_minisign::sign_file(&secret, file, &comment)?;
    let mut out = file.as_os_str().to_owned();
    out.push(".minisig");
    let out = PathBuf::from(out);
    std::fs::write(&out, sig.to_file_string()).map_err(|source| KeyError::WriteSignature {
        path: out.clone(),
        source,
    })?;
    Ok((out, secret.key_id()))
}

/// Reads a line from the terminal with echo off.
pub fn prompt_hidden(prompt: &str) -> std::io::Result<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tty);
    // SAFETY: termios is plain old data (integers and arrays); all-zero is a valid value,
    // which tcgetattr then fills in.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for as long as `tty` lives, and `saved` is a valid termios to
    // write to.
    let have_termios = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have_termios {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: `fd` is open; `quiet` is the terminal's own settings with ECHO cleared.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut writer = &tty;
    let _ = write!(writer, "{prompt}");
    let _ = writer.flush();
    let mut line = String::new();
    let result = std::io::BufReader::new(&tty).read_line(&mut line);
    if have_termios {
        // SAFETY: `fd` is still open; `saved` is what tcgetattr returned for it.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    let _ = writeln!(writer);
    result?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn passphrase_from_env() -> Option<String> {
    std::env::var(PASSPHRASE_ENV).ok()
}

/// `keel key gen`: writes `DIR/keel.key` (0600, never over an existing file) and
/// `DIR/keel.pub`. Encrypted unless `unencrypted`.
pub fn generate(dir: &Path, unencrypted: bool) -> Result<(PathBuf, PathBuf, PublicKey), KeyError> {
    let secret_path = dir.join(SECRET_FILE);
    let public_path = dir.join(PUBLIC_FILE);
    for p in [&secret_path, &public_path] {
        if p.exists() {
            return Err(KeyError::Exists(p.clone()));
        }
    }
    let passphrase = if unencrypted {
        None
    } else if let Some(p) = passphrase_from_env() {
        Some(p)
    } else if std::io::stdin().is_terminal() {
        let io = |source| KeyError::Io {
            path: PathBuf::from("/dev/tty"),
            source,
        };
        let first = prompt_hidden("Passphrase for the new key: ").map_err(io)?;
        let second = prompt_hidden("Passphrase again: ").map_err(io)?;
        if first != second {
            return Err(KeyError::Mismatch);
        }
        Some(first)
    } else {
        return Err(KeyError::NeedPassphraseOrUnencrypted);
    };
    let (secret, public) = SecretKey::generate().map_err(|source| KeyError::Secret {
        path: secret_path.clone(),
        source,
    })?;
    let secret_text = secret
        .to_file_string(passphrase.as_deref())
        .map_err(|source| KeyError::Secret {
            path: secret_path.clone(),
            source,
        })?;
    let public_text = public
        .to_file_string(&format!("keel public key {}", public.key_id()))
        .map_err(|e| KeyError::Io {
            path: public_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_new(&secret_path, secret_text.as_bytes(), 0o600)?;
    write_new(&public_path, public_text.as_bytes(), 0o644)?;
    Ok((secret_path, public_path, public))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = crate::io::create_new_with_mode(path, mode).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_path_buf())
        } else {
            io(e)
        }
    })?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Loads a secret key, asking for the passphrase when it is encrypted.
pub fn load_secret(path: &Path) -> Result<SecretKey, KeyError> {
    let file = SecretKeyFile::from_file(path)?;
    let passphrase = if file.is_encrypted() {
        match passphrase_from_env() {
            Some(p) => Some(p),
            None if std::io::stdin().is_terminal() => Some(
                prompt_hidden(&format!("Passphrase for {}: ", path.display())).map_err(
                    |source| KeyError::Io {
                        path: path.to_path_buf(),
                        source,
                    },
                )?,
            ),
            None => {
                return Err(KeyError::NoPassphrase {
                    path: path.to_path_buf(),
                });
            }
        }
    } else {
        None
    };
    file.decrypt(passphrase.as_deref())
        .map_err(|source| KeyError::Secret {
            path: path.to_path_buf(),
            source,
        })
}

/// The public key file that goes with a secret key: `X.pub` for `X.key`, or `keel.pub` beside
/// it. It must match the secret key.
pub fn public_for_secret(
    secret_path: &Path,
    secret: &SecretKey,
) -> Result<(PathBuf, PublicKey), KeyError> {
    let candidates = [
        secret_path.with_extension("pub"),
        secret_path.with_file_name(PUBLIC_FILE),
    ];
    let path = candidates
        .iter()
        .find(|p| p.is_file())
        .ok_or_else(|| KeyError::NoPublicKey {
            secret: secret_path.to_path_buf(),
            candidates: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or "),
        })?;
    let public = PublicKey::from_file(path)?;
    if public.key_id() != secret.key_id() || public.to_bytes() != secret.public_key().to_bytes() {
        return Err(KeyError::WrongPublicKey {
            public: path.clone(),
            public_id: public.key_id().to_string(),
            secret: secret_path.to_path_buf(),
            secret_id: secret.key_id().to_string(),
        });
    }
    Ok((path.clone(), public))
}

/// The signing key's public key plus every extra trusted key file, without duplicates.
pub fn trusted_set(signing: &PublicKey, extra: &[PathBuf]) -> Result<TrustedKeys, KeyError> {
    let mut keys = vec![signing.clone()];
    for path in extra {
        for key in TrustedKeys::from_file(path)?.iter() {
            if !keys.iter().any(|k| k.key_id() == key.key_id()) {
                keys.push(key.clone());
            }
        }
    }
    TrustedKeys::new(keys).map_err(|e| KeyError::Io {
        path: PathBuf::from("trusted keys"),
        source: std::io::Error::other(e.to_string()),
    })
}
