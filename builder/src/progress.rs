//! Progress reporting: indicatif bars and spinners when stderr is a terminal, one plain line
//! per phase otherwise (CI logs), nothing with `--quiet`; details with `-v`, the tools run
//! with `-vv`. Phases may run at the same time on several threads (a build writes the disk
//! and the update bundle side by side): on a terminal their bars share one `MultiProgress`,
//! and lines are printed through it so that they never tear a bar.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Quiet,
    Plain,
    Terminal,
}

/// How much to say (`-q`, default, `-v`, `-vv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
    Debug,
}

#[derive(Debug, Clone)]
pub struct Reporter {
    mode: Mode,
    verbosity: Verbosity,
    /// The terminal's bars (Terminal mode only); clones share it.
    bars: Option<MultiProgress>,
}

impl Reporter {
    pub fn new(quiet: bool) -> Self {
        Reporter::with_verbosity(if quiet {
            Verbosity::Quiet
        } else {
            Verbosity::Normal
        })
    }

    pub fn with_verbosity(verbosity: Verbosity) -> Self {
        let mode = if verbosity == Verbosity::Quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Plain
        };
        let bars = (mode == Mode::Terminal).then(MultiProgress::new);
        Reporter {
            mode,
            verbosity,
            bars,
        }
    }

    pub fn quiet() -> Self {
        Reporter {
            mode: Mode::Quiet,
            verbosity: Verbosity::Quiet,
            bars: None,
        }
    }

    /// A line shown with `-v`: what went in, what was checked.
    pub fn detail(&self, text: &str) {
        if self.verbosity >= Verbosity::Verbose {
            print_line(self.bars.as_ref(), text);
        }
    }

    /// A line shown with `-vv`: the tools run and their arguments.
    pub fn debug(&self, text: &str) {
        if self.verbosity >= Verbosity::Debug {
            print_line(self.bars.as_ref(), text);
        }
    }

    /// Starts a phase; `total` bytes when the work is measurable, for a bar.
    pub fn phase(&self, name: &str, total: Option<u64>) -> Phase {
        // Added to the terminal's bars (there are some only on a terminal) before it is
        // styled or ticks, so that it is never drawn outside them.
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(match total {
                Some(total) => ProgressBar::new(total),
                None => ProgressBar::new_spinner(),
            });
            bar.set_style(match total {
                Some(_) => ProgressStyle::with_template(
                    "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
                None => ProgressStyle::with_template("{prefix:>12} {spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            });
            bar.set_prefix(name.to_owned());
            if total.is_none() {
                bar.enable_steady_tick(Duration::from_millis(120));
            }
            bar
        });
        Phase {
            name: name.to_owned(),
            mode: self.mode,
            bar,
            bars: self.bars.clone(),
            started: Instant::now(),
        }
    }

    /// A line of information outside any phase.
    pub fn note(&self, text: &str) {
        if self.mode != Mode::Quiet {
            print_line(self.bars.as_ref(), text);
        }
    }
}

pub struct Phase {
    name: String,
    mode: Mode,
    bar: Option<ProgressBar>,
    bars: Option<MultiProgress>,
    started: Instant,
}

impl Phase {
    pub fn set_position(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    pub fn message(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.to_owned());
        }
    }

    /// Ends the phase with a one-line summary.
    pub fn finish(self, summary: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        match self.mode {
            Mode::Quiet => {}
            Mode::Plain => eprintln!("{:>12} {summary} ({secs:.1}s)", self.name),
            Mode::Terminal => {
                if let Some(bar) = &self.bar {
                    bar.finish_and_clear();
                    if let Some(bars) = &self.bars {
                        bars.remove(bar);
                    }
                }
                print_line(
                    self.bars.as_ref(),
                    &format!("{:>12} {summary} ({secs:.1}s)", self.name),
                );
            }
        }
    }
}

/// One line on stderr, above the bars when there are any.
fn print_line(bars: Option<&MultiProgress>, text: &str) {
    match bars {
        // The bars are cleared while the line is printed and drawn again below it.
        Some(bars) => bars.suspend(|| eprintln!("{text}")),
        None => eprintln!("{text}"),
    }
}

/// `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
