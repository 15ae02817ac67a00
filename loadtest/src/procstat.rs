//! CPU time and peak memory of a process, read from `/proc/<pid>`.

use anyhow::{Context, Result, bail};
use std::time::Instant;

/// One reading of a process's resource use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcSample {
    /// When the reading was taken.
    pub at: Instant,
    /// User plus system CPU time so far, in seconds.
    pub cpu_seconds: f64,
    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub peak_rss_bytes: u64,
    /// Current resident set size (`VmRSS`), in bytes.
    pub rss_bytes: u64,
}

/// Clock ticks per second used by `/proc/<pid>/stat`.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Parses utime + stime (fields 14 and 15) from the text of `/proc/<pid>/stat`, in ticks.
pub fn parse_stat_ticks(stat: &str) -> Result<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("no ')' in /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    let utime: u64 = fields
        .get(11)
        .context("stat too short")?
        .parse()
        .context("utime")?;
    let stime: u64 = fields
        .get(12)
        .context("stat too short")?
        .parse()
        .context("stime")?;
    Ok(utime + stime)
}

/// Reads a `kB` value such as `VmHWM:   1234 kB` from the text of `/proc/<pid>/status`, in bytes.
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = value.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// Reads the CPU time and memory of `pid` now.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let ticks = parse_stat_ticks(&stat)?;
    Ok(ProcSample {
        at,
        cpu_seconds: ticks as f64 / clock_ticks(),
        peak_rss_bytes: parse_status_kb(&status, "VmHWM").unwrap_or(0),
        rss_bytes: parse_status_kb(&status, "VmRSS").unwrap_or(0),
    })
}

/// The readings of several processes added up (CPU time and memory; the latest time), or
/// `None` if any is missing.
pub fn sum(samples: &[Option<ProcSample>]) -> Option<ProcSample> {
    let mut total: Option<ProcSample> = None;
    for sample in samples {
        let s = (*sample)?;
        total = Some(match total {
            None => s,
            Some(t) => ProcSample {
                at: t.at.max(s.at),
                cpu_seconds: t.cpu_seconds + s.cpu_seconds,
                peak_rss_bytes: t.peak_rss_bytes + s.peak_rss_bytes,
                rss_bytes: t.rss_bytes + s.rss_bytes,
            },
        });
    }
    total
}

/// Fails unless `pid` names a running process.
pub fn check_alive(pid: u32) -> Result<()> {
    if std::path::Path::new(&format!("/proc/{pid}/stat")).exists() {
        Ok(())
    } else {
        bail!("no process with pid {pid}")
    }
}

/// CPU time of the calling thread so far, in seconds.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass and nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU time of this whole process so far (all threads), in seconds.
pub fn own_cpu_seconds() -> f64 {
    sample(std::process::id())
        .map(|s| s.cpu_seconds)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat).ok(), Some(325));
    }

    #[test]
    fn parses_status_kb() {
        let status = "Name:\tcascade\nVmHWM:\t   2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(2048 * 1024));
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(1024 * 1024));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn sums_samples() {
        let at = Instant::now();
        let one = ProcSample {
            at,
            cpu_seconds: 1.5,
            peak_rss_bytes: 10,
            rss_bytes: 5,
        };
        let two = ProcSample {
            cpu_seconds: 2.0,
            ..one
        };
        let both = sum(&[Some(one), Some(two)]).expect("both present");
        assert_eq!(both.cpu_seconds, 3.5);
        assert_eq!(both.peak_rss_bytes, 20);
        assert_eq!(both.rss_bytes, 10);
        assert!(sum(&[Some(one), None]).is_none());
        assert!(sum(&[]).is_none());
    }

    #[test]
    fn samples_self() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.cpu_seconds >= 0.0);
        assert!(s.peak_rss_bytes > 0);
        assert!(thread_cpu_seconds() >= 0.0);
    }
}
