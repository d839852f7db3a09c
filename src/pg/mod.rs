//! The PostgreSQL backend (feature `postgres`): events in a PostgreSQL database, for when one
//! process is not enough. [`PgStore`] implements the [`Backend`] trait the file
//! [`Store`](crate::Store) implements (appends with every kind of expected version,
//! multi-stream transactions, idempotent re-appends by event id, reads by stream, the whole
//! log, category and event type in both directions, stream versions, synchronous
//! subscriptions, checkpoints), so [`Follower`] catch-up subscriptions and projections and
//! the transactional [`Outbox`](crate::outbox::Outbox) run on it unchanged; and the domain
//! floor implements its [`EventStore`](crate::domain::EventStore) for it (through this API
//! only), so the repository, the message bus, units of work and workflows do too.
//!
//! # Schema (version 1)
//!
//! | table | what |
//! |---|---|
//! | `annals_schema` | one row: the schema version (a newer one is refused) |
//! | `annals_head` | one row: the last position given out |
//! | `annals_streams` | each stream's current version |
//! | `annals_events` | the events: `position` (the global order, from 1), `stream`, `category`, `version`, `id` (unique), type, schema version, timestamp, correlation and causation ids, published flag, payload encoding, metadata and payload |
//!
//! The engine's own records live in `$` streams, as in the file store (the record formats are
//! in [`records`](crate::records)): catch-up checkpoints (`$checkpoint-NAME`), outbox
//! progress and parked events, snapshots, command-relay markers. A checkpoint or progress
//! record replaces the older ones of its stream in the same transaction, so they do not pile
//! up. So an export of either backend carries them, and an import into either restores them.
//!
//! # No gaps, no skips
//!
//! Every append locks the one `annals_head` row (`SELECT … FOR UPDATE`) before it gives out
//! positions, and holds it until it commits: appends commit one at a time, in position order.
//! So no event ever commits with a position lower than one a reader has already seen, and a
//! reader that follows the global order (`read_all` from the last position it saw) never skips
//! one, whatever the number of writers and processes. The price is that appends do not commit
//! in parallel (each still costs one round trip and one commit of the server); this is the
//! "serialising commits" answer, chosen over a high-water mark because it needs no
//! sequence and no reader-side waiting. Positions of superseded `$` records that were
//! replaced are missing from the order (readers skip over them; they are never reused).
//!
//! # What does not port to CockroachDB and YugabyteDB
//!
//! The SQL is plain: tables, a composite unique constraint, two secondary indexes, `ON
//! CONFLICT … DO UPDATE`, `SELECT … FOR UPDATE`, `= ANY($1)` with a `UUID[]` parameter. None
//! of it is PostgreSQL-only, but three things behave differently there:
//!
//! - `LOCK TABLE annals_schema IN EXCLUSIVE MODE` (one schema creator at a time): CockroachDB
//!   does not support `LOCK TABLE`; YugabyteDB accepts it only in recent versions. Two
//!   processes creating the schema at once would race harmlessly (every statement is `IF NOT
//!   EXISTS` or `ON CONFLICT DO NOTHING`), so this statement is the one to drop there.
//! - `SELECT … FOR UPDATE` serialises commits on PostgreSQL. CockroachDB runs `SERIALIZABLE`
//!   and may abort one of two conflicting transactions with a retry error (SQLSTATE 40001)
//!   instead of making it wait: an append would fail with [`Error::Database`] and must be
//!   retried (with the same event ids, which makes the retry safe).
//! - `CREATE DATABASE` in the tests and `pg_database_size` in the bench are PostgreSQL
//!   administration, not part of the store.
//!
//! ```no_run
//! use annals::pg::PgStore;
//! use annals::{Direction, ExpectedVersion, NewEvent, Position};
//!
//! let store = PgStore::connect("host=/run/postgresql user=app dbname=app")?;
//! store.append("order-1", ExpectedVersion::NoStream, [NewEvent::new("Placed", "{}")])?;
//! let all = store.read_all(Position::START, Direction::Forwards, 100)?;
//! assert_eq!(all[0].stream(), "order-1");
//! # Ok::<(), annals::Error>(())
//! ```

