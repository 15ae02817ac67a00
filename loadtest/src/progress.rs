//! The live view of a run: a progress bar on a terminal, a line every few seconds otherwise.

use crate::stats::Point;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds between plain progress lines when stderr is not a terminal.
const PLAIN_EVERY: u64 = 5;

/// Shows joined devices, packets per second, loss and the focus's CPU while a run goes.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    ticks: AtomicU64,
}

impl Progress {
    /// A progress display for `total` devices; nothing at all when `enabled` is false.
    pub fn new(enabled: bool, total: u64) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (enabled && terminal).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:24.cyan/blue}] {pos}/{len} joined  {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self {
            bar,
            plain: enabled && !terminal,
            ticks: AtomicU64::new(0),
        }
    }

    fn line(failed: usize, point: &Point, phase: &str) -> String {
        let focus = point
            .focus_cpu_pct
            .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.0}%"));
        format!(
            "{phase}  failed {failed}  rx {:.0} pkt/s ({:.1} Mb/s)  loss {:.2}%  focus cpu {focus}  loadgen cpu {:.0}%",
            point.audio_pps + point.video_pps,
            point.rx_mbps,
            point.loss_pct,
            point.loadgen_cpu_pct
        )
    }

    /// Shows one sampling.
    pub fn update(&self, joined: u64, failed: usize, point: &Point, phase: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position(joined);
            bar.set_message(Self::line(failed, point, phase));
        } else if self.plain
            && self
                .ticks
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(PLAIN_EVERY)
        {
            eprintln!(
                "[{:>5.0}s] {joined} joined  {}",
                point.t,
                Self::line(failed, point, phase)
            );
        }
    }

    /// Prints a line above the bar.
    pub fn println(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if self.plain => eprintln!("{text}"),
            None => {}
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
