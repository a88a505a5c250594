//! Finding the static `keel-init` binary that goes into every initramfs.

use std::path::{Path, PathBuf};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, thiserror::Error)]
pub enum InitBinaryError {
    #[error(
        "keel-init not found (looked in: {looked}); build it with:\n  RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p keel-init --target {TARGET}\nor pass --init PATH / set KEEL_INIT"
    )]
    NotFound { looked: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a statically linked x86-64 ELF executable (it has an ELF interpreter or is not ELF); PID 1 in the initramfs cannot load shared libraries. Build it with RUSTFLAGS='-C target-feature=+crt-static' and --target {TARGET}"
    )]
    NotStatic { path: String },
}

/// Candidates, in order: an explicit path, `$KEEL_INIT`, next to the running `keel`, and the
/// cargo target directories of a source checkout.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("KEEL_INIT") {
        return vec![PathBuf::from(p)];
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        out.push(dir.join("keel-init"));
        // target/{release,debug}/keel -> target/<triple>/release/keel-init
        if let Some(target) = dir.parent() {
            out.push(target.join(TARGET).join("release").join("keel-init"));
            out.push(
                target
                    .join("keel-init")
                    .join(TARGET)
                    .join("release")
                    .join("keel-init"),
            );
        }
    }
    out.push(
        PathBuf::from("target")
            .join(TARGET)
            .join("release")
            .join("keel-init"),
    );
    out
}

/// The init binary's bytes, checked to be a static executable.
pub fn load(explicit: Option<&Path>) -> Result<(PathBuf, Vec<u8>), InitBinaryError> {
    let candidates = candidates(explicit);
    let path = candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| InitBinaryError::NotFound {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let bytes = std::fs::read(&path).map_err(|source| InitBinaryError::Io {
        path: path.display().to_string(),
        source,
    })?;
    if !is_static_elf(&bytes) {
        return Err(InitBinaryError::NotStatic {
            path: path.display().to_string(),
        });
    }
    Ok((path, bytes))
}

/// True for a 64-bit x86-64 ELF executable without a PT_INTERP program header.
pub fn is_static_elf(elf: &[u8]) -> bool {
    let u = |at: usize, len: usize| -> Option<u64> {
        let b = elf.get(at..at + len)?;
        let mut buf = [0u8; 8];
        buf[..len].copy_from_slice(b);
        Some(u64::from_le_bytes(buf))
    };
    let check = || -> Option<bool> {
        if elf.get(0..4)? != b"\x7fELF" || *elf.get(4)? != 2 || u(0x12, 2)? != 62 {
            return Some(false);
        }
        let phoff = u(0x20, 8)? as usize;
        let phentsize = u(0x36, 2)? as usize;
        let phnum = u(0x38, 2)? as usize;
        for i in 0..phnum {
            if u(phoff + i * phentsize, 4)? == 3 {
                return Some(false); // PT_INTERP
            }
        }
        Some(true)
    };
    check().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binaries_are_not_static() {
        // The test binary itself is dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }
}
