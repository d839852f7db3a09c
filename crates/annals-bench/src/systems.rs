//! The three file-based systems under test (PostgreSQL is in `pg`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use annals::{Direction, ExpectedVersion, NewEvent, PayloadEncoding, Position, Store};
use parking_lot::Mutex;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::aggregate::{Account, aggregate_stream};
use crate::{BenchResult, Event, PayloadCodec, System};

/// Bytes taken on the disk (allocated blocks) by the files in `dir` whose names start with
/// `prefix`.
pub fn disk_usage(dir: &Path, prefix: &str) -> BenchResult<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let meta = entry.metadata()?;
            if meta.is_file() {
                total += meta.blocks() * 512;
            }
        }
    }
    Ok(total)
}

/// Whether annals' reads take owned events (`ANNALS_BENCH_OWNED=1`) rather than borrowed views.
fn owned_reads() -> bool {
    std::env::var_os("ANNALS_BENCH_OWNED").is_some_and(|v| v == "1")
}

/// `e` as annals (and its PostgreSQL backend) store it, stamped `now`.
pub(crate) fn new_event(e: &Event, now: std::time::SystemTime) -> NewEvent {
    NewEvent {
        id: e.id,
        event_type: e.event_type.into(),
        schema_version: 1,
        timestamp: now,
        correlation_id: None,
        causation_id: None,
        publish: false,
        encoding: match e.codec {
            Some(PayloadCodec::Json) => PayloadEncoding::Json,
            Some(PayloadCodec::Bincode) => PayloadEncoding::Bincode,
            None => PayloadEncoding::Raw,
        },
        metadata: bytes::Bytes::new(),
        payload: e.payload.clone(),
    }
}

/// annals, default options (durable appends, group commit).
pub struct Annals {
    /// The store.
    pub store: Store,
    dir: PathBuf,
}

/// Opens (or creates) an annals store named `annals` in `dir`.
pub fn open_annals(dir: &Path) -> BenchResult<Annals> {
    Ok(Annals {
        store: Store::open(dir.join("annals"))?,
        dir: dir.to_owned(),
    })
}

impl System for Annals {
    fn name(&self) -> &'static str {
        "annals"
    }

    fn append(&self, stream: &str, events: &[Event]) -> BenchResult<()> {
        let now = std::time::SystemTime::now();
        let events = events.iter().map(|e| new_event(e, now));
        self.store.append(stream, ExpectedVersion::Any, events)?;
        Ok(())
    }

    /// Reads events in place (`next_ref`: borrowed, as SQLite's `get_ref` and redb's access
    /// guards lend theirs); `ANNALS_BENCH_OWNED=1` reads owned events instead.
    fn read_stream(&self, stream: &str) -> BenchResult<u64> {
        let mut events = self
            .store
            .read_stream(stream, 0, Direction::Forwards, usize::MAX)?;
        let mut n = 0;
        if owned_reads() {
            for e in events {
                let e = e?;
                std::hint::black_box((e.event_type().len(), e.payload()[0]));
                n += 1;
            }
            return Ok(n);
        }
        while let Some(e) = events.next_ref() {
            let e = e?;
            std::hint::black_box((e.event_type().len(), e.payload()[0]));
            n += 1;
        }
        Ok(n)
    }

    fn read_all(&self) -> BenchResult<u64> {
        let mut events = self
            .store
            .read_all(Position::START, Direction::Forwards, usize::MAX)?;
        let mut n = 0;
        if owned_reads() {
            for e in events {
                let e = e?;
                std::hint::black_box((e.stream().len(), e.event_type().len(), e.payload()[0]));
                n += 1;
            }
            return Ok(n);
        }
        while let Some(e) = events.next_ref() {
            let e = e?;
            std::hint::black_box((e.stream().len(), e.event_type().len(), e.payload()[0]));
            n += 1;
        }
        Ok(n)
    }

    /// Through the domain floor's repository, which decodes each event by the encoding it
    /// records.
    fn load_aggregate(&self, codec: PayloadCodec) -> BenchResult<Account> {
        let (_, id) = aggregate_stream(codec);
        Ok(annals::domain::Repository::<Account, _>::new(&self.store).get(id)?)
    }

    fn disk_bytes(&self) -> BenchResult<u64> {
        disk_usage(&self.dir, "annals")
    }
}

/// SQLite: WAL, `synchronous=FULL`, unique `(stream, version)`; a connection per thread.
pub struct Sqlite {
    path: std::path::PathBuf,
    pool: Mutex<Vec<Connection>>,
}

/// Opens (or creates) a SQLite database `sqlite.db` in `dir`.
pub fn open_sqlite(dir: &Path) -> BenchResult<Sqlite> {
    let sqlite = Sqlite {
        path: dir.join("sqlite.db"),
        pool: Mutex::new(Vec::new()),
    };
    let conn = sqlite.connect()?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (
            position INTEGER PRIMARY KEY,
            stream TEXT NOT NULL,
            version INTEGER NOT NULL,
            id BLOB NOT NULL,
            type TEXT NOT NULL,
            created INTEGER NOT NULL,
            payload BLOB NOT NULL,
            UNIQUE (stream, version)
        );",
    )?;
    sqlite.pool.lock().push(conn);
    Ok(sqlite)
}

