//! Interoperability with the real `minisign` binary, in both directions.
//!
//! These tests fail (they do not skip) when minisign is missing: CI installs it, and an
//! untested compatibility claim is worse than a red build. Set `MINISIGN` to use another
//! binary than the one on `PATH`.
#![cfg(feature = "secret-keys")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use keel_minisign::{
    FileError, KdfLimits, PublicKey, SecretKey, SecretKeyError, SecretKeyFile, SignatureFile,
    TrustedKeys, VerifyError, sign_file, verify_file,
};

const PASSWORD: &str = "correct horse battery staple";

fn minisign(args: &[&dyn AsRef<std::ffi::OsStr>], stdin: Option<&str>) -> Output {
    let program = std::env::var_os("MINISIGN").unwrap_or_else(|| "minisign".into());
    let mut child = Command::new(&program)
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (install it: apt-get install minisign)",
                Path::new(&program).display()
            )
        });
    // Dropping stdin closes it, so minisign sees EOF rather than waiting for a password.
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

/// `minisign -G`, encrypted with [`PASSWORD`] unless `unencrypted`.
fn minisign_keygen(dir: &Dir, name: &str, unencrypted: bool) -> (PathBuf, PathBuf) {
    let public = dir.path(&format!("{name}.pub"));
    let secret = dir.path(&format!("{name}.key"));
    let output = if unencrypted {
        minisign(&[&"-G", &"-W", &"-p", &public, &"-s", &secret], None)
    } else {
        let twice = format!("{PASSWORD}\n{PASSWORD}\n");
        minisign(&[&"-G", &"-p", &public, &"-s", &secret], Some(&twice))
    };
    assert_success(&output, "minisign -G");
    (public, secret)
}

/// `minisign -Vm data -p public -x sig`, returning the output for inspection.
fn minisign_verify(data: &Path, public: &Path, sig: &Path) -> Output {
    minisign(&[&"-V", &"-m", &data, &"-p", &public, &"-x", &sig], None)
}

fn payload(dir: &Dir, name: &str) -> PathBuf {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    dir.write(name, data)
}

#[test]
fn minisign_encrypted_key_with_default_kdf_cost() {
    // The only test that pays for minisign's default scrypt cost (1 GiB, seconds): it proves
    // that our opslimit/memlimit -> N,r,p conversion matches libsodium's for real keys.
    let dir = Dir::new();
    let (public, secret) = minisign_keygen(&dir, "enc", false);

    let file = SecretKeyFile::from_file(&secret).unwrap();
    assert!(file.is_encrypted());
    assert_eq!(file.kdf_limits(), Some(KdfLimits::MINISIGN_DEFAULT));
    assert!(matches!(
        file.decrypt(None),
        Err(SecretKeyError::PassphraseRequired)
    ));
    let key = file.decrypt(Some(PASSWORD)).unwrap();
    assert_eq!(key.public_key(), PublicKey::from_file(&public).unwrap());

    let data = payload(&dir, "data.bin");
    let sig = dir.path("data.bin.minisig");
    let ours = sign_file(&key, &data, "signed by keel with a minisign key").unwrap();
    std::fs::write(&sig, ours.to_file_string()).unwrap();
    let output = minisign_verify(&data, &public, &sig);
    assert_success(&output, "minisign -V");
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("Trusted comment: signed by keel with a minisign key")
    );
}

