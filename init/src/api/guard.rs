//! What keeps the API up under abuse: a cap on connections per peer address beside the
//! global one, and a console for the server's notes that can never hold it up.
//!
//! The console is a 115200-baud serial line on most nodes: a flood of "refused" lines
//! written from the accept loop would stop it accepting (and compete with the services'
//! output for the console). So the server's threads only ever hand a line to a bounded queue
//! (never waiting: a full queue drops the line and counts it), one writer thread prints
//! them, and refusals (connections over a cap, failed handshakes) are rate-limited to one
//! line a second, with the number of the ones left out said on the next line.

use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Log;

/// Lines waiting for the console; more are dropped (and counted).
const QUEUE: usize = 64;
/// At most one refusal line per this long.
pub(crate) const REFUSAL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Refusals {
    last: Option<Instant>,
    /// Refusals not printed since `last`.
    suppressed: u64,
}

#[derive(Default)]
struct Counters {
    /// Lines dropped because the queue was full.
    dropped: AtomicU64,
    refusals: Mutex<Refusals>,
}

/// The server's notes for the console. Cheap to call from any thread; never blocks.
pub(crate) struct Notes {
    tx: Option<SyncSender<String>>,
    counters: Arc<Counters>,
}

impl Notes {
    /// Starts the writer thread, which calls `log` for each line. Without a thread (none
    /// could be made), lines are dropped: the API matters more than its notes.
    pub(crate) fn start(log: Log) -> Notes {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let writer = counters.clone();
        let tx = std::thread::Builder::new()
            .name("keel-api-log".into())
            .spawn(move || write_lines(&rx, &writer, log))
            .ok()
            .map(|_| tx);
        Notes { tx, counters }
    }

