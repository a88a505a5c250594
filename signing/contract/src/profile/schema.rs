//! The profile schema: what a profile file may contain. Every struct rejects unknown fields.
//! All fields are optional or have defaults so that a base profile (one that others extend)
//! is valid on its own; what a build needs is checked by [`super::validate`]. This file is
//! `[image]` (the builder's); `[node]` (what the node reads at boot) is in [`super::node`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::values::{ByteSize, ContainerName, FileMode, ImageName};

pub use super::node::*;

/// A Keel profile: how to build an image (`[image]`) and what the node does when it boots
/// (`[node]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Another profile this one builds on, as a path relative to this file. Tables merge key by
    /// key; a value set here (arrays included) replaces the base's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    #[serde(default)]
    pub image: Image,
    #[serde(default)]
    pub node: Node,
}

/// `[image]`: read by the builder only.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Image name: lower-case letters, digits, `-` (default `keel`).
    #[serde(default = "default_name")]
    pub name: ImageName,
    /// OS version (semver). Upgrades only move to higher versions. `keel build --version`
    /// overrides it.
    #[serde(
        default,
        deserialize_with = "version",
        skip_serializing_if = "Option::is_none"
    )]
    pub version: Option<semver::Version>,
    /// CPU architecture. Only `x86_64` is supported.
    #[serde(default)]
    pub arch: Arch,
    /// Where the root filesystem comes from, applied in order.
    #[serde(default)]
    pub userland: Vec<UserlandSource>,
    /// Extra files and directories copied from the build host.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// The kernel: `"auto"` (found in the userland) or `{ path = "...", modules = "..." }`.
    #[serde(default)]
    pub kernel: KernelSpec,
    /// Extra kernel command-line arguments (after Keel's own).
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Size of each root slot partition (KEEL-A, KEEL-B).
    #[serde(default = "default_slot_size")]
    pub slot_size: ByteSize,
    /// Size of the EFI system partition (FAT32, so at least 64MiB).
    #[serde(default = "default_esp_size")]
    pub esp_size: ByteSize,
    /// Size of the STATE partition (FAT32, so at least 64MiB).
    #[serde(default = "default_state_size")]
    pub state_size: ByteSize,
    /// Output formats besides the raw disk: `raw`, `qcow2`, `vhd`, `gce`, `pxe`.
    #[serde(default = "default_formats")]
    pub formats: Vec<OutputFormat>,
    /// The minisign secret key that signs the manifest (`keel key gen`). `keel build --key`
    /// overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<PathBuf>,
    /// More public keys the node trusts for upgrades (key rotation). The signing key's own
    /// public key (`<signing_key>.pub` or `keel.pub` beside it) is always trusted.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    #[serde(default)]
    pub squashfs: Squashfs,
    #[serde(default)]
    pub initramfs: Initramfs,
    /// Container images baked into the root and imported into containerd at boot, so
    /// air-gapped nodes need no registry.
    #[serde(default)]
    pub container_images: Vec<ContainerImage>,
    /// The cluster's secrets file (`keel secrets gen`). The builder writes what the node's
    /// role needs (never a CA key for a worker) into the STATE partition, never into the
    /// root or the manifest. Optional: nodes can get their secrets at boot instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<PathBuf>,
}

impl Default for Image {
    fn default() -> Self {
        Image {
            name: default_name(),
            version: None,
            arch: Arch::default(),
            userland: Vec::new(),
            files: Vec::new(),
            kernel: KernelSpec::default(),
            cmdline: Vec::new(),
            slot_size: default_slot_size(),
            esp_size: default_esp_size(),
            state_size: default_state_size(),
            formats: default_formats(),
            signing_key: None,
            trusted_keys: Vec::new(),
            squashfs: Squashfs::default(),
            initramfs: Initramfs::default(),
            container_images: Vec::new(),
            secrets: None,
        }
    }
}

fn version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<semver::Version>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid version {text:?}: expected a semantic version like \"1.2.0\" ({e})"
        ))
    })
}

