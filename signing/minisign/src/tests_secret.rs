//! Secret key files, passphrases and the `*_from_file` helpers.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::tests_signing::test_key;
use super::*;

const CHEAP: KdfLimits = KdfLimits::MINIMUM;

fn blob(text: &str) -> Vec<u8> {
    STANDARD.decode(text.lines().nth(1).unwrap()).unwrap()
}

fn with_blob(text: &str, blob: &[u8]) -> String {
    format!(
        "{}\n{}\n",
        text.lines().next().unwrap(),
        STANDARD.encode(blob)
    )
}

#[test]
fn generated_keys_differ_and_sign() {
    let (s1, p1) = SecretKey::generate().unwrap();
    let (s2, p2) = SecretKey::generate().unwrap();
    assert_ne!(s1.key_id(), s2.key_id());
    assert_ne!(p1.verifying_key(), p2.verifying_key());
    assert_eq!(s1.public_key(), p1);
    let sig = sign_bytes(&s1, b"data", "t").unwrap();
    verify_bytes(&TrustedKeys::from(p1), &sig, b"data").unwrap();
    // Debug output must not leak the secret.
    let debug = format!("{s1:?}");
    assert!(
        debug.contains(&s1.key_id().to_string()) && debug.len() < 60,
        "{debug}"
    );
}

#[test]
fn encrypted_layout_and_round_trip() {
    let key = test_key(3);
    let text = key
        .to_file_string_with_params(Some("hunter2"), CHEAP)
        .unwrap();
    assert!(text.starts_with("untrusted comment: minisign encrypted secret key\n"));
    let b = blob(&text);
    assert_eq!(b.len(), 158);
    assert_eq!(&b[..6], b"EdScB2");
    assert_ne!(&b[6..38], &[0u8; 32], "salt must be random");
    assert_eq!(
        u64::from_le_bytes(b[38..46].try_into().unwrap()),
        CHEAP.opslimit
    );
    assert_eq!(
        u64::from_le_bytes(b[46..54].try_into().unwrap()),
        CHEAP.memlimit
    );
    // The key id is encrypted along with the key.
    assert_ne!(&b[54..62], key.key_id().as_bytes());

    let file = SecretKeyFile::parse(&text).unwrap();
    assert!(file.is_encrypted());
    assert_eq!(file.kdf_limits(), Some(CHEAP));
    let back = file.decrypt(Some("hunter2")).unwrap();
    assert_eq!(back.key_id(), key.key_id());
    assert_eq!(back.public_key(), key.public_key());

    // A fresh salt each time.
    let again = key
        .to_file_string_with_params(Some("hunter2"), CHEAP)
        .unwrap();
    assert_ne!(again, text);
}

#[test]
fn unencrypted_layout_and_round_trip() {
    let key = test_key(4);
    let text = key.to_file_string(None).unwrap();
    let b = blob(&text);
    assert_eq!(&b[..6], b"Ed\0\0B2");
    assert_eq!(&b[6..54], &[0u8; 48], "salt and limits stay zero");
    assert_eq!(&b[54..62], key.key_id().as_bytes());
    assert_eq!(&b[62..94], &[4u8; 32], "seed in clear");
    assert_eq!(&b[94..126], key.public_key().verifying_key().as_bytes());
    assert_ne!(&b[126..], &[0u8; 32], "we write a real checksum");
    let file = SecretKeyFile::parse(&text).unwrap();
    assert!(!file.is_encrypted());
    assert_eq!(file.kdf_limits(), None);
    // A passphrase given for an unencrypted key is not needed and is ignored.
    let back = SecretKey::parse(&text, Some("unused")).unwrap();
    assert_eq!(back.public_key(), key.public_key());
}

