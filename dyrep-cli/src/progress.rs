//! Progress and logging of `dyrep train`: an indicatif bar on a terminal
//! (epoch, step, loss, accuracy, images/s, ETA), plain periodic lines when stderr is not a
//! terminal (CI, pipes), nothing but errors with `-q`; tracing events of the runtime on stderr
//! with `-v` (info) / `-vv` (debug). The run's own log lines go to stdout and `run.log`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use dyrep_runtime::train::TrainProgress;

/// How much the CLI prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose(u8),
}

/// Installs the tracing subscriber for `-v` / `-vv` (stderr; nothing otherwise).
pub fn init_tracing(v: Verbosity) {
    let level = match v {
        Verbosity::Verbose(1) => tracing::Level::INFO,
        Verbosity::Verbose(_) => tracing::Level::DEBUG,
        _ => return,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Plain lines this often when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// Draws `TrainProgress` events.
pub struct TrainReporter {
    verbosity: Verbosity,
    bar: Option<ProgressBar>,
    terminal: bool,
    epoch: usize,
    epochs: usize,
    steps: usize,
    started: Instant,
    last_plain: Instant,
}

impl TrainReporter {
    pub fn new(verbosity: Verbosity) -> Self {
        Self::with_terminal(verbosity, std::io::stderr().is_terminal())
    }

    pub fn with_terminal(verbosity: Verbosity, terminal: bool) -> Self {
        let now = Instant::now();
        TrainReporter {
            verbosity,
            bar: None,
            terminal,
            epoch: 0,
            epochs: 0,
            steps: 0,
            started: now,
            last_plain: now,
        }
    }

    fn line(&self, s: &str) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.suspend(|| {
                let _ = writeln!(std::io::stdout().lock(), "{s}");
            }),
            None => {
                let _ = writeln!(std::io::stdout().lock(), "{s}");
            }
        }
    }

    pub fn report(&mut self, p: TrainProgress<'_>) {
        match p {
            TrainProgress::Line(s) => self.line(s),
            TrainProgress::EpochStart {
                epoch,
                epochs,
                steps,
            } => {
                self.epoch = epoch;
                self.epochs = epochs;
                self.steps = steps;
                self.started = Instant::now();
                self.last_plain = self.started;
                if self.terminal && self.verbosity != Verbosity::Quiet {
                    let bar = ProgressBar::with_draw_target(
                        Some(steps as u64),
                        ProgressDrawTarget::stderr_with_hz(8),
                    );
                    let style = ProgressStyle::with_template(
                        "epoch {prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                    bar.set_style(style);
                    bar.set_prefix(format!("{epoch}/{epochs}"));
                    self.bar = Some(bar);
                }
            }
            TrainProgress::Step {
                step,
                loss,
                acc,
                images_per_sec,
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(step as u64);
                    bar.set_message(format!(
                        "loss {loss:.4} acc {acc:.4} {images_per_sec:.0} img/s"
                    ));
                } else if self.verbosity != Verbosity::Quiet
                    && self.last_plain.elapsed() >= PLAIN_EVERY
                    && step < self.steps
                {
                    self.last_plain = Instant::now();
                    let per_step = self.started.elapsed().as_secs_f64() / step.max(1) as f64;
                    let eta = per_step * (self.steps - step) as f64;
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "epoch {}/{} step {step}/{}  loss {loss:.4} acc {acc:.4}  {images_per_sec:.0} img/s  ETA {eta:.0}s",
                        self.epoch, self.epochs, self.steps
                    );
                }
            }
            TrainProgress::EpochTrained => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
            }
        }
    }
}

impl Drop for TrainReporter {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
