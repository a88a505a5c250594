//! Checks that span fields or need the whole merged profile. Value syntax is checked while
//! parsing (typed values: `values.rs`, `kube.rs`, `crate::names`); these are the rules that
//! remain: sizes, cross-references, duplicates and field combinations.

use std::collections::HashSet;
use std::path::Path;

use super::schema::{Image, NetworkMode, Node, Profile, UserlandSource};
use super::values::ByteSize;

/// A rule a profile breaks: the dotted field path and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
    }
}

/// Kernel arguments Keel sets itself; a profile may not override them.
pub const RESERVED_CMDLINE_KEYS: &[&str] = &[
    crate::layout::cmdline::SLOT,
    crate::layout::cmdline::ROOTHASH,
    "root",
    "init",
    "rdinit",
    "initrd",
];

pub const MIN_SLOT_SIZE: ByteSize = ByteSize::mib(64);
/// The ESP and STATE are FAT32, which needs at least 65525 clusters; with room for two
/// kernels and initramfs images 64MiB is the practical floor.
pub const MIN_ESP_SIZE: ByteSize = ByteSize::mib(64);
pub const MIN_STATE_SIZE: ByteSize = ByteSize::mib(64);

pub fn validate(profile: &Profile) -> Vec<Problem> {
    let mut out = Vec::new();
    validate_image(&profile.image, &mut out);
    check_node(&profile.node, &mut out);
    for (i, c) in profile.node.containers.iter().enumerate() {
        let short = !c.image.contains(['/', ':', '@']);
        if short
            && !c.image.is_empty()
            && !profile
                .image
                .container_images
                .iter()
                .any(|img| img.name.as_str() == c.image)
        {
            out.push(problem(
                format!("node.containers[{i}].image"),
                format!("{:?} is not one of image.container_images (use a full reference for an image already on the node)", c.image),
            ));
        }
    }
    out
}

fn validate_image(image: &Image, out: &mut Vec<Problem>) {
    check_partition_sizes(image, out);
    check_userland(image, out);
    check_files_and_cmdline(image, out);
    check_formats_and_images(image, out);
    check_squashfs_and_modules(image, out);
}

/// Partition sizes: at least the minimum, whole MiB.
fn check_partition_sizes(image: &Image, out: &mut Vec<Problem>) {
    for (field, size, min) in [
        ("image.slot_size", image.slot_size, MIN_SLOT_SIZE),
        ("image.esp_size", image.esp_size, MIN_ESP_SIZE),
        ("image.state_size", image.state_size, MIN_STATE_SIZE),
    ] {
        if size < min {
            out.push(problem(
                field,
                format!("{size} is too small: expected at least {min}"),
            ));
        } else if size.bytes() % ByteSize::MIB != 0 {
            out.push(problem(
                field,
                format!("{size} is not a whole number of MiB (partitions are 1MiB aligned)"),
            ));
        }
    }
}

/// Userland sources: a Debian suite and package names, one OCI location.
fn check_userland(image: &Image, out: &mut Vec<Problem>) {
    for (i, source) in image.userland.iter().enumerate() {
        match source {
            UserlandSource::Debian(deb) => {
                let field = format!("image.userland[{i}].debian");
                if deb.suite.trim().is_empty() {
                    out.push(problem(
                        format!("{field}.suite"),
                        "expected a suite name like \"bookworm\"",
                    ));
                }
                if deb.packages.is_empty() {
                    out.push(problem(
                        format!("{field}.packages"),
                        "expected at least one package",
                    ));
                }
                for (j, name) in deb.packages.iter().chain(&deb.exclude).enumerate() {
                    if !valid_package_name(name) {
                        let (list, k) = if j < deb.packages.len() {
                            ("packages", j)
                        } else {
                            ("exclude", j - deb.packages.len())
                        };
                        out.push(problem(
                            format!("{field}.{list}[{k}]"),
                            format!("{name:?} is not a Debian package name (lower-case letters, digits, + - .)"),
                        ));
                    }
                }
            }
            UserlandSource::Oci(oci) => {
                if oci.layout.is_some() == oci.archive.is_some() {
                    out.push(problem(
                        format!("image.userland[{i}].oci"),
                        "expected exactly one of `layout` (a directory) or `archive` (a tar file)",
                    ));
                }
            }
        }
    }
}