mod append;
mod dispatch;
mod read;
mod schema;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;
use r2d2_postgres::r2d2::{Pool, PooledConnection};

use crate::backend::{Backend, Follower, Part, SubscriptionCallback};
use crate::error::{Error, Result, SubscriberFailure};
use crate::event::{AppendResult, NewEvent, RecordedEvent};
use crate::names::check_stream_name;
use crate::store::typed::{self as typing, Registry, Upcasters};
use crate::subscriptions::{Filter, SubscriptionId};
use crate::values::{Direction, ExpectedVersion, Position};
use read::Scope;
pub use schema::SCHEMA_VERSION;
use schema::db;

/// One stream's part of a [`PgStore::transaction`] (the backends' [`Part`]).
pub type PgPart = Part;

/// A catch-up subscription on a [`PgStore`], with its checkpoint in the database.
pub type PgCatchUp = Follower<PgStore>;

type Conn = PooledConnection<PostgresConnectionManager<NoTls>>;

/// What the clones of one store share.
struct Shared {
    subscribers: dispatch::Subscribers,
    registry: RwLock<Registry>,
    upcasters: RwLock<Upcasters>,
    codec: crate::typed::Codec,
}

/// An event store in a PostgreSQL database; see the [module](self). Clones share the
/// connection pool, the subscriptions and the registered event types.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool<PostgresConnectionManager<NoTls>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// How a [`PgStore`] connects.
///
/// ```
/// use annals::pg::PgOptions;
///
/// let options = PgOptions { max_connections: 4, ..PgOptions::default() };
/// assert_eq!(options.min_idle, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgOptions {
    /// Most connections the pool opens (default 16). Every clone of the store shares them;
    /// appends hold one each while they run.
    pub max_connections: u32,
    /// Connections kept open while idle (default 1: a process that writes rarely holds one).
    pub min_idle: u32,
    /// How long getting a connection may take before it is an error (default 30 s).
    pub connect_timeout: Duration,
    /// The codec typed events are written with through the domain layer (default JSON; see
    /// [`StoreBuilder::codec`](crate::StoreBuilder::codec)).
    pub codec: crate::typed::Codec,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 16,
            min_idle: 1,
            connect_timeout: Duration::from_secs(30),
            codec: crate::typed::Codec::default(),
        }
    }
}

impl PgStore {
    /// Connects with the [default options](PgOptions) and creates the schema if it is
    /// missing. A database whose schema is newer than this build's is refused. `url` is a
    /// libpq connection string (`host=/path/to/socket user=u dbname=d`, or
    /// `postgresql://…`).
    pub fn connect(url: &str) -> Result<PgStore> {
        PgStore::connect_with(url, PgOptions::default())
    }

    /// Connects with `options`; see [`connect`](Self::connect).
    pub fn connect_with(url: &str, options: PgOptions) -> Result<PgStore> {
        if options.max_connections == 0 || options.min_idle > options.max_connections {
            return Err(Error::InvalidArgument(format!(
                "a pool of at most {} connections cannot keep {} idle",
                options.max_connections, options.min_idle
            )));
        }
        let mut config: postgres::Config = url.parse().map_err(db)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        // One connection first, to create the schema and to fail at once, with the server's
        // own words, when the server or the database is not there (a pool would retry until
        // its timeout and then say only that it timed out).
        let mut first = config.connect(NoTls).map_err(|e| {
            let hosts: Vec<String> = config
                .get_hosts()
                .iter()
                .map(|h| match h {
                    postgres::config::Host::Tcp(name) => name.clone(),
                    postgres::config::Host::Unix(dir) => dir.display().to_string(),
                })
                .collect();
            let reason = schema::reason(e);
            Error::Database {
                reason: format!(
                    "cannot connect to PostgreSQL at {} (database {}): {reason}",
                    if hosts.is_empty() {
                        "the default host".to_owned()
                    } else {
                        hosts.join(", ")
                    },
                    config.get_dbname().unwrap_or("named after the user"),
                ),
            }
        })?;
        schema::create(&mut first)?;
        drop(first);
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = Pool::builder()
            .max_size(options.max_connections)
            .min_idle(Some(options.min_idle))
            .connection_timeout(options.connect_timeout)
            .build_unchecked(manager);
        let store = PgStore {
            pool,
            shared: Arc::new(Shared {
                subscribers: Default::default(),
                registry: Default::default(),
                upcasters: Default::default(),
                codec: options.codec,
            }),
        };
        Ok(store)
    }

