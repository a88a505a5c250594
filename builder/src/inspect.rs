//! `keel inspect`: the partition table and the manifests read back from a disk image, or an
//! update bundle's manifest and OCI digests. Nothing is verified here (`keel verify` does).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use keel_contract::bundle::{BUNDLE_DIR, Part};
use keel_contract::gpt::{self, Gpt};
use keel_contract::layout::{self, PartitionRole, Slot};
use keel_contract::manifest::Manifest;
use keel_minisign::SignatureFile;

use crate::commands::CommandError;
use crate::esp::Window;
use crate::progress::human_bytes;

pub fn inspect(path: &Path) -> Result<String, CommandError> {
    if crate::bundle::is_bundle(path) {
        return inspect_bundle(path);
    }
    let mut out = inspect_disk(path)?;
    let bundle = path.join(BUNDLE_DIR);
    if path.is_dir() && crate::bundle::is_bundle(&bundle) {
        // A damaged bundle does not hide what the disk says.
        match inspect_bundle(&bundle) {
            Ok(text) => out.push_str(&text),
            Err(e) => out.push_str(&format!("{e}\n")),
        }
    }
    Ok(out)
}

/// The bundle's manifest summary and the OCI digests of everything in it. Opening a bundle
/// checks the small blobs' digests; the kernel, initramfs and payload are not read.
pub fn inspect_bundle(path: &Path) -> Result<String, CommandError> {
    let bundle =
        crate::bundle::open_bundle(path, None).map_err(|e| CommandError::Failed(e.to_string()))?;
    let signer = std::str::from_utf8(&bundle.signature)
        .ok()
        .and_then(|s| SignatureFile::parse(s).ok())
        .map(|s| s.key_id().to_string())
        .unwrap_or_else(|| "unreadable signature".into());
    let mut out = format!(
        "{}: update bundle (OCI image layout), ref {}, platform {}\n",
        path.display(),
        bundle.reference.as_deref().unwrap_or("(none)"),
        bundle.platform.as_deref().unwrap_or("(none)")
    );
    match Manifest::from_json(&bundle.manifest) {
        Ok(m) => {
            out.push_str(&format!(
                "  {} {} ({}), signed by key ID {signer} (signature not checked here: use keel verify)\n",
                m.name, m.version, m.arch
            ));
            manifest_summary(&m, &mut out);
            out.push_str(&format!(
                "  payload    {} (sha256 {})\n",
                human_bytes(m.slot_payload.size),
                m.slot_payload.sha256
            ));
        }
        Err(e) => out.push_str(&format!("  unreadable manifest: {e}\n")),
    }
    out.push_str("  OCI\n");
    out.push_str(&format!(
        "    image manifest  {} ({} bytes)\n",
        bundle.image_manifest.oci_digest(),
        bundle.image_manifest.size
    ));
    out.push_str(&format!(
        "    config          {} ({})\n",
        bundle.config.oci_digest(),
        bundle.config.media_type
    ));
    for part in Part::ALL {
        let blob = bundle.part(part);
        out.push_str(&format!(
            "    {:<22}  {} {:>10}  {}\n",
            part.entry_name(),
            blob.oci_digest(),
            human_bytes(blob.size),
            blob.media_type
        ));
    }
    Ok(out)
}

fn manifest_summary(m: &Manifest, out: &mut String) {
    out.push_str(&format!(
        "  kernel     {} ({}, sha256 {})\n",
        m.kernel.release,
        human_bytes(m.kernel.size),
        m.kernel.sha256
    ));
    out.push_str(&format!(
        "  initramfs  {} (sha256 {})\n",
        human_bytes(m.initramfs.size),
        m.initramfs.sha256
    ));
    out.push_str(&format!(
        "  root       squashfs/{} {}, verity root {} salt {}\n",
        m.root.compression,
        human_bytes(m.root.size),
        m.root.verity.root_hash,
        m.root.verity.salt
    ));
    out.push_str(&format!("  cmdline    {}\n", m.cmdline.join(" ")));
    out.push_str(&format!(
        "  built by   {} at SOURCE_DATE_EPOCH {}, profile sha256 {}\n",
        m.builder, m.source_date_epoch, m.profile_sha256
    ));
    out.push_str(&format!("  sources    {} items\n", m.sources.len()));
}

fn inspect_disk(path: &Path) -> Result<String, CommandError> {
    let disk_path = if path.is_dir() {
        path.join(keel_contract::output::DISK)
    } else {
        path.to_path_buf()
    };
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        CommandError::Failed(format!("{}: {what}: {e}", disk_path.display()))
    };
    let mut disk = File::options()
        .read(true)
        .write(true)
        .open(&disk_path)
        .map_err(|e| failed("open", &e))?;
    let size = disk.metadata().map_err(|e| failed("stat", &e))?.len();
    let mut head = vec![0u8; gpt::PRIMARY_BYTES as usize];
    disk.read_exact(&mut head).map_err(|e| failed("read", &e))?;
    let gpt = Gpt::parse_primary(&head, size / layout::SECTOR_SIZE)
        .map_err(|e| failed("partition table", &e))?;
    let mut out = format!(
        "{}: {} ({} bytes), disk GUID {}\n",
        disk_path.display(),
        human_bytes(size),
        size,
        gpt.disk_guid
    );
    out.push_str("  #  label    offset       size  type                                  GUID\n");
    for (i, p) in gpt.partitions.iter().enumerate() {
        out.push_str(&format!(
            "  {}  {:<7} {:>7} MiB {:>10}  {}  {}\n",
            i + 1,
            p.name,
            p.offset() >> 20,
            human_bytes(p.size()),
            p.type_guid.hyphenated().to_string().to_uppercase(),
            p.guid
        ));
    }
    let Some((_, esp)) = gpt.find(PartitionRole::Esp.label()) else {
        out.push_str("no ESP partition\n");
        return Ok(out);
    };
    let (offset, len) = (esp.offset(), esp.size());
    fn window(d: &mut File, offset: u64, len: u64) -> std::io::Result<Window<&mut File>> {
        Window::new(d, offset, len)
    }
    if let Ok(entries) = window(&mut disk, offset, len)
        .map_err(|e| failed("ESP", &e))
        .and_then(|w| {
            crate::esp::list_fat_dir(w, layout::esp::ENTRIES_DIR).map_err(|e| failed("ESP", &e))
        })
    {
        out.push_str(&format!("boot entries: {}\n", entries.join(", ")));
    }
    for slot in [Slot::A, Slot::B] {
        let read = |d: &mut File, p: &str| -> Option<Vec<u8>> {
            let w = window(d, offset, len).ok()?;
            crate::esp::read_fat_file(w, p).ok()
        };
        let Some(bytes) = read(&mut disk, &slot.manifest_path()) else {
            out.push_str(&format!("slot {slot}: no manifest on the ESP\n"));
            continue;
        };
        let signer = read(&mut disk, &slot.signature_path())
            .and_then(|s| SignatureFile::parse(&String::from_utf8_lossy(&s)).ok())
            .map(|s| s.key_id().to_string())
            .unwrap_or_else(|| "unsigned".into());
        match Manifest::from_json(&bytes) {
            Ok(m) => {
                out.push_str(&format!(
                    "slot {slot}: {} {} ({}), signed by key ID {signer} (signature not checked here: use keel verify)\n",
                    m.name, m.version, m.arch
                ));
                manifest_summary(&m, &mut out);
            }
            Err(e) => out.push_str(&format!("slot {slot}: unreadable manifest: {e}\n")),
        }
    }
    Ok(out)
}
