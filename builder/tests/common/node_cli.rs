//! `keel node` through its CLI code against a server on loopback, shared by the node API
//! test files.

use std::net::SocketAddr;
use std::path::Path;

use keel_builder::cli::{CommandError, NodeCommand, NodeConnection};
use keel_builder::node;
use keel_builder::progress::Reporter;

/// An admin connection to `addr` with the credentials in `secrets`.
pub fn conn(addr: SocketAddr, secrets: &Path) -> NodeConnection {
    NodeConnection {
        endpoint: Some(addr.to_string()),
        secrets: Some(secrets.to_owned()),
        read_only: false,
        node: None,
        own_certificate_only: false,
    }
}

/// Runs a `keel node` command; returns what it printed.
pub fn run_cli(command: NodeCommand) -> Result<String, CommandError> {
    let mut out = Vec::new();
    keel_builder::cli::node::run_with(
        command,
        &Reporter::quiet(),
        &node::open_update_file,
        &mut out,
    )?;
    Ok(String::from_utf8(out).expect("the CLI prints UTF-8"))
}