/// Extra files land inside the image; kernel arguments are single words Keel does not set.
fn check_files_and_cmdline(image: &Image, out: &mut Vec<Problem>) {
    for (i, file) in image.files.iter().enumerate() {
        let dst = Path::new(&file.dst);
        if !dst.is_absolute() || file.dst.split('/').any(|c| c == "..") || file.dst == "/" {
            out.push(problem(
                format!("image.files[{i}].dst"),
                format!(
                    "{:?} must be an absolute path inside the image, without `..`",
                    file.dst
                ),
            ));
        }
    }
    for (i, arg) in image.cmdline.iter().enumerate() {
        let key = arg.split('=').next().unwrap_or_default();
        if arg.is_empty() || arg.chars().any(char::is_whitespace) {
            out.push(problem(
                format!("image.cmdline[{i}]"),
                "expected one argument without spaces",
            ));
        } else if RESERVED_CMDLINE_KEYS.contains(&key) {
            out.push(problem(
                format!("image.cmdline[{i}]"),
                format!("`{key}` is set by Keel itself"),
            ));
        }
    }
}

/// No format listed twice; container images named once, each from one location.
fn check_formats_and_images(image: &Image, out: &mut Vec<Problem>) {
    let mut seen = HashSet::new();
    for (i, format) in image.formats.iter().enumerate() {
        if !seen.insert(format) {
            out.push(problem(
                format!("image.formats[{i}]"),
                format!("{format:?} is listed twice"),
            ));
        }
    }
    let mut names = HashSet::new();
    for (i, img) in image.container_images.iter().enumerate() {
        let field = format!("image.container_images[{i}]");
        if !names.insert(img.name.as_str()) {
            out.push(problem(
                format!("{field}.name"),
                format!("{:?} is used twice", img.name),
            ));
        }
        if img.layout.is_some() == img.archive.is_some() {
            out.push(problem(
                field,
                "expected exactly one of `layout` (a directory) or `archive` (a tar file)",
            ));
        }
    }
}

/// squashfs compression level and block size; initramfs module names.
fn check_squashfs_and_modules(image: &Image, out: &mut Vec<Problem>) {
    let sq = &image.squashfs;
    if !(1..=22).contains(&sq.level) {
        out.push(problem(
            "image.squashfs.level",
            format!("{} is out of range: expected 1 to 22", sq.level),
        ));
    }
    let bs = sq.block_size.bytes();
    if !bs.is_power_of_two() || !(4096..=1 << 20).contains(&bs) {
        out.push(problem(
            "image.squashfs.block_size",
            format!(
                "{} is not a power of two between 4KiB and 1MiB",
                sq.block_size
            ),
        ));
    }
    for (i, m) in image.initramfs.modules.iter().enumerate() {
        if m.is_empty() || m.contains('/') || m.ends_with(".ko") {
            out.push(problem(
                format!("image.initramfs.modules[{i}]"),
                format!("{m:?}: expected a module name like \"nvme\""),
            ));
        }
    }
}

/// The rules for `[node]` alone: what a node checks in a profile given at boot (the image
/// section is the builder's business, and cross-checks with it happen at build time).
pub fn validate_node(node: &Node) -> Vec<Problem> {
    let mut out = Vec::new();
    check_node(node, &mut out);
    out
}

/// Each link names another interface than the main one and the other links, and has an
/// address.
fn check_links(net: &super::node::Network, role: super::node::Role, out: &mut Vec<Problem>) {
    let mut seen: Vec<&str> = net.interface.iter().map(|i| i.as_str()).collect();
    for (i, link) in net.links.iter().enumerate() {
        let name = link.interface.as_str();
        if seen.contains(&name) {
            out.push(problem(
                format!("node.network.links[{i}].interface"),
                format!("{name} is already configured (node.network.interface or an earlier link)"),
            ));
        }
        seen.push(name);
        if link.addresses.is_empty() {
            out.push(problem(
                format!("node.network.links[{i}].addresses"),
                "a link needs at least one address",
            ));
        }
        if let Some(vip) = link.vip {
            check_vip(i, link, vip, role, out);
        }
    }
}