#[test]
fn passphrase_errors() {
    let text = test_key(5)
        .to_file_string_with_params(Some("right"), CHEAP)
        .unwrap();
    let err = SecretKey::parse(&text, None).unwrap_err();
    assert!(matches!(err, SecretKeyError::PassphraseRequired), "{err}");
    let err = SecretKey::parse(&text, Some("wrong")).unwrap_err();
    assert!(matches!(err, SecretKeyError::WrongPassphrase), "{err}");
    assert!(err.to_string().contains("wrong passphrase"), "{err}");
    let err = SecretKey::parse(&text, Some("")).unwrap_err();
    assert!(matches!(err, SecretKeyError::WrongPassphrase), "{err}");
    SecretKey::parse(&text, Some("right")).unwrap();

    // Damage to the encrypted bytes looks like a wrong passphrase: nothing else can tell.
    let mut b = blob(&text);
    b[100] ^= 1;
    let err = SecretKey::parse(&with_blob(&text, &b), Some("right")).unwrap_err();
    assert!(matches!(err, SecretKeyError::WrongPassphrase), "{err}");
    // So does a different salt, which changes the keystream.
    let mut b = blob(&text);
    b[6] ^= 1;
    let err = SecretKey::parse(&with_blob(&text, &b), Some("right")).unwrap_err();
    assert!(matches!(err, SecretKeyError::WrongPassphrase), "{err}");
}

#[test]
fn unencrypted_integrity_errors() {
    let key = test_key(6);
    let text = key.to_file_string(None).unwrap();

    let mut b = blob(&text);
    b[70] ^= 1; // inside the seed, with the checksum left as it was
    let err = SecretKey::parse(&with_blob(&text, &b), None).unwrap_err();
    assert!(matches!(err, SecretKeyError::ChecksumMismatch), "{err}");

    // With a zero checksum (as `minisign -G -W` writes), the seed/public key check remains.
    b[126..].fill(0);
    let err = SecretKey::parse(&with_blob(&text, &b), None).unwrap_err();
    assert!(
        matches!(err, SecretKeyError::InconsistentKey { .. }),
        "{err}"
    );
    let mut b = blob(&text);
    b[126..].fill(0);
    SecretKey::parse(&with_blob(&text, &b), None).unwrap();
}

#[test]
fn secret_key_format_errors() {
    let text = test_key(7).to_file_string(None).unwrap();
    let unsupported = |at: usize, value: &[u8; 2]| {
        let mut b = blob(&text);
        b[at..at + 2].copy_from_slice(value);
        match SecretKeyFile::parse(&with_blob(&text, &b)).unwrap_err() {
            FormatError::UnsupportedAlgorithm { what, line: 2, .. } => what,
            other => panic!("{other}"),
        }
    };
    assert_eq!(unsupported(0, b"ED"), "signature");
    assert_eq!(unsupported(2, b"Ar"), "key derivation");
    assert_eq!(unsupported(4, b"B3"), "checksum");

    let err = SecretKeyFile::parse("untrusted comment: k\n").unwrap_err();
    assert!(
        matches!(err, FormatError::Truncated { line: 2, .. }),
        "{err}"
    );
    let err = SecretKeyFile::parse("untrusted comment: k\n====\n").unwrap_err();
    assert!(matches!(err, FormatError::Base64 { line: 2, .. }), "{err}");
    let err = SecretKeyFile::parse(&with_blob(&text, &[0; 157])).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::WrongLength {
                expected: 158,
                actual: 157,
                ..
            }
        ),
        "{err}"
    );
    let err = SecretKeyFile::parse(&format!("{text}x\n")).unwrap_err();
    assert!(
        matches!(err, FormatError::TrailingData { line: 3, .. }),
        "{err}"
    );
    // Through SecretKey::parse the format error is wrapped, not lost.
    let err = SecretKey::parse("untrusted comment: k\n", None).unwrap_err();
    assert!(
        matches!(err, SecretKeyError::Format(FormatError::Truncated { .. })),
        "{err}"
    );
}

