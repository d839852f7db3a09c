//! `annals export` and `annals import`: a portable JSON-lines form of a store's events.
//!
//! The file is JSON lines, gzip-compressed when its name ends in `.gz` (or with `--gzip`):
//!
//! 1. a header `{"annals_export": 2, "store_id": ..., "format_version": ..., "exported_at": ...,
//!    "engine_records": true}`;
//! 2. one line per event, in log order, with everything needed to recreate it exactly:
//!    `position` (in the exported store), `stream`, `version`, `id`, `type`, `schema_version`, `timestamp_nanos`,
//!    `correlation_id`, `causation_id`, `published`, `encoding`, and the payload and metadata
//!    bytes, as text (`payload_text`) when they are UTF-8, else base64 (`payload_base64`);
//! 3. a trailer `{"annals_export_end": true, "events": N}` (an export without it was cut short
//!    and is refused).
//!
//! The engine's own `$` streams are exported too (unless `--events-only`): catch-up checkpoints,
//! outbox progress and parked events, snapshots, command-relay markers and unique claims, so a
//! restored store continues exactly where the original stopped. Their positions are those of
//! the exported store; import rewrites each one
//! ([`annals::records::map_positions`]) to the position the same event has in the store
//! it imports into: a resume point after event E becomes the position after E's copy, and a
//! reference to event E becomes the position of E's copy.
//!
//! Either side may be a PostgreSQL database instead of a store file: name it
//! `postgresql://…` (or `postgres://…`), or `pg:` followed by a libpq connection string
//! (`pg:host=/run/postgresql dbname=shop`). The file is the same; positions are renumbered
//! monotonically on the way in (the database counts events, the file store counts bytes)
//! and the engine's records follow their events, so a store moves to PostgreSQL and back
//! with every event's id, type, stream version, timestamp, metadata and payload identical.
//!
//! Import appends each event with the expected version its stream version implies, so it
//! refuses to mix into streams that went elsewhere, and keeps event ids, which makes it
//! idempotent: importing the same file again writes nothing. Files of format 1 (events only,
//! no positions) still import.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use annals::backend::{Backend, Part};
use annals::pg::PgStore;
use annals::records::{self, PositionRole};
use annals::{
    Direction, Durability, ExpectedVersion, NewEvent, PayloadEncoding, Position, RecordedEvent,
    Store,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::exit::{CliError, CliResult, ERROR, NOT_A_STORE};
use crate::inspect::{encoding_name, open_read_only};
use crate::progress::progress;

/// Version of the export format: 2 adds each event's `position` and the engine's records.
const EXPORT_VERSION: u32 = 2;
/// The longest line import reads (an event is at most 64 MiB; base64 and JSON add a third).
const MAX_LINE: u64 = 96 << 20;
/// Events per import append (consecutive events of one stream).
const IMPORT_BATCH: usize = 1000;
/// Events per read of an export.
const EXPORT_PAGE: usize = 10_000;

/// The other side of an export or an import: a store file or a PostgreSQL database.
enum Place {
    File(Store),
    Pg(PgStore),
}

/// The PostgreSQL connection string `arg` names, if it names one (`postgres://…`,
/// `postgresql://…` or `pg:CONNECTION-STRING`).
fn postgres_url(arg: &Path) -> Option<String> {
    let s = arg.to_str()?;
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Some(s.to_owned())
    } else {
        s.strip_prefix("pg:").map(str::to_owned)
    }
}

fn connect(url: &str) -> CliResult<PgStore> {
    PgStore::connect(url).map_err(|e| CliError::new(NOT_A_STORE, e.to_string()))
}

impl Place {
    fn backend(&self) -> &dyn Backend {
        match self {
            Place::File(s) => s,
            Place::Pg(s) => s,
        }
    }

    fn start_stream_at(&self, stream: &str, version: u64) -> annals::Result<()> {
        match self {
            Place::File(s) => s.start_stream_at(stream, version),
            Place::Pg(s) => s.start_stream_at(stream, version),
        }
    }

