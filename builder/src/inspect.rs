//! `keel inspect`: the partition table and the manifests read back from a disk image, or an
//! update bundle's manifest and OCI digests. Nothing is verified here (`keel verify` does).
//! The disk is opened read-only. [`inspect`] returns a report that serialises as JSON
//! (`--json`) and renders as text ([`Report::render`]).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use keel_contract::bundle::{BUNDLE_DIR, Part};
use keel_contract::gpt::{self, Gpt};
use keel_contract::layout::{self, PartitionRole, Slot};
use keel_contract::manifest::Manifest;
use keel_minisign::SignatureFile;
use serde::Serialize;

use crate::bundle::BundleError;
use crate::io::{ReadOnly, Window};
use crate::progress::human_bytes;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{}: {what}: {message}", path.display())]
    Disk {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

impl crate::error::Classify for InspectError {
    fn is_bad_input(&self) -> bool {
        false
    }
}

/// What `keel inspect` found: a disk (with the output directory's bundle, if any) or a
/// bundle alone.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    Disk(DiskReport),
    Bundle(Box<BundleReport>),
}

#[derive(Debug, Serialize)]
pub struct DiskReport {
    pub path: PathBuf,
    pub size: u64,
    pub disk_guid: String,
    pub partitions: Vec<PartitionInfo>,
    /// `None` without an ESP or when its entries cannot be listed.
    pub boot_entries: Option<Vec<String>>,
    /// Empty without an ESP.
    pub slots: Vec<SlotReport>,
    /// The update bundle of a build output directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleOutcome>,
    /// The network-boot files of a build output directory (`pxe/`), unverified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pxe: Option<PxeReport>,
    #[serde(skip)]
    has_esp: bool,
}

#[derive(Debug, Serialize)]
pub struct PxeReport {
    pub path: PathBuf,
    /// Name and size of each of the contract's files; a missing one is `None`.
    pub files: Vec<(String, Option<u64>)>,
}

impl PxeReport {
    fn read(dir: &Path) -> PxeReport {
        let files = keel_contract::output::pxe::FILES
            .iter()
            .map(|name| {
                let size = std::fs::metadata(dir.join(name)).ok().map(|m| m.len());
                ((*name).to_owned(), size)
            })
            .collect();
        PxeReport {
            path: dir.to_path_buf(),
            files,
        }
    }

    fn render(&self) -> String {
        let files: Vec<String> = self
            .files
            .iter()
            .map(|(name, size)| match size {
                Some(size) => format!("{name} {}", human_bytes(*size)),
                None => format!("{name} MISSING"),
            })
            .collect();
        format!(
            "network boot {}: {}\n",
            self.path.display(),
            files.join(", ")
        )
    }
}

#[derive(Debug, Serialize)]
pub struct PartitionInfo {
    pub number: usize,
    pub label: String,
    pub offset: u64,
    pub size: u64,
    pub type_guid: String,
    pub guid: String,
}

#[derive(Debug, Serialize)]
pub struct SlotReport {
    pub slot: String,
    /// The manifest on the ESP, unverified.
    pub manifest: Option<Manifest>,
    /// Why there is none: no file, or one that does not parse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The key ID the signature names (not checked), or `unsigned`.
    pub signer: String,
}

/// A bundle beside a disk: a damaged one does not hide what the disk says.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleOutcome {
    Ok(Box<BundleReport>),
    Error(String),
}

#[derive(Debug, Serialize)]
pub struct BundleReport {
    pub path: PathBuf,
    pub reference: Option<String>,
    pub platform: Option<String>,
    pub signer: String,
    pub manifest: Option<Manifest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_problem: Option<String>,
    pub image_manifest: Blob,
    pub config: Blob,
    /// In upload order.
    pub parts: Vec<Blob>,
}

