//! Console output. PID 1 must never die because a write failed, so errors are ignored.

use std::io::Write;

/// Prints one line on the console, prefixed so users can tell the init's lines from the
/// kernel's and services'.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "keel: {text}");
    let _ = out.flush();
}
