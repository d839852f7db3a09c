//! The writer-scaling workload: writers that each append one event per durable append to
//! streams of their own, for a fixed time, timing every append. `annals bench --pg-scaling`
//! runs it with N processes on PostgreSQL and with N threads in one process on annals' file
//! store.
//!
//! ```
//! use std::time::Duration;
//! use annals_bench::{open_annals, scaling};
//!
//! let dir = tempfile::tempdir()?;
//! let sys = open_annals(dir.path())?;
//! let runs = scaling::write_threads(&sys, 2, 4, 100, Duration::from_millis(50))?;
//! assert_eq!(runs.len(), 2);
//! assert!(runs.iter().all(|r| r.appends > 0 && r.latencies.count() == r.appends));
//! # Ok::<(), annals_bench::BenchError>(())
//! ```

use std::collections::BTreeMap;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{BenchResult, Event, System};

/// Latencies of single appends, counted per whole microsecond (exact, and small: appends of
/// similar cost share their microsecond).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latencies {
    counts: BTreeMap<u64, u64>,
}

impl Latencies {
    /// Counts one append that took `d`.
    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        *self.counts.entry(micros).or_default() += 1;
    }

    /// Adds every latency of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        for (&us, &n) in &other.counts {
            *self.counts.entry(us).or_default() += n;
        }
    }

    /// How many appends were counted.
    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The latency below or at which a fraction `q` (0 to 1) of the appends took, in
    /// microseconds (nearest rank); `None` when nothing was counted.
    pub fn percentile_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (&us, &n) in &self.counts {
            seen += n;
            if seen >= rank {
                return Some(us);
            }
        }
        self.counts.keys().next_back().copied()
    }

    /// `(microseconds, appends)` pairs, in increasing latency (what [`WriterReport`] carries).
    pub fn pairs(&self) -> Vec<[u64; 2]> {
        self.counts.iter().map(|(&us, &n)| [us, n]).collect()
    }

    /// The latencies of [`Latencies::pairs`].
    pub fn from_pairs(pairs: &[[u64; 2]]) -> Latencies {
        let mut l = Latencies::default();
        for &[us, n] in pairs {
            *l.counts.entry(us).or_default() += n;
        }
        l
    }
}

/// What one writer did.
#[derive(Debug, Clone)]
pub struct WriterRun {
    /// The writer's number.
    pub writer: u32,
    /// Appends it made (one event each).
    pub appends: u64,
    /// From its start to the end of its last append.
    pub elapsed: Duration,
    /// How long each append took.
    pub latencies: Latencies,
}

impl WriterRun {
    /// Appends per second.
    pub fn rate(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The run as the one JSON line a writer process prints.
    pub fn report(&self) -> WriterReport {
        WriterReport {
            writer: self.writer,
            appends: self.appends,
            elapsed_secs: self.elapsed.as_secs_f64(),
            p50_us: self.latencies.percentile_us(0.50).unwrap_or(0),
            p99_us: self.latencies.percentile_us(0.99).unwrap_or(0),
            latency_us: self.latencies.pairs(),
        }
    }
}

/// A [`WriterRun`] as a writer process prints it (one JSON line on its standard output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriterReport {
    /// The writer's number.
    pub writer: u32,
    /// Appends it made (one event each).
    pub appends: u64,
    /// From its start to the end of its last append, in seconds.
    pub elapsed_secs: f64,
    /// Median latency of one append, in microseconds.
    pub p50_us: u64,
    /// 99th percentile latency of one append, in microseconds.
    pub p99_us: u64,
    /// Every latency, as `[microseconds, appends]` pairs.
    pub latency_us: Vec<[u64; 2]>,
}

impl WriterReport {
    /// The run this report describes (refused when its figures do not add up).
    pub fn run(&self) -> BenchResult<WriterRun> {
        let latencies = Latencies::from_pairs(&self.latency_us);
        if latencies.count() != self.appends {
            return Err(format!(
                "writer {} reported {} appends but {} latencies",
                self.writer,
                self.appends,
                latencies.count()
            )
            .into());
        }
        if !self.elapsed_secs.is_finite() || self.elapsed_secs < 0.0 {
            return Err(format!(
                "writer {} reported an elapsed time of {} s",
                self.writer, self.elapsed_secs
            )
            .into());
        }
        Ok(WriterRun {
            writer: self.writer,
            appends: self.appends,
            elapsed: Duration::from_secs_f64(self.elapsed_secs),
            latencies,
        })
    }
}

/// The name of writer `writer`'s stream number `j`.
pub fn writer_stream(writer: u32, j: u32) -> String {
    format!("writer{writer}-{j}")
}

/// Writer `writer` appends one event of `payload` bytes per durable append ([`System::append`],
/// which reads the stream's version first), round robin over its own `streams` streams
/// ([`writer_stream`]), until `duration` has passed since it started.
pub fn write_for(
    sys: &dyn System,
    writer: u32,
    streams: u32,
    payload: usize,
    duration: Duration,
) -> BenchResult<WriterRun> {
    let names: Vec<String> = (0..streams.max(1))
        .map(|j| writer_stream(writer, j))
        .collect();
    let template = Event::new(payload);
    let mut latencies = Latencies::default();
    let mut appends = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        let event = Event {
            id: uuid::Uuid::now_v7(),
            ..template.clone()
        };
        let stream = &names[(appends % names.len() as u64) as usize];
        let t = Instant::now();
        sys.append(stream, std::slice::from_ref(&event))?;
        latencies.record(t.elapsed());
        appends += 1;
    }
    Ok(WriterRun {
        writer,
        appends,
        elapsed: start.elapsed(),
        latencies,
    })
}

/// [`write_for`] with `threads` writers (numbered from 0) in threads of this process, started
/// together.
pub fn write_threads(
    sys: &dyn System,
    threads: u32,
    streams: u32,
    payload: usize,
    duration: Duration,
) -> BenchResult<Vec<WriterRun>> {
    let barrier = Barrier::new(threads as usize);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|writer| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    write_for(sys, writer, streams, payload, duration)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "writer thread panicked")?)
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut l = Latencies::default();
        assert_eq!(l.percentile_us(0.5), None);
        for us in 1..=100 {
            l.record(Duration::from_micros(us));
        }
        assert_eq!(l.percentile_us(0.5), Some(50));
        assert_eq!(l.percentile_us(0.99), Some(99));
        assert_eq!(l.percentile_us(1.0), Some(100));
        let round = Latencies::from_pairs(&l.pairs());
        assert_eq!(round, l);
        l.merge(&round);
        assert_eq!(l.count(), 200);
        assert_eq!(l.percentile_us(0.5), Some(50));
    }

    #[test]
    fn a_report_must_add_up() {
        let mut r = WriterReport {
            writer: 3,
            appends: 2,
            elapsed_secs: 1.0,
            p50_us: 5,
            p99_us: 9,
            latency_us: vec![[5, 1], [9, 1]],
        };
        assert_eq!(r.run().unwrap().appends, 2);
        r.appends = 3;
        assert!(r.run().is_err());
    }
}
