//! Read-only opens while a writer holds the store: they see only what the writer made durable
//! (a power cut takes nothing they saw), every commit whole and in order, and they follow new
//! commits, a writer restart, and a writer in another process.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::storage::{CrashPolicy, FaultFs, FileSystem};
use annals::{Direction, Durability, Error, ExpectedVersion, NewEvent, Position, Store};

fn ids(store: &Store) -> Vec<uuid::Uuid> {
    store
        .read_all(Position::START, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(|e| e.unwrap().id())
        .collect()
}

fn append(store: &Store, stream: &str, n: usize) {
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent::new("Tick", format!("{i}")))
        .collect();
    store.append(stream, ExpectedVersion::Any, events).unwrap();
}

#[test]
fn a_read_only_open_never_sees_what_a_power_cut_could_take_away() {
    let fs = FaultFs::new();
    let shared: Arc<dyn FileSystem> = Arc::new(fs.clone());
    let open = |durability| {
        Store::builder()
            .shared_file_system(shared.clone())
            .durability(durability)
            .open("/live")
            .unwrap()
    };
    let writer = open(Durability::Immediate);
    for i in 0..5 {
        append(&writer, &format!("s-{i}"), 3);
    }
    let reader = Store::builder()
        .shared_file_system(shared.clone())
        .read_only(true)
        .open("/live")
        .unwrap();
    assert!(reader.follows_writer());
    assert_eq!(ids(&reader).len(), 15);
    assert!(matches!(
        reader.append("x", ExpectedVersion::Any, [NewEvent::new("T", "")]),
        Err(Error::ReadOnly { .. })
    ));
    // Acknowledged with a sync: seen by the next read.
    append(&writer, "s-5", 3);
    assert_eq!(ids(&reader).len(), 18);
    writer.close().unwrap();

    // A writer that does not sync: its commits stay out of sight...
    let writer = open(Durability::NoSync);
    for i in 0..7 {
        append(&writer, &format!("n-{i}"), 2);
    }
    assert_eq!(writer.stream_version("n-6").unwrap(), Some(1));
    let seen = ids(&reader);
    assert_eq!(seen.len(), 18, "no unsynced commit is visible");
    assert_eq!(reader.stream_version("n-0").unwrap(), None);
    // ...and a power cut now takes none of what the reader saw.
    let after = fs.crash(CrashPolicy::DropUnsynced);
    let recovered = Store::builder().file_system(after).open("/live").unwrap();
    let kept = ids(&recovered);
    assert!(seen.iter().all(|id| kept.contains(id)));
    drop(recovered);
    // Once the writer syncs, the reader sees them.
    writer.flush_index().unwrap();
    assert_eq!(ids(&reader).len(), 32);
    assert_eq!(reader.stream_version("n-6").unwrap(), Some(1));
    // The writer closes, a new one opens the store: the reader follows it too.
    writer.close().unwrap();
    let writer = open(Durability::Immediate);
    append(&writer, "later", 4);
    assert_eq!(reader.stream_version("later").unwrap(), Some(3));
    assert_eq!(
        reader.end_position(),
        writer.end_position(),
        "everything acknowledged"
    );
}

#[test]
fn a_read_only_open_without_a_writer_is_a_snapshot_that_keeps_writers_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap");
    append(&Store::open(&path).unwrap(), "a", 2);
    let reader = Store::open_read_only(&path).unwrap();
    assert!(!reader.follows_writer());
    assert_eq!(reader.stream_version("a").unwrap(), Some(1));
    assert!(matches!(Store::open(&path), Err(Error::Locked { .. })));
    // Another read-only open shares it.
    assert_eq!(
        Store::open_read_only(&path)
            .unwrap()
            .stream_version("a")
            .unwrap(),
        Some(1)
    );
    drop(reader);
    append(&Store::open(&path).unwrap(), "a", 1);
}

#[test]
fn catch_up_on_a_read_only_open_follows_the_writer() {
    use annals::subscriptions::{CatchUpStart, Filter};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cu");
    let writer = Arc::new(Store::open(&path).unwrap());
    append(&writer, "order-1", 1);
    let reader = Store::open_read_only(&path).unwrap();
    let mut sub = reader
        .catch_up("watch", CatchUpStart::Beginning, Filter::All)
        .unwrap();
    assert_eq!(sub.poll(100).unwrap().len(), 1);
    let w = writer.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        append(&w, "order-2", 2);
    });
    assert!(
        sub.wait(Duration::from_secs(10)),
        "woken by the other handle's commit"
    );
    t.join().unwrap();
    let got = sub.poll(100).unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|e| e.stream() == "order-2"));
    // Checkpoints cannot be written through a read-only open.
    assert!(matches!(sub.checkpoint(), Err(Error::ReadOnly { .. })));
}

const DIR_VAR: &str = "ANNALS_LIVE_CHILD_DIR";

