use std::path::PathBuf;

use keel_contract::output::pxe;

use super::*;

fn site() -> Site {
    let image = |name: &str, version: &str| Image {
        name: name.into(),
        version: version.into(),
        dir: PathBuf::from(format!("/srv/{name}-{version}/pxe")),
        prefix: format!("/{name}/{version}/"),
    };
    Site {
        images: vec![image("keel-worker", "1.0.0"), image("keel-worker", "1.1.0")],
        configs: Some(PathBuf::from("/srv/configs")),
    }
}

#[test]
fn paths_name_the_images_files_only() {
    let s = site();
    let file = |p: &str| Route::File(PathBuf::from(p));
    assert_eq!(
        s.route("/keel-worker/1.1.0/root.img"),
        file("/srv/keel-worker-1.1.0/pxe/root.img")
    );
    assert_eq!(
        s.route("/keel-worker/1.0.0/boot.ipxe"),
        file("/srv/keel-worker-1.0.0/pxe/boot.ipxe")
    );
    // The first image at the root too.
    assert_eq!(
        s.route("/boot.ipxe"),
        file("/srv/keel-worker-1.0.0/pxe/boot.ipxe")
    );
    assert_eq!(
        s.route("/manifest.json.minisig"),
        file("/srv/keel-worker-1.0.0/pxe/manifest.json.minisig")
    );
    for f in pxe::FILES {
        assert!(matches!(s.route(&format!("/{f}")), Route::File(_)), "{f}");
    }
    assert_eq!(
        s.route("/keel-worker/1.1.0/base.ipxe"),
        Route::Base {
            prefix: "/keel-worker/1.1.0/".into()
        }
    );
    assert_eq!(s.route("/base.ipxe"), Route::Base { prefix: "/".into() });
    assert_eq!(s.route("/"), Route::Index);
    for missing in [
        "/keel-worker/1.2.0/root.img",
        "/keel-worker/1.0.0/",
        "/keel-worker/1.0.0/../1.1.0/root.img",
        "/../../etc/passwd",
        "/keel-worker/1.0.0/..%2f..%2fetc/passwd",
        "/%2e%2e/etc/passwd",
        "/root.img/",
        "/ROOT.IMG",
        "/keel-worker/1.0.0/configs/52-54-00-12-34-56.toml",
        "//root.img",
        "/disk.raw",
    ] {
        assert_eq!(s.route(missing), Route::NotFound, "{missing}");
    }
}

#[test]
fn profiles_are_served_by_mac_only() {
    let s = site();
    assert_eq!(
        s.route("/configs/52-54-00-12-34-56.toml"),
        Route::File(PathBuf::from("/srv/configs/52-54-00-12-34-56.toml"))
    );
    assert_eq!(
        s.route("/configs/52-54-00-12-34-56.toml.minisig"),
        Route::File(PathBuf::from("/srv/configs/52-54-00-12-34-56.toml.minisig"))
    );
    for bad in [
        "/configs/../secrets.toml",
        "/configs/52-54-00-12-34-5.toml",
        "/configs/52-54-00-12-34-56-78.toml",
        "/configs/52:54:00:12:34:56.toml",
        "/configs/52-54-00-12-34-5G.toml",
        "/configs/52-54-00-12-34-56.toml/x",
        "/configs/x/52-54-00-12-34-56.toml",
        "/configs/",
        "/configs/52-54-00-12-34-56",
    ] {
        assert_eq!(s.route(bad), Route::NotFound, "{bad}");
    }
    let without = Site {
        configs: None,
        ..site()
    };
    assert_eq!(
        without.route("/configs/52-54-00-12-34-56.toml"),
        Route::NotFound
    );
}

#[test]
fn ranges_as_rfc_9110_reads_them() {
    let r = |start, end| RangeRequest::Partial(ByteRange { start, end });
    assert_eq!(parse_range(None, 100), RangeRequest::Full);
    assert_eq!(parse_range(Some("bytes=0-9"), 100), r(0, 9));
    assert_eq!(parse_range(Some("bytes=90-"), 100), r(90, 99));
    assert_eq!(parse_range(Some("bytes=90-1000"), 100), r(90, 99));
    assert_eq!(parse_range(Some("bytes=-10"), 100), r(90, 99));
    assert_eq!(parse_range(Some("bytes=-1000"), 100), r(0, 99));
    assert_eq!(parse_range(Some("bytes=99-99"), 100), r(99, 99));
    assert_eq!(
        parse_range(Some("bytes=100-"), 100),
        RangeRequest::Unsatisfiable
    );
    assert_eq!(
        parse_range(Some("bytes=100-200"), 100),
        RangeRequest::Unsatisfiable
    );
    assert_eq!(
        parse_range(Some("bytes=-0"), 100),
        RangeRequest::Unsatisfiable
    );
    assert_eq!(
        parse_range(Some("bytes=0-"), 0),
        RangeRequest::Unsatisfiable
    );
    // Not understood: the whole file.
    for ignored in [
        "bytes=0-1,5-6",
        "items=0-1",
        "bytes=5-1",
        "bytes=a-b",
        "bytes=+1-2",
        "bytes=",
        "bytes=-",
    ] {
        assert_eq!(
            parse_range(Some(ignored), 100),
            RangeRequest::Full,
            "{ignored}"
        );
    }
    assert_eq!(ByteRange { start: 3, end: 3 }.len(), 1);
}

#[test]
fn loading_names_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = Site::load(std::slice::from_ref(&missing), None).unwrap_err();
    assert!(
        matches!(&err, ServeError::Missing(p) if *p == missing),
        "{err}"
    );
    assert!(crate::error::Classify::is_bad_input(&err));

    let err = Site::load(&[tmp.path().to_path_buf()], None).unwrap_err();
    assert!(err.to_string().contains("no pxe/ directory"), "{err}");

    std::fs::create_dir(tmp.path().join(pxe::DIR)).unwrap();
    let err = Site::load(&[tmp.path().to_path_buf()], None).unwrap_err();
    assert!(err.to_string().contains("vmlinuz is missing"), "{err}");
    assert!(crate::error::Classify::is_bad_input(&err));

    let err = Site::load(&[], Some(&missing)).unwrap_err();
    assert!(err.to_string().starts_with("--configs "), "{err}");
}
