//! The pod sandbox ("pause") image, made on the node from the image's own `catatonit`.
//!
//! Every pod's sandbox runs a process that only holds the pod's namespaces and reaps
//! zombies. containerd would pull `registry.k8s.io/pause` for it, which an air-gapped node
//! cannot. Debian's `catatonit` (a static binary podman uses the same way, `catatonit -P`) is
//! in the verified root, so the node wraps it into a one-layer OCI archive at boot and imports
//! it into containerd's `k8s.io` namespace under [`NAME`], the sandbox image containerd's
//! configuration names. The archive is the same bytes on every boot (fixed times, no
//! compression), so its digest only changes with the catatonit the image ships.

use std::collections::BTreeMap;

use serde_json::json;
use sha2::{Digest, Sha256};

/// The sandbox image's name in containerd.
pub const NAME: &str = "keel.local/pause:catatonit";
/// catatonit in the root (Debian's path).
pub const CATATONIT: &str = "/usr/bin/catatonit";
/// Where the archive is written before the import.
pub const ARCHIVE: &str = "/run/keel/pause.tar";

const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tar_file(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, data)
}

/// The OCI archive (an image layout in a tar, as `ctr images import` takes it) of an image
/// whose one layer holds `/catatonit` and whose entrypoint is `catatonit -P`.
pub fn archive(catatonit: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut layer = tar::Builder::new(Vec::new());
    tar_file(&mut layer, "catatonit", 0o755, catatonit)?;
    let layer = layer.into_inner()?;
    let layer_digest = digest(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": ["/catatonit", "-P"] },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] }
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": layer.len() }]
    }))?;
    let annotations: BTreeMap<&str, &str> = [
        ("io.containerd.image.name", NAME),
        ("org.opencontainers.image.ref.name", NAME),
    ]
    .into_iter()
    .collect();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": digest(&manifest),
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": annotations
        }]
    }))?;
    let mut out = tar::Builder::new(Vec::new());
    tar_file(
        &mut out,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    tar_file(&mut out, "index.json", 0o644, &index)?;
    for blob in [&manifest, &config, &layer] {
        let name = format!("blobs/sha256/{}", hex(&Sha256::digest(blob)));
        tar_file(&mut out, &name, 0o644, blob)?;
    }
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut a = tar::Archive::new(tar_bytes);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            out.insert(path, data);
        }
        out
    }

    #[test]
    fn archive_is_a_layout_whose_blobs_match_their_digests() {
        let bytes = archive(b"\x7fELF fake catatonit").unwrap();
        assert_eq!(
            bytes,
            archive(b"\x7fELF fake catatonit").unwrap(),
            "reproducible"
        );
        let files = entries(&bytes);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let entry = &index["manifests"][0];
        assert_eq!(entry["annotations"]["io.containerd.image.name"], NAME);
        for (path, data) in &files {
            if let Some(hex_digest) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(hex(&Sha256::digest(data)), hex_digest, "{path}");
            }
        }
        let manifest_path = format!(
            "blobs/sha256/{}",
            entry["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
        );
        let manifest: serde_json::Value = serde_json::from_slice(&files[&manifest_path]).unwrap();
        let layer_path = format!(
            "blobs/sha256/{}",
            manifest["layers"][0]["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
        );
        let layer = entries(&files[&layer_path]);
        assert_eq!(layer["catatonit"], b"\x7fELF fake catatonit");
    }
}
