//! The recent part of the index, in memory: what was committed since the last flush.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The ids of one part's consecutive frames, recorded as one entry: they are strictly
/// increasing and above every id stored before them (as time-ordered ids such as UUIDv7 are),
/// so the span `[first, last]` holds no other stored id of that time, and the id of the `k`-th
/// frame is found by reading the frames. Entered by `first` in a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdSpan {
    /// The last (largest) id.
    pub last: u128,
    /// Position of the first frame.
    pub position: u64,
    /// Number of frames (and ids).
    pub count: u32,
}

/// A run of consecutive versions of one stream stored in consecutive frames: the unit the index
/// records (one per stream per commit, merged with the previous run when they touch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    /// Version of the run's first event.
    pub first_version: u64,
    /// Position of the run's first frame.
    pub position: u64,
    /// Number of events.
    pub count: u32,
}

impl Run {
    pub fn end_version(&self) -> u64 {
        self.first_version + u64::from(self.count)
    }

    pub fn contains(&self, version: u64) -> bool {
        (self.first_version..self.end_version()).contains(&version)
    }
}

/// One stream's recent entries.
#[derive(Debug, Clone)]
pub(crate) struct MemStream {
    /// Internal id (the sidecar's key for the stream).
    pub id: u64,
    /// Number of events in the stream (its next version).
    pub count: u64,
    /// Runs committed since the last flush, in version order.
    pub runs: Vec<Run>,
    /// Position just after the last run's last frame (to merge a touching run).
    pub runs_end: u64,
}

/// What a commit adds for one stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAdd {
    pub run: Run,
    /// Position just after the run's last frame.
    pub end: u64,
}

/// A run of consecutive frames that share a category or an event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PosRun {
    /// Position of the run's first frame.
    pub position: u64,
    /// Number of frames.
    pub count: u32,
}

/// What a commit adds to a category's or a type's runs: `count` frames from `position`,
/// ending just before `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PosRunAdd {
    pub position: u64,
    pub count: u32,
    pub end: u64,
}

/// The recent runs of one category or event type.
#[derive(Debug, Clone, Default)]
pub(crate) struct PosRuns {
    /// In position order.
    pub runs: Vec<PosRun>,
    /// Position just after the last run's last frame (to merge a touching run).
    pub end: u64,
}

impl PosRuns {
    pub fn add(&mut self, add: PosRunAdd) {
        match self.runs.last_mut() {
            Some(last)
                if self.end == add.position
                    && u64::from(last.count) + u64::from(add.count) <= u64::from(u32::MAX) =>
            {
                last.count += add.count;
            }
            _ => self.runs.push(PosRun {
                position: add.position,
                count: add.count,
            }),
        }
        self.end = add.end;
    }
}

/// Everything committed since the last flush.
#[derive(Debug, Default)]
pub(crate) struct MemTable {
    pub streams: HashMap<Arc<str>, MemStream>,
    /// Runs by category (the stream-name prefix before the first `-`).
    pub categories: HashMap<Arc<str>, PosRuns>,
    /// Runs by event type.
    pub types: HashMap<Arc<str>, PosRuns>,
    /// Event id (as a big-endian integer) → position, for ids not recorded in a span.
    pub ids: HashMap<u128, u64>,
    /// First id → span, for parts whose ids were recorded as one span.
    pub id_spans: BTreeMap<u128, IdSpan>,
    /// Events recorded (to decide when to flush).
    pub events: u64,
}

impl MemTable {
    /// The span whose range holds `id`, if any (spans never overlap).
    pub fn span_around(&self, id: u128) -> Option<IdSpan> {
        let (_, span) = self.id_spans.range(..=id).next_back()?;
        (id <= span.last).then_some(*span)
    }

    /// Adds a run to the runs of `name` in `map`.
    pub fn add_pos_run(map: &mut HashMap<Arc<str>, PosRuns>, name: &str, add: PosRunAdd) {
        match map.get_mut(name) {
            Some(runs) => runs.add(add),
            None => {
                let mut runs = PosRuns::default();
                runs.add(add);
                map.insert(Arc::from(name), runs);
            }
        }
    }

    /// Records a run for a stream that is already in this table.
    pub fn add_run(stream: &mut MemStream, add: RunAdd) {
        // Versions may jump forward: those between were removed with their frames (a scavenge).
        assert!(
            add.run.first_version >= stream.count,
            "runs are added in version order"
        );
        stream.count = add.run.end_version();
        match stream.runs.last_mut() {
            Some(last)
                if stream.runs_end == add.run.position
                    && last.end_version() == add.run.first_version
                    && u64::from(last.count) + u64::from(add.run.count) <= u64::from(u32::MAX) =>
            {
                last.count += add.run.count;
            }
            _ => stream.runs.push(add.run),
        }
        stream.runs_end = add.end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touching_runs_merge_and_others_do_not() {
        let mut s = MemStream {
            id: 1,
            count: 0,
            runs: vec![],
            runs_end: 0,
        };
        let add = |first, position, count, end| RunAdd {
            run: Run {
                first_version: first,
                position,
                count,
            },
            end,
        };
        MemTable::add_run(&mut s, add(0, 4096, 2, 4296));
        MemTable::add_run(&mut s, add(2, 4296, 3, 4596));
        MemTable::add_run(&mut s, add(5, 9000, 1, 9100));
        assert_eq!(s.count, 6);
        assert_eq!(
            s.runs,
            vec![
                Run {
                    first_version: 0,
                    position: 4096,
                    count: 5
                },
                Run {
                    first_version: 5,
                    position: 9000,
                    count: 1
                }
            ]
        );
        assert!(s.runs[0].contains(4) && !s.runs[0].contains(5));
    }

    #[test]
    fn touching_position_runs_merge() {
        let mut runs = PosRuns::default();
        let add = |position, count, end| PosRunAdd {
            position,
            count,
            end,
        };
        runs.add(add(4096, 2, 4496));
        runs.add(add(4496, 1, 4696));
        runs.add(add(5000, 3, 5600));
        assert_eq!(
            runs.runs,
            vec![
                PosRun {
                    position: 4096,
                    count: 3
                },
                PosRun {
                    position: 5000,
                    count: 3
                }
            ]
        );
    }
}
