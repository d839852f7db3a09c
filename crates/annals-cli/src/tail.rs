//! `annals tail`: the last events of a store, and with `-f` every new one as it is committed,
//! while the store's program runs.
//!
//! It opens the store read-only. When a writer holds the store, the open follows it (see
//! `StoreBuilder::read_only`): only commits the writer made durable are printed, whole and in
//! log order. When none does, the store is opened for a moment at each look (every 200 ms),
//! so that the program can start and take the store at any time; from then on `tail`
//! follows it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use annals::{Direction, Position, RecordedEvent, category_of};

use crate::exit::CliResult;
use crate::inspect::{event_json, open_read_only};

/// Options of `annals tail`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Prints the last events as JSON lines (as `annals dump` does); with -f, goes on printing each
new event once its writer has made it durable, until interrupted. It never blocks the program
that writes the store.

Examples:
  annals tail shop.annals
  annals tail -f shop.annals
  annals tail -f -n 0 shop.annals --category order | jq .payload"
)]
pub struct TailArgs {
    /// The store.
    pub store: PathBuf,
    /// Follow: print new events as they are committed.
    #[arg(short, long)]
    pub follow: bool,
    /// How many of the last events to print first.
    #[arg(short = 'n', long = "lines", default_value_t = 10)]
    pub lines: usize,
    /// Only this stream.
    #[arg(long, conflicts_with_all = ["category", "event_type"])]
    pub stream: Option<String>,
    /// Only streams of this category (`CATEGORY` and `CATEGORY-…`).
    #[arg(long)]
    pub category: Option<String>,
    /// Only events of this type.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Include the engine's own `$` streams.
    #[arg(long)]
    pub system: bool,
}

impl TailArgs {
    fn wants(&self, e: &RecordedEvent) -> bool {
        (self.system || !e.stream().starts_with('$'))
            && self.stream.as_deref().is_none_or(|s| e.stream() == s)
            && self
                .category
                .as_deref()
                .is_none_or(|c| category_of(e.stream()) == c)
            && self
                .event_type
                .as_deref()
                .is_none_or(|t| e.event_type() == t)
    }
}

/// How often `tail -f` looks for new events.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// Runs `annals tail`.
pub fn tail(args: TailArgs) -> CliResult {
    let mut out = std::io::stdout().lock();
    let mut store = open_read_only(&args.store)?;
    // The last events: read backwards over the whole log (the engine's records included, so
    // that `next` lies past everything read).
    let mut last = Vec::new();
    let mut next = Position::START;
    for e in store.read_log(Position::END, Direction::Backwards, usize::MAX)? {
        let e = e?;
        if next == Position::START {
            next = e.next_position();
        }
        if last.len() == args.lines {
            break;
        }
        if args.wants(&e) {
            last.push(e);
        }
    }
    last.reverse();
    if !print(&mut out, &last)? {
        return Ok(ExitCode::SUCCESS);
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let mut batch = Vec::new();
        for e in store.read_log(next, Direction::Forwards, 10_000)? {
            let e = e?;
            next = e.next_position();
            if args.wants(&e) {
                batch.push(e);
            }
        }
        if !print(&mut out, &batch)? {
            return Ok(ExitCode::SUCCESS);
        }
        if store.follows_writer() {
            if batch.is_empty() {
                std::thread::sleep(LOOK_EVERY);
            }
        } else {
            // Nobody writes while this handle keeps the store: let a writer in, look again.
            drop(store);
            std::thread::sleep(LOOK_EVERY);
            store = open_read_only(&args.store)?;
        }
    }
}

/// Prints events, one JSON line each, and flushes; `false` once the reader has gone (a closed
/// pipe ends `tail` quietly).
fn print(out: &mut impl Write, events: &[RecordedEvent]) -> CliResult<bool> {
    for e in events {
        if let Err(e) = writeln!(out, "{}", event_json(e)) {
            return broken_pipe(e);
        }
    }
    match out.flush() {
        Err(e) => broken_pipe(e),
        Ok(()) => Ok(true),
    }
}

fn broken_pipe(e: std::io::Error) -> CliResult<bool> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(false)
    } else {
        Err(e.into())
    }
}
