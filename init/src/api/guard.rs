//! What keeps the API up under abuse: a cap on connections per peer address beside the
//! global one, and a console for the server's notes that can never hold it up.
//!
//! The console is a 115200-baud serial line on most nodes: a flood of "refused" lines
//! written from the accept loop would stop it accepting (and compete with the services'
//! output for the console). So the server's threads only ever hand a line to a bounded queue
//! (never waiting: a full queue drops the line and counts it), one writer thread prints
//! them, and refusals (connections over a cap, failed handshakes) are rate-limited to one
//! line a second, with the number of the ones left out said on the next line.

use std::collections::HashMap;
use std::net::IpAddr;
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
#[derive(Default)]
pub(crate) struct Occupancy {
    inner: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Occupancy {
    /// Takes a place for a connection from `peer`, if both caps allow it.
    pub(crate) fn take(&self, peer: IpAddr, max: usize, per_peer: usize) -> Result<(), Full> {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, peers) = &mut *guard;
        if *total >= max {
            return Err(Full::All(*total));
        }
        let mine = peers.entry(peer).or_insert(0);
        if *mine >= per_peer {
            return Err(Full::Peer(*mine));
        }
        *mine += 1;
        *total += 1;
        Ok(())
    }

    /// Gives back a place [`take`](Self::take) gave.
    pub(crate) fn give_back(&self, peer: IpAddr) {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, peers) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(mine) = peers.get_mut(&peer) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                peers.remove(&peer);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).0
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
        assert_eq!(open.take(a, 3, 2), Ok(()));
        assert_eq!(open.take(a, 3, 2), Ok(()));
        assert_eq!(open.take(a, 3, 2), Err(Full::Peer(2)));
        assert_eq!(open.take(b, 3, 2), Ok(()));
        assert_eq!(open.take(b, 3, 2), Err(Full::All(3)));
        open.give_back(a);
        assert_eq!(open.take(b, 3, 2), Ok(()));
        assert_eq!(open.take(a, 3, 2), Err(Full::All(3)));
        for peer in [a, b, b] {
            open.give_back(peer);
        }
        assert_eq!(open.open(), 0);
        assert_eq!(open.take(a, 3, 2), Ok(()));
    }
}