impl Sqlite {
    fn connect(&self) -> BenchResult<Connection> {
        let conn = Connection::open(&self.path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        Ok(conn)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> BenchResult<T>) -> BenchResult<T> {
        let pooled = self.pool.lock().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let result = f(&mut conn);
        self.pool.lock().push(conn);
        result
    }
}

impl System for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn append(&self, stream: &str, events: &[Event]) -> BenchResult<()> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let last: Option<i64> = tx
                    .prepare_cached("SELECT MAX(version) FROM events WHERE stream = ?1")?
                    .query_row(params![stream], |r| r.get(0))
                    .optional()?
                    .flatten();
                let first = last.map_or(0, |v| v + 1);
                let created = nanos_since_epoch(std::time::SystemTime::now()) as i64;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO events (stream, version, id, type, created, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for (version, e) in (first..).zip(events) {
                    insert.execute(params![stream, version, &e.id.as_bytes()[..], e.event_type, created, &e.payload[..]])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn read_stream(&self, stream: &str) -> BenchResult<u64> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT version, id, type, created, payload FROM events WHERE stream = ?1 ORDER BY version",
            )?;
            let mut rows = stmt.query(params![stream])?;
            let mut n = 0;
            while let Some(row) = rows.next()? {
                let t = row.get_ref(2)?.as_str()?;
                let p = row.get_ref(4)?.as_blob()?;
                std::hint::black_box((t.len(), p[0]));
                n += 1;
            }
            Ok(n)
        })
    }

    fn read_all(&self) -> BenchResult<u64> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT stream, version, id, type, created, payload FROM events ORDER BY position",
            )?;
            let mut rows = stmt.query([])?;
            let mut n = 0;
            while let Some(row) = rows.next()? {
                let s = row.get_ref(0)?.as_str()?;
                let t = row.get_ref(3)?.as_str()?;
                let p = row.get_ref(5)?.as_blob()?;
                std::hint::black_box((s.len(), t.len(), p[0]));
                n += 1;
            }
            Ok(n)
        })
    }

    fn load_aggregate(&self, codec: PayloadCodec) -> BenchResult<Account> {
        let (stream, _) = aggregate_stream(codec);
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT type, payload FROM events WHERE stream = ?1 ORDER BY version",
            )?;
            let mut rows = stmt.query(params![stream])?;
            let mut account = Account::default();
            while let Some(row) = rows.next()? {
                let (kind, payload) = (row.get_ref(0)?.as_str()?, row.get_ref(1)?.as_blob()?);
                account.apply_encoded(kind, payload, codec)?;
            }
            Ok(account)
        })
    }

    fn disk_bytes(&self) -> BenchResult<u64> {
        let dir = self.path.parent().ok_or("no folder")?;
        disk_usage(dir, "sqlite.db")
    }
}