/// A virtual IP belongs to control planes, inside the link's subnet, and is nobody's own.
fn check_vip(
    i: usize,
    link: &super::node::StaticLink,
    vip: std::net::Ipv4Addr,
    role: super::node::Role,
    out: &mut Vec<Problem>,
) {
    let field = format!("node.network.links[{i}].vip");
    if role != super::node::Role::ControlPlane {
        out.push(problem(
            field.clone(),
            "only control planes hold the virtual IP (their etcd leader does)",
        ));
    }
    let Some(first) = link.addresses.first() else {
        return;
    };
    let std::net::IpAddr::V4(own) = first.addr else {
        out.push(problem(
            field,
            "expected an IPv4 link address to share the subnet with",
        ));
        return;
    };
    let mask = u32::MAX
        .checked_shl(32 - u32::from(first.prefix.min(32)))
        .unwrap_or(0);
    if u32::from(own) & mask != u32::from(vip) & mask {
        out.push(problem(
            field,
            format!(
                "{vip} is outside {first}'s subnet: the others could not reach it on this link"
            ),
        ));
    } else if link
        .addresses
        .iter()
        .any(|a| a.addr == std::net::IpAddr::V4(vip))
    {
        out.push(problem(
            field,
            format!("{vip} is this node's own address: expected a shared one"),
        ));
    }
}

fn check_node(node: &Node, out: &mut Vec<Problem>) {
    let net = &node.network;
    match net.mode {
        NetworkMode::Static => {
            if net.addresses.is_empty() {
                out.push(problem(
                    "node.network.addresses",
                    "static networking needs at least one address",
                ));
            }
            if let Some(gw) = net.gateway
                && !net
                    .addresses
                    .iter()
                    .any(|a| a.addr.is_ipv4() == gw.is_ipv4())
            {
                out.push(problem(
                    "node.network.gateway",
                    format!("{gw} has no address of its family to route through"),
                ));
            }
        }
        NetworkMode::Dhcp => {
            if !net.addresses.is_empty() {
                out.push(problem(
                    "node.network.addresses",
                    "only allowed with mode = \"static\"",
                ));
            }
            if net.gateway.is_some() {
                out.push(problem(
                    "node.network.gateway",
                    "only allowed with mode = \"static\"",
                ));
            }
        }
    }
    check_links(net, node.role, out);
    super::pod_network::check(&node.pod_network, &node.kubernetes.pod_cidr, out);
    if !(30..=3600).contains(&node.boot_deadline_secs) {
        out.push(problem(
            "node.boot_deadline_secs",
            format!(
                "{} is out of range: expected 30 to 3600 seconds",
                node.boot_deadline_secs
            ),
        ));
    }
    let mut names = HashSet::new();
    for (i, c) in node.containers.iter().enumerate() {
        if !names.insert(c.name.as_str()) {
            out.push(problem(
                format!("node.containers[{i}].name"),
                format!("{:?} is used twice", c.name),
            ));
        }
        if c.image.trim().is_empty() {
            out.push(problem(
                format!("node.containers[{i}].image"),
                "expected an image name",
            ));
        }
    }
    let mut members = HashSet::new();
    for (i, m) in node.etcd.members.iter().enumerate() {
        if !members.insert(m.name.as_str()) {
            out.push(problem(
                format!("node.etcd.members[{i}].name"),
                format!("member {:?} is listed twice", m.name.as_str()),
            ));
        }
    }
    if node.etcd.join && node.etcd.members.len() < 2 {
        out.push(problem(
            "node.etcd.join",
            "joining needs `node.etcd.members` to list the running members and this node",
        ));
    }
    if node.etcd.join && node.role != super::node::Role::ControlPlane {
        out.push(problem(
            "node.etcd.join",
            "only a control plane runs etcd and can join its cluster",
        ));
    }
}

fn valid_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}
