//! Moving a store to PostgreSQL and back with `annals export` and `annals import`: file →
//! PostgreSQL → file keeps every event byte for byte (ids, types, stream versions, timestamps,
//! metadata, payloads, flags) in the same global order, and the engine's records move with
//! their events (the outbox sends only what it had not sent, its parked event is the copy of
//! the one it parked, a projection resumes at the first event it had not handled, a snapshot
//! keeps its version). Runs against the server `ANNALS_PG_URL` names; without it, it says it
//! skipped.

use std::path::Path;
use std::process::{Command, Output};

use annals::pg::PgStore;
use annals::{ExpectedVersion, NewEvent, PayloadEncoding, Store};
use annals_bench::pg::PgDatabase;
use serde_json::Value;
use uuid::Uuid;

mod common;
use common::{URL, place_orders, run_outbox, run_projection, server};

fn annals(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(args)
        .env_remove(URL)
        .output()
        .expect("run the annals binary")
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "exit {:?}: {err}", o.status);
    err
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The event lines of an export, split into the application's events and the engine's
/// records, each a JSON object without its `position` (positions are renumbered on the way);
/// and the positions, which must increase.
fn lines(file: &Path) -> (Vec<Value>, Vec<Value>) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.first().unwrap().get("annals_export").is_some());
    assert!(rows.last().unwrap().get("annals_export_end").is_some());
    rows = rows[1..rows.len() - 1].to_vec();
    let positions: Vec<u64> = rows
        .iter()
        .map(|r| r["position"].as_u64().unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase in the file"
    );
    let (mut events, mut records) = (Vec::new(), Vec::new());
    for mut r in rows {
        r.as_object_mut().unwrap().remove("position");
        if r["stream"].as_str().unwrap().starts_with('$') {
            records.push(r);
        } else {
            events.push(r);
        }
    }
    (events, records)
}