/// The writer in another process: commits of 3 events to a new stream plus 1 to `log`, in
/// one transaction, printing `A n` once commit `n` is acknowledged.
#[test]
#[ignore = "run by a_reader_in_another_process_sees_whole_acknowledged_commits"]
fn child_live_writer() {
    let dir = std::env::var(DIR_VAR).expect("started by the parent test");
    let store = Store::open(Path::new(&dir).join("live")).expect("child open");
    println!("READY");
    for n in 0u64.. {
        store
            .transaction()
            .append(
                &format!("c-{n}"),
                ExpectedVersion::NoStream,
                (0..3).map(|i| NewEvent::new("Part", format!("{i}"))),
            )
            .append(
                "log",
                ExpectedVersion::Any,
                [NewEvent::new("Done", n.to_string())],
            )
            .commit()
            .expect("child commit");
        let mut out = std::io::stdout().lock();
        writeln!(out, "A {n}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn a_reader_in_another_process_sees_whole_acknowledged_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "live_read::child_live_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The test harness prints its own lines first.
    while !rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap()
        .ends_with("READY")
    {}
    let reader = Store::open_read_only(&path).unwrap();
    assert!(reader.follows_writer(), "the child holds the store");
    let started = Instant::now();
    let (mut looks, mut acked_max) = (0u64, None::<u64>);
    let mut seen_commits = 0u64;
    while started.elapsed() < Duration::from_millis(1500) || seen_commits < 20 {
        // Every acknowledgement read so far is visible to the next read.
        while let Ok(line) = rx.try_recv() {
            if let Some(n) = line.strip_prefix("A ") {
                acked_max = Some(n.parse().unwrap());
            }
        }
        // Whole commits, in order: `log` has one event per commit, and each of them has its
        // stream with all 3 events.
        let log = reader.stream_version("log").unwrap().map_or(0, |v| v + 1);
        if let Some(acked) = acked_max {
            assert!(
                log > acked,
                "commit {acked} was acknowledged, the reader sees {log}"
            );
        }
        let parts: Vec<_> = reader
            .read_all(Position::START, Direction::Forwards, usize::MAX)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        let log_events = parts.iter().filter(|e| e.stream() == "log").count() as u64;
        assert!(log_events >= log);
        assert_eq!(
            parts.len() as u64,
            log_events * 4,
            "every commit whole: 3 parts and its log entry"
        );
        for (i, e) in parts.iter().filter(|e| e.stream() == "log").enumerate() {
            assert_eq!(e.payload(), i.to_string().as_bytes(), "in commit order");
            assert_eq!(
                reader.stream_version(&format!("c-{i}")).unwrap(),
                Some(2),
                "commit {i} whole"
            );
        }
        seen_commits = log_events;
        looks += 1;
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    lines.join().unwrap();
    // What the reader saw is all there after the writer's death.
    let seen = ids(&reader);
    drop(reader);
    let reopened = Store::open(&path).unwrap();
    let kept = ids(&reopened);
    assert!(kept.len() >= seen.len());
    assert_eq!(&kept[..seen.len()], &seen[..]);
    eprintln!(
        "live reader: {looks} looks, {seen_commits} whole commits seen while the writer ran, {} \
         events after its kill",
        kept.len()
    );
}

#[test]
fn verify_is_clean_while_commits_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy");
    let writer = Arc::new(Store::open(&path).unwrap());
    for i in 0..2000 {
        append(&writer, &format!("s-{}", i % 10), 1);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (w, s) = (writer.clone(), stop.clone());
    let busy = std::thread::spawn(move || {
        let mut n = 0u64;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            append(&w, &format!("s-{}", n % 10), 1);
            n += 1;
        }
        n
    });
    let reader = Store::open_read_only(&path).unwrap();
    assert!(reader.follows_writer());
    for store in [&reader, &*writer] {
        for _ in 0..3 {
            let report = store.verify(&mut |_, _| {}).unwrap();
            assert!(report.is_clean(), "{:?}", report.problem);
            assert!(report.events >= 2000);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        busy.join().unwrap() > 0,
        "commits went on during the checks"
    );
}

#[test]
fn a_log_that_goes_back_under_a_follower_is_an_error_not_a_silent_view() {
    let fs = FaultFs::new();
    let shared: Arc<dyn FileSystem> = Arc::new(fs.clone());
    let writer = Store::builder()
        .shared_file_system(shared.clone())
        .open("/back")
        .unwrap();
    append(&writer, "a", 3);
    let reader = Store::builder()
        .shared_file_system(shared.clone())
        .read_only(true)
        .open("/back")
        .unwrap();
    assert_eq!(reader.stream_version("a").unwrap(), Some(2));
    // What `annals repair` of a cut log and a new writer would publish: an end before what
    // the reader has read (the live file's layout: end and its complement at byte 32).
    let live = fs
        .open(
            Path::new("/back.annals.live"),
            annals::storage::OpenMode::Existing,
        )
        .unwrap();
    let end = 4096u64;
    let mut b = end.to_le_bytes().to_vec();
    b.extend((!end).to_le_bytes());
    live.write_all_at(&b, 32).unwrap();
    let e = reader.stream_version("a").unwrap_err();
    assert!(e.to_string().contains("cut or replaced"), "{e}");
    // A live file of another store (the store was replaced at the same path) is refused too.
    live.write_all_at(&[0u8; 16], 12).unwrap();
    let e = reader.stream_version("a").unwrap_err();
    assert!(e.to_string().contains("replaced"), "{e}");
    drop(writer);
}
