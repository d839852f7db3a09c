//! `annals export` and `annals import`: a portable JSON-lines form of a store's events.
//!
//! The file is JSON lines, gzip-compressed when its name ends in `.gz` (or with `--gzip`):
//!
//! 1. a header `{"annals_export": 1, "store_id": ..., "format_version": ..., "exported_at": ...}`;
//! 2. one line per event, in log order, with everything needed to recreate it exactly:
//!    `stream`, `version`, `id`, `type`, `schema_version`, `timestamp_nanos`,
//!    `correlation_id`, `causation_id`, `published`, `encoding`, and the payload and metadata
//!    bytes, as text (`payload_text`) when they are UTF-8, else base64 (`payload_base64`);
//! 3. a trailer `{"annals_export_end": true, "events": N}` (an export without it was cut short
//!    and is refused).
//!
//! The engine's own `$` streams (checkpoints, outbox progress: positions of the old store) are
//! not exported. Import appends each event with the expected version its stream version
//! implies, so it refuses to mix into streams that went elsewhere, and keeps event ids, which
//! makes it idempotent: importing the same file again writes nothing.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
use crate::inspect::{encoding_name, open_existing};
use crate::progress::progress;

/// Version of the export format.
const EXPORT_VERSION: u32 = 1;
/// The longest line import reads (an event is at most 64 MiB; base64 and JSON add a third).
const MAX_LINE: u64 = 96 << 20;
/// Events per import append (consecutive events of one stream).
const IMPORT_BATCH: usize = 1000;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    annals_export: u32,
    store_id: String,
    format_version: u32,
    exported_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Trailer {
    annals_export_end: bool,
    events: u64,
}

/// One event in the export.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
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

    fn into_event(self) -> Result<(String, u64, NewEvent), String> {
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
        Ok((self.stream, self.version, e))
    }
}

/// Options of `annals export`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  annals export shop.annals backup.jsonl
  annals export shop.annals backup.jsonl.gz      # compressed (by the name)
  annals export shop.annals - | head             # to standard output")]
pub struct ExportArgs {
    /// The store.
    pub store: PathBuf,
    /// The file to write (`-` for standard output); it must not exist.
    pub file: PathBuf,
    /// Compress with gzip (the default when FILE ends in `.gz`).
    #[arg(long)]
    pub gzip: bool,
}

fn is_gzip(path: &Path, flag: bool) -> bool {
    flag || path.extension().is_some_and(|e| e == "gz")
}

/// Runs `annals export`.
pub fn export(args: ExportArgs) -> CliResult {
    let store = open_existing(&args.store)?;
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
    let info_id = store.store_id().to_string();
    let header = Header {
        annals_export: EXPORT_VERSION,
        store_id: info_id,
        format_version: store.format_version(),
        exported_at: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
    };
    writeln!(out, "{}", to_line(&header))?;
    let mut events = 0u64;
    let bar = progress(
        "exporting",
        store.end_position().as_u64(),
        "{bytes}/{total_bytes} of log",
    );
    for e in store.read_all(Position::START, Direction::Forwards, usize::MAX)? {
        let e = e?;
        writeln!(out, "{}", to_line(&Line::of(&e)))?;
        events += 1;
        if events.is_multiple_of(PROGRESS_EVERY) {
            bar.set_position(e.position().as_u64());
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
        eprintln!("exported {events} events to {}", args.file.display());
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
  annals export old.annals - | annals import - new.annals"
)]
pub struct ImportArgs {
    /// The export (`-` for standard input; gzip is detected).
    pub file: PathBuf,
    /// The store to import into (created if missing).
    pub store: PathBuf,
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
    if header.annals_export != EXPORT_VERSION {
        return Err(bad(
            1,
            format!(
                "export format {} (this build reads {EXPORT_VERSION})",
                header.annals_export
            ),
        ));
    }
    let mut events = Vec::new();
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
        events.push(parsed.into_event().map_err(|e| bad(n, e))?);
    };
    bar.finish_and_clear();
    if trailer.events != events.len() as u64 {
        return Err(bad(
            n,
            format!(
                "the trailer counts {} events, the file has {}",
                trailer.events,
                events.len()
            ),
        ));
    }

    // Durable at the end (one sync on close), not per append.
    let store = Store::builder()
        .durability(Durability::NoSync)
        .open(&args.store)?;
    let before = store.end_position();
    let bar = progress("importing", events.len() as u64, "{pos}/{len} events");
    let mut i = 0;
    while i < events.len() {
        bar.set_position(i as u64);
        let stream = events[i].0.clone();
        let first_version = events[i].1;
        let mut j = i;
        while j < events.len()
            && j - i < IMPORT_BATCH
            && events[j].0 == stream
            && events[j].1 == first_version + (j - i) as u64
        {
            j += 1;
        }
        let expected = match first_version {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v - 1),
        };
        let batch: Vec<NewEvent> = events[i..j].iter().map(|(_, _, e)| e.clone()).collect();
        store.append(&stream, expected, batch).map_err(|e| {
            let e = CliError::from(e);
            CliError::new(
                e.code,
                format!(
                    "importing `{stream}` version {first_version}: {}",
                    e.message
                ),
            )
        })?;
        i = j;
    }
    bar.finish_and_clear();
    let written = store.end_position() != before;
    store.close()?;
    eprintln!(
        "imported {} events from {} into {}{}",
        events.len(),
        args.file.display(),
        args.store.display(),
        if written {
            ""
        } else {
            " (all were already there)"
        }
    );
    Ok(ExitCode::SUCCESS)
}
