//! `annals info`, `annals verify` and `annals dump`: looking inside a store.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use annals::{Direction, Position, RecordedEvent, Store};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};

use crate::exit::{CORRUPT, CliError, CliResult, NOT_A_STORE};

/// Opens an existing store read-only (never creates one; a missing file is exit code 3):
/// nothing on disk changes, and a store a writer holds is followed, not refused.
pub fn open_read_only(path: &Path) -> CliResult<Store> {
    open_with(path, Store::builder().read_only(true))
}

/// Opens an existing store with `builder`'s options.
pub fn open_with(path: &Path, builder: annals::StoreBuilder) -> CliResult<Store> {
    let named = path.to_string_lossy();
    if ["pg:", "postgres://", "postgresql://"]
        .iter()
        .any(|p| named.starts_with(p))
    {
        return Err(CliError::new(
            NOT_A_STORE,
            format!(
                "{named} names a PostgreSQL database: this command works on store files \
                 (export and import also take a database; PostgreSQL's own tools inspect it)"
            ),
        ));
    }
    if path.is_dir() {
        return Err(CliError::new(
            NOT_A_STORE,
            format!(
                "{} is a folder, not a store (a store is a file NAME.annals; give NAME or \
                 NAME.annals)",
                path.display()
            ),
        ));
    }
    builder
        .create_if_missing(false)
        .open(path)
        .map_err(|e| store_error(path, e))
}

/// `e` from the store at `path`, a missing file named as such (exit code 3).
pub fn store_error(path: &Path, e: annals::Error) -> CliError {
    match e {
        e if e
            .io_error()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
        {
            CliError::new(NOT_A_STORE, format!("no store at {}", path.display()))
        }
        e => e.into(),
    }
}

