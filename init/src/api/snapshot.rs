//! `GET /v1/etcd/snapshot`: the one response streamed rather than built whole. A snapshot is
//! as large as the cluster's database and its length is not known before etcd has sent it,
//! so it goes out chunked, copied as it arrives; a failure after the head leaves the response
//! without its last chunk, which the client takes for what it is, an incomplete snapshot.

use std::io::{self, Read, Write};

use keel_contract::api::SNAPSHOT_CONTENT_TYPE;
use keel_http::ChunkedWriter;

use super::handle::{error_response, finish, guarded};
use super::{NodeApi, ServerOptions, Transport};

/// How much is read from etcd and sent on at a time.
const CHUNK: usize = 64 * 1024;

/// Serves the snapshot; returns the line for the log (always one: taking every secret of the
/// cluster is worth a line on the console).
pub(super) fn etcd_snapshot(
    t: &mut dyn Transport,
    api: &dyn NodeApi,
    what: &str,
    opts: &ServerOptions,
) -> String {
    let mut source = match guarded(|| api.etcd_snapshot()) {
        Ok(source) => source,
        Err(e) => return finish(t, what, &error_response(e.kind, &e.message), None, opts),
    };
    let head = keel_http::response_head(
        200,
        &[
            ("Content-Type", SNAPSHOT_CONTENT_TYPE),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
            ("Cache-Control", "no-store"),
        ],
    );
    let sent = head
        .and_then(|head| t.write_all(&head))
        .map_err(Cut::Client)
        .and_then(|()| copy(&mut *source, &mut *t));
    match sent {
        Ok(bytes) => format!("{what} -> 200: {bytes} bytes of snapshot"),
        // The last chunk is not sent: the client sees the body end early.
        Err(Cut::Etcd(e, bytes)) => {
            format!("{what} -> 200, cut after {bytes} bytes: etcd: {e}")
        }
        Err(Cut::Client(e)) => format!("{what} -> 200 (not delivered: {e})"),
    }
}

/// Why a snapshot stopped before its end.
enum Cut {
    /// Reading etcd's stream failed after so many bytes.
    Etcd(io::Error, u64),
    Client(io::Error),
}

/// Copies the snapshot into chunks; the last chunk only after etcd's stream ended well.
fn copy(source: &mut dyn Read, t: &mut dyn Transport) -> Result<u64, Cut> {
    let mut out = ChunkedWriter::new(t);
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Cut::Etcd(e, total)),
        };
        out.write_all(&buf[..n]).map_err(Cut::Client)?;
        total += n as u64;
    }
    if total == 0 {
        // etcd always sends the database and its hash: nothing at all is no snapshot.
        return Err(Cut::Etcd(
            io::Error::new(io::ErrorKind::UnexpectedEof, "an empty snapshot stream"),
            0,
        ));
    }
    out.finish().map_err(Cut::Client)?;
    Ok(total)
}