#[test]
fn minisign_unencrypted_key_both_directions() {
    let dir = Dir::new();
    let (public, secret) = minisign_keygen(&dir, "plain", true);
    let key = SecretKey::from_file(&secret, None).unwrap();
    let public_key = PublicKey::from_file(&public).unwrap();
    assert_eq!(key.public_key(), public_key);
    // Same id text as minisign prints, and the same public key file byte for byte.
    let minisign_text = std::fs::read_to_string(&public).unwrap();
    assert_eq!(
        public_key
            .to_file_string(&public_key.default_comment())
            .unwrap(),
        minisign_text
    );
    assert!(minisign_text.contains(&key.key_id().to_string()));
    let keys = TrustedKeys::from_file(&public).unwrap();

    // minisign signs (prehashed, the default), we verify.
    let data = payload(&dir, "a.bin");
    let comment = "minisign made this\twith a tab";
    let output = minisign(
        &[&"-S", &"-s", &secret, &"-m", &data, &"-t", &comment],
        None,
    );
    assert_success(&output, "minisign -S");
    let verified = verify_file(&keys, dir.path("a.bin.minisig"), &data).unwrap();
    assert_eq!(verified.trusted_comment, comment);
    assert!(verified.prehashed);

    // minisign signs in the legacy format, we still verify.
    let legacy_sig = dir.path("a.bin.legacy");
    let output = minisign(
        &[
            &"-S",
            &"-l",
            &"-s",
            &secret,
            &"-m",
            &data,
            &"-x",
            &legacy_sig,
        ],
        None,
    );
    assert_success(&output, "minisign -S -l");
    let verified = verify_file(&keys, &legacy_sig, &data).unwrap();
    assert!(!verified.prehashed);
    assert!(verified.trusted_comment.starts_with("timestamp:"));

    // We sign, minisign verifies; -Q prints exactly the trusted comment.
    let data = payload(&dir, "b.bin");
    let comment = "keel image 1.2.3 \u{2713}";
    let sig = dir.path("b.bin.minisig");
    std::fs::write(
        &sig,
        sign_file(&key, &data, comment).unwrap().to_file_string(),
    )
    .unwrap();
    let output = minisign(
        &[&"-V", &"-Q", &"-m", &data, &"-p", &public, &"-x", &sig],
        None,
    );
    assert_success(&output, "minisign -V -Q");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("{comment}\n")
    );
}