    /// Makes what was written durable (a file store imports without a sync per append).
    fn close(self) -> annals::Result<()> {
        match self {
            Place::File(s) => s.close(),
            Place::Pg(_) => Ok(()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    annals_export: u32,
    store_id: String,
    format_version: u32,
    exported_at: String,
    /// Whether the engine's `$` records are in the file (format 2).
    #[serde(default)]
    engine_records: bool,
    /// Where it was exported from: `file` or `postgresql`.
    #[serde(default = "file_backend")]
    backend: String,
}

fn file_backend() -> String {
    "file".into()
}

#[derive(Debug, Serialize, Deserialize)]
struct Trailer {
    annals_export_end: bool,
    events: u64,
}

/// One event in the export.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    /// The event's position in the exported store (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
    stream: String,
    version: u64,
    id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    schema_version: u32,
    timestamp_nanos: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    causation_id: Option<Uuid>,
    published: bool,
    encoding: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

fn bytes_fields(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(BASE64.encode(bytes))),
    }
}

impl Line {
    fn of(e: &RecordedEvent) -> Line {
        let (metadata_text, metadata_base64) = if e.metadata().is_empty() {
            (None, None)
        } else {
            bytes_fields(e.metadata())
        };
        let (payload_text, payload_base64) = bytes_fields(e.payload());
        Line {
            position: Some(e.position().as_u64()),
            stream: e.stream().to_owned(),
            version: e.version(),
            id: e.id(),
            event_type: e.event_type().to_owned(),
            schema_version: e.schema_version(),
            timestamp_nanos: e.timestamp_nanos(),
            correlation_id: e.correlation_id(),
            causation_id: e.causation_id(),
            published: e.is_published(),
            encoding: encoding_name(e.encoding()).to_owned(),
            metadata_text,
            metadata_base64,
            payload_text,
            payload_base64,
        }
    }

    fn bytes(text: Option<String>, base64: Option<String>, what: &str) -> Result<Vec<u8>, String> {
        match (text, base64) {
            (Some(t), None) => Ok(t.into_bytes()),
            (None, Some(b)) => BASE64.decode(b).map_err(|e| format!("{what}_base64: {e}")),
            (None, None) => Ok(Vec::new()),
            (Some(_), Some(_)) => Err(format!("both {what}_text and {what}_base64")),
        }
    }

    fn into_event(self) -> Result<Imported, String> {
        let encoding = match self.encoding.as_str() {
            "json" => PayloadEncoding::Json,
            "bincode" => PayloadEncoding::Bincode,
            "raw" => PayloadEncoding::Raw,
            other => return Err(format!("unknown encoding `{other}`")),
        };
        let payload = Line::bytes(self.payload_text, self.payload_base64, "payload")?;
        let metadata = Line::bytes(self.metadata_text, self.metadata_base64, "metadata")?;
        let mut e = NewEvent::new(self.event_type, payload)
            .with_id(self.id)
            .with_schema_version(self.schema_version)
            .with_timestamp(UNIX_EPOCH + Duration::from_nanos(self.timestamp_nanos))
            .with_metadata(metadata)
            .published(self.published);
        e.correlation_id = self.correlation_id;
        e.causation_id = self.causation_id;
        e.encoding = encoding;
        Ok(Imported {
            position: self.position,
            stream: self.stream,
            version: self.version,
            event: e,
        })
    }
}

/// One event read from an export.
struct Imported {
    position: Option<u64>,
    stream: String,
    version: u64,
    event: NewEvent,
}

impl Imported {
    fn is_engine_record(&self) -> bool {
        self.stream.starts_with(records::RESERVED_PREFIX)
    }
}

/// Options of `annals export`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  annals export shop.annals backup.jsonl
  annals export shop.annals backup.jsonl.gz      # compressed (by the name)
  annals export shop.annals - | head             # to standard output
  annals export shop.annals events.jsonl --events-only
  annals export 'pg:host=/run/postgresql dbname=shop' backup.jsonl   # from PostgreSQL

By default the engine's own records go too (catch-up checkpoints, outbox progress and parked
events, snapshots, command-relay markers, unique claims), so that a store restored with
`annals import` continues where this one stopped: its outbox does not send again what it sent,
its subscriptions resume after what they handled.")]
pub struct ExportArgs {
    /// The store: a store file, or a PostgreSQL database (`postgresql://…`, or `pg:` and a
    /// libpq connection string).
    pub store: PathBuf,
    /// The file to write (`-` for standard output); it must not exist.
    pub file: PathBuf,
    /// Compress with gzip (the default when FILE ends in `.gz`).
    #[arg(long)]
    pub gzip: bool,
    /// Leave out the engine's own `$` records: a store restored from the file starts its
    /// outbox and subscriptions from the beginning.
    #[arg(long)]
    pub events_only: bool,
}

fn is_gzip(path: &Path, flag: bool) -> bool {
    flag || path.extension().is_some_and(|e| e == "gz")
}