    fn conn(&self) -> Result<Conn> {
        self.pool.get().map_err(db)
    }

    /// Appends `events` to `stream` if its version is `expected`; see
    /// [`Store::append`](crate::Store::append) (the same rules, re-appends by event id
    /// included). `$` streams are refused (they are the engine's).
    pub fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> Result<AppendResult> {
        check_stream_name(stream, false)?;
        let mut r = self.transaction(vec![Part::new(stream, expected, events)])?;
        Ok(r.pop().expect("one result per part"))
    }

    /// Appends every part, all or nothing, each with its expected version (a part may name a
    /// stream an earlier part appended to). Then hands the new events to this process's
    /// synchronous subscriptions ([`subscribe`](Self::subscribe)) before returning.
    pub fn transaction(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>> {
        let subscribers = &self.shared.subscribers;
        if !subscribers.any() {
            return Ok(self.commit(&parts, false)?.results);
        }
        if subscribers.nested() {
            // Made from a callback: its events are handed out after the current event's.
            let committed = self.commit(&parts, true)?;
            subscribers.queue_nested(committed.events);
            return Ok(committed.results);
        }
        subscribers.commit_and_dispatch(|| {
            let c = self.commit(&parts, true)?;
            Ok((c.results, c.events))
        })
    }

    /// The version of the stream's last event, or `None` if it has none.
    pub fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        check_stream_name(stream, true)?;
        self.conn()?
            .query_opt(
                "SELECT version FROM annals_streams WHERE stream = $1",
                &[&stream],
            )
            .map_err(db)?
            .map(|r| schema::col::<Option<i64>>(&r, 0))
            .transpose()?
            .flatten()
            .map(|v| schema::unsigned(v, "version"))
            .transpose()
    }

