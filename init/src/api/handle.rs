//! One request on an established connection: the head, the route, the operator's role, the
//! body (an upgrade stream, a renewed certificate, or none), the handler, the response and
//! the draining of what the client still sends.

use std::io::{self, Read};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use keel_contract::api::{
    Ack, ErrorBody, ErrorKind, MAX_CERTIFICATE_BODY, NodeCertificate, OperatorRole, Request,
    RouteError, content_type,
};
use serde::Serialize;

use super::http;
use super::{ApiError, NodeApi, ServerOptions, Transport};

pub(super) fn json_response<T: Serialize>(
    status: u16,
    reason: &'static str,
    value: &T,
) -> http::Response {
    match serde_json::to_vec(value) {
        Ok(body) => http::Response::new(status, reason, content_type::JSON, body),
        Err(e) => error_response(ErrorKind::Internal, &format!("encoding the response: {e}")),
    }
}

pub(super) fn error_response(kind: ErrorKind, message: &str) -> http::Response {
    let body = serde_json::to_vec(&ErrorBody {
        error: message.to_owned(),
    })
    .unwrap_or_default();
    http::Response::new(kind.status(), kind.reason(), content_type::JSON, body)
}

/// Runs a handler, turning a panic (a bug) into a 500 instead of a dead connection thread
/// with the client left waiting.
pub(super) fn guarded<T>(f: impl FnOnce() -> Result<T, ApiError>) -> Result<T, ApiError> {
    crate::fatal::contained(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(ApiError::internal(
            "the node's handler failed (a bug: see the node's console)",
        ))
    })
}

/// Content types an upload may declare (or none).
pub(super) fn upload_type_ok(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case(content_type::UPDATE)
        || essence.eq_ignore_ascii_case("application/octet-stream")
}

/// Serves one request on an established connection. Returns a line for the log: every
/// POST and every failure (status polls would drown the console).
pub(crate) fn handle(
    t: &mut dyn Transport,
    api: &dyn NodeApi,
    role: OperatorRole,
    opts: &ServerOptions,
) -> Option<String> {
    let (head, early) = match http::read_head(t) {
        Ok(x) => x,
        Err(http::HeadError::Closed) => return None,
        Err(e) => {
            if let Some((kind, message)) = http::refusal(&e)
                && error_response(kind, &message).write_to(t).is_ok()
            {
                t.close_write();
                linger(t);
            }
            return Some(e.to_string());
        }
    };
    // The head is in: from now on only the idle timeout applies (uploads take long).
    t.set_deadline(None);
    let what = format!("{} {}", head.method, head.target);
    let request = match Request::parse(&head.method, &head.target) {
        Ok(r) => r,
        Err(e) => {
            let mut response = error_response(e.kind(), &e.to_string());
            if let RouteError::MethodNotAllowed(m) = &e {
                response.headers.push(("Allow", m.as_str().to_owned()));
            }
            return Some(finish(t, &what, &response, None, opts));
        }
    };
    if !role.allows(&request) {
        let response = error_response(
            ErrorKind::Forbidden,
            &format!(
                "a {} operator certificate may not {what}: it allows status, version, logs and the etcd member list; use an admin certificate (keel_admin in the secrets file)",
                role.as_str()
            ),
        );
        // A body the client sends anyway is read and dropped, so that it gets the answer;
        // one held back for a 100 never comes.
        let drain = match head.content_length {
            Some(_) if head.expect_continue => Some(0),
            Some(n) => Some(n.saturating_sub(early.len() as u64)),
            None if head.transfer_encoding => None,
            None => Some(0),
        };
        return Some(finish(t, &what, &response, drain, opts));
    }
    if head.transfer_encoding {
        let response = error_response(
            ErrorKind::LengthRequired,
            "Transfer-Encoding is not accepted: send the body with a Content-Length",
        );
        return Some(finish(t, &what, &response, None, opts));
    }
    let mut unread = 0;
    let result = match request {
        Request::RenewCertificate => {
            return Some(certificate_request(t, &head, early, api, &what, opts));
        }
        Request::EtcdSnapshot if head.content_length.unwrap_or(0) == 0 => {
            return Some(super::snapshot::etcd_snapshot(t, api, &what, opts));
        }
        Request::Upgrade { force, reboot } => {
            match upgrade_request(t, &head, early, api, force, reboot) {
                Ok((result, left)) => {
                    unread = left;
                    result
                }
                Err(Refused::Answer(response, drain)) => {
                    return Some(finish(t, &what, &response, drain, opts));
                }
                Err(Refused::Gone(e)) => return Some(format!("{what}: {e}")),
            }
        }
        request => {
            if head.content_length.unwrap_or(0) > 0 {
                let response = error_response(
                    ErrorKind::PayloadTooLarge,
                    "this endpoint takes no request body",
                );
                let unread = head
                    .content_length
                    .map(|n| n.saturating_sub(early.len() as u64));
                return Some(finish(t, &what, &response, unread, opts));
            }
            dispatch(request, api)
        }
    };
    let response = result.unwrap_or_else(|e| error_response(e.kind, &e.message));
    let line = finish(t, &what, &response, Some(unread).filter(|n| *n > 0), opts);
    let quiet = head.method == "GET" && response.status < 400;
    if quiet { None } else { Some(line) }
}

