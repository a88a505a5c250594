//! Composable `Read`/`Write` adapters the builder's steps share, in the manner of
//! coreos-installer's `io` module: each does one thing and wraps any reader or writer.
//!
//! - [`HashingReader`], [`HashingWriter`]: SHA-256 and length of what passes through (every
//!   artifact is recorded in the signed manifest with both, so they are computed while the
//!   bytes are written instead of in a second pass);
//! - [`VerifyingReader`]: fails instead of ending when a blob differs from its descriptor;
//! - [`LimitReader`]: an error past a size limit;
//! - [`Window`]: a partition inside a disk image;
//! - [`ReadOnly`]: hands a read-only file to code that asks for `Write` too.

mod hash;
mod limit;
mod readonly;
mod verify;
mod window;

pub use hash::{Hashed, HashingReader, HashingWriter, sha256_exact};
pub use limit::{LimitReader, read_to_end_limited};
pub use readonly::ReadOnly;
pub use verify::{Mismatch, VerifyingReader};
pub use window::Window;

/// Creates `path` for writing with exactly `mode` (the umask does not widen or narrow it),
/// failing with `AlreadyExists` rather than opening an existing file: keys and secrets are
/// never written through a file someone else created.
pub fn create_new_with_mode(path: &std::path::Path, mode: u32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(file)
}