    /// Makes a stream that does not exist yet start at `version`, as if the versions before
    /// it had been deleted: its first event gets `version` (it still does not exist for
    /// [`stream_version`](Self::stream_version) and `NoStream` until then). For moving a
    /// file store whose streams lost their oldest events (`annals import` does this); see
    /// [`Store::start_stream_at`](crate::Store::start_stream_at). Does nothing when the stream
    /// already has `version` events or more; a shorter stream is refused.
    pub fn start_stream_at(&self, stream: &str, version: u64) -> Result<()> {
        check_stream_name(stream, false)?;
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db)?;
        tx.query_one(
            "SELECT position FROM annals_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .map_err(db)?;
        let current: Option<Option<i64>> = tx
            .query_opt(
                "SELECT version FROM annals_streams WHERE stream = $1",
                &[&stream],
            )
            .map_err(db)?
            .map(|r| schema::col(&r, 0))
            .transpose()?;
        if let Some(Some(v)) = current {
            let v = schema::unsigned(v, "version")?;
            if v.checked_add(1).is_some_and(|n| n >= version) {
                return Ok(());
            }
            return Err(Error::InvalidArgument(format!(
                "`{stream}` exists (at version {v}): it cannot start at version {version}"
            )));
        }
        tx.execute(
            "INSERT INTO annals_streams (stream, version, start) VALUES ($1, NULL, $2) \
             ON CONFLICT (stream) DO UPDATE SET start = GREATEST(annals_streams.start, EXCLUDED.start)",
            &[&stream, &schema::signed(version, "version")?],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// Where the next event will go: every committed event is before it.
    pub fn end_position(&self) -> Result<Position> {
        Ok(Position::new(self.head()? + 1))
    }

    /// Events of `stream` from version `from` (at most `limit`, and at most 10,000 per call).
    pub fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        check_stream_name(stream, true)?;
        self.select(Scope::Stream(stream), from, direction, limit)
    }

    /// Events of every stream from `from` (inclusive), in position order, leaving out the
    /// engine's own `$` streams (at most `limit`, and at most 10,000 per call).
    pub fn read_all(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.select(Scope::All, from.as_u64(), direction, limit)
    }

    /// Like [`read_all`](Self::read_all), with the engine's `$` records.
    pub fn read_log(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.select(Scope::Log, from.as_u64(), direction, limit)
    }

    /// Events of one category (streams `CATEGORY` and `CATEGORY-…`) from `from`, in position
    /// order.
    pub fn read_category(
        &self,
        category: &str,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.select(Scope::Category(category), from.as_u64(), direction, limit)
    }

    /// Events of one type from `from`, in position order.
    pub fn read_event_type(
        &self,
        event_type: &str,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.select(
            Scope::EventType(event_type),
            from.as_u64(),
            direction,
            limit,
        )
    }

    /// Registers a synchronous subscription; see [`Store::subscribe`](crate::Store::subscribe)
    /// and the [dispatch rules](self#no-gaps-no-skips): `callback` runs for each event
    /// `filter` passes that an append through this store (or a clone) wrote, after it
    /// committed and before that append returns, in position order. Appends of other
    /// processes are not seen here: follow them with [`catch_up`](Self::catch_up).
    ///
    /// ```no_run
    /// use annals::pg::PgStore;
    /// use annals::subscriptions::Filter;
    /// use annals::{ExpectedVersion, NewEvent};
    ///
    /// let store = PgStore::connect("host=/run/postgresql user=app dbname=app")?;
    /// store.subscribe("welcome-mail", Filter::EventType("UserRegistered".into()), |e| {
    ///     println!("mail {}", String::from_utf8_lossy(e.payload()));
    ///     Ok(())
    /// });
    /// store.append("user-1", ExpectedVersion::NoStream, [NewEvent::new("UserRegistered", "a@x")])?;
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn subscribe(
        &self,
        name: &str,
        filter: Filter,
        callback: impl Fn(&RecordedEvent) -> std::result::Result<(), crate::BoxError>
        + Send
        + Sync
        + 'static,
    ) -> SubscriptionId {
        self.shared
            .subscribers
            .add(name, filter, Arc::new(callback))
    }

    /// Removes a synchronous subscription; false if it was not registered.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        self.shared.subscribers.remove(id)
    }

    /// Sets what is told of every failed subscription callback (by default, a `tracing`
    /// warning).
    pub fn on_subscriber_failure(
        &self,
        handler: impl Fn(&SubscriberFailure) + Send + Sync + 'static,
    ) {
        self.shared
            .subscribers
            .set_failure_handler(Arc::new(handler));
    }

