//! Logging setup and the small statistics weir reports.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tracing::debug;
use tracing_subscriber::EnvFilter;

use crate::config::Choice;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Choice for LogFormat {
    const ALL: &'static [Self] = &[LogFormat::Text, LogFormat::Json];

    fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    fn help(self) -> Option<&'static str> {
        Some(match self {
            LogFormat::Text => "For people: one line per event, colored on a terminal",
            LogFormat::Json => "For log pipelines: one JSON object per line",
        })
    }
}

/// Logs go to stderr (stdout is for output meant for people and scripts),
/// colored only on a terminal so log files stay greppable.
/// `RUST_LOG` overrides the default filter. The default silences the Delta
/// kernel's "No files in log segment" error, which it logs when opening an
/// empty table location although the open succeeds, and keeps only errors of
/// delta-rs's commit: it warns whenever another writer committed first ("checking
/// for conflicts", "will retry"), which merges beside ingest make routine (289
/// warnings in a 40-minute soak); a commit that fails reaches weir's own log.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(
            "warn,weir=info,buoyant_kernel=off,deltalake_core::kernel::transaction=error",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Progress of long work: a bar on a terminal, debug log lines otherwise (the
/// work logs its own milestones).
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar of `len` steps, counted in `unit`.
    pub fn new(len: usize, unit: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = ProgressBar::new(len as u64);
        let template = format!("{{bar:30}} {{pos}}/{{len}} {unit} {{msg}}");
        bar.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self(Some(bar))
    }

    /// Shows `message` as the current state without counting a step.
    pub fn note(&self, message: String) {
        match &self.0 {
            Some(bar) => bar.set_message(message),
            None => debug!(progress = message),
        }
    }

    /// Counts a step done, showing `message`.
    pub fn advance(&self, message: String) {
        self.note(message);
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// A duration in milliseconds, as logs and reports print them.
pub fn ms(took: Duration) -> f64 {
    took.as_secs_f64() * 1e3
}

/// The `q`-quantile (0.0–1.0) of `samples` by nearest rank; `None` when empty.
pub fn quantile(samples: &[Duration], q: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let ms: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(quantile(&ms, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&ms, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&ms, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