fn default_name() -> ImageName {
    ImageName::keel()
}
fn default_slot_size() -> ByteSize {
    ByteSize::mib(1024)
}
fn default_esp_size() -> ByteSize {
    ByteSize::mib(256)
}
fn default_state_size() -> ByteSize {
    ByteSize::mib(64)
}
fn default_formats() -> Vec<OutputFormat> {
    vec![OutputFormat::Raw]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    #[default]
    X86_64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// `disk.raw`: always written; what `dd` puts on a USB stick or disk.
    Raw,
    /// `disk.qcow2`: QEMU copy-on-write v3 (QEMU, libvirt, OpenStack).
    Qcow2,
    /// `disk.vhd`: fixed VHD for Azure.
    Vhd,
    /// `disk.tar.gz`: `disk.raw` in a gzip-compressed GNU tar, as Google Compute Engine
    /// imports it.
    Gce,
    /// `pxe/`: a directory for network boot (kernel, initramfs, the slot payload as
    /// `root.img`, the signed manifest and an iPXE script; [`crate::output::pxe`]). Not a
    /// disk: nothing converts `disk.raw` into it.
    Pxe,
}

impl OutputFormat {
    pub const ALL: [OutputFormat; 5] = [
        OutputFormat::Raw,
        OutputFormat::Qcow2,
        OutputFormat::Vhd,
        OutputFormat::Gce,
        OutputFormat::Pxe,
    ];
    /// The formats that are disk images (converted from `disk.raw`).
    pub const DISKS: [OutputFormat; 4] = [
        OutputFormat::Raw,
        OutputFormat::Qcow2,
        OutputFormat::Vhd,
        OutputFormat::Gce,
    ];

    /// A disk image, as opposed to the network-boot directory.
    pub const fn is_disk(self) -> bool {
        !matches!(self, OutputFormat::Pxe)
    }

    pub const fn name(self) -> &'static str {
        match self {
            OutputFormat::Raw => "raw",
            OutputFormat::Qcow2 => "qcow2",
            OutputFormat::Vhd => "vhd",
            OutputFormat::Gce => "gce",
            OutputFormat::Pxe => "pxe",
        }
    }

    /// The conventional artifact file name for this format (a directory for `pxe`).
    pub const fn file_name(self) -> &'static str {
        match self {
            OutputFormat::Raw => "disk.raw",
            OutputFormat::Qcow2 => "disk.qcow2",
            OutputFormat::Vhd => "disk.vhd",
            OutputFormat::Gce => "disk.tar.gz",
            OutputFormat::Pxe => "pxe",
        }
    }
}

impl std::fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Returned by [`OutputFormat::from_str`] for a name that is not a format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown output format {0:?} (expected raw, qcow2, vhd, gce or pxe)")]
pub struct UnknownFormat(pub String);

impl std::str::FromStr for OutputFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OutputFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFormat(s.to_owned()))
    }
}

/// One userland source, written as `{ debian = {...} }` or `{ oci = {...} }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum UserlandSource {
    Debian(DebianSource),
    Oci(OciSource),
}

/// Debian packages, resolved and downloaded with the build host's apt.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSource {
    /// A release the host's apt sources know, by codename (`bookworm`) or archive name
    /// (`oldstable`). Its `-updates` and `-security` companions are used too when the host has
    /// them, so the image gets the same security fixes `apt-get upgrade` would.
    pub suite: String,
    /// Packages to install, with their dependencies (recommends excluded).
    pub packages: Vec<String>,
    /// Packages never installed even when something depends on them (no maintainer scripts
    /// run, so e.g. `initramfs-tools` and `perl` are dead weight).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The archive components packages may come from; default `["main"]`. The build host's
    /// apt sources must have each one for the suite (`keel build` says which is missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<DebianComponent>,
}

/// A Debian archive component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DebianComponent {
    Main,
    Contrib,
    NonFree,
    /// Firmware for NICs, storage controllers and GPUs (Debian 12 and later).
    NonFreeFirmware,
}

