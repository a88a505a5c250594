use super::*;

const POLICY: &str = "\
Package files:
 100 /var/lib/dpkg/status
 release a=now
 500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
 release v=12,o=Debian,a=oldstable-security,n=bookworm-security,l=Debian-Security,c=main,b=amd64
 origin deb.debian.org
 500 http://deb.debian.org/debian bookworm/main amd64 Packages
 release v=12.15,o=Debian,a=oldstable,n=bookworm,l=Debian,c=main,b=amd64
 origin deb.debian.org
Pinned packages:
";

#[test]
fn release_suites_come_from_archive_and_codename() {
    let known = parse_release_suites(POLICY);
    let want: BTreeSet<String> = [
        "bookworm",
        "bookworm-security",
        "oldstable",
        "oldstable-security",
    ]
    .map(String::from)
    .into();
    assert_eq!(known, want);
    assert_eq!(
        companion_suites("bookworm", &known),
        ["bookworm", "bookworm-security"]
    );
    assert!(companion_suites("trixie", &known).is_empty());
}

#[test]
fn components_are_read_per_suite_and_each_is_pinned() {
    let policy = POLICY.replace(
        " 500 http://deb.debian.org/debian bookworm/main amd64 Packages\n",
        " 500 http://deb.debian.org/debian bookworm/main amd64 Packages\n 500 http://deb.debian.org/debian bookworm/non-free-firmware amd64 Packages\n release v=12.15,o=Debian,a=oldstable,n=bookworm,l=Debian,c=non-free-firmware,b=amd64\n",
    );
    let have = |suite: &str| {
        release_components(&policy, suite)
            .into_iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(have("bookworm"), ["main", "non-free-firmware"]);
    assert_eq!(have("oldstable"), ["main", "non-free-firmware"]);
    assert_eq!(have("bookworm-security"), ["main"]);
    assert!(have("trixie").is_empty());
    let prefs = suite_preferences(&["bookworm".into()], &["main", "non-free-firmware"], &[]);
    assert!(prefs.contains("Pin: release n=bookworm,c=non-free-firmware\nPin-Priority: 990"));
    assert!(prefs.contains("Pin: release n=bookworm,c=main\nPin-Priority: 990"));
    assert!(!prefs.contains("c=contrib"));
}

#[test]
fn preferences_pin_the_suites_and_forbid_everything_else() {
    let prefs = suite_preferences(
        &["bookworm".into(), "bookworm-security".into()],
        &["main"],
        &["udev".into()],
    );
    assert!(prefs.contains("Pin: release n=bookworm-security,c=main\nPin-Priority: 990"));
    assert!(prefs.contains("Pin: release a=bookworm,c=main\nPin-Priority: 990"));
    assert!(prefs.starts_with("Package: udev\nPin: release a=now\nPin-Priority: 1001\n\n"));
    // apt uses the first matching generic pin, so the catch-all must come last.
    assert!(
        prefs
            .trim_end()
            .ends_with("Pin: release *\nPin-Priority: -1")
    );
    let stanzas = parse_stanzas(&prefs);
    assert_eq!(stanzas.len(), 6);
}

const SHOW_EXCLUDED: &str = "\
Package: initramfs-tools
Version: 0.142+deb12u3
Installed-Size: 55
Maintainer: Debian kernel team <debian-kernel@lists.debian.org>
Architecture: all
Provides: linux-initramfs-tool
Depends: initramfs-tools-core (= 0.142+deb12u3), linux-base
Suggests: bash-completion
Breaks: e2fsprogs (<< 1.42.1-1~), upstart (<< 1.13.2-0ubuntu10~)
Description: generic modular initramfs generator (automation)
 This package builds a bootable initramfs for Linux kernel packages. The
 initramfs is loaded along with the kernel.
Multi-Arch: foreign
Filename: pool/main/i/initramfs-tools/initramfs-tools_0.142+deb12u3_all.deb
Size: 16028
SHA256: 1b2cd6a4bd62bb8a2e8dfae0f3b2b29a2b3ed0dd95e5e5b6f4d2d7e9f0b54c11

Package: perl
Version: 5.36.0-7+deb12u4
Architecture: amd64
Pre-Depends: dpkg (>= 1.17.17)
Depends: perl-base (= 5.36.0-7+deb12u4),
 perl-modules-5.36 (>= 5.36.0-7+deb12u4)
Recommends: netbase
Provides: libansicolor-perl (= 5.01), libarchive-tar-perl (= 2.40)
Priority: standard
";

#[test]
fn exclusion_status_marks_installed_and_drops_dependencies() {
    let status = exclusion_status(SHOW_EXCLUDED);
    let stanzas = parse_stanzas(&status);
    assert_eq!(stanzas.len(), 2);
    let initramfs = &stanzas[0];
    assert_eq!(
        initramfs.fields[0],
        ("Package".into(), "initramfs-tools".into())
    );
    assert_eq!(initramfs.field("Status"), Some("install ok installed"));
    assert_eq!(initramfs.field("Version"), Some("0.142+deb12u3"));
    assert_eq!(initramfs.field("Architecture"), Some("all"));
    assert_eq!(initramfs.field("Provides"), Some("linux-initramfs-tool"));
    assert!(initramfs.field("Breaks").is_some());
    assert_eq!(initramfs.field("Depends"), None);
    assert_eq!(initramfs.field("Suggests"), None);
    // Multi-line values survive intact.
    assert!(
        initramfs
            .field("Description")
            .is_some_and(|d| d.ends_with("\n initramfs is loaded along with the kernel."))
    );
    let perl = &stanzas[1];
    assert_eq!(perl.field("Status"), Some("install ok installed"));
    for gone in ["Depends", "Pre-Depends", "Recommends"] {
        assert_eq!(perl.field(gone), None, "{gone}");
    }
    // The continuation line of the dropped Depends must not leak into another field.
    assert!(!status.contains("perl-modules-5.36"));
    assert!(
        perl.field("Provides")
            .is_some_and(|p| p.contains("libarchive-tar-perl"))
    );
}

const SIMULATION: &str = "\
NOTE: This is only a simulation!
  apt-get needs root privileges for real execution.
Reading package lists...
Building dependency tree...
The following NEW packages will be installed:
  libc6 libcap2 libseccomp2 runc
0 upgraded, 4 newly installed, 0 to remove and 0 not upgraded.
Inst libc6 (2.36-9+deb12u10 Debian:12.11/stable [amd64]) []
Inst libseccomp2 (2.5.4-1+deb12u1 Debian:12.11/stable [amd64])
Inst runc (1.1.5+ds1-1+deb12u1 Debian:12.11/stable, Debian-Security:12/stable-security [amd64])
Inst libcap2 [1:2.66-4] (1:2.66-4+deb12u1 Debian:12.11/stable [amd64])
Inst tzdata (2025b-0+deb12u1 Debian:12.11/stable-updates [all])
Conf libc6 (2.36-9+deb12u10 Debian:12.11/stable [amd64])
Conf runc (1.1.5+ds1-1+deb12u1 Debian:12.11/stable [amd64])
";

const SHOW_RESOLVED: &str = "\
Package: runc
Version: 1.1.5+ds1-1+deb12u1
Architecture: amd64
Filename: pool/main/r/runc/runc_1.1.5+ds1-1+deb12u1_amd64.deb
Size: 2709960
SHA256: A00351F8C0318DE0B424ECF5CD0FDB69880A89F3511CAE4F6FFF7DE3E57881C5

Package: libc6
Version: 2.36-9+deb12u10
Architecture: amd64
Filename: pool/main/g/glibc/libc6_2.36-9+deb12u10_amd64.deb
Size: 2757936
SHA256: 1111111111111111111111111111111111111111111111111111111111111111

Package: libc6
Version: 2.36-9+deb12u10
Architecture: i386
Filename: pool/main/g/glibc/libc6_2.36-9+deb12u10_i386.deb
Size: 2600000
SHA256: 9999999999999999999999999999999999999999999999999999999999999999

Package: libseccomp2
Version: 2.5.4-1+deb12u1
Architecture: amd64
Filename: pool/main/libs/libseccomp/libseccomp2_2.5.4-1+deb12u1_amd64.deb
Size: 46808
SHA256: 2222222222222222222222222222222222222222222222222222222222222222

Package: libcap2
Version: 1:2.66-4+deb12u1
Architecture: amd64
Filename: pool/main/libc/libcap2/libcap2_2.66-4+deb12u1_amd64.deb
Size: 27708
SHA256: 3333333333333333333333333333333333333333333333333333333333333333

Package: tzdata
Version: 2025b-0+deb12u1
Architecture: all
Filename: pool/main/t/tzdata/tzdata_2025b-0+deb12u1_all.deb
Size: 255000
SHA256: 4444444444444444444444444444444444444444444444444444444444444444
";

#[test]
fn simulation_and_index_give_the_sorted_resolved_list() {
    let planned = parse_simulation(SIMULATION).unwrap();
    let names: Vec<&str> = planned.iter().map(|p| p.package.as_str()).collect();
    assert_eq!(names, ["libc6", "libcap2", "libseccomp2", "runc", "tzdata"]);
    assert_eq!(planned[1].version, "1:2.66-4+deb12u1");
    assert_eq!(planned[4].architecture, "all");

    let resolved =
        resolved_from_index(&planned, SHOW_RESOLVED, Path::new("/cache/archives")).unwrap();
    let libc = &resolved[0];
    assert_eq!(libc.architecture, "amd64");
    assert_eq!(
        libc.sha256,
        "1".repeat(64),
        "the amd64 entry, not the i386 one"
    );
    let libcap = &resolved[1];
    assert_eq!(libcap.filename, "libcap2_1%3a2.66-4+deb12u1_amd64.deb");
    assert_eq!(
        libcap.path,
        Path::new("/cache/archives/libcap2_1%3a2.66-4+deb12u1_amd64.deb")
    );
    let runc = &resolved[3];
    assert_eq!(runc.size, 2709960);
    assert_eq!(
        runc.sha256,
        "a00351f8c0318de0b424ecf5cd0fdb69880a89f3511cae4f6fff7de3e57881c5"
    );
    assert_eq!(resolved[4].filename, "tzdata_2025b-0+deb12u1_all.deb");
}

#[test]
fn a_package_missing_from_the_index_is_an_error_naming_it() {
    let planned = parse_simulation(SIMULATION).unwrap();
    let show = SHOW_RESOLVED.replace("Package: tzdata", "Package: tzdata-legacy");
    let err = resolved_from_index(&planned, &show, Path::new("/c")).unwrap_err();
    assert!(
        matches!(&err, DebianError::Index { package, .. } if package == "tzdata"),
        "{err}"
    );
}

#[test]
fn malformed_inst_line_is_reported() {
    let err = parse_simulation("Inst broken-line-without-version\n").unwrap_err();
    assert!(matches!(err, DebianError::Parse { .. }), "{err}");
}

#[test]
fn apt_error_messages_name_the_package() {
    assert_eq!(
        classify_apt_errors("W: something\nE: Unable to locate package nosuchpkg\n"),
        Some(AptComplaint::Unknown("nosuchpkg".into()))
    );
    assert_eq!(
        classify_apt_errors("E: Package 'linux-initramfs-tool' has no installation candidate"),
        Some(AptComplaint::NoCandidate("linux-initramfs-tool".into()))
    );
    assert_eq!(
        classify_apt_errors("E: Version '9' for 'hello' was not found"),
        Some(AptComplaint::NoCandidate("hello".into()))
    );
    assert_eq!(
        classify_apt_errors("E: Sub-process returned an error"),
        None
    );
}

#[test]
fn package_names_are_validated() {
    for ok in [
        "libc6",
        "g++",
        "libstdc++6",
        "linux-image-6.1.0-21-amd64",
        "e2fsprogs",
    ] {
        assert!(is_package_name(ok), "{ok}");
    }
    for bad in [
        "",
        "a",
        "-o",
        "Foo",
        "pkg=1.0",
        "pkg/bookworm",
        "pkg:amd64",
        "a b",
    ] {
        assert!(!is_package_name(bad), "{bad}");
    }
    let src = DebianSource {
        suite: "bookworm".into(),
        packages: vec!["runc".into(), "perl".into()],
        exclude: vec!["perl".into()],
        components: vec![],
    };
    assert!(matches!(
        validate(&src),
        Err(DebianError::RequestedAndExcluded { package }) if package == "perl"
    ));
}

#[test]
fn archive_names_quote_like_apt() {
    assert_eq!(
        archive_file_name(
            "libcap2",
            "1:2.66-4",
            "amd64",
            "pool/x/libcap2_2.66-4_amd64.deb"
        ),
        "libcap2_1%3a2.66-4_amd64.deb"
    );
    assert_eq!(
        archive_file_name("foo", "1.0", "all", "pool/f/foo_1.0_all.udeb"),
        "foo_1.0_all.udeb"
    );
}

#[test]
fn profile_syntax_deserialises() {
    let src: DebianSource = toml::from_str(
        r#"suite = "bookworm"
packages = ["runc"]
exclude = ["perl"]"#,
    )
    .unwrap();
    assert_eq!(src.exclude, ["perl"]);
    let src: DebianSource = toml::from_str("suite = \"bookworm\"\npackages = []").unwrap();
    assert!(src.exclude.is_empty());
    assert!(toml::from_str::<DebianSource>("suite = \"x\"\npackages = []\nextra = 1").is_err());
}