#[derive(Debug, Serialize)]
pub struct Blob {
    pub name: String,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

pub fn inspect(path: &Path) -> Result<Report, InspectError> {
    if crate::bundle::is_bundle(path) {
        return inspect_bundle(path).map(|b| Report::Bundle(Box::new(b)));
    }
    let mut disk = inspect_disk(path)?;
    let bundle = path.join(BUNDLE_DIR);
    if path.is_dir() && crate::bundle::is_bundle(&bundle) {
        disk.bundle = Some(match inspect_bundle(&bundle) {
            Ok(report) => BundleOutcome::Ok(Box::new(report)),
            Err(e) => BundleOutcome::Error(e.to_string()),
        });
    }
    let pxe = path.join(keel_contract::output::pxe::DIR);
    if path.is_dir() && pxe.is_dir() {
        disk.pxe = Some(PxeReport::read(&pxe));
    }
    Ok(Report::Disk(disk))
}

impl Report {
    /// The report as a person reads it.
    pub fn render(&self) -> String {
        match self {
            Report::Disk(d) => d.render(),
            Report::Bundle(b) => b.render(),
        }
    }
}

fn signer_of(signature: Option<&[u8]>) -> Option<String> {
    let text = std::str::from_utf8(signature?).ok()?;
    SignatureFile::parse(text)
        .ok()
        .map(|s| s.key_id().to_string())
}

/// The bundle's manifest summary and the OCI digests of everything in it. Opening a bundle
/// checks the small blobs' digests; the kernel, initramfs and payload are not read.
pub fn inspect_bundle(path: &Path) -> Result<BundleReport, InspectError> {
    let bundle = crate::bundle::open_bundle(path, None)?;
    let blob = |name: &str, info: &crate::bundle::BlobInfo| Blob {
        name: name.to_owned(),
        digest: info.oci_digest(),
        size: info.size,
        media_type: info.media_type.clone(),
    };
    let (manifest, manifest_problem) = match Manifest::from_json(&bundle.manifest) {
        Ok(m) => (Some(m), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(BundleReport {
        path: path.to_path_buf(),
        reference: bundle.reference.clone(),
        platform: bundle.platform.clone(),
        signer: signer_of(Some(&bundle.signature)).unwrap_or_else(|| "unreadable signature".into()),
        manifest,
        manifest_problem,
        image_manifest: blob("image manifest", &bundle.image_manifest),
        config: blob("config", &bundle.config),
        parts: Part::ALL
            .into_iter()
            .map(|part| blob(part.entry_name(), bundle.part(part)))
            .collect(),
    })
}

impl BundleReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}: update bundle (OCI image layout), ref {}, platform {}\n",
            self.path.display(),
            self.reference.as_deref().unwrap_or("(none)"),
            self.platform.as_deref().unwrap_or("(none)")
        );
        match (&self.manifest, &self.manifest_problem) {
            (Some(m), _) => {
                out.push_str(&format!(
                    "  {} {} ({}), signed by key ID {} (signature not checked here: use keel verify)\n",
                    m.name, m.version, m.arch, self.signer
                ));
                manifest_summary(m, &mut out);
                out.push_str(&format!(
                    "  payload    {} (sha256 {})\n",
                    human_bytes(m.slot_payload.size),
                    m.slot_payload.sha256
                ));
            }
            (None, problem) => out.push_str(&format!(
                "  unreadable manifest: {}\n",
                problem.as_deref().unwrap_or_default()
            )),
        }
        out.push_str("  OCI\n");
        out.push_str(&format!(
            "    image manifest  {} ({} bytes)\n",
            self.image_manifest.digest, self.image_manifest.size
        ));
        out.push_str(&format!(
            "    config          {} ({})\n",
            self.config.digest, self.config.media_type
        ));
        for blob in &self.parts {
            out.push_str(&format!(
                "    {:<22}  {} {:>10}  {}\n",
                blob.name,
                blob.digest,
                human_bytes(blob.size),
                blob.media_type
            ));
        }
        out
    }
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

