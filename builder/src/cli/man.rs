//! `keel man -o DIR`: a man page per command, from the same clap definitions as `--help`
//! (`keel.1`, `keel-build.1`, `keel-node-status.1`, ...).

use std::path::{Path, PathBuf};

use super::error::CommandError;

/// Writes the pages and returns their paths.
pub fn write_pages(dir: &Path, mut command: clap::Command) -> Result<Vec<PathBuf>, CommandError> {
    // Propagates global options (-q, -v, --context, --config) to every subcommand's page.
    command.build();
    std::fs::create_dir_all(dir)
        .map_err(|e| CommandError::Failed(format!("{}: {e}", dir.display())))?;
    let mut written = Vec::new();
    write_page(dir, command, &mut written)?;
    Ok(written)
}

fn write_page(
    dir: &Path,
    command: clap::Command,
    written: &mut Vec<PathBuf>,
) -> Result<(), CommandError> {
    let name = command.get_name().to_owned();
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .and_then(|()| std::fs::write(&path, &page))
        .map_err(|e| CommandError::Failed(format!("{}: {e}", path.display())))?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        // `keel node status` becomes keel-node-status(1), as git and cargo name theirs.
        let sub = sub.clone().name(format!("{name}-{}", sub.get_name()));
        write_page(dir, sub, written)?;
    }
    Ok(())
}
