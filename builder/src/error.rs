//! How an error is reported: every library error type says whether it is the user's input
//! (a bad profile, key, argument or file: exit code 2) or a failure while doing the work
//! (exit code 1). The CLI maps errors to exit codes through this trait alone.

/// Implemented by the library's error types.
pub trait Classify: std::error::Error {
    /// Bad input (exit code 2) as opposed to a failure (exit code 1).
    fn is_bad_input(&self) -> bool;
}

impl Classify for keel_contract::profile::ProfileError {
    fn is_bad_input(&self) -> bool {
        true
    }
}

/// An error and its causes, `: `-separated. `ocidir::Error`'s own messages are terse ("i/o
/// error"); the cause is in its source chain.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}