/// Why an upgrade's body was not handed to the handler.
enum Refused {
    /// Answer this, then drain this much of the body (`None`: linger).
    Answer(http::Response, Option<u64>),
    /// The client went away before the `100 Continue`.
    Gone(io::Error),
}

/// `POST /v1/upgrade`: the checks that can refuse before the body, the `100 Continue`, then
/// the handler on the streamed body. Returns its result and the body bytes left on the wire.
fn upgrade_request(
    t: &mut dyn Transport,
    head: &http::Head,
    early: Vec<u8>,
    api: &dyn NodeApi,
    force: bool,
    reboot: bool,
) -> Result<(Result<http::Response, ApiError>, u64), Refused> {
    let Some(len) = head.content_length else {
        let response = error_response(
            ErrorKind::LengthRequired,
            "an upgrade needs a Content-Length",
        );
        return Err(Refused::Answer(response, None));
    };
    if let Some(ct) = head
        .content_type
        .as_deref()
        .filter(|ct| !upload_type_ok(ct))
    {
        let response = error_response(
            ErrorKind::UnsupportedMediaType,
            &format!("an upgrade is {}, not {ct}", content_type::UPDATE),
        );
        let unread = len.saturating_sub(early.len() as u64);
        return Err(Refused::Answer(response, Some(unread)));
    }
    if head.expect_continue {
        // The client holds the body back until the 100: a refusal known before any
        // byte is answered now, instead of after draining an upload it never needed.
        if let Err(e) = guarded(|| api.upgrade_admissible(force)) {
            return Err(Refused::Answer(error_response(e.kind, &e.message), None));
        }
        t.write_all(http::CONTINUE)
            .and_then(|()| t.flush())
            .map_err(Refused::Gone)?;
    }
    let mut body = http::Body::new(early, t, len);
    let result = guarded(|| api.upgrade(&mut body, len, force, reboot))
        .map(|report| json_response(200, "OK", &report));
    Ok((result, body.unread_on_wire()))
}

/// `POST /v1/certificate`: a small JSON body, read whole, then the handler.
pub(super) fn certificate_request(
    t: &mut dyn Transport,
    head: &http::Head,
    early: Vec<u8>,
    api: &dyn NodeApi,
    what: &str,
    opts: &ServerOptions,
) -> String {
    let Some(len) = head.content_length else {
        let response = error_response(
            ErrorKind::LengthRequired,
            "a certificate needs a Content-Length",
        );
        return finish(t, what, &response, None, opts);
    };
    let unread = len.saturating_sub(early.len() as u64);
    let refusal = if len > MAX_CERTIFICATE_BODY {
        Some((
            ErrorKind::PayloadTooLarge,
            format!("a certificate body is at most {MAX_CERTIFICATE_BODY} bytes, not {len}"),
        ))
    } else {
        head.content_type
            .as_deref()
            .filter(|ct| {
                let essence = ct.split(';').next().unwrap_or_default().trim();
                !essence.eq_ignore_ascii_case(content_type::JSON)
            })
            .map(|ct| {
                (
                    ErrorKind::UnsupportedMediaType,
                    format!("a certificate is {}, not {ct}", content_type::JSON),
                )
            })
    };
    if let Some((kind, message)) = refusal {
        // A body held back for a 100 never comes; one sent anyway is drained.
        let drain = (!head.expect_continue).then_some(unread);
        return finish(t, what, &error_response(kind, &message), drain, opts);
    }
    if head.expect_continue
        && let Err(e) = t.write_all(http::CONTINUE).and_then(|()| t.flush())
    {
        return format!("{what}: {e}");
    }
    let mut body = Vec::new();
    if let Err(e) = http::Body::new(early, t, len).read_to_end(&mut body) {
        return format!("{what}: reading the body: {e}");
    }
    let response = serde_json::from_slice::<NodeCertificate>(&body)
        .map_err(|e| {
            ApiError::bad_request(format!(
                "the body is not a certificate (JSON with `cert` and `key`, PEM): {e}"
            ))
        })
        .and_then(|offered| guarded(|| api.renew_certificate(&offered)))
        .map_or_else(
            |e| error_response(e.kind, &e.message),
            |report| json_response(200, "OK", &report),
        );
    finish(t, what, &response, None, opts)
}