#[test]
fn our_keys_work_in_minisign() {
    let dir = Dir::new();
    let data = payload(&dir, "data.bin");
    for passphrase in [Some(PASSWORD), None] {
        let (key, public_key) = SecretKey::generate().unwrap();
        // minisign honours whatever cost the file states, so a cheap one proves the format
        // without spending seconds; the default cost is covered above.
        let secret = dir.write(
            "ours.key",
            key.to_file_string_with_params(passphrase, KdfLimits::MINIMUM)
                .unwrap(),
        );
        let public = dir.write(
            "ours.pub",
            public_key
                .to_file_string(&public_key.default_comment())
                .unwrap(),
        );
        let sig = dir.path("data.bin.minisig");
        let _ = std::fs::remove_file(&sig);
        let stdin = passphrase.map(|p| format!("{p}\n"));
        let output = minisign(
            &[
                &"-S",
                &"-s",
                &secret,
                &"-m",
                &data,
                &"-t",
                &"signed by minisign",
            ],
            stdin.as_deref(),
        );
        assert_success(&output, "minisign -S with our secret key");
        let verified = verify_file(&TrustedKeys::from(public_key), &sig, &data).unwrap();
        assert_eq!(verified.trusted_comment, "signed by minisign");
        assert_eq!(verified.key_id, key.key_id());
        assert_success(&minisign_verify(&data, &public, &sig), "minisign -V");

        // minisign's -R recreates the public key from our secret key file.
        let recreated = dir.path("recreated.pub");
        let output = minisign(
            &[&"-R", &"-s", &secret, &"-p", &recreated],
            stdin.as_deref(),
        );
        assert_success(&output, "minisign -R");
        assert_eq!(
            std::fs::read_to_string(&recreated).unwrap(),
            std::fs::read_to_string(&public).unwrap()
        );
        std::fs::remove_file(&recreated).unwrap();
    }

    // A wrong passphrase is refused by minisign too.
    let (key, _) = SecretKey::generate().unwrap();
    let secret = dir.write(
        "pw.key",
        key.to_file_string_with_params(Some(PASSWORD), KdfLimits::MINIMUM)
            .unwrap(),
    );
    let output = minisign(
        &[
            &"-S",
            &"-s",
            &secret,
            &"-m",
            &data,
            &"-x",
            &dir.path("x.sig"),
        ],
        Some("not the password\n"),
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Wrong password"));
}

#[test]
fn tampering_is_rejected_by_both() {
    let dir = Dir::new();
    let (key, public_key) = SecretKey::generate().unwrap();
    let public = dir.write("k.pub", public_key.to_file_string("keel test key").unwrap());
    let keys = TrustedKeys::from(public_key);
    let data = payload(&dir, "data.bin");
    let original = sign_file(&key, &data, "release=1")
        .unwrap()
        .to_file_string();
    let sig = dir.write("data.bin.minisig", &original);
    assert_success(
        &minisign_verify(&data, &public, &sig),
        "minisign -V (untouched)",
    );

    // Data altered.
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[5000] ^= 0x10;
    let altered = dir.write("altered.bin", &bytes);
    let output = minisign_verify(&altered, &public, &sig);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Signature verification failed"));
    let err = verify_file(&keys, &sig, &altered).unwrap_err();
    assert!(matches!(
        err,
        FileError::Verify {
            error: VerifyError::BadSignature { .. },
            ..
        }
    ));

    // Trusted comment altered.
    dir.write(
        "data.bin.minisig",
        original.replace("release=1", "release=2"),
    );
    let output = minisign_verify(&data, &public, &sig);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Comment signature verification failed")
    );
    let err = verify_file(&keys, &sig, &data).unwrap_err();
    assert!(matches!(
        err,
        FileError::Verify {
            error: VerifyError::TrustedCommentAltered { .. },
            ..
        }
    ));

    // Signed by another key.
    let (other, _) = SecretKey::generate().unwrap();
    let foreign = sign_file(&other, &data, "release=1").unwrap();
    dir.write("data.bin.minisig", foreign.to_file_string());
    let output = minisign_verify(&data, &public, &sig);
    assert!(!output.status.success());
    // minisign prints key ids with %PRIX64, without leading zeros.
    let minisign_id = other
        .key_id()
        .to_string()
        .trim_start_matches('0')
        .to_owned();
    assert!(String::from_utf8_lossy(&output.stderr).contains(&minisign_id));
    let err = verify_file(&keys, &sig, &data).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&other.key_id().to_string()), "{message}");
    assert!(message.contains(&key.key_id().to_string()), "{message}");
}

#[test]
fn trusted_keys_file_with_two_minisign_keys() {
    let dir = Dir::new();
    let data = payload(&dir, "data.bin");
    let mut trusted = String::new();
    let mut secrets = Vec::new();
    for name in ["old", "new", "stranger"] {
        let (public, secret) = minisign_keygen(&dir, name, true);
        if name != "stranger" {
            trusted.push_str(&std::fs::read_to_string(&public).unwrap());
        }
        secrets.push(secret);
    }
    let trusted_path = dir.write("trusted.pub", trusted);
    let keys = TrustedKeys::from_file(&trusted_path).unwrap();
    assert_eq!(keys.len(), 2);

    for (index, secret) in secrets.iter().enumerate() {
        let sig = dir.path(&format!("data.{index}.minisig"));
        let output = minisign(&[&"-S", &"-s", secret, &"-m", &data, &"-x", &sig], None);
        assert_success(&output, "minisign -S");
        let key_id = SignatureFile::from_file(&sig).unwrap().key_id();
        match (index, verify_file(&keys, &sig, &data)) {
            (0 | 1, Ok(verified)) => assert_eq!(verified.key_id, key_id),
            (
                2,
                Err(FileError::Verify {
                    error:
                        VerifyError::UnknownKey {
                            signature_key_id,
                            trusted,
                        },
                    ..
                }),
            ) => {
                assert_eq!(signature_key_id, key_id);
                assert_eq!(trusted, keys.key_ids());
            }
            (index, other) => panic!("key {index}: unexpected {other:?}"),
        }
    }
}