/// Options of `annals info`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  annals info shop.annals\n  annals info shop --json")]
pub struct InfoArgs {
    /// The store (`NAME.annals`; the extension may be left out).
    pub store: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `annals info`.
pub fn info(args: InfoArgs) -> CliResult {
    let store = open_read_only(&args.store)?;
    let info = store.info()?;
    let recovery = store.recovery_report().clone();
    let would_drop = recovery.truncated.as_ref().map(|t| {
        json!({
            "at": t.at,
            "stopped_at": t.stopped_at,
            "reason": t.reason,
            "bytes": t.dropped_bytes,
            "intact_frames": t.intact_frames,
        })
    });
    let saved: Vec<Value> = info
        .saved_tails
        .iter()
        .map(|(p, n)| json!({"path": p.display().to_string(), "bytes": n}))
        .collect();
    let created = humantime::format_rfc3339_seconds(info.created_at).to_string();
    let covered = info.index_covered.as_u64();
    let end = info.end.as_u64();
    let doc = json!({
        "path": info.path.display().to_string(),
        "format_version": info.format_version,
        "store_id": info.store_id.to_string(),
        "created_at": created,
        "file_size": info.file_size,
        "index_size": info.index_size,
        "segment_size": info.segment_size,
        "segments": info.segments,
        "events": info.events,
        "system_events": info.system_events,
        "streams": info.streams,
        "end_position": end,
        "index_covered": covered,
        "commits_replayed_at_open": info.commits_replayed,
        "index_rebuilt": info.index_rebuilt,
        "an_open_would_drop": would_drop,
        "an_open_would_rewrite_bytes": recovery.rewritten,
        "cut_off_maintenance": recovery.maintenance,
        "saved_dropped_bytes": saved,
        "open_for_writing_elsewhere": store.follows_writer(),
        "disk_use": disk_use(&info.path),
        "reclaimable": {
            "events": info.reclaimable.events,
            "engine_records": info.reclaimable.records,
            "bytes_removed": info.reclaimable.bytes_removed,
            "bytes_freed": info.reclaimable.bytes_freed,
        },
    });
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{doc}")?;
    } else {
        writeln!(out, "store           {}", info.path.display())?;
        if store.follows_writer() {
            writeln!(
                out,
                "writer          another handle has the store open for writing: shown is what \
                 it has made durable, up to position {end}"
            )?;
        }
        writeln!(out, "format version  {}", info.format_version)?;
        writeln!(out, "store id        {}", info.store_id)?;
        writeln!(out, "created         {created}")?;
        writeln!(
            out,
            "size            {} bytes ({} segments of {} bytes), index sidecar {} bytes",
            info.file_size, info.segments, info.segment_size, info.index_size
        )?;
        writeln!(
            out,
            "events          {} ({} of the engine's own `$` streams)",
            info.events, info.system_events
        )?;
        writeln!(out, "streams         {}", info.streams)?;
        if let Some(du) = disk_use(&info.path) {
            writeln!(out, "disk use        {du} bytes")?;
        }
        let r = &info.reclaimable;
        writeln!(
            out,
            "reclaimable     {} bytes by `annals scavenge`: {} unreadable events ({} of them \
             superseded engine records) in {} bytes of log",
            r.bytes_freed, r.events, r.records, r.bytes_removed
        )?;
        writeln!(out, "last position   {end} (the next append goes there)")?;
        let replayed = match &info.index_rebuilt {
            Some(reason) => format!("the sidecar is unusable ({reason}): an open rebuilds it"),
            None => format!(
                "{} commits after it are in the log only (an open indexes them)",
                info.commits_replayed
            ),
        };
        writeln!(out, "index covered   {covered} of {end}; {replayed}")?;
        match &recovery.truncated {
            Some(t) => writeln!(
                out,
                "unfinished tail an open would drop {} bytes at {} (the scan stopped at {}: {}); \
                 they would be saved beside the store first",
                t.dropped_bytes, t.at, t.stopped_at, t.reason
            )?,
            None => writeln!(out, "unfinished tail none")?,
        }
        if let Some(what) = &recovery.maintenance {
            writeln!(out, "cut off         {what}")?;
        }
        for (path, bytes) in &info.saved_tails {
            writeln!(
                out,
                "saved bytes     {} ({bytes} bytes dropped or removed from the log earlier)",
                path.display()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Bytes the file takes on disk (what `du` counts), where the platform says.
pub fn disk_use(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.blocks() * 512)
}

/// Options of `annals verify`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Reads every frame and checks its checksum and position, stream versions, and the index
against the log, changing nothing (the store may not be open for writing elsewhere). Reports
what an open would drop (an unfinished tail left by a crash). Exit code 0 when clean; 5 with the
first bad position otherwise.

Examples:
  annals verify shop.annals
  annals verify shop.annals --quiet && echo sound"
)]
pub struct VerifyArgs {
    /// The store.
    pub store: PathBuf,
    /// No progress bar, and nothing printed when the store is sound.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `annals verify`.
pub fn verify(args: VerifyArgs) -> CliResult {
    let store = match open_read_only(&args.store) {
        Ok(store) => store,
        Err(e) if e.code == CORRUPT => {
            return Err(CliError::new(
                CORRUPT,
                format!(
                    "verification failed: an open refuses this store: {}",
                    e.message
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    if let Some(t) = &store.recovery_report().truncated
        && !args.quiet
    {
        println!(
            "an open would drop an unfinished tail of {} bytes at position {} ({}), saving \
             them beside the store first",
            t.dropped_bytes, t.at, t.reason
        );
    }
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("verifying {bar:40} {bytes}/{total_bytes} ({eta})")
                .map_err(|e| CliError::new(crate::exit::ERROR, e.to_string()))?,
        );
        bar
    };
    let report = store.verify(&mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    match report.problem {
        None => {
            if !args.quiet {
                let gaps = if report.gaps > 0 {
                    format!(
                        " ({} gaps of {} bytes left by scavenges and erasures, checked)",
                        report.gaps, report.gap_bytes
                    )
                } else {
                    String::new()
                };
                println!(
                    "clean: {} events in {} streams, {} bytes of log checked{gaps}",
                    report.events, report.streams, report.bytes
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some((position, reason)) => Err(CliError::new(
            CORRUPT,
            format!(
                "verification failed at position {}: {reason} ({} events before it were sound)",
                position.as_u64(),
                report.events
            ),
        )),
    }
}

/// Options of `annals dump`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "One JSON object per line, with all of an event's metadata; the payload as JSON when it
decodes as JSON (`payload`), otherwise base64 (`payload_base64`).

Examples:
  annals dump shop.annals --stream cart-7
  annals dump shop.annals --category cart --limit 10
  annals dump shop.annals --type CheckedOut --from 4096
  annals dump shop.annals --system | jq .type"
)]
pub struct DumpArgs {
    /// The store.
    pub store: PathBuf,
    /// Only this stream (from version `--from`).
    #[arg(long, conflicts_with_all = ["category", "event_type"])]
    pub stream: Option<String>,
    /// Only streams of this category (`CATEGORY` and `CATEGORY-…`).
    #[arg(long, conflicts_with = "event_type")]
    pub category: Option<String>,
    /// Only events of this type.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Start at this log position (a stream version with `--stream`).
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// At most this many events.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Include the engine's own `$` streams (whole-log dumps only).
    #[arg(long)]
    pub system: bool,
}

/// Runs `annals dump`.
pub fn dump(args: DumpArgs) -> CliResult {
    let store = open_read_only(&args.store)?;
    let limit = args.limit.unwrap_or(usize::MAX);
    let from = Position::new(args.from);
    let events: Box<dyn Iterator<Item = annals::Result<RecordedEvent>>> =
        if let Some(stream) = &args.stream {
            Box::new(store.read_stream(stream, args.from, Direction::Forwards, limit)?)
        } else if let Some(category) = &args.category {
            Box::new(store.read_category(category, from, limit)?)
        } else if let Some(event_type) = &args.event_type {
            Box::new(store.read_event_type(event_type, from, limit)?)
        } else if args.system {
            Box::new(store.read_log(from, Direction::Forwards, limit)?)
        } else {
            Box::new(store.read_all(from, Direction::Forwards, limit)?)
        };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for event in events {
        let line = event_json(&event?);
        if let Err(e) = writeln!(out, "{line}") {
            // `annals dump | head` closes the pipe: not an error.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// An event as one JSON object, for reading (`dump`).
pub fn event_json(e: &RecordedEvent) -> Value {
    let mut m = Map::new();
    m.insert("position".into(), json!(e.position().as_u64()));
    m.insert("stream".into(), json!(e.stream()));
    m.insert("version".into(), json!(e.version()));
    m.insert("id".into(), json!(e.id().to_string()));
    m.insert("type".into(), json!(e.event_type()));
    m.insert("schema_version".into(), json!(e.schema_version()));
    m.insert(
        "timestamp".into(),
        json!(humantime::format_rfc3339_nanos(e.timestamp()).to_string()),
    );
    if let Some(id) = e.correlation_id() {
        m.insert("correlation_id".into(), json!(id.to_string()));
    }
    if let Some(id) = e.causation_id() {
        m.insert("causation_id".into(), json!(id.to_string()));
    }
    m.insert("published".into(), json!(e.is_published()));
    m.insert("encoding".into(), json!(encoding_name(e.encoding())));
    if !e.metadata().is_empty() {
        insert_bytes(&mut m, "metadata", e.metadata());
    }
    insert_bytes(&mut m, "payload", e.payload());
    Value::Object(m)
}

/// `key` as JSON if the bytes are JSON, else `key_base64`.
fn insert_bytes(m: &mut Map<String, Value>, key: &str, bytes: &[u8]) {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => {
            m.insert(key.into(), v);
        }
        Err(_) => {
            m.insert(format!("{key}_base64"), json!(BASE64.encode(bytes)));
            if key == "payload" {
                m.insert(
                    "payload_note".into(),
                    json!("binary, not JSON: shown as base64 (decode it with the event's type)"),
                );
            }
        }
    }
}

/// The name of an encoding in the JSON forms.
pub fn encoding_name(e: annals::PayloadEncoding) -> &'static str {
    match e {
        annals::PayloadEncoding::Json => "json",
        annals::PayloadEncoding::Bincode => "bincode",
        _ => "raw",
    }
}