pub(super) fn dispatch(request: Request, api: &dyn NodeApi) -> Result<http::Response, ApiError> {
    match request {
        Request::Version => guarded(|| Ok(api.version())).map(|v| json_response(200, "OK", &v)),
        Request::Status => guarded(|| Ok(api.status())).map(|s| json_response(200, "OK", &s)),
        Request::Logs { service, lines } => guarded(|| api.logs(&service, lines))
            .map(|text| http::Response::new(200, "OK", content_type::TEXT, text.into_bytes())),
        Request::Reboot => guarded(|| api.reboot()).map(|()| {
            json_response(
                202,
                "Accepted",
                &Ack {
                    message: "rebooting".into(),
                },
            )
        }),
        Request::Shutdown => guarded(|| api.shutdown()).map(|()| {
            json_response(
                202,
                "Accepted",
                &Ack {
                    message: "shutting down".into(),
                },
            )
        }),
        Request::Rollback => {
            guarded(|| api.rollback()).map(|report| json_response(200, "OK", &report))
        }
        Request::EtcdMembers => {
            guarded(|| api.etcd_members()).map(|members| json_response(200, "OK", &members))
        }
        Request::EtcdRemoveMember { name } => guarded(|| api.etcd_remove_member(&name))
            .map(|members| json_response(200, "OK", &members)),
        // Routed with their bodies, or streamed, in `handle`.
        Request::Upgrade { .. } | Request::RenewCertificate | Request::EtcdSnapshot => {
            Err(ApiError::internal("a request without its body or stream"))
        }
    }
}

/// Writes the response, then reads and drops up to `drain` bytes of body the client is
/// still sending, and returns the log line.
pub(super) fn finish(
    t: &mut dyn Transport,
    what: &str,
    response: &http::Response,
    drain: Option<u64>,
    opts: &ServerOptions,
) -> String {
    let status = response.status;
    let mut line = format!("{what} -> {status}");
    if status >= 400
        && let Ok(body) = serde_json::from_slice::<ErrorBody>(&response.body)
    {
        line.push_str(&format!(": {}", body.error));
    }
    if let Err(e) = response.write_to(t) {
        line.push_str(&format!(" (not delivered: {e})"));
        return line;
    }
    // The client sees the end of the response at once; what it still sends is read below.
    t.close_write();
    match drain {
        Some(0) => {}
        Some(left) => {
            t.set_deadline(Some(Instant::now() + opts.drain_timeout));
            let _ = io::copy(&mut http::Body::new(Vec::new(), t, left), &mut io::sink());
        }
        // A refusal before the body's length was known (chunked, say): whatever follows.
        None if status >= 400 => linger(t),
        None => {}
    }
    line
}

/// After refusing a request whose head was not read to its end: reads and drops what the
/// client still sends, for a moment, so that closing does not reset the connection (which
/// can discard the response before the client reads it).
pub(super) fn linger(t: &mut dyn Transport) {
    t.set_deadline(Some(Instant::now() + Duration::from_secs(1)));
    let mut sink = [0u8; 4096];
    let mut total = 0;
    while total < 64 * 1024 {
        match t.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}
