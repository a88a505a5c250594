use keel_contract::layout::cmdline;

use super::*;
use crate::pxe::tests::manifest_of;

fn script() -> String {
    boot_script(&manifest_of(b"k", b"i", b"p")).unwrap()
}

/// The `kernel` line's arguments after the file name.
fn kernel_args(script: &str) -> Vec<String> {
    let line = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .expect("a kernel line");
    let line = line.strip_suffix(" || goto failed").unwrap();
    line.split_whitespace().skip(2).map(str::to_owned).collect()
}

#[test]
fn the_script_boots_the_files_beside_it() {
    let s = script();
    assert!(s.starts_with("#!ipxe\n"), "{s}");
    let lines: Vec<&str> = s.lines().collect();
    assert!(lines.contains(&"kernel vmlinuz initrd=initramfs keel.root=${keel-base}root.img keel.roothash=abababababababababababababababababababababababababababababababab console=ttyS0,115200 panic=10 ${keel-config} || goto failed"), "{s}");
    assert!(lines.contains(&"initrd initramfs || goto failed"), "{s}");
    assert!(lines.contains(&"boot || goto failed"), "{s}");
    // Kernel before initrd before boot.
    let at = |p: &str| lines.iter().position(|l| l.starts_with(p)).unwrap();
    assert!(at("kernel ") < at("initrd ") && at("initrd ") < at("boot "));
}

#[test]
fn the_kernel_gets_the_disk_entrys_options_without_the_slot() {
    let m = manifest_of(b"k", b"i", b"p");
    let entry = keel_contract::layout::BootEntry::new(
        keel_contract::layout::Slot::A,
        &m.version,
        &m.root.verity.root_hash.to_string(),
        &m.cmdline,
    );
    let args = kernel_args(&script());
    let line = args.join(" ");
    assert_eq!(cmdline::get(&line, cmdline::SLOT), None);
    assert_eq!(
        cmdline::get(&line, cmdline::ROOT),
        Some("${keel-base}root.img")
    );
    // Every option of the disk's entry but keel.slot, in the same order.
    let without_slot: Vec<&String> = entry
        .options
        .iter()
        .filter(|o| !o.starts_with(cmdline::SLOT))
        .collect();
    let shared: Vec<&String> = args.iter().filter(|a| entry.options.contains(a)).collect();
    assert_eq!(shared, without_slot);
    // UEFI's stub loads the initrd iPXE registered under this name.
    assert_eq!(args[0], "initrd=initramfs");
    // The node's own profile comes last, so it wins over one in image.cmdline.
    assert_eq!(args.last().unwrap(), "${keel-config}");
}

#[test]
fn the_script_guards_against_loops_and_fails_slowly() {
    let s = script();
    let lines: Vec<&str> = s.lines().collect();
    let guard = lines
        .iter()
        .position(|l| *l == "isset ${keel-chained} && goto loop ||")
        .unwrap();
    let set = lines
        .iter()
        .position(|l| *l == "set keel-chained 1")
        .unwrap();
    assert!(guard < set, "the guard runs before the mark is set");
    let failed = lines.iter().position(|l| *l == ":failed").unwrap();
    let tail = &lines[failed..];
    assert!(tail.iter().any(|l| l.contains("failed at ${keel-step}")));
    assert!(tail.contains(&"sleep 30 ||"));
    assert!(tail.contains(&"reboot ||"));
    assert_eq!(tail.last(), Some(&"exit 1"));
    // Nothing after the failure path chains anything again.
    assert!(!tail.iter().any(|l| l.starts_with("chain")));
    // Every goto has its label.
    for line in &lines {
        for target in line.split("goto ").skip(1) {
            let label = target.split_whitespace().next().unwrap();
            assert!(lines.contains(&format!(":{label}").as_str()), "{label}");
        }
    }
}

#[test]
fn the_base_comes_from_beside_the_script_and_the_profile_by_mac() {
    let s = script();
    assert!(s.contains("isset ${keel-base} || chain --autofree base.ipxe || goto failed\n"));
    assert!(s.contains("isset ${keel-configs} || set keel-configs ${keel-base}configs/\n"));
    assert!(s.contains(
        "imgfetch --name keel-profile ${keel-configs}${mac:hexhyp}.toml && imgfree keel-profile && set keel-config keel.config=${keel-configs}${mac:hexhyp}.toml ||"
    ));
    assert_eq!(
        base_script(
            "http://10.0.0.1:8080/keel/1.0.0/",
            "http://10.0.0.1:8080/configs/"
        ),
        "#!ipxe\nset keel-base http://10.0.0.1:8080/keel/1.0.0/\nset keel-configs http://10.0.0.1:8080/configs/\n"
    );
}

#[test]
fn the_script_is_a_function_of_the_manifest() {
    let a = manifest_of(b"k", b"i", b"p");
    let mut b = a.clone();
    assert_eq!(boot_script(&a).unwrap(), boot_script(&b).unwrap());
    b.root.verity.root_hash = keel_contract::manifest::Sha256Digest([0xcd; 32]);
    assert_ne!(boot_script(&a).unwrap(), boot_script(&b).unwrap());
}

#[test]
fn arguments_ipxe_would_misread_are_refused() {
    for good in [
        "console=ttyS0,115200",
        "panic=10",
        "quiet",
        "keel.config=http://[fd00::1]/n.toml",
    ] {
        check_argument(good).unwrap();
    }
    for bad in [
        "a=${x}",
        "a=$x",
        "a=\"b c\"",
        "a='b'",
        "a=b\\c",
        "a&&b",
        "||",
        "#x",
        "a\tb",
        "",
    ] {
        let err = check_argument(bad).unwrap_err();
        assert_eq!(err.arg, bad);
    }
    let mut m = manifest_of(b"k", b"i", b"p");
    m.cmdline.push("x=$y".into());
    assert!(boot_script(&m).is_err());
}