#[test]
fn absurd_kdf_limits_are_refused_not_attempted() {
    let text = test_key(8)
        .to_file_string_with_params(Some("pw"), CHEAP)
        .unwrap();
    let mut b = blob(&text);
    b[46..54].copy_from_slice(&(1u64 << 50).to_le_bytes());
    b[38..46].copy_from_slice(&(1u64 << 50).to_le_bytes());
    let err = SecretKey::parse(&with_blob(&text, &b), Some("pw")).unwrap_err();
    assert!(
        matches!(err, SecretKeyError::KdfTooExpensive { .. }),
        "{err}"
    );
    let err = test_key(8)
        .to_file_string_with_params(
            Some("pw"),
            KdfLimits {
                opslimit: 1 << 50,
                memlimit: 1 << 50,
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, SecretKeyError::KdfTooExpensive { .. }),
        "{err}"
    );
}

#[test]
fn file_helpers_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let key = test_key(9);
    let public = dir.path().join("key.pub");
    let secret = dir.path().join("key.sec");
    let data = dir.path().join("data.bin");
    let sig_path = dir.path().join("data.bin.minisig");
    std::fs::write(&public, key.public_key().to_file_string("k").unwrap()).unwrap();
    std::fs::write(
        &secret,
        key.to_file_string_with_params(Some("pw"), CHEAP).unwrap(),
    )
    .unwrap();
    std::fs::write(&data, b"payload").unwrap();

    let keys = TrustedKeys::from_file(&public).unwrap();
    assert_eq!(PublicKey::from_file(&public).unwrap(), key.public_key());
    let loaded = SecretKey::from_file(&secret, Some("pw")).unwrap();
    let sig = sign_file(&loaded, &data, "file").unwrap();
    std::fs::write(&sig_path, sig.to_file_string()).unwrap();
    assert_eq!(SignatureFile::from_file(&sig_path).unwrap(), sig);
    assert_eq!(
        verify_file(&keys, &sig_path, &data)
            .unwrap()
            .trusted_comment,
        "file"
    );

    let shown = |e: FileError| e.to_string();
    let missing = dir.path().join("missing.pub");
    let err = TrustedKeys::from_file(&missing).unwrap_err();
    assert!(matches!(err, FileError::Read { .. }));
    assert_eq!(err.path(), missing);
    assert!(shown(err).contains("missing.pub"));

    let err = SecretKey::from_file(&secret, Some("nope")).unwrap_err();
    assert!(matches!(
        err,
        FileError::SecretKey {
            error: SecretKeyError::WrongPassphrase,
            ..
        }
    ));
    assert!(shown(err).contains("key.sec: wrong passphrase"));

    let err = PublicKey::from_file(&secret).unwrap_err();
    assert!(matches!(
        err,
        FileError::Format {
            error: FormatError::WrongKind { .. },
            ..
        }
    ));
    assert!(shown(err).starts_with(&format!("{}: expected", secret.display())));

    std::fs::write(&data, b"tampered").unwrap();
    let err = verify_file(&keys, &sig_path, &data).unwrap_err();
    assert!(matches!(
        err,
        FileError::Verify {
            error: VerifyError::BadSignature { .. },
            ..
        }
    ));
    let text = shown(err);
    assert!(
        text.contains("data.bin") && text.contains("data.bin.minisig"),
        "{text}"
    );
    assert!(matches!(
        verify_file(&keys, &sig_path, dir.path().join("gone")),
        Err(FileError::Read { .. })
    ));
    assert!(matches!(
        sign_file(&loaded, dir.path().join("gone"), "x"),
        Err(FileError::Read { .. })
    ));

    let binary = dir.path().join("binary");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
    assert!(matches!(
        SignatureFile::from_file(&binary),
        Err(FileError::Format {
            error: FormatError::NotUtf8 { .. },
            ..
        })
    ));
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'a'; (1 << 20) + 1]).unwrap();
    assert!(matches!(
        TrustedKeys::from_file(&big),
        Err(FileError::TooLarge { .. })
    ));
}