impl Sqlite {
    /// Deletes every event of `streams` (one transaction), as an application on SQLite would.
    pub fn delete_streams(&self, streams: &[String]) -> BenchResult<()> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut delete = tx.prepare_cached("DELETE FROM events WHERE stream = ?1")?;
                for stream in streams {
                    delete.execute(params![stream])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Checkpoints the WAL into the database and truncates it.
    pub fn checkpoint(&self) -> BenchResult<()> {
        self.with(|conn| {
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
            Ok(())
        })
    }

    /// Gives the space of deleted rows back to the file system: `VACUUM` (which rewrites the
    /// database and holds it exclusively while it runs), then a WAL checkpoint that truncates.
    pub fn vacuum(&self) -> BenchResult<()> {
        self.with(|conn| {
            conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
            Ok(())
        })
    }
}

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const STREAMS: TableDefinition<(&str, u64), u64> = TableDefinition::new("streams");

/// A plain redb database: `log` (sequence → encoded event) and `streams` ((stream, version) →
/// sequence), one durable write transaction per append.
pub struct Redb {
    db: redb::Database,
    dir: PathBuf,
}

/// Opens (or creates) a redb database `redb.db` in `dir`. The tables are created by a write
/// transaction only when they are missing, so reopening an existing database writes nothing.
pub fn open_redb(dir: &Path) -> BenchResult<Redb> {
    let db = redb::Database::create(dir.join("redb.db"))?;
    if !has_tables(&db)? {
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(STREAMS)?;
        txn.commit()?;
    }
    Ok(Redb {
        db,
        dir: dir.to_owned(),
    })
}

/// Whether both tables of the benchmark exist in `db`.
fn has_tables(db: &redb::Database) -> BenchResult<bool> {
    let txn = db.begin_read()?;
    for table in [
        txn.open_table(LOG).map(drop),
        txn.open_table(STREAMS).map(drop),
    ] {
        match table {
            Ok(()) => {}
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// `[stream_len u16][stream][version u64][id 16][type_len u16][type][created u64][payload]`.
fn encode(stream: &str, version: u64, e: &Event, created: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(44 + stream.len() + e.event_type.len() + e.payload.len());
    b.extend_from_slice(&(stream.len() as u16).to_le_bytes());
    b.extend_from_slice(stream.as_bytes());
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(e.id.as_bytes());
    b.extend_from_slice(&(e.event_type.len() as u16).to_le_bytes());
    b.extend_from_slice(e.event_type.as_bytes());
    b.extend_from_slice(&created.to_le_bytes());
    b.extend_from_slice(&e.payload);
    b
}

/// Stream length, type length and first payload byte of an encoded event.
fn touch(b: &[u8]) -> (usize, usize, u8) {
    let (s, t, payload) = fields(b);
    (s, t.len(), payload.first().copied().unwrap_or(0))
}

/// Stream length, type and payload of an encoded event.
fn fields(b: &[u8]) -> (usize, &str, &[u8]) {
    let s = u16::from_le_bytes([b[0], b[1]]) as usize;
    let t_at = 2 + s + 8 + 16;
    let t = u16::from_le_bytes([b[t_at], b[t_at + 1]]) as usize;
    let kind = std::str::from_utf8(&b[t_at + 2..t_at + 2 + t]).unwrap_or("");
    (s, kind, &b[t_at + 2 + t + 8..])
}

impl Redb {
    /// Deletes every event of `streams` (one durable transaction).
    pub fn delete_streams(&self, streams: &[String]) -> BenchResult<()> {
        let txn = self.db.begin_write()?;
        {
            let mut index = txn.open_table(STREAMS)?;
            let mut log = txn.open_table(LOG)?;
            for stream in streams {
                let seqs: Vec<(u64, u64)> = index
                    .range((stream.as_str(), 0)..=(stream.as_str(), u64::MAX))?
                    .map(|e| e.map(|(k, v)| (k.value().1, v.value())))
                    .collect::<Result<_, _>>()?;
                for (version, seq) in seqs {
                    log.remove(seq)?;
                    index.remove((stream.as_str(), version))?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Gives the space of deleted entries back: redb's `compact`, which needs the database to
    /// itself (no transaction, no other handle) while it runs.
    pub fn compact(&mut self) -> BenchResult<()> {
        self.db.compact()?;
        Ok(())
    }
}

impl System for Redb {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn append(&self, stream: &str, events: &[Event]) -> BenchResult<()> {
        let txn = self.db.begin_write()?;
        {
            let mut streams = txn.open_table(STREAMS)?;
            let mut log = txn.open_table(LOG)?;
            let version = match streams.range((stream, 0)..=(stream, u64::MAX))?.next_back() {
                Some(entry) => entry?.0.value().1 + 1,
                None => 0,
            };
            let seq = match log.last()? {
                Some((k, _)) => k.value() + 1,
                None => 0,
            };
            let created = nanos_since_epoch(std::time::SystemTime::now());
            for (i, e) in (0u64..).zip(events) {
                log.insert(seq + i, encode(stream, version + i, e, created).as_slice())?;
                streams.insert((stream, version + i), seq + i)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn read_stream(&self, stream: &str) -> BenchResult<u64> {
        let txn = self.db.begin_read()?;
        let streams = txn.open_table(STREAMS)?;
        let log = txn.open_table(LOG)?;
        let mut n = 0;
        for entry in streams.range((stream, 0)..=(stream, u64::MAX))? {
            let seq = entry?.1.value();
            let event = log.get(seq)?.ok_or("dangling stream entry")?;
            std::hint::black_box(touch(event.value()));
            n += 1;
        }
        Ok(n)
    }

    fn read_all(&self) -> BenchResult<u64> {
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut n = 0;
        for entry in log.iter()? {
            std::hint::black_box(touch(entry?.1.value()));
            n += 1;
        }
        Ok(n)
    }

    fn load_aggregate(&self, codec: PayloadCodec) -> BenchResult<Account> {
        let (stream, _) = aggregate_stream(codec);
        let txn = self.db.begin_read()?;
        let streams = txn.open_table(STREAMS)?;
        let log = txn.open_table(LOG)?;
        let mut account = Account::default();
        for entry in streams.range((stream, 0)..=(stream, u64::MAX))? {
            let seq = entry?.1.value();
            let event = log.get(seq)?.ok_or("dangling stream entry")?;
            let (_, kind, payload) = fields(event.value());
            account.apply_encoded(kind, payload, codec)?;
        }
        Ok(account)
    }

    fn disk_bytes(&self) -> BenchResult<u64> {
        disk_usage(&self.dir, "redb.db")
    }
}

/// Nanoseconds since the Unix epoch (0 before it, saturating far after it): the `created`
/// column of SQLite and redb, as annals stores its timestamps.
fn nanos_since_epoch(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