/// Runs `annals export`.
pub fn export(args: ExportArgs) -> CliResult {
    let place = match postgres_url(&args.store) {
        Some(url) => Place::Pg(connect(&url)?),
        None => Place::File(open_read_only(&args.store)?),
    };
    let sink: Box<dyn Write> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&args.file)
            .map_err(|e| {
                CliError::new(ERROR, format!("cannot create {}: {e}", args.file.display()))
            })?;
        Box::new(file)
    };
    let mut out: Box<dyn Write> = if is_gzip(&args.file, args.gzip) {
        Box::new(BufWriter::new(GzEncoder::new(sink, Compression::default())))
    } else {
        Box::new(BufWriter::new(sink))
    };
    let (store_id, format_version, backend) = match &place {
        Place::File(s) => (s.store_id().to_string(), s.format_version(), "file"),
        Place::Pg(_) => (
            "postgresql".to_owned(),
            annals::pg::SCHEMA_VERSION.unsigned_abs(),
            "postgresql",
        ),
    };
    let header = Header {
        annals_export: EXPORT_VERSION,
        store_id,
        format_version,
        exported_at: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        engine_records: !args.events_only,
        backend: backend.into(),
    };
    let store = place.backend();
    writeln!(out, "{}", to_line(&header))?;
    let mut events = 0u64;
    // The end when the export starts: what is appended meanwhile is left for the next one.
    let end = store.next_position()?;
    let bar = progress("exporting", end.as_u64(), "{pos}/{len} of the log");
    let mut engine_records = 0u64;
    let mut from = Position::START;
    'pages: loop {
        let page = if args.events_only {
            store.read_all_page(from, Direction::Forwards, EXPORT_PAGE)?
        } else {
            store.read_log_page(from, Direction::Forwards, EXPORT_PAGE)?
        };
        let full = page.len() == EXPORT_PAGE;
        for e in &page {
            if e.position() >= end {
                break 'pages;
            }
            writeln!(out, "{}", to_line(&Line::of(e)))?;
            events += 1;
            engine_records += u64::from(e.stream().starts_with(records::RESERVED_PREFIX));
            if events.is_multiple_of(PROGRESS_EVERY) {
                bar.set_position(e.position().as_u64());
            }
        }
        match page.last() {
            Some(last) if full => from = last.next_position(),
            _ => break,
        }
    }
    bar.finish_and_clear();
    writeln!(
        out,
        "{}",
        to_line(&Trailer {
            annals_export_end: true,
            events
        })
    )?;
    out.flush()?;
    drop(out);
    if args.file.as_os_str() != "-" {
        File::open(&args.file)?.sync_all()?;
        eprintln!(
            "exported {events} events to {}{}",
            args.file.display(),
            if args.events_only {
                " (without the engine's records: --events-only)".to_owned()
            } else {
                format!(" ({engine_records} of them the engine's own records)")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How often (in events or lines) the progress bars move.
const PROGRESS_EVERY: u64 = 1024;

/// One JSON line.
fn to_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("export lines are plain data")
}

/// Options of `annals import`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Imports into a new or an existing store. Every event keeps its id and its stream version:
an event whose stream is not at the version before it is refused, and importing the same file
twice writes nothing the second time.

Examples:
  annals import backup.jsonl.gz restored.annals
  annals export old.annals - | annals import - new.annals
  annals export shop.annals - | annals import - 'pg:host=/run/postgresql dbname=shop'"
)]
pub struct ImportArgs {
    /// The export (`-` for standard input; gzip is detected).
    pub file: PathBuf,
    /// The store to import into (created if missing): a store file, or a PostgreSQL database
    /// (`postgresql://…`, or `pg:` and a libpq connection string; its schema is created if
    /// missing).
    pub store: PathBuf,
    /// Skip the engine's own `$` records in the file (checkpoints, outbox progress,
    /// snapshots): the store's outbox and subscriptions start from the beginning.
    #[arg(long)]
    pub events_only: bool,
}