    /// Runs a failed subscription callback again on the event it failed on (read back from
    /// the database).
    pub fn redeliver(&self, failure: &SubscriberFailure) -> Result<()> {
        let event = self
            .read_log(failure.position, Direction::Forwards, 1)?
            .pop()
            .filter(|e| e.position() == failure.position)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("no event at position {}", failure.position))
            })?;
        self.shared.subscribers.redeliver(failure, &event)
    }

    /// A catch-up subscription named `name` on the whole log (without `$` records), resuming
    /// at its checkpoint (the start if it has none); see [`Follower`].
    ///
    /// ```no_run
    /// use annals::pg::PgStore;
    ///
    /// let store = PgStore::connect("host=/run/postgresql user=app dbname=app")?;
    /// let mut sub = store.catch_up("mailer")?;
    /// for e in sub.poll(100)? {
    ///     println!("{} {}", e.stream(), e.event_type());
    /// }
    /// sub.checkpoint()?;
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn catch_up(&self, name: &str) -> Result<PgCatchUp> {
        Follower::new(self.clone(), name, Filter::All)
    }

    /// Registers the event types of `E`, so that their events have a JSON form
    /// ([`to_json`](Self::to_json)) whatever codec stored them (what the outbox publishes).
    pub fn register_events<E: typing::Events>(&self) {
        if !self.shared.registry.read().knows::<E>() {
            self.shared.registry.write().register::<E>();
        }
    }

    /// The JSON form of an event and its schema version; see
    /// [`Store::to_json`](crate::Store::to_json).
    pub fn to_json(&self, event: &RecordedEvent) -> Result<(String, u32)> {
        self.shared
            .registry
            .read()
            .to_json(&self.shared.upcasters.read(), event)
    }

    /// The [`NewEvent`] for a typed event, encoded with this store's codec
    /// ([`PgOptions::codec`]); see [`Store::new_event`](crate::Store::new_event).
    pub fn new_event<E: typing::Events>(&self, event: &E) -> Result<NewEvent> {
        typing::new_event(event, self.shared.codec)
    }

    /// Decodes (and upcasts) a recorded event as `E`; see
    /// [`Store::decode`](crate::Store::decode).
    pub fn decode<E: typing::Events>(&self, event: &RecordedEvent) -> Result<E> {
        typing::decode_with(&self.shared.upcasters.read(), event)
    }

    /// Registers an upcaster: events of type `event_type` stored at schema version
    /// `from_version` are decoded as `Old`, passed through `upcast`, and read on as version
    /// `from_version + 1`; see [`Store::register_upcaster`](crate::Store::register_upcaster).
    pub fn register_upcaster<Old, New>(
        &self,
        event_type: &str,
        from_version: u32,
        upcast: impl Fn(Old) -> New + Send + Sync + 'static,
    ) where
        Old: serde::de::DeserializeOwned,
        New: serde::Serialize,
    {
        self.shared
            .upcasters
            .write()
            .register(event_type, from_version, upcast);
    }
}

impl Backend for PgStore {
    fn append_to_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.append(stream, expected, events)
    }

    fn transaction(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>> {
        PgStore::transaction(self, parts)
    }

    fn read_stream_page(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.read_stream(stream, from, direction, limit)
    }

    fn read_all_page(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.read_all(from, direction, limit)
    }

    fn read_log_page(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.read_log(from, direction, limit)
    }

    fn read_category_page(
        &self,
        category: &str,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.read_category(category, from, direction, limit)
    }

    fn read_event_type_page(
        &self,
        event_type: &str,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.read_event_type(event_type, from, direction, limit)
    }

    fn current_version(&self, stream: &str) -> Result<Option<u64>> {
        self.stream_version(stream)
    }

    fn next_position(&self) -> Result<Position> {
        self.end_position()
    }

    fn add_subscription(
        &self,
        name: &str,
        filter: Filter,
        callback: Arc<SubscriptionCallback>,
    ) -> SubscriptionId {
        self.shared.subscribers.add(name, filter, callback)
    }

    fn remove_subscription(&self, id: SubscriptionId) -> bool {
        self.unsubscribe(id)
    }

    fn event_json(&self, event: &RecordedEvent) -> Result<(String, u32)> {
        self.to_json(event)
    }

    fn knows_type(&self, name: &str) -> bool {
        self.shared.registry.read().knows_name(name)
    }

    fn wait_past(&self, position: Position, timeout: Duration) {
        // Another process's commit cannot be waited for here: look, then sleep a little.
        if self.head().is_ok_and(|head| head >= position.as_u64()) {
            return;
        }
        std::thread::sleep(timeout.min(Duration::from_millis(10)));
    }
}