fn inspect_disk(path: &Path) -> Result<DiskReport, InspectError> {
    let disk_path = if path.is_dir() {
        path.join(keel_contract::output::DISK)
    } else {
        path.to_path_buf()
    };
    let failed = |what: &'static str, e: &dyn std::fmt::Display| InspectError::Disk {
        path: disk_path.clone(),
        what,
        message: e.to_string(),
    };
    // Read-only: inspecting needs no write access and must not change the image.
    let file = File::open(&disk_path).map_err(|e| failed("open", &e))?;
    let size = file.metadata().map_err(|e| failed("stat", &e))?.len();
    let mut disk = ReadOnly(file);
    let mut head = vec![0u8; gpt::PRIMARY_BYTES as usize];
    disk.read_exact(&mut head).map_err(|e| failed("read", &e))?;
    let table = Gpt::parse_primary(&head, size / layout::SECTOR_SIZE)
        .map_err(|e| failed("partition table", &e))?;
    let mut report = DiskReport {
        path: disk_path.clone(),
        size,
        disk_guid: table.disk_guid.to_string(),
        partitions: table
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| PartitionInfo {
                number: i + 1,
                label: p.name.clone(),
                offset: p.offset(),
                size: p.size(),
                type_guid: p.type_guid.hyphenated().to_string().to_uppercase(),
                guid: p.guid.to_string(),
            })
            .collect(),
        boot_entries: None,
        slots: Vec::new(),
        bundle: None,
        pxe: None,
        has_esp: false,
    };
    let Some((_, esp)) = table.find(PartitionRole::Esp.label()) else {
        return Ok(report);
    };
    report.has_esp = true;
    let (offset, len) = (esp.offset(), esp.size());
    report.boot_entries = Window::new(&mut disk, offset, len)
        .ok()
        .and_then(|w| crate::fat::list_fat_dir(w, layout::esp::ENTRIES_DIR).ok());
    let mut read_esp = |path: &str| {
        Window::new(&mut disk, offset, len)
            .ok()
            .and_then(|w| crate::fat::read_fat_file(w, path).ok())
    };
    for slot in [Slot::A, Slot::B] {
        let manifest = read_esp(&slot.manifest_path());
        let signature = read_esp(&slot.signature_path());
        let signer = signer_of(signature.as_deref()).unwrap_or_else(|| "unsigned".into());
        let (manifest, problem) = match manifest.map(|b| Manifest::from_json(&b)) {
            None => (None, Some("no manifest on the ESP".to_owned())),
            Some(Ok(m)) => (Some(m), None),
            Some(Err(e)) => (None, Some(format!("unreadable manifest: {e}"))),
        };
        report.slots.push(SlotReport {
            slot: slot.to_string(),
            manifest,
            problem,
            signer,
        });
    }
    Ok(report)
}

impl DiskReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}: {} ({} bytes), disk GUID {}\n",
            self.path.display(),
            human_bytes(self.size),
            self.size,
            self.disk_guid
        );
        out.push_str(
            "  #  label    offset       size  type                                  GUID\n",
        );
        for p in &self.partitions {
            out.push_str(&format!(
                "  {}  {:<7} {:>7} MiB {:>10}  {}  {}\n",
                p.number,
                p.label,
                p.offset >> 20,
                human_bytes(p.size),
                p.type_guid,
                p.guid
            ));
        }
        if !self.has_esp {
            out.push_str("no ESP partition\n");
            return self.with_bundle(out);
        }
        if let Some(entries) = &self.boot_entries {
            out.push_str(&format!("boot entries: {}\n", entries.join(", ")));
        }
        for slot in &self.slots {
            match (&slot.manifest, &slot.problem) {
                (Some(m), _) => {
                    out.push_str(&format!(
                        "slot {}: {} {} ({}), signed by key ID {} (signature not checked here: use keel verify)\n",
                        slot.slot, m.name, m.version, m.arch, slot.signer
                    ));
                    manifest_summary(m, &mut out);
                }
                (None, problem) => out.push_str(&format!(
                    "slot {}: {}\n",
                    slot.slot,
                    problem.as_deref().unwrap_or_default()
                )),
            }
        }
        self.with_bundle(out)
    }

    fn with_bundle(&self, mut out: String) -> String {
        match &self.bundle {
            Some(BundleOutcome::Ok(b)) => out.push_str(&b.render()),
            Some(BundleOutcome::Error(e)) => out.push_str(&format!("{e}\n")),
            None => {}
        }
        if let Some(pxe) = &self.pxe {
            out.push_str(&pxe.render());
        }
        out
    }
}
