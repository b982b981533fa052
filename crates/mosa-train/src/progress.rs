//! Progress: a bar with ETA and the running loss on a terminal; one plain line per epoch
//! otherwise (CI, logs).

use std::io::IsTerminal;

use crate::metrics::EpochMetrics;

pub trait Reporter {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _steps: usize) {}
    fn step(&mut self, _done: usize, _running_loss: f64) {}
    fn epoch_end(&mut self, _m: &EpochMetrics) {}
    fn message(&mut self, _s: &str) {}
}

/// Reports nothing.
pub struct Silent;
impl Reporter for Silent {}

pub struct Console {
    bar: Option<indicatif::ProgressBar>,
    terminal: bool,
    epochs: usize,
    /// `epoch/epochs` of the running bar.
    label: String,
    prefix: String,
    /// Printed before the first report: a run refused by its checks prints only its error.
    header: Option<String>,
}

impl Console {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { bar: None, terminal: std::io::stderr().is_terminal(), epochs: 0, label: String::new(), prefix: prefix.into(), header: None }
    }

    /// A line to print once, before the first report.
    pub fn with_header(mut self, line: impl Into<String>) -> Self {
        self.header = Some(line.into());
        self
    }

    fn flush_header(&mut self) {
        if let Some(h) = self.header.take() {
            say(&h);
        }
    }
}

/// A progress line on stderr. Progress is information, not a result: a stderr that cannot be
/// written (`2> /dev/full`) loses the lines, not the run.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn pct(v: Option<f64>) -> String {
    v.map(|a| format!("{:.2}%", 100.0 * a)).unwrap_or_else(|| "-".into())
}

impl Reporter for Console {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize) {
        self.flush_header();
        self.epochs = epochs;
        self.label = format!("{epoch}/{epochs}");
        if self.terminal {
            let bar = indicatif::ProgressBar::new(steps as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix} epoch {msg} [{bar:30}] {pos}/{len} steps, {elapsed} < {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(self.prefix.clone());
            bar.set_message(self.label.clone());
            self.bar = Some(bar);
        }
    }
    fn step(&mut self, done: usize, running_loss: f64) {
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            b.set_message(format!("{} loss {running_loss:.4}", self.label));
        }
    }
    fn epoch_end(&mut self, m: &EpochMetrics) {
        self.flush_header();
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        say(&format!(
            "{}epoch {}/{} lr {:.2e} loss {:.4} train {} val {} test {} | train {:.1} img/s, {}{:.1} s",
            if self.prefix.is_empty() { String::new() } else { format!("{} ", self.prefix) },
            m.epoch,
            self.epochs,
            m.lr,
            m.train_loss,
            pct(Some(m.train_acc)),
            pct(m.val_acc),
            pct(m.test_acc),
            m.train_images_per_second,
            if m.eval_seconds > 0.0 { format!("eval {:.1} img/s, ", m.eval_images_per_second) } else { String::new() },
            m.train_seconds + m.eval_seconds
        ));
    }
    fn message(&mut self, s: &str) {
        self.flush_header();
        match &self.bar {
            Some(b) => b.println(s),
            None => say(s),
        }
    }
}