#[test]
fn a_store_moves_to_postgresql_and_back_with_every_event_identical() {
    let Some(server) = server("export/import through PostgreSQL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("shop.annals");
    let store = Store::builder()
        .segment_size(64 * 1024)
        .open(&original)
        .unwrap();
    let first = place_orders(&store, 0..192);
    // Every kind of payload and field.
    for i in 0..20u32 {
        let mut bin = NewEvent::new("Binary", vec![0xFFu8, 0x00, i as u8, 0x80])
            .with_metadata(vec![0xC3, 0x28])
            .with_causation_id(Uuid::now_v7())
            .with_schema_version(3);
        bin.encoding = PayloadEncoding::Bincode;
        store
            .append(
                &format!("blob-{}", i % 2),
                ExpectedVersion::Any,
                [bin, NewEvent::new("Raw", "plain text").with_metadata("m")],
            )
            .unwrap();
    }
    // A stream whose oldest events are gone: it keeps its versions.
    store.start_stream_at("legacy-1", 40).unwrap();
    store
        .append(
            "legacy-1",
            ExpectedVersion::NoStream,
            [NewEvent::new("Migrated", "{}")],
        )
        .unwrap();
    let (sent, parked) = run_outbox(&store);
    assert_eq!((sent.len(), parked.as_slice()), (191, &[first[7]][..]));
    assert_eq!(run_projection(&store).len(), 192);
    store
        .save_snapshot("order-1", 14, 2, b"{\"total\": 9}".to_vec())
        .unwrap();
    // Neither published nor projected when the backup is taken.
    let later = place_orders(&store, 192..200);
    store.close().unwrap();

    // file → PostgreSQL.
    let backup = dir.path().join("backup.jsonl");
    ok(&annals(&["export", path(&original), path(&backup)]));
    let db = PgDatabase::create(&server).unwrap();
    let pg_url = format!("pg:{}", db.url());
    let said = ok(&annals(&["import", path(&backup), &pg_url]));
    assert!(said.contains("positions moved"), "{said}");
    // Importing the same file again writes nothing.
    let said = ok(&annals(&["import", path(&backup), &pg_url]));
    assert!(said.contains("already there"), "{said}");

    // PostgreSQL → file.
    let from_pg = dir.path().join("from-pg.jsonl");
    ok(&annals(&["export", &pg_url, path(&from_pg)]));
    let restored = dir.path().join("restored.annals");
    ok(&annals(&["import", path(&from_pg), path(&restored)]));
    let again = dir.path().join("again.jsonl");
    ok(&annals(&["export", path(&restored), path(&again)]));

    // Every application event identical, in the same order, through both moves.
    let (events, records) = lines(&backup);
    let (pg_events, pg_records) = lines(&from_pg);
    let (back_events, back_records) = lines(&again);
    assert_eq!(events.len(), 192 + 40 + 1 + 8);
    assert_eq!(pg_events, events, "file → PostgreSQL");
    assert_eq!(back_events, events, "file → PostgreSQL → file");
    let legacy = events.iter().find(|e| e["stream"] == "legacy-1").unwrap();
    assert_eq!(legacy["version"], 40);
    // The engine's records move too (their positions are rewritten, so compare the rest).
    let kinds = |r: &[Value]| -> Vec<(String, String)> {
        r.iter()
            .map(|r| {
                (
                    r["stream"].as_str().unwrap().to_owned(),
                    r["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(kinds(&pg_records), kinds(&records));
    assert_eq!(kinds(&back_records), kinds(&records));

    // In PostgreSQL: the outbox sends only what the original had not sent, its parked event
    // is the copy of the one it parked; the projection resumes where it stopped.
    let pg = PgStore::connect(db.url()).unwrap();
    assert_eq!(pg.stream_version("legacy-1").unwrap(), Some(40));
    let (pg_sent, pg_parked) = run_outbox(&pg);
    assert_eq!(pg_sent, later);
    assert_eq!(pg_parked, [first[7]]);
    assert_eq!(run_projection(&pg), later);
    // Used on PostgreSQL (records rewritten there, round after round), then moved again, to a
    // new store file and to a new database: still nothing is sent or handled twice.
    let pg_orders = |range: std::ops::Range<u32>| -> Vec<Uuid> {
        range
            .map(|i| {
                let e =
                    NewEvent::new("OrderPlaced", format!(r#"{{"order": {i}}}"#)).published(true);
                let id = e.id;
                pg.append(&format!("order-{}", i % 13), ExpectedVersion::Any, [e])
                    .unwrap();
                id
            })
            .collect()
    };
    for round in 0..3 {
        let placed = pg_orders(300 + round * 2..302 + round * 2);
        assert_eq!(run_outbox(&pg).0, placed);
        assert_eq!(run_projection(&pg), placed);
    }
    let pending = pg_orders(400..402);
    let moved = dir.path().join("moved-again.jsonl");
    ok(&annals(&["export", &pg_url, path(&moved)]));
    let db2 = PgDatabase::create(&server).unwrap();
    ok(&annals(&[
        "import",
        path(&moved),
        &format!("pg:{}", db2.url()),
    ]));
    let pg2 = PgStore::connect(db2.url()).unwrap();
    assert_eq!(run_outbox(&pg2).0, pending);
    assert_eq!(run_projection(&pg2), pending);
    drop(pg2);
    db2.remove().unwrap();
    let file2 = dir.path().join("moved-again.annals");
    ok(&annals(&["import", path(&moved), path(&file2)]));
    let store2 = Store::open(&file2).unwrap();
    assert_eq!(run_outbox(&store2).0, pending);
    assert_eq!(run_projection(&store2), pending);
    drop(store2);
    drop(pg);
    // And in the store restored from PostgreSQL, the same.
    let copy = Store::open(&restored).unwrap();
    let (copy_sent, copy_parked) = run_outbox(&copy);
    assert_eq!(copy_sent, later);
    assert_eq!(copy_parked, [first[7]]);
    assert_eq!(run_projection(&copy), later);
    assert_eq!(
        copy.load_snapshot("order-1")
            .unwrap()
            .map(|(v, s, _)| (v, s)),
        Some((14, 2))
    );
    assert_eq!(copy.stream_version("legacy-1").unwrap(), Some(40));
    drop(copy);
    db.remove().unwrap();
}

#[test]
fn a_database_that_is_not_there_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = annals(&[
        "export",
        "pg:host=/nonexistent/socket user=nobody dbname=none",
        path(&dir.path().join("x.jsonl")),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("PostgreSQL"), "{err}");
    assert!(
        err.contains("/nonexistent/socket"),
        "it names where it looked: {err}"
    );
    assert!(
        !dir.path().join("x.jsonl").exists(),
        "nothing written for a failed export"
    );
    // The commands that look inside a store file say that a database is not one.
    let o = annals(&["info", "pg:host=/tmp dbname=shop"]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("names a PostgreSQL database"), "{err}");
}
