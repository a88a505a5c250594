//! `boot.ipxe`: the iPXE script of a network boot, a pure function of the signed manifest
//! (so `keel verify` renders it again and compares).
//!
//! iPXE resolves a relative URL against the script's own URL for what it fetches itself
//! (`kernel`, `initrd`, `chain`, `imgfetch`), so the script names its neighbours by file name
//! and works wherever it is served. The kernel's command line is not resolved by iPXE, so
//! `keel.root=` and `keel.config=` need an absolute base: the variable `keel-base`, set
//! before chaining the script or by [`pxe::BASE_SCRIPT`] beside it (which `keel serve`
//! generates). Per-node profiles are probed by MAC address and passed only when one is
//! served, so an image boots without `--configs` too.

use keel_contract::layout::network_boot_options;
use keel_contract::manifest::Manifest;
use keel_contract::output::pxe;

/// How long the failure path waits before it reboots (so a farm with its boot server down
/// retries slowly, and a person can read the reason on the console).
pub const FAILURE_DELAY_SECS: u32 = 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "image.cmdline argument {arg:?} cannot go into an iPXE script (image.formats has \"pxe\"): {reason}"
)]
pub struct ScriptError {
    pub arg: String,
    pub reason: &'static str,
}

/// Checks that a kernel argument means the same to iPXE as it does to the kernel: iPXE
/// expands `${...}`, splits on whitespace and reads `&&`, `||` and `#` its own way.
pub fn check_argument(arg: &str) -> Result<(), ScriptError> {
    let bad = |reason| {
        Err(ScriptError {
            arg: arg.to_owned(),
            reason,
        })
    };
    if arg.is_empty() {
        return bad("it is empty");
    }
    if arg
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return bad("it holds whitespace or a control character");
    }
    if arg.contains('$') {
        return bad("iPXE would expand `$`");
    }
    if arg.contains(['"', '\'', '\\']) {
        return bad("iPXE does not read quotes or backslashes as the kernel does");
    }
    if arg.contains("&&") || arg.contains("||") || arg.starts_with('#') {
        return bad("iPXE reads `&&`, `||` and a leading `#` as script syntax");
    }
    Ok(())
}

/// Every argument of `image.cmdline` is safe in the script ([`check_argument`]); checked
/// before a build starts, when the profile asks for `pxe`.
pub fn check_cmdline(cmdline: &[String]) -> Result<(), ScriptError> {
    cmdline.iter().try_for_each(|a| check_argument(a))
}

/// The script for the image `manifest` describes.
pub fn boot_script(manifest: &Manifest) -> Result<String, ScriptError> {
    check_cmdline(&manifest.cmdline)?;
    let image = format!("{} {}", manifest.name, manifest.version);
    let base = format!("${{{}}}", pxe::BASE_VAR);
    let configs = format!("${{{}}}", pxe::CONFIGS_VAR);
    let profile_url = format!("{configs}{}", pxe::config_file("${mac:hexhyp}"));
    let mut kernel_args = vec![format!("initrd={}", pxe::INITRAMFS)];
    kernel_args.extend(network_boot_options(
        &format!("{base}{}", pxe::ROOT),
        &manifest.root.verity.root_hash.to_string(),
        &manifest.cmdline,
    ));
    // Last, so that a node's own profile wins over a `keel.config=` in image.cmdline (the
    // node takes the last occurrence, as the kernel does).
    kernel_args.push("${keel-config}".into());

    let lines = [
        "#!ipxe".to_owned(),
        format!("# Keel {image}: network boot, written by `keel build` (image.formats \"pxe\")."),
        "# Kernel and initramfs come from beside this script; stage 1 fetches the root".to_owned(),
        "# (keel.root=) and verifies it against the signed manifest before mounting it.".to_owned(),
        format!(
            "# Needs {base}: the absolute URL of this directory, from {} beside it",
            pxe::BASE_SCRIPT
        ),
        "# (keel serve writes it) or set before chaining this script.".to_owned(),
        String::new(),
        // Chained again by the same iPXE (a menu or DHCP pointing back here): stop.
        "isset ${keel-chained} && goto loop ||".to_owned(),
        "set keel-chained 1".to_owned(),
        "set keel-step the base URL".to_owned(),
        format!(
            "isset {base} || chain --autofree {} || goto failed",
            pxe::BASE_SCRIPT
        ),
        format!("isset {base} || goto failed"),
        format!(
            "isset {configs} || set {} {base}{}/",
            pxe::CONFIGS_VAR,
            pxe::CONFIGS_DIR
        ),
        "set keel-step the per-node profile".to_owned(),
        format!(
            "imgfetch --name keel-profile {profile_url} && imgfree keel-profile && set keel-config {}={profile_url} || echo keel: no profile for ${{mac:hexhyp}} at {configs}: the image profile applies",
            keel_contract::layout::cmdline::CONFIG
        ),
        format!("echo keel: booting {image} from {base}"),
        "set keel-step the kernel".to_owned(),
        format!(
            "kernel {} {} || goto failed",
            pxe::KERNEL,
            kernel_args.join(" ")
        ),
        "set keel-step the initramfs".to_owned(),
        format!("initrd {} || goto failed", pxe::INITRAMFS),
        "set keel-step boot".to_owned(),
        "boot || goto failed".to_owned(),
        String::new(),
        ":loop".to_owned(),
        format!(
            "echo keel: {} was chained again by the same iPXE: not looping",
            pxe::SCRIPT
        ),
        "set keel-step a chain loop".to_owned(),
        ":failed".to_owned(),
        format!(
            "echo keel: network boot of {image} failed at ${{keel-step}} (iPXE error ${{errno}})"
        ),
        format!("echo keel: rebooting in {FAILURE_DELAY_SECS} seconds"),
        format!("sleep {FAILURE_DELAY_SECS} ||"),
        "reboot ||".to_owned(),
        "exit 1".to_owned(),
    ];
    let mut script = lines.join("\n");
    script.push('\n');
    Ok(script)
}

/// What `keel serve` (or an operator) puts beside the script: its absolute base URL, and
/// where per-node profiles are. `base` and `configs` end in `/`.
pub fn base_script(base: &str, configs: &str) -> String {
    format!(
        "#!ipxe\nset {} {base}\nset {} {configs}\n",
        pxe::BASE_VAR,
        pxe::CONFIGS_VAR
    )
}

#[cfg(test)]
mod tests;
