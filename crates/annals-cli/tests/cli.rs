//! The `annals` binary on real stores: each command's output and exit code, a corrupted store
//! (verify names the damaged frame's position, repair cuts there), a locked store, and an
//! export/import round trip that reproduces every event byte for byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use annals::{
    Direction, ExpectedVersion, NewEvent, PayloadEncoding, Position, RecordedEvent, Store,
};
use uuid::Uuid;

mod common;
use common::{place_orders, run_outbox, run_projection};

fn annals(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(args)
        .output()
        .expect("run the annals binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A store with JSON, bincode and raw payloads, metadata, tracing ids and several streams.
fn make_store(dir: &Path) -> PathBuf {
    let file = dir.join("shop.annals");
    let store = Store::open(&file).unwrap();
    for i in 0..30u32 {
        let mut json = NewEvent::new("ItemAdded", format!(r#"{{"sku": "apple", "n": {i}}}"#))
            .with_metadata(format!(r#"{{"user": "u{i}"}}"#))
            .with_correlation_id(Uuid::now_v7())
            .published(i % 2 == 0);
        json.encoding = PayloadEncoding::Json;
        let mut bin = NewEvent::new("Binary", vec![0xFFu8, 0x00, i as u8, 0x80])
            .with_metadata(vec![0xC3, 0x28])
            .with_causation_id(Uuid::now_v7())
            .with_schema_version(3);
        bin.encoding = PayloadEncoding::Bincode;
        store
            .append(&format!("cart-{}", i % 3), ExpectedVersion::Any, [json])
            .unwrap();
        store
            .append(
                &format!("blob-{}", i % 2),
                ExpectedVersion::Any,
                [bin, NewEvent::new("Raw", "plain text")],
            )
            .unwrap();
    }
    store.close().unwrap();
    file
}

fn all_events(file: &Path) -> Vec<RecordedEvent> {
    let store = Store::builder()
        .create_if_missing(false)
        .open(file)
        .unwrap();
    store
        .read_all(Position::START, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn info_reports_counts_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let file = make_store(dir.path());
    let o = annals(&["info", path(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("format version  2"), "{text}");
    assert!(
        text.contains("events          90 (0 of the engine's own `$` streams)"),
        "{text}"
    );
    assert!(text.contains("streams         5"), "{text}");

    let o = annals(&["info", path(&file), "--json"]);
    assert!(o.status.success());
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["events"], 90);
    assert_eq!(doc["streams"], 5);
    assert_eq!(doc["format_version"], 2);
    let store = Store::open(&file).unwrap();
    assert_eq!(doc["end_position"], store.end_position().as_u64());
    assert_eq!(doc["store_id"], store.store_id().to_string());
    assert_eq!(
        doc["index_covered"], doc["end_position"],
        "a clean close covers everything"
    );
}

#[test]
fn missing_foreign_and_locked_stores_have_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let o = annals(&["info", path(&dir.path().join("nothing.annals"))]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("no store at"), "{}", stderr(&o));
    assert!(
        !dir.path().join("nothing.annals").exists(),
        "info never creates a store"
    );
    let o = annals(&[
        "repair",
        path(&dir.path().join("nothing")),
        "--truncate-at",
        "4096",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no store at"), "{}", stderr(&o));

    // A folder given as the store: exit 3, saying so.
    for command in ["info", "verify", "dump", "export"] {
        let mut args = vec![command, path(dir.path())];
        if command == "export" {
            args.push("-");
        }
        let o = annals(&args);
        assert_eq!(o.status.code(), Some(3), "{command}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is a folder, not a store"),
            "{command}: {}",
            stderr(&o)
        );
    }
    // NAME and NAME.annals name the same store.
    let named = make_store(dir.path());
    let bare = named.with_extension("");
    let (a, b) = (
        annals(&["info", path(&named)]),
        annals(&["info", path(&bare)]),
    );
    assert!(a.status.success() && b.status.success(), "{}", stderr(&b));
    assert_eq!(stdout(&a), stdout(&b));
    std::fs::remove_file(&named).unwrap();
    std::fs::remove_file(named.with_extension("annals.index")).unwrap();

    let foreign = dir.path().join("foreign.annals");
    std::fs::write(&foreign, b"SQLite format 3\0 and more bytes than a header").unwrap();
    let o = annals(&["verify", path(&foreign)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&foreign).unwrap(),
        b"SQLite format 3\0 and more bytes than a header"
    );

    let file = make_store(dir.path());
    let held = Store::open(&file).unwrap();
    // Commands that change the store refuse one a writer holds...
    let o = annals(&["rebuild-index", path(&file)]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("locked"), "{}", stderr(&o));
    let export = dir.path().join("held.jsonl");
    assert!(
        annals(&["export", path(&file), path(&export)])
            .status
            .success()
    );
    let o = annals(&["import", path(&export), path(&file)]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let o = annals(&["repair", path(&file), "--truncate-at", "4096"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    drop(held);

    let o = annals(&["info"]);
    assert_eq!(o.status.code(), Some(2), "a usage error");
}

#[test]
fn verify_passes_a_sound_store_and_names_the_damaged_frame() {
    let dir = tempfile::tempdir().unwrap();
    let file = make_store(dir.path());
    let o = annals(&["verify", path(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("clean: 90 events in 5 streams"),
        "{}",
        stdout(&o)
    );

    // Flip one byte inside the payload of the 41st event.
    let events = all_events(&file);
    let victim = &events[40];
    let at = victim.position().as_u64();
    let mut bytes = std::fs::read(&file).unwrap();
    let payload = victim.payload().to_vec();
    let offset = (at as usize..at as usize + 512)
        .find(|&i| bytes[i..].starts_with(&payload))
        .expect("the payload is inside its frame");
    bytes[offset] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();

    let o = annals(&["verify", path(&file)]);
    assert_eq!(o.status.code(), Some(5), "{}", stdout(&o));
    assert!(
        stderr(&o).contains(&format!("position {at}")),
        "{}",
        stderr(&o)
    );

    // repair cuts there, saving the removed bytes; what came before is intact.
    let o = annals(&["repair", path(&file), "--truncate-at", &at.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let saved = dir.path().join(format!("shop.annals.removed-{at}"));
    let removed = std::fs::read(&saved).unwrap();
    assert_eq!(&removed[..16], &bytes[at as usize..at as usize + 16]);
    let o = annals(&["verify", path(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let kept = all_events(&file);
    // Event 40 shares its commit with event 39 (a blob append of two events): commits are
    // whole, so the cut keeps events 0..=38 or 0..=39 depending on where the commit starts.
    let commit_start = events
        .iter()
        .position(|e| e.position().as_u64() >= at)
        .unwrap();
    assert_eq!(
        kept.len(),
        commit_start - usize::from(events[commit_start - 1].stream() == victim.stream())
    );
    for (a, b) in kept.iter().zip(&events) {
        assert_eq!((a.id(), a.payload()), (b.id(), b.payload()));
    }

    // A cut that is not on a frame boundary is refused without changing anything.
    let o = annals(&["repair", path(&file), "--truncate-at", "4097"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("multiple of 8"), "{}", stderr(&o));
}

#[test]
fn dump_prints_json_lines_with_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = make_store(dir.path());
    let o = annals(&["dump", path(&file), "--stream", "cart-1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    for (v, line) in lines.iter().enumerate() {
        assert_eq!(line["stream"], "cart-1");
        assert_eq!(line["version"], v as u64);
        assert_eq!(line["type"], "ItemAdded");
        assert_eq!(
            line["payload"]["sku"], "apple",
            "JSON payloads print as JSON"
        );
        assert_eq!(
            line["metadata"]["user"].as_str().unwrap().chars().next(),
            Some('u')
        );
        assert!(
            line["correlation_id"]
                .as_str()
                .unwrap()
                .parse::<Uuid>()
                .is_ok()
        );
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(line["encoding"], "json");
    }
    assert_eq!(lines[0]["published"], false);

    let o = annals(&["dump", path(&file), "--type", "Binary", "--limit", "3"]);
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[2]["payload_base64"], "/wACgA==",
        "bytes that are not JSON print as base64"
    );
    assert!(
        lines[2]["payload_note"]
            .as_str()
            .is_some_and(|n| n.starts_with("binary, not JSON")),
        "a binary payload is said to be one: {}",
        lines[2]
    );
    assert_eq!(lines[2]["schema_version"], 3);
    assert_eq!(lines[2]["metadata_base64"], "wyg=");

    let o = annals(&["dump", path(&file), "--category", "blob"]);
    assert_eq!(stdout(&o).lines().count(), 60);
    let from = all_events(&file)[80].position().as_u64().to_string();
    let o = annals(&["dump", path(&file), "--from", &from]);
    assert_eq!(stdout(&o).lines().count(), 10);
}

#[test]
fn export_and_import_reproduce_every_event_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let file = make_store(dir.path());
    for name in ["backup.jsonl", "backup.jsonl.gz"] {
        let export = dir.path().join(name);
        let o = annals(&["export", path(&file), path(&export)]);
        assert!(o.status.success(), "{}", stderr(&o));
        let raw = std::fs::read(&export).unwrap();
        assert_eq!(raw.starts_with(&[0x1f, 0x8b]), name.ends_with(".gz"));

        let restored = dir.path().join(format!("restored-{name}.annals"));
        let o = annals(&["import", path(&export), path(&restored)]);
        assert!(o.status.success(), "{}", stderr(&o));
        let (a, b) = (all_events(&file), all_events(&restored));
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(
                (
                    a.stream(),
                    a.version(),
                    a.id(),
                    a.event_type(),
                    a.schema_version()
                ),
                (
                    b.stream(),
                    b.version(),
                    b.id(),
                    b.event_type(),
                    b.schema_version()
                )
            );
            assert_eq!(
                (a.timestamp_nanos(), a.correlation_id(), a.causation_id()),
                (b.timestamp_nanos(), b.correlation_id(), b.causation_id())
            );
            assert_eq!(
                (a.is_published(), a.encoding()),
                (b.is_published(), b.encoding())
            );
            assert_eq!((a.metadata(), a.payload()), (b.metadata(), b.payload()));
        }

        // Importing again writes nothing.
        let end = Store::open(&restored).unwrap().end_position();
        let o = annals(&["import", path(&export), path(&restored)]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("already there"), "{}", stderr(&o));
        assert_eq!(Store::open(&restored).unwrap().end_position(), end);
    }

    // An export into a store whose stream went elsewhere is refused.
    let other = dir.path().join("other.annals");
    Store::open(&other)
        .unwrap()
        .append(
            "cart-0",
            ExpectedVersion::NoStream,
            [NewEvent::new("Different", "x")],
        )
        .unwrap();
    let o = annals(&[
        "import",
        path(&dir.path().join("backup.jsonl")),
        path(&other),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("cart-0"), "{}", stderr(&o));

    // A cut-short export imports nothing.
    let text = std::fs::read_to_string(dir.path().join("backup.jsonl")).unwrap();
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, &text[..text.len() / 2]).unwrap();
    let fresh = dir.path().join("fresh.annals");
    let o = annals(&["import", path(&cut), path(&fresh)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cut short") || stderr(&o).contains("line"),
        "{}",
        stderr(&o)
    );
    assert!(!fresh.exists());
}

#[test]
fn rebuild_index_rebuilds_and_the_store_stays_sound() {
    let dir = tempfile::tempdir().unwrap();
    let file = make_store(dir.path());
    let o = annals(&["rebuild-index", path(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("rebuilt the index from the log"),
        "{}",
        stdout(&o)
    );
    let o = annals(&["verify", path(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = annals(&["info", path(&file), "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["events"], 90);
}

#[test]
fn every_command_has_help_with_examples() {
    let o = annals(&["--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("Exit codes"));
    for command in [
        "info",
        "verify",
        "dump",
        "export",
        "import",
        "tail",
        "rebuild-index",
        "repair",
        "bench",
        "scavenge",
        "delete",
        "erase",
    ] {
        let o = annals(&[command, "--help"]);
        assert!(o.status.success(), "{command}");
        assert!(stdout(&o).contains("Example"), "{command}: {}", stdout(&o));
    }
}

fn hash(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

#[test]
fn info_verify_and_dump_change_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let file = make_store(dir.path());
    let end = Store::open(&file).unwrap().end_position().as_u64();
    // A torn tail, as a crash leaves it.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&[0x5C; 77], end).unwrap();
    }
    let sidecar = dir.path().join("shop.annals.index");
    let before = (hash(&file), hash(&sidecar));
    let o = annals(&["info", path(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("an open would drop 80 bytes at {end}")),
        "{}",
        stdout(&o)
    );
    let o = annals(&["info", path(&file), "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["an_open_would_drop"]["bytes"], 80);
    let o = annals(&["verify", path(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("an open would drop"), "{}", stdout(&o));
    assert!(stdout(&o).contains("clean: 90 events"), "{}", stdout(&o));
    let o = annals(&["dump", path(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 90);
    assert!(
        (hash(&file), hash(&sidecar)) == before,
        "info, verify or dump changed the store"
    );
    // Opening for writing drops the tail and saves it; info then lists the saved bytes.
    drop(Store::open(&file).unwrap());
    let o = annals(&["info", path(&file)]);
    assert!(
        stdout(&o).contains(&format!("shop.annals.dropped-{end}")),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_log_cut_short_is_refused_until_the_loss_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let file = make_store(dir.path());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(10_000)
        .unwrap();
    for cmd in ["verify", "info", "dump", "rebuild-index"] {
        let o = annals(&[cmd, path(&file)]);
        assert_eq!(o.status.code(), Some(5), "{cmd}: {}", stderr(&o));
        assert!(!stderr(&o).contains("delete"), "{cmd}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("10000") || e.contains("are missing"),
            "{cmd}: {e}"
        );
    }
    let o = annals(&["rebuild-index", path(&file)]);
    assert!(stderr(&o).contains("--accept-loss"), "{}", stderr(&o));
    let o = annals(&["rebuild-index", path(&file), "--accept-loss"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("accepted a loss"), "{}", stdout(&o));
    let o = annals(&["verify", path(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let left = all_events(&file).len();
    assert!(left > 0 && left < 90, "{left}");
}

/// `annals export STORE - | head` and `annals dump STORE | head`: the reader closes the pipe
/// early; the command ends quietly with exit 0 (no "Broken pipe"). With standard error not a
/// terminal, no progress bar is drawn: `export` to a file writes only its summary line.
#[test]
fn a_closed_pipe_ends_quietly_and_pipes_get_no_progress_bars() {
    use std::io::Read;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.annals");
    {
        let store = Store::open(&file).unwrap();
        for i in 0..20u32 {
            let events =
                (0..1000).map(|k| NewEvent::new("E", format!("event {i}-{k} with some text")));
            store
                .append(&format!("s-{i}"), ExpectedVersion::Any, events)
                .unwrap();
        }
    }
    for args in [vec!["export", path(&file), "-"], vec!["dump", path(&file)]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_annals"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = vec![0u8; 4096];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // The pipe's reader is gone (dropped above): like `| head`.
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {:?} {}",
            out.status,
            stderr(&out)
        );
        assert_eq!(stderr(&out), "", "{args:?}");
        assert!(first.starts_with(b"{"), "{args:?}");
    }
    let export = dir.path().join("big.jsonl");
    let out = annals(&["export", path(&file), path(&export)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("exported 20000 events"),
        "{}",
        stderr(&out)
    );
    let out = annals(&[
        "import",
        path(&export),
        path(&dir.path().join("copy.annals")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

/// On a terminal (a pseudo-terminal made by util-linux `script`, when the machine has it),
/// `export` draws its progress bar on standard error.
#[test]
fn on_a_terminal_export_draws_a_progress_bar() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("no `script` here to make a pseudo-terminal; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tty.annals");
    {
        let store = Store::open(&file).unwrap();
        for i in 0..50u32 {
            let events = (0..1000).map(|k| NewEvent::new("E", format!("event {i}-{k}")));
            store.append("s", ExpectedVersion::Any, events).unwrap();
        }
    }
    let export = dir.path().join("tty.jsonl");
    let command = format!(
        "{} export {} {}",
        env!("CARGO_BIN_EXE_annals"),
        path(&file),
        path(&export)
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // `script` copies the terminal's output (stdout and stderr) to its stdout.
    let shown = stdout(&out);
    assert!(shown.contains("exported 50000 events"), "{shown}");
    assert!(
        shown.contains("exporting"),
        "no progress bar drawn: {shown}"
    );
}

#[test]
fn a_restored_store_continues_where_the_original_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("shop.annals");
    // Small segments, so that seals sit where the restored store has none: no position of the
    // original is a position of the copy.
    let store = Store::builder()
        .segment_size(64 * 1024)
        .open(&original)
        .unwrap();
    let first = place_orders(&store, 0..192);
    let (sent, parked) = run_outbox(&store);
    assert_eq!(sent.len(), 191, "all but the poisoned one");
    assert_eq!(parked.len(), 1);
    assert_eq!(run_projection(&store).len(), 192);
    store
        .save_snapshot("order-1", 14, 2, b"{\"total\": 9}".to_vec())
        .unwrap();
    // Not yet published nor projected when the backup is taken.
    let later = place_orders(&store, 192..200);
    store.close().unwrap();

    let backup = dir.path().join("backup.jsonl.gz");
    let o = annals(&["export", path(&original), path(&backup)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("engine's own records"),
        "{}",
        stderr(&o)
    );

    // Restored into a store that already holds another stream: every position moves.
    let restored = dir.path().join("restored.annals");
    Store::open(&restored)
        .unwrap()
        .append(
            "audit",
            ExpectedVersion::NoStream,
            [NewEvent::new("Opened", "x".repeat(3000))],
        )
        .unwrap();
    let o = annals(&["import", path(&backup), path(&restored)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("positions moved"), "{}", stderr(&o));

    let copy = Store::open(&restored).unwrap();
    let position_of = |s: &Store, id: Uuid| {
        s.read_log(Position::START, Direction::Forwards, usize::MAX)
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.id() == id)
            .unwrap()
            .position()
    };
    let before = Store::open_read_only(&original).unwrap();
    assert_ne!(
        position_of(&before, first[100]),
        position_of(&copy, first[100])
    );

    // The outbox sends only what the original had not sent, and its parked event is the copy
    // of the one it parked.
    let (sent, parked_copy) = run_outbox(&copy);
    assert_eq!(
        sent, later,
        "only the 8 events appended after the last delivery"
    );
    assert_eq!(parked_copy.len(), 1);
    assert_eq!(parked_copy, parked);
    assert_eq!(parked_copy, [first[7]]);
    // The projection resumes after its checkpoint, at the first event it had not seen.
    assert_eq!(run_projection(&copy), later);
    assert_eq!(
        copy.load_snapshot("order-1")
            .unwrap()
            .map(|(v, s, _)| (v, s)),
        Some((14, 2))
    );
    drop((copy, before));

    // Importing again writes nothing.
    let end = Store::open(&restored).unwrap().end_position();
    let o = annals(&["import", path(&backup), path(&restored)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(Store::open(&restored).unwrap().end_position(), end);

    // Events only: the outbox and the projection start over.
    for (export_flag, import_flag) in [(true, false), (false, true)] {
        let file = dir.path().join(format!("events-{export_flag}.jsonl"));
        let target = dir.path().join(format!("events-{export_flag}.annals"));
        let mut args = vec!["export", path(&original), path(&file)];
        if export_flag {
            args.push("--events-only");
        }
        let o = annals(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let mut args = vec!["import", path(&file), path(&target)];
        if import_flag {
            args.push("--events-only");
        }
        let o = annals(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let store = Store::open(&target).unwrap();
        let (sent, parked) = run_outbox(&store);
        assert_eq!((sent.len(), parked.len()), (199, 1));
        assert_eq!(run_projection(&store).len(), 200);
        assert_eq!(store.load_snapshot("order-1").unwrap(), None);
    }
}

#[test]
fn reading_commands_work_while_a_writer_holds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = make_store(dir.path());
    let writer = Store::open(&file).unwrap();
    writer
        .append(
            "cart-9",
            ExpectedVersion::NoStream,
            [NewEvent::new("ItemAdded", r#"{"sku": "pear"}"#)],
        )
        .unwrap();
    let o = annals(&["info", path(&file), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["events"], 91, "the acknowledged append is there");
    assert_eq!(doc["open_for_writing_elsewhere"], true);
    let o = annals(&["info", path(&file)]);
    assert!(
        stdout(&o).contains("another handle has the store open"),
        "{}",
        stdout(&o)
    );
    let o = annals(&["verify", path(&file)]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = annals(&["dump", path(&file), "--stream", "cart-9"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(r#""sku":"pear""#), "{}", stdout(&o));
    let backup = dir.path().join("hot.jsonl");
    let o = annals(&["export", path(&file), path(&backup)]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The writer goes on while they ran.
    writer
        .append(
            "cart-9",
            ExpectedVersion::Exact(0),
            [NewEvent::new("CheckedOut", "{}")],
        )
        .unwrap();
    let restored = dir.path().join("restored.annals");
    let o = annals(&["import", path(&backup), path(&restored)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(all_events(&restored).len(), 91);
}

/// Reads lines from `tail` until `n` arrived (or 30 s passed).
fn read_lines(rx: &std::sync::mpsc::Receiver<String>, n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|_| {
            let line = rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("tail printed the line in time");
            serde_json::from_str(&line).unwrap()
        })
        .collect()
}

#[test]
fn tail_follows_a_running_writer_and_lets_one_start() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let file = make_store(dir.path());
    // No writer yet: tail prints the last events, then must let the writer in.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["tail", "-f", "-n", "2", path(&file), "--category", "order"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let writer = Store::open(&file).expect("tail never keeps the writer out");
    let place = |i: u32| {
        writer
            .append(
                &format!("order-{i}"),
                ExpectedVersion::NoStream,
                [NewEvent::new("OrderPlaced", format!(r#"{{"n": {i}}}"#))],
            )
            .unwrap();
        writer
            .append(
                "cart-0",
                ExpectedVersion::Any,
                [NewEvent::new("Ignored", "{}")],
            )
            .unwrap();
    };
    for i in 0..3 {
        place(i);
    }
    let first = read_lines(&rx, 3);
    assert_eq!(
        first
            .iter()
            .map(|v| v["payload"]["n"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    // Now it follows the running writer.
    for i in 3..8 {
        place(i);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let next = read_lines(&rx, 5);
    assert_eq!(
        next.iter()
            .map(|v| v["payload"]["n"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 4, 5, 6, 7]
    );
    assert!(
        next.iter()
            .all(|v| v["stream"].as_str().unwrap().starts_with("order-"))
    );
    tail.kill().unwrap();
    tail.wait().unwrap();
    reader.join().unwrap();

    // Without -f: the last N events of the filter, and the end.
    let o = annals(&["tail", "-n", "2", path(&file), "--category", "order"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let last: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        last.iter()
            .map(|v| v["payload"]["n"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [6, 7]
    );
}

#[test]
fn a_restore_finished_after_an_interrupted_one_resumes_subscriptions_from_the_start() {
    use annals::subscriptions::{CatchUpStart, Filter};
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("orig.annals");
    let store = Store::open(&original).unwrap();
    place_orders(&store, 0..100);
    // A subscription that has handled nothing yet: its checkpoint is the start.
    let mut late = store
        .catch_up("late", CatchUpStart::Beginning, Filter::All)
        .unwrap();
    late.checkpoint_at(Position::START).unwrap();
    drop(late);
    store.close().unwrap();
    let backup = dir.path().join("b.jsonl");
    assert!(
        annals(&["export", path(&original), path(&backup)])
            .status
            .success()
    );

    // The first restore stopped after 50 events (a file cut there, with a trailer that
    // agrees, stands for it); the second imports everything.
    let text = std::fs::read_to_string(&backup).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let partial = dir.path().join("partial.jsonl");
    std::fs::write(
        &partial,
        format!(
            "{}\n{}\n{{\"annals_export_end\":true,\"events\":50}}\n",
            lines[0],
            lines[1..51].join("\n")
        ),
    )
    .unwrap();
    let restored = dir.path().join("restored.annals");
    let o = annals(&["import", path(&partial), path(&restored)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = annals(&["import", path(&backup), path(&restored)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let copy = Store::open(&restored).unwrap();
    let mut late = copy
        .catch_up("late", CatchUpStart::Beginning, Filter::All)
        .unwrap();
    assert_eq!(late.poll(usize::MAX).unwrap().len(), 100, "none skipped");
}

#[test]
fn delete_scavenge_and_erase_from_the_command_line_and_info_dump_export_follow() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.annals");
    {
        let store = Store::builder().segment_size(1 << 20).open(&file).unwrap();
        for k in 0..8 {
            for chunk in 0..10 {
                let events: Vec<_> = (0..50)
                    .map(|i| {
                        NewEvent::new(
                            "Logged",
                            format!(
                                r#"{{"k":{k},"i":{i},"c":{chunk},"pad":"{}"}}"#,
                                "x".repeat(300)
                            ),
                        )
                    })
                    .collect();
                store
                    .append(&format!("log-{k}"), ExpectedVersion::Any, events)
                    .unwrap();
            }
        }
        store
            .append(
                "person-1",
                ExpectedVersion::NoStream,
                [NewEvent::new("Named", "SECRET-NAME-77")],
            )
            .unwrap();
        store.close().unwrap();
    }
    let o = annals(&["delete", path(&file), "log-0", "--expected", "499"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("deleted `log-0`"));
    let o = annals(&["delete", path(&file), "log-1", "--expected", "3"]);
    assert!(!o.status.success(), "a wrong expected version is refused");
    assert!(
        stderr(&o).contains("wrong expected version"),
        "{}",
        stderr(&o)
    );
    let o = annals(&["delete", path(&file), "log-1", "--tombstone"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Fill the segment being written so that the deleted events are all in sealed ones.
    {
        let store = Store::open(&file).unwrap();
        for _ in 0..40 {
            let events: Vec<_> = (0..50)
                .map(|_| NewEvent::new("Fill", "x".repeat(300)))
                .collect();
            store.append("fill", ExpectedVersion::Any, events).unwrap();
        }
        store.close().unwrap();
    }
    let o = annals(&["info", path(&file), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(info["reclaimable"]["events"], 1000);
    let promised = info["reclaimable"]["bytes_freed"].as_u64().unwrap();
    assert!(promised > 1000 * 300, "{info}");
    let o = annals(&["scavenge", path(&file), "--dry-run", "--json"]);
    let dry: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(dry["bytes_freed"].as_u64(), Some(promised));
    assert_eq!(dry["disk_use_before"], dry["disk_use_after"]);
    let o = annals(&["scavenge", path(&file), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let done: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(done["events"], 1000);
    let freed =
        done["disk_use_before"].as_u64().unwrap() - done["disk_use_after"].as_u64().unwrap();
    assert!(
        freed >= promised * 9 / 10,
        "du dropped {freed}, {promised} promised"
    );
    let o = annals(&["verify", path(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("gaps"), "{}", stdout(&o));
    // Erase: the name is gone from the file.
    assert!(hash(&file).windows(14).any(|w| w == b"SECRET-NAME-77"));
    let o = annals(&["erase", path(&file), "person-1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("erased 1 events"), "{}", stdout(&o));
    assert!(!hash(&file).windows(14).any(|w| w == b"SECRET-NAME-77"));
    // Dump and export leave the deleted out; the export imports with every version kept.
    let o = annals(&["dump", path(&file), "--stream", "log-0"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");
    let o = annals(&["dump", path(&file), "--category", "log"]);
    assert_eq!(stdout(&o).lines().count(), 6 * 500);
    let export = dir.path().join("e.jsonl");
    let o = annals(&["export", path(&file), path(&export)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(
        !text.contains("\"log-0\""),
        "a deleted stream's events are not exported"
    );
    {
        // The deleted stream started again, versions continuing: kept through the move.
        let store = Store::open(&file).unwrap();
        store
            .append(
                "log-0",
                ExpectedVersion::NoStream,
                [NewEvent::new("Back", "{}")],
            )
            .unwrap();
        store.close().unwrap();
    }
    let export = dir.path().join("e2.jsonl");
    let o = annals(&["export", path(&file), path(&export)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let copy = dir.path().join("copy.annals");
    let o = annals(&["import", path(&export), path(&copy)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let copied = Store::open(&copy).unwrap();
    assert_eq!(copied.stream_version("log-0").unwrap(), Some(500));
    assert_eq!(copied.stream_version("log-1").unwrap(), None);
    assert!(matches!(
        copied.append("log-1", ExpectedVersion::Any, [NewEvent::new("E", "")]),
        Err(annals::Error::StreamDeleted { .. })
    ));
    assert_eq!(copied.stream_version("log-2").unwrap(), Some(499));
    assert_eq!(copied.stream_version("person-1").unwrap(), None);
    copied.close().unwrap();
    let o = annals(&["import", path(&export), path(&copy)]);
    assert!(o.status.success(), "importing again: {}", stderr(&o));
    assert!(
        stderr(&o).contains("all were already there"),
        "{}",
        stderr(&o)
    );
}
