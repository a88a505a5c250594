//! Threads that read a service's stdout/stderr pipes and fan each line out to the console
//! and the log file.
//!
//! Lines are split at 8 KiB so a service that never prints a newline cannot grow memory
//! without bound; the console gets the bytes decoded lossily (invalid UTF-8 becomes U+FFFD),
//! the log file gets them unchanged. A reader lives until every writer of its pipe is gone,
//! which may be after the service's main process (a daemonized child still holding it).

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::logfile::LogStore;
use super::{ConsoleSink, LogSettings, emit};

pub(crate) const MAX_LINE: usize = 8 * 1024;

/// Where the lines of one stream go.
#[derive(Clone)]
pub(crate) struct LineSink {
    pub name: Arc<str>,
    pub settings: LogSettings,
    pub console: ConsoleSink,
    pub logs: Arc<LogStore>,
}

impl LineSink {
    fn line(&self, mut line: &[u8]) {
        if self.settings.file {
            self.logs.write_line(&self.name, line);
        }
        if self.settings.console {
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            let text = String::from_utf8_lossy(line);
            emit(&self.console, &format!("[{}] {text}", self.name));
        }
    }
}

/// Starts a thread pumping `pipe` (a read end) into `sink`.
pub(crate) fn spawn_reader(pipe: OwnedFd, sink: LineSink, stream: &str) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("{}-{stream}", sink.name))
        .spawn(move || pump(std::fs::File::from(pipe), &sink))
        .map(drop)
}

fn pump(mut input: impl Read, sink: &LineSink) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut splitter = Splitter::default();
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => splitter.feed(&buf[..n], |line| sink.line(line)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    splitter.finish(|line| sink.line(line));
}

/// Cuts a byte stream into lines of at most [`MAX_LINE`] bytes.
#[derive(Default)]
pub(crate) struct Splitter {
    partial: Vec<u8>,
    /// A line was just cut at MAX_LINE: a newline right after it ends that line rather than
    /// adding an empty one.
    cut: bool,
}

impl Splitter {
    pub(crate) fn feed(&mut self, mut data: &[u8], mut out: impl FnMut(&[u8])) {
        while !data.is_empty() {
            if std::mem::take(&mut self.cut)
                && let Some(rest) = data.strip_prefix(b"\n")
            {
                data = rest;
                continue;
            }
            let room = MAX_LINE - self.partial.len();
            let window = &data[..data.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    self.emit_with(&window[..pos], &mut out);
                    data = &data[pos + 1..];
                }
                None if window.len() == room => {
                    self.emit_with(window, &mut out);
                    data = &data[room..];
                    self.cut = true;
                }
                None => {
                    self.partial.extend_from_slice(window);
                    data = &[];
                }
            }
        }
    }

    pub(crate) fn finish(&mut self, mut out: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            out(&self.partial);
            self.partial.clear();
        }
    }

    fn emit_with(&mut self, tail: &[u8], out: &mut impl FnMut(&[u8])) {
        if self.partial.is_empty() {
            out(tail);
        } else {
            self.partial.extend_from_slice(tail);
            out(&self.partial);
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        let mut s = Splitter::default();
        for chunk in chunks {
            s.feed(chunk, |l| lines.push(l.to_vec()));
        }
        s.finish(|l| lines.push(l.to_vec()));
        lines
    }

    #[test]
    fn splits_lines_across_reads() {
        assert_eq!(
            split(&[b"ab", b"c\nde\n\nf", b"g"]),
            vec![
                b"abc".to_vec(),
                b"de".to_vec(),
                b"".to_vec(),
                b"fg".to_vec()
            ]
        );
    }

    #[test]
    fn long_lines_are_cut_without_losing_bytes() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut input = long.clone();
        input.extend_from_slice(b"\nend\n");
        let lines = split(&[&input[..100], &input[100..]]);
        assert_eq!(lines.len(), 4);
        assert!(lines[..3].iter().all(|l| l.len() <= MAX_LINE));
        assert_eq!(lines[..3].concat(), long);
        assert_eq!(lines[3], b"end");
        // A newline right at the cut point does not produce an extra empty line.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(split(&[&exact]), vec![vec![b'y'; MAX_LINE]]);
        let (a, b) = exact.split_at(MAX_LINE);
        assert_eq!(
            split(&[a, b, b"z"]),
            vec![vec![b'y'; MAX_LINE], b"z".to_vec()]
        );
    }

    #[test]
    fn pump_decodes_lossily_for_the_console() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let sink = LineSink {
            name: "svc".into(),
            settings: LogSettings {
                file: false,
                ..LogSettings::default()
            },
            console: Arc::new(move |l: &str| seen2.lock().unwrap().push(l.to_string())),
            logs: Arc::new(LogStore::new()),
        };
        pump(&b"ok\r\n\xff\xfe bad\n"[..], &sink);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                "[svc] ok".to_string(),
                "[svc] \u{fffd}\u{fffd} bad".to_string()
            ]
        );
    }
}