impl DebianComponent {
    /// The name in apt's sources and release files (`c=`).
    pub fn as_str(self) -> &'static str {
        match self {
            DebianComponent::Main => "main",
            DebianComponent::Contrib => "contrib",
            DebianComponent::NonFree => "non-free",
            DebianComponent::NonFreeFirmware => "non-free-firmware",
        }
    }
}

impl DebianSource {
    /// [`Self::components`], `main` when none are given.
    pub fn components_or_main(&self) -> Vec<DebianComponent> {
        if self.components.is_empty() {
            vec![DebianComponent::Main]
        } else {
            self.components.clone()
        }
    }
}

/// An OCI image: a local image layout directory or an oci-archive tar.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OciSource {
    /// An OCI image layout directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<PathBuf>,
    /// An oci-archive tar file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<PathBuf>,
    /// The image's ref name (`org.opencontainers.image.ref.name`); optional when the layout
    /// holds one image.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// A file or directory from the build host placed in the root.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Host path, relative to the profile that names it.
    pub src: PathBuf,
    /// Absolute destination path in the image.
    pub dst: String,
    /// Permission bits (octal string); default: the host file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<FileMode>,
}

/// Where the kernel comes from.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum KernelSpec {
    /// The one kernel in the userland: `/boot/vmlinuz-<kver>` or
    /// `/usr/lib/modules/<kver>/vmlinuz`, with the modules of `/usr/lib/modules/<kver>`.
    #[default]
    Auto,
    /// Host paths: the kernel image and its `lib/modules/<kver>` directory.
    Path {
        path: PathBuf,
        modules: Option<PathBuf>,
    },
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct KernelPathRepr {
    path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modules: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for KernelSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KernelSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"auto\" or a table { path = \"...\", modules = \"...\" }")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<KernelSpec, E> {
                if s == "auto" {
                    Ok(KernelSpec::Auto)
                } else {
                    Err(E::custom(format!(
                        "invalid kernel {s:?}: expected \"auto\" or a table {{ path = \"...\" }}"
                    )))
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<KernelSpec, A::Error> {
                let repr =
                    KernelPathRepr::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(KernelSpec::Path {
                    path: repr.path,
                    modules: repr.modules,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for KernelSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KernelSpec::Auto => s.serialize_str("auto"),
            KernelSpec::Path { path, modules } => KernelPathRepr {
                path: path.clone(),
                modules: modules.clone(),
            }
            .serialize(s),
        }
    }
}

/// `[[image.container_images]]`: an OCI image (layout or oci-archive) baked into the root as
/// `/usr/share/keel/images/<name>.tar` and imported at boot as `keel.local/<name>:latest`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerImage {
    /// Short name: lower-case letters, digits and `-`, starting with a letter.
    pub name: ContainerName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<PathBuf>,
    /// Ref name in the layout; optional when it holds one image.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl ContainerImage {
    /// The name containerd knows the image by after the node imported it.
    pub fn containerd_name(name: &str) -> String {
        baked_image_ref(name)
    }
}

/// `[image.squashfs]`: the root filesystem's compression.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Squashfs {
    #[serde(default)]
    pub compression: Compression,
    /// zstd level, 1-22 (mksquashfs's default is 15).
    #[serde(default = "default_zstd_level")]
    pub level: u8,
    /// Data block size: a power of two from 4KiB to 1MiB.
    #[serde(default = "default_block_size")]
    pub block_size: ByteSize,
}

impl Default for Squashfs {
    fn default() -> Self {
        Squashfs {
            compression: Compression::default(),
            level: default_zstd_level(),
            block_size: default_block_size(),
        }
    }
}

fn default_zstd_level() -> u8 {
    15
}
fn default_block_size() -> ByteSize {
    ByteSize(128 * 1024)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Zstd,
    None,
}

/// `[image.initramfs]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    /// Kernel modules to add besides the ones Keel needs to reach and verify the root
    /// (their dependencies are added too).
    #[serde(default)]
    pub modules: Vec<String>,
}