    /// A line for the console, unless the queue is full.
    pub(crate) fn line(&self, text: String) {
        let sent = match &self.tx {
            Some(tx) => match tx.try_send(text) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        if !sent {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A refused connection or failed handshake: printed at most once per
    /// [`REFUSAL_INTERVAL`], with how many were left out since the last one printed.
    pub(crate) fn refusal(&self, text: String) {
        let now = Instant::now();
        let suppressed = {
            let mut r = self
                .counters
                .refusals
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if r.last
                .is_some_and(|t| now.duration_since(t) < REFUSAL_INTERVAL)
            {
                r.suppressed += 1;
                return;
            }
            r.last = Some(now);
            std::mem::take(&mut r.suppressed)
        };
        if suppressed == 0 {
            self.line(text);
        } else {
            self.line(format!("{text} ({suppressed} more refusals not shown)"));
        }
    }
}

/// The writer thread: prints each line, then says how many were dropped; when quiet, says
/// how many refusals were left out since the last one printed.
fn write_lines(rx: &Receiver<String>, counters: &Counters, log: Log) {
    loop {
        match rx.recv_timeout(REFUSAL_INTERVAL) {
            Ok(line) => log(&line),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let dropped = counters.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            log(&format!(
                "api: {dropped} console lines dropped (the console is slower than the API)"
            ));
        }
        let left_out = {
            let mut r = counters
                .refusals
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let quiet = r.last.is_none_or(|t| t.elapsed() >= REFUSAL_INTERVAL);
            if quiet && r.suppressed > 0 {
                r.last = Some(Instant::now());
                std::mem::take(&mut r.suppressed)
            } else {
                0
            }
        };
        if left_out > 0 {
            log(&format!("api: {left_out} more refusals not shown"));
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// `max_connections` are open.
    All(usize),
    /// `max_per_peer` are open from this address.
    Peer(usize),
}

/// Connections open, in all and per peer address.
///
/// When a cap is reached, the oldest connection still in its TLS handshake (from the same
/// address for the per-peer cap) is closed to make room: behind QEMU's user network or any
/// NAT an operator shares its address with whoever holds sockets open, and a client of the
/// keel CA finishes its handshake in milliseconds, so it is the idle and garbage sockets that
/// lose their places. Connections past their handshake are never closed for a newer one.
#[derive(Default)]
pub(crate) struct Occupancy {
    inner: Mutex<Places>,
}

#[derive(Default)]
struct Places {
    next_id: u64,
    /// In the order they were taken; a few dozen at most.
    open: Vec<Place>,
}

struct Place {
    id: u64,
    peer: IpAddr,
    /// The socket, to close it if the place is given to a newer connection; `None` once the
    /// handshake is done (or if it could not be cloned: then it is never closed).
    evictable: Option<TcpStream>,
}

/// A place [`Occupancy::take`] gave: its id, and the peer whose unfinished handshake was
/// closed to make room, if one was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    pub(crate) id: u64,
    pub(crate) evicted: Option<IpAddr>,
}

impl Occupancy {
    /// Takes a place for a connection from `peer`, making room as described on the type.
    pub(crate) fn take(
        &self,
        peer: IpAddr,
        tcp: Option<TcpStream>,
        max: usize,
        per_peer: usize,
    ) -> Result<Taken, Full> {
        let mut places = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = places.open.iter().filter(|p| p.peer == peer).count();
        let mut evicted = None;
        if mine >= per_peer {
            evicted = Some(places.evict(|p| p.peer == peer).ok_or(Full::Peer(mine))?);
        } else if places.open.len() >= max {
            evicted = Some(places.evict(|_| true).ok_or(Full::All(places.open.len()))?);
        }
        places.next_id += 1;
        let id = places.next_id;
        places.open.push(Place {
            id,
            peer,
            evictable: tcp,
        });
        Ok(Taken { id, evicted })
    }

    /// The connection finished its handshake: it keeps its place until it ends.
    pub(crate) fn handshake_done(&self, id: u64) {
        let mut places = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(place) = places.open.iter_mut().find(|p| p.id == id) {
            place.evictable = None;
        }
    }

    /// Gives back a place [`take`](Self::take) gave (nothing if it was given to another).
    pub(crate) fn give_back(&self, id: u64) {
        let mut places = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        places.open.retain(|p| p.id != id);
    }

    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .len()
    }
}

impl Places {
    /// Closes the oldest connection matching `which` that is still in its handshake, and
    /// frees its place; its thread then fails its next read and ends.
    fn evict(&mut self, which: impl Fn(&Place) -> bool) -> Option<IpAddr> {
        let at = self
            .open
            .iter()
            .position(|p| p.evictable.is_some() && which(p))?;
        let place = self.open.remove(at);
        if let Some(tcp) = place.evictable {
            let _ = tcp.shutdown(Shutdown::Both);
        }
        Some(place.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static RECORDED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    fn record(line: &str) {
        RECORDED.lock().unwrap().push(line.to_owned());
    }

    /// The number in "N more refusals not shown", or 1 for a refusal line of its own.
    fn refusals_in(line: &str) -> u64 {
        let shown = u64::from(line.starts_with("refused "));
        let more = line
            .split_once(" more refusals not shown")
            .and_then(|(head, _)| {
                head.rsplit(' ')
                    .next()?
                    .trim_start_matches('(')
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        shown + more
    }

    #[test]
    fn refusals_are_rate_limited_and_counted() {
        let notes = Notes::start(record);
        for i in 0..500 {
            notes.refusal(format!("refused {i}"));
        }
        // Every refusal is accounted for, in a few lines: the first, then the count of the
        // rest once the writer sees a quiet second.
        let start = Instant::now();
        let lines = loop {
            let lines = RECORDED.lock().unwrap().clone();
            if lines.iter().map(|l| refusals_in(l)).sum::<u64>() == 500 {
                break lines;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{lines:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(lines.len() <= 10, "{} lines: {lines:?}", lines.len());
        assert_eq!(lines[0], "refused 0");
    }

    static STUCK: Mutex<()> = Mutex::new(());
    fn stuck_console(_line: &str) {
        drop(STUCK.lock());
    }

    #[test]
    fn a_console_that_never_returns_holds_up_nobody() {
        let held = STUCK.lock().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let notes = Notes::start(stuck_console);
            for i in 0..10_000 {
                notes.line(format!("line {i}"));
                notes.refusal(format!("refused {i}"));
            }
            let dropped = notes.counters.dropped.load(Ordering::Relaxed);
            let _ = done_tx.send(dropped);
        });
        let dropped = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("writing notes waited for the console");
        // The queue holds QUEUE lines and the writer one more; the rest were dropped.
        assert!(dropped >= 10_000 - QUEUE as u64 - 2, "{dropped}");
        drop(held);
    }

    #[test]
    fn places_are_capped_in_all_and_per_peer() {
        let open = Occupancy::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        // Connections past their handshake (none evictable) are never displaced.
        let a1 = open.take(a, None, 3, 2).unwrap();
        assert_eq!(a1.evicted, None);
        open.take(a, None, 3, 2).unwrap();
        assert_eq!(open.take(a, None, 3, 2), Err(Full::Peer(2)));
        let b1 = open.take(b, None, 3, 2).unwrap();
        assert_eq!(open.take(b, None, 3, 2), Err(Full::All(3)));
        open.give_back(a1.id);
        open.take(b, None, 3, 2).unwrap();
        assert_eq!(open.take(a, None, 3, 2), Err(Full::All(3)));
        open.give_back(b1.id);
        open.give_back(b1.id); // twice: nothing more
        assert_eq!(open.open(), 2);
    }

    /// A connected socket pair on loopback: (the server's end, the client's end).
    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener.accept().unwrap().0, client)
    }

    #[test]
    fn the_oldest_unfinished_handshake_makes_room() {
        use std::io::Read;
        let open = Occupancy::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let (server1, mut client1) = socket_pair();
        let (server2, _client2) = socket_pair();
        let (server3, _client3) = socket_pair();
        let first = open.take(a, Some(server1), 3, 2).unwrap();
        let second = open.take(a, Some(server2), 3, 2).unwrap();
        open.handshake_done(second.id);
        // Per peer: a's oldest unfinished handshake (the first) is closed for the third.
        let third = open.take(a, Some(server3), 3, 2).unwrap();
        assert_eq!(third.evicted, Some(a));
        let mut byte = [0u8; 1];
        assert_eq!(client1.read(&mut byte).unwrap(), 0, "the first was closed");
        open.give_back(first.id); // its thread ending: the place is already gone
        assert_eq!(open.open(), 2);
        // In all: b takes the last place, then another b displaces a's unfinished third.
        open.take(b, None, 3, 2).unwrap();
        let fourth = open.take(b, None, 3, 2).unwrap();
        assert_eq!(fourth.evicted, Some(a));
        // Only finished handshakes are left: the cap holds.
        assert_eq!(open.take(b, None, 3, 2), Err(Full::Peer(2)));
        assert_eq!(open.take(a, None, 3, 2), Err(Full::All(3)));
    }
}
