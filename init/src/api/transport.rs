//! The connection under the request handling: the TCP socket with its deadlines, and the
//! TLS stream over it, as one [`Transport`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use rustls::{ServerConnection, StreamOwned};

/// The TCP socket under TLS: a deadline for the handshake and the request head, an idle
/// timeout for every read and write, and timeouts reported as `TimedOut` (the kernel says
/// `WouldBlock`, which rustls would take for a non-blocking socket).
pub(crate) struct Socket {
    pub(super) tcp: TcpStream,
    pub(super) deadline: Option<Instant>,
    idle: Duration,
}

impl Socket {
    pub(crate) fn new(
        tcp: TcpStream,
        deadline: Option<Instant>,
        idle: Duration,
    ) -> io::Result<Self> {
        tcp.set_write_timeout(Some(idle))?;
        Ok(Socket {
            tcp,
            deadline,
            idle,
        })
    }
}

fn timed_out(e: io::Error) -> io::Error {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        io::Error::new(io::ErrorKind::TimedOut, "timed out waiting for the client")
    } else {
        e
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = match self.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(timed_out(io::ErrorKind::TimedOut.into()));
                }
                left.min(self.idle)
            }
            None => self.idle,
        };
        self.tcp.set_read_timeout(Some(timeout))?;
        self.tcp.read(buf).map_err(timed_out)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf).map_err(timed_out)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A connection as the request handling sees it: plain TCP in the HTTP tests, TLS on nodes.
pub(crate) trait Transport: Read + Write {
    fn set_deadline(&mut self, deadline: Option<Instant>);
    /// Ends our direction (the response is complete) while reads still work. Idempotent.
    fn close_write(&mut self);
}

impl Transport for Socket {
    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }
    fn close_write(&mut self) {
        let _ = self.tcp.shutdown(Shutdown::Write);
    }
}

impl Transport for StreamOwned<ServerConnection, Socket> {
    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.sock.deadline = deadline;
    }
    fn close_write(&mut self) {
        self.conn.send_close_notify();
        while self.conn.wants_write() {
            if !matches!(self.conn.write_tls(&mut self.sock), Ok(n) if n > 0) {
                break;
            }
        }
        self.sock.close_write();
    }
}