fn reader(path: &Path) -> CliResult<Box<dyn BufRead>> {
    let raw: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(File::open(path).map_err(|e| {
            CliError::new(NOT_A_STORE, format!("cannot open {}: {e}", path.display()))
        })?)
    };
    let mut buffered = BufReader::new(raw);
    let gzip = buffered.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(BufReader::new(MultiGzDecoder::new(buffered)))
    } else {
        Box::new(buffered)
    })
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at the end.
fn next_line(input: &mut dyn BufRead, n: u64) -> CliResult<Option<String>> {
    let mut line = String::new();
    let read = input.take(MAX_LINE + 1).read_line(&mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if read as u64 > MAX_LINE {
        return Err(CliError::new(
            ERROR,
            format!("line {n}: longer than {MAX_LINE} bytes"),
        ));
    }
    Ok(Some(line))
}

fn bad(n: u64, what: impl std::fmt::Display) -> CliError {
    CliError::new(ERROR, format!("line {n}: {what}"))
}

/// Runs `annals import`.
pub fn import(args: ImportArgs) -> CliResult {
    // Read and check everything before writing anything: a damaged or cut-short export
    // imports nothing. Events are kept in memory up to the file's size.
    let mut input = reader(&args.file)?;
    let header =
        next_line(&mut *input, 1)?.ok_or_else(|| bad(1, "empty file: not an annals export"))?;
    let header: Header = serde_json::from_str(&header)
        .map_err(|e| bad(1, format!("not an annals export header ({e})")))?;
    if !(1..=EXPORT_VERSION).contains(&header.annals_export) {
        return Err(bad(
            1,
            format!(
                "export format {} (this build reads {EXPORT_VERSION})",
                header.annals_export
            ),
        ));
    }
    let mut events: Vec<Imported> = Vec::new();
    let mut lines = 0u64;
    let mut last_position = None;
    let mut n = 1;
    let bar = progress("reading", 0, "{pos} events");
    let trailer = loop {
        n += 1;
        if n % PROGRESS_EVERY == 0 {
            bar.set_position(n);
        }
        let Some(line) = next_line(&mut *input, n)? else {
            return Err(bad(
                n,
                "the export ends without its trailer: it was cut short",
            ));
        };
        if line.starts_with("{\"annals_export_end\"") {
            let t: Trailer = serde_json::from_str(&line).map_err(|e| bad(n, e))?;
            break t;
        }
        let parsed: Line = serde_json::from_str(&line).map_err(|e| bad(n, e))?;
        let event = parsed.into_event().map_err(|e| bad(n, e))?;
        lines += 1;
        if event.is_engine_record() {
            if event.position.is_none() {
                return Err(bad(n, "an engine record without its position"));
            }
            if args.events_only {
                continue;
            }
        }
        if let Some(p) = event.position {
            if last_position.is_some_and(|last| p <= last) {
                return Err(bad(n, format!("position {p} is not after the line before")));
            }
            last_position = Some(p);
        }
        events.push(event);
    };
    bar.finish_and_clear();
    if trailer.events != lines {
        return Err(bad(
            n,
            format!(
                "the trailer counts {} events, the file has {lines}",
                trailer.events,
            ),
        ));
    }

    let place = match postgres_url(&args.store) {
        Some(url) => Place::Pg(connect(&url)?),
        // Durable at the end (one sync on close), not per append.
        None => Place::File(
            Store::builder()
                .durability(Durability::NoSync)
                .open(&args.store)?,
        ),
    };
    let before = place.backend().next_position()?;
    let bar = progress("importing", events.len() as u64, "{pos}/{len} events");
    let mut pending = Pending::default();
    let (mut records, mut clamped) = (0u64, 0u64);
    for i in 0..events.len() {
        if i % PROGRESS_EVERY as usize == 0 {
            bar.set_position(i as u64);
        }
        if events[i].is_engine_record() {
            // Its positions name events before it: those must be in the store first.
            pending.flush(&place, &events)?;
            let moved = move_positions(place.backend(), &events, i, before, &mut clamped)?;
            if let Some(payload) = moved {
                events[i].event.payload = payload.into();
            }
            records += 1;
        }
        pending.push(&place, &events, i)?;
    }
    pending.flush(&place, &events)?;
    bar.finish_and_clear();
    let written = place.backend().next_position()? != before;
    place.close()?;
    eprintln!(
        "imported {} events from {} into {}{}{}",
        events.len(),
        args.file.display(),
        args.store.display(),
        if records > 0 {
            format!(" ({records} of them the engine's own records, positions moved to this store)")
        } else {
            String::new()
        },
        if written {
            ""
        } else {
            " (all were already there: nothing written)"
        }
    );
    if clamped > 0 {
        eprintln!(
            "note: {clamped} resume points lay past the record that held them (a subscription \
             moved ahead of the log); they resume at that record"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Consecutive events of one stream with consecutive versions, appended together.
#[derive(Default)]
struct Pending {
    /// Indexes into the events, `start..end`.
    range: Option<(usize, usize)>,
}

impl Pending {
    /// Adds event `i`, writing what is pending first when `i` does not continue it.
    fn push(&mut self, store: &Place, events: &[Imported], i: usize) -> CliResult<()> {
        if let Some((start, end)) = self.range {
            let continues = end == i
                && end - start < IMPORT_BATCH
                && events[start].stream == events[i].stream
                && events[i].version == events[start].version + (i - start) as u64;
            if continues {
                self.range = Some((start, i + 1));
                return Ok(());
            }
            self.flush(store, events)?;
        }
        self.range = Some((i, i + 1));
        Ok(())
    }

    fn flush(&mut self, place: &Place, events: &[Imported]) -> CliResult<()> {
        let store = place.backend();
        let Some((start, end)) = self.range.take() else {
            return Ok(());
        };
        let (stream, first_version) = (&events[start].stream, events[start].version);
        let mut expected = match first_version {
            // The engine's own records: only the newest of many is exported (older checkpoints
            // and the like are superseded), so their versions are not kept.
            _ if events[start].is_engine_record() => ExpectedVersion::Any,
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v - 1),
        };
        if first_version > 0 && !events[start].is_engine_record() {
            // A stream whose oldest events were deleted, truncated or expired: it starts at
            // its first exported version here too (and does not exist until then).
            place.start_stream_at(stream, first_version)?;
            if store.current_version(stream)?.is_none() {
                expected = ExpectedVersion::NoStream;
            }
        }
        let batch = events[start..end].iter().map(|e| e.event.clone());
        let result = store
            .transaction(vec![Part::new(stream.clone(), expected, batch)])
            .map(drop);
        result.map_err(|e| {
            let e = CliError::from(e);
            CliError::new(
                e.code,
                format!(
                    "importing `{stream}` version {first_version}: {}",
                    e.message
                ),
            )
        })
    }
}

/// The payload of engine record `events[i]` with its positions moved from the exported store
/// to `store`, where every event before `i` has been imported (`before`: where the import
/// began); `None` when it holds no position.
fn move_positions(
    store: &dyn Backend,
    events: &[Imported],
    i: usize,
    before: Position,
    clamped: &mut u64,
) -> CliResult<Option<Vec<u8>>> {
    let record = &events[i];
    let own = record.position.expect("engine records carry positions");
    let earlier = &events[..i];
    // The copy of event `k` in this store.
    let copy = |k: usize| -> Result<RecordedEvent, String> {
        let e = &earlier[k];
        store
            .read_stream_page(&e.stream, e.version, Direction::Forwards, 1)
            .map(|mut r| r.pop())
            .map_err(|err| err.to_string())?
            .ok_or_else(|| format!("`{}` version {} is not in the store", e.stream, e.version))
    };
    let at = |k: usize| earlier[k].position.unwrap_or(0);
    records::map_positions(
        &record.event.event_type,
        &record.event.payload,
        |role, p| {
            match role {
                PositionRole::Resume => {
                    // Everything before `p` was handled: resume after the copy of the last event
                    // before it.
                    let p = if p > own {
                        *clamped += 1;
                        own
                    } else {
                        p
                    };
                    let handled = earlier.partition_point(|e| e.position.unwrap_or(0) < p);
                    // Only the application's events count: an engine record's copy keeps
                    // neither its position nor its version (older records of its stream were
                    // superseded and not exported), and readers pass over records anyway.
                    let user = |k: &usize| !earlier[*k].is_engine_record();
                    if let Some(k) = (handled..earlier.len()).find(user) {
                        // The first event not handled is here already: resume at its copy
                        // (which lies before `before` when an earlier import of this file
                        // stopped half-way and this one found its events in place).
                        Ok(copy(k)?.position().as_u64())
                    } else if let Some(k) = (0..handled).rev().find(user) {
                        Ok(copy(k)?.next_position().as_u64())
                    } else {
                        Ok(before.as_u64())
                    }
                }
                PositionRole::Event => {
                    let k = earlier.partition_point(|e| e.position.unwrap_or(0) < p);
                    if k < earlier.len() && at(k) == p {
                        Ok(copy(k)?.position().as_u64())
                    } else {
                        Err(format!(
                            "it names position {p}, where the export has no event"
                        ))
                    }
                }
            }
        },
    )
    .map_err(|e| {
        CliError::new(
            ERROR,
            format!(
                "the engine record `{}` version {} (position {own}): {e}",
                record.stream, record.version
            ),
        )
    })
}
