//! Errors: the HTTP status of each kind of failure, and the body every error carries.

use serde::{Deserialize, Serialize};

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Why a request failed, and its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: a malformed request or parameter.
    BadRequest,
    /// 404: no such endpoint or service.
    NotFound,
    /// 405: the endpoint exists with another method.
    MethodNotAllowed,
    /// 403: the client's certificate does not allow this (a read-only operator asking for
    /// an upgrade, a reboot, ...).
    Forbidden,
    /// 409: refused in the node's current state: a downgrade without force, a quarantined
    /// version, an upgrade already running, nothing to roll back to.
    Conflict,
    /// 411: an upload without Content-Length (chunked bodies are not accepted).
    LengthRequired,
    /// 413: a body where none is taken, or too large.
    PayloadTooLarge,
    /// 415: an upload of another content type.
    UnsupportedMediaType,
    /// 422: the update did not verify (signature, digest, format).
    VerificationFailed,
    /// 431: the request head is larger than the server accepts.
    HeadersTooLarge,
    /// 500: the node failed.
    Internal,
    /// 503: the node is not ready for this yet (still booting, or shutting down).
    Unavailable,
}

impl ErrorKind {
    pub const fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::LengthRequired => 411,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::VerificationFailed => 422,
            Self::HeadersTooLarge => 431,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    pub fn from_status(status: u16) -> Option<Self> {
        [
            Self::BadRequest,
            Self::Forbidden,
            Self::NotFound,
            Self::MethodNotAllowed,
            Self::Conflict,
            Self::LengthRequired,
            Self::PayloadTooLarge,
            Self::UnsupportedMediaType,
            Self::VerificationFailed,
            Self::HeadersTooLarge,
            Self::Internal,
            Self::Unavailable,
        ]
        .into_iter()
        .find(|k| k.status() == status)
    }

    /// The reason phrase of the status line.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::BadRequest => "Bad Request",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not Found",
            Self::MethodNotAllowed => "Method Not Allowed",
            Self::Conflict => "Conflict",
            Self::LengthRequired => "Length Required",
            Self::PayloadTooLarge => "Payload Too Large",
            Self::UnsupportedMediaType => "Unsupported Media Type",
            Self::VerificationFailed => "Unprocessable Content",
            Self::HeadersTooLarge => "Request Header Fields Too Large",
            Self::Internal => "Internal Server Error",
            Self::Unavailable => "Service Unavailable",
        }
    }
}
