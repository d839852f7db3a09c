//! The transactional outbox: published events reach a publisher (a broker, a webhook, another
//! process) in log order, at least once, even across crashes and broker outages.
//!
//! An event is published if it was appended with the publish flag (typed events of a type whose
//! [`EventType::PUBLISHED`](crate::store::typed::EventType::PUBLISHED) is true get it). The outbox reads the
//! log from its progress position; each event is handed to the [`Publisher`] as an
//! [`OutboxMessage`] with the `messagebus` [`Envelope`]
//! `{"id", "created_at", "payload": "<JSON of the event>", "type": "<name>_v<version>"}`.
//! A failed delivery is retried after a backoff that doubles each time; after `max_attempts`
//! failures the event is *parked* (recorded in stream `$outbox-NAME-parked`, listable and
//! replayable) and delivery moves on. Progress is recorded in the log (stream `$outbox-NAME`)
//! after each round, so a restart redelivers at most the events of the round it interrupted.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Store;
use super::backend::{Backend, Part};
use super::subscriptions::BoxError;
use crate::error::{Error, Result};
use crate::event::{NewEvent, RecordedEvent};
use crate::names::check_stream_name;
use crate::values::{Direction, ExpectedVersion, Position};

/// The published form of an event, as the `messagebus` library's event stream carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The event id.
    pub id: String,
    /// When the event was created, RFC 3339 in UTC with microseconds.
    pub created_at: String,
    /// The event as JSON text.
    pub payload: String,
    /// `NAME_vVERSION`.
    #[serde(rename = "type")]
    pub message_type: String,
}

impl Envelope {
    /// The envelope of a recorded event, given its JSON form and schema version.
    pub fn new(event: &RecordedEvent, payload: String, schema_version: u32) -> Envelope {
        Envelope {
            id: event.id().to_string(),
            created_at: humantime::format_rfc3339_micros(event.timestamp()).to_string(),
            payload,
            message_type: format!("{}_v{}", event.event_type(), schema_version),
        }
    }

    /// The envelope as JSON text (`", "` and `": "` separators, keys in the order above).
    pub fn to_json(&self) -> String {
        crate::json::to_json_string(self).expect("an envelope is four strings")
    }
}

/// What the publisher is handed.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    /// The stored event.
    pub event: RecordedEvent,
    /// Its published form.
    pub envelope: Envelope,
    /// 1 for the first try, 2 for the first retry, …
    pub attempt: u32,
}

/// Delivers messages somewhere. An error means "not delivered": the outbox tries again later.
pub trait Publisher: Send {
    /// Delivers one message.
    fn publish(&mut self, message: &OutboxMessage) -> std::result::Result<(), BoxError>;
}

impl<F> Publisher for F
where
    F: FnMut(&OutboxMessage) -> std::result::Result<(), BoxError> + Send,
{
    fn publish(&mut self, message: &OutboxMessage) -> std::result::Result<(), BoxError> {
        self(message)
    }
}

/// How an outbox retries and batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxOptions {
    /// Failed deliveries of one event before it is parked (default 5).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each later one (default 100 ms).
    pub backoff: Duration,
    /// Longest wait between retries (default 30 s).
    pub max_backoff: Duration,
    /// Most events handled by one [`Outbox::run_once`] (default 10,000).
    pub batch: usize,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            batch: 10_000,
        }
    }
}

/// What one [`Outbox::run_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Events delivered.
    pub delivered: usize,
    /// Events parked after their last failed attempt.
    pub parked: usize,
    /// The last delivery error, if a delivery failed.
    pub last_error: Option<String>,
    /// When delivery may be tried again, if it is waiting after a failure.
    pub retry_in: Option<Duration>,
    /// Whether every published event up to the end of the log is handled.
    pub caught_up: bool,
}

/// A parked event: delivery gave up on it after `attempts` failures (the record is specified
/// in `src/log/records.rs`).
pub use crate::log::records::Parked;
use crate::log::records::{
    self, OUTBOX_PARKED as PARKED, OUTBOX_PROGRESS as PROGRESS, OUTBOX_REPLAYED as REPLAYED,
    Replayed,
};

/// An outbox over a store (`&Store` or `Arc<Store>`, or any [`Backend`]: `&PgStore` too);
/// see the [module docs](self).
pub struct Outbox<S: Deref, P: Publisher>
where
    S::Target: Backend,
{
    store: S,
    name: String,
    progress_stream: String,
    parked_stream: String,
    publisher: P,
    options: OutboxOptions,
    /// Every published event before this is delivered or parked.
    next: Position,
    /// Failed attempts on the event at `next`.
    attempts: u32,
    retry_at: Option<Instant>,
    /// What the outbox found at start that it cannot turn into JSON, if anything.
    cannot_decode: Option<String>,
}

/// How many events ahead of its position an outbox looks, when it starts, for published events
/// it could not turn into JSON.
const START_LOOKAHEAD: usize = 10_000;

/// Events one read of the outbox takes.
const PAGE: usize = 10_000;

impl<S: Deref, P: Publisher> Outbox<S, P>
where
    S::Target: Backend,
{
    /// Opens the outbox `name` of `store`, resuming from its recorded progress (or the start
    /// of the log).
    ///
    /// ```
    /// use annals::outbox::{Outbox, OutboxMessage, OutboxOptions};
    /// use annals::{ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// store.append("user-1", ExpectedVersion::Any, [NewEvent::new("UserRegistered", r#"{"email": "a@x"}"#).published(true)])?;
    ///
    /// let mut sent = Vec::new();
    /// let mut outbox = Outbox::new(&store, "broker", |m: &OutboxMessage| {
    ///     sent.push(m.envelope.to_json());
    ///     Ok(())
    /// }, OutboxOptions::default())?;
    /// assert_eq!(outbox.run_once()?.delivered, 1);
    /// drop(outbox);
    /// assert!(sent[0].contains(r#""payload": "{\"email\": \"a@x\"}", "type": "UserRegistered_v1""#));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn new(store: S, name: &str, publisher: P, options: OutboxOptions) -> Result<Self> {
        let progress_stream = records::outbox_stream(name);
        let parked_stream = records::outbox_parked_stream(name);
        for s in [&progress_stream, &parked_stream] {
            check_stream_name(s, true).map_err(|_| {
                Error::InvalidArgument(format!("{name:?} is not a usable outbox name"))
            })?;
        }
        let next = match store.last_of(&progress_stream)? {
            Some(e) => {
                let next = records::decode_position(e.payload()).ok_or_else(|| Error::Decode {
                    position: e.position().as_u64(),
                    event_type: PROGRESS.into(),
                    reason: format!("progress holds {} bytes", records::POSITION_LEN),
                })?;
                Position::new(next)
            }
            None => Position::START,
        };
        let cannot_decode = undecodable_ahead(&*store, next)?;
        if let Some(why) = &cannot_decode {
            tracing::warn!(outbox = name, "annals: {why}");
        }
        Ok(Outbox {
            store,
            name: name.to_owned(),
            progress_stream,
            parked_stream,
            publisher,
            options,
            next,
            attempts: 0,
            retry_at: None,
            cannot_decode,
        })
    }

    /// What the outbox found when it started that it cannot turn into JSON (and would park),
    /// if anything: published bincode events of a type not registered with
    /// [`Store::register_events`] (or the `PgStore`'s) among the next 10,000 events. Also logged as a `tracing`
    /// warning. JSON payloads (the default codec) need no registration.
    pub fn cannot_decode(&self) -> Option<&str> {
        self.cannot_decode.as_deref()
    }

    /// The outbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every published event before this position is delivered or parked.
    pub fn position(&self) -> Position {
        self.next
    }

    /// The publisher.
    pub fn publisher(&mut self) -> &mut P {
        &mut self.publisher
    }

    /// Delivers the published events that are due, in log order, until it has handled
    /// `batch` of them, caught up, or a delivery failed (then it waits out the backoff before
    /// trying that event again). Records progress durably before returning.
    pub fn run_once(&mut self) -> Result<RunReport> {
        let mut report = RunReport::default();
        if let Some(at) = self.retry_at {
            let now = Instant::now();
            if now < at {
                report.retry_in = Some(at - now);
                return Ok(report);
            }
            self.retry_at = None;
        }
        let start = self.next;
        // Whether this round passed an event (not only `$` records).
        let mut passed = false;
        let result = self.deliver(&mut report, &mut passed);
        // Only progress past events counts: passing `$` records alone (its own progress
        // among them) records nothing, so an idle outbox writes nothing.
        if self.next != start && passed {
            self.record_progress()?;
        }
        result.map(|()| report)
    }

    fn deliver(&mut self, report: &mut RunReport, passed: &mut bool) -> Result<()> {
        let end = self.store.next_position()?;
        loop {
            let page = self
                .store
                .read_log_page(self.next, Direction::Forwards, PAGE)?;
            let full = page.len() == PAGE;
            if !self.deliver_page(page, report, passed)? {
                return Ok(());
            }
            if !full {
                break;
            }
        }
        self.next = self.next.max(end);
        report.caught_up = true;
        Ok(())
    }

    /// Delivers the due events of one page; false if it stopped early (a full batch, or a
    /// failure waiting out its backoff).
    fn deliver_page(
        &mut self,
        page: Vec<RecordedEvent>,
        report: &mut RunReport,
        passed: &mut bool,
    ) -> Result<bool> {
        let store = &*self.store;
        for event in page {
            if event.stream().starts_with('$') {
                self.next = event.next_position();
                continue;
            }
            if !event.is_published() {
                self.next = event.next_position();
                *passed = true;
                continue;
            }
            if report.delivered + report.parked >= self.options.batch {
                return Ok(false);
            }
            let attempt = self.attempts + 1;
            let outcome = store
                .event_json(&event)
                .map_err(|e| e.to_string())
                .and_then(|(payload, version)| {
                    let envelope = Envelope::new(&event, payload, version);
                    let message = OutboxMessage {
                        event: event.clone(),
                        envelope,
                        attempt,
                    };
                    self.publisher.publish(&message).map_err(|e| e.to_string())
                });
            match outcome {
                Ok(()) => {
                    *passed = true;
                    report.delivered += 1;
                    self.attempts = 0;
                    self.next = event.next_position();
                }
                Err(error) => {
                    report.last_error = Some(error.clone());
                    self.attempts = attempt;
                    if attempt >= self.options.max_attempts {
                        let parked = Parked {
                            position: event.position(),
                            attempts: attempt,
                            error,
                        };
                        self.append_parked(PARKED, &parked)?;
                        report.parked += 1;
                        *passed = true;
                        self.attempts = 0;
                        self.next = event.next_position();
                        continue;
                    }
                    let wait = self
                        .options
                        .backoff
                        .saturating_mul(1 << (attempt - 1).min(20))
                        .min(self.options.max_backoff);
                    self.retry_at = Some(Instant::now() + wait);
                    report.retry_in = Some(wait);
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn record_progress(&mut self) -> Result<()> {
        let e = NewEvent::new(
            PROGRESS,
            records::encode_position(self.next.as_u64()).to_vec(),
        );
        self.store.transaction(vec![Part::new(
            self.progress_stream.clone(),
            ExpectedVersion::Any,
            [e],
        )])?;
        Ok(())
    }

    fn append_parked<T: Serialize>(&self, event_type: &'static str, value: &T) -> Result<()> {
        let e = NewEvent::json(event_type, value)?;
        self.store.transaction(vec![Part::new(
            self.parked_stream.clone(),
            ExpectedVersion::Any,
            [e],
        )])?;
        Ok(())
    }

    /// The parked events that have not been replayed, oldest first.
    pub fn parked(&self) -> Result<Vec<Parked>> {
        let mut parked: Vec<Parked> = Vec::new();
        let all =
            self.store
                .read_stream_page(&self.parked_stream, 0, Direction::Forwards, usize::MAX)?;
        for e in all {
            let bad = |reason: String| Error::Decode {
                position: e.position().as_u64(),
                event_type: e.event_type().to_owned(),
                reason,
            };
            match e.event_type() {
                PARKED => parked
                    .push(serde_json::from_slice(e.payload()).map_err(|x| bad(x.to_string()))?),
                REPLAYED => {
                    let r: Replayed =
                        serde_json::from_slice(e.payload()).map_err(|x| bad(x.to_string()))?;
                    parked.retain(|p| p.position != r.position);
                }
                other => return Err(bad(format!("unexpected record `{other}`"))),
            }
        }
        Ok(parked)
    }

    /// Tries once more to deliver each parked event; those delivered are no longer parked.
    /// Returns how many were delivered, and the errors of those that were not.
    pub fn replay_parked(&mut self) -> Result<(usize, Vec<(Position, String)>)> {
        let mut delivered = 0;
        let mut failed = Vec::new();
        for parked in self.parked()? {
            let event = self
                .store
                .read_log_page(parked.position, Direction::Forwards, 1)?
                .pop()
                .filter(|e| e.position() == parked.position)
                .ok_or_else(|| {
                    Error::corrupt(parked.position.as_u64(), "a parked event is not in the log")
                })?;
            let outcome = self
                .store
                .event_json(&event)
                .map_err(|e| e.to_string())
                .and_then(|(payload, version)| {
                    let message = OutboxMessage {
                        envelope: Envelope::new(&event, payload, version),
                        event: event.clone(),
                        attempt: parked.attempts + 1,
                    };
                    self.publisher.publish(&message).map_err(|e| e.to_string())
                });
            match outcome {
                Ok(()) => {
                    self.append_parked(
                        REPLAYED,
                        &Replayed {
                            position: parked.position,
                        },
                    )?;
                    delivered += 1;
                }
                Err(e) => failed.push((parked.position, e)),
            }
        }
        Ok((delivered, failed))
    }
}

/// What the runner thread hands back: the outbox, and how its last round ended.
type Finished<P, S> = (Outbox<S, P>, Result<()>);

/// An outbox running in a background thread; see [`Outbox::spawn`].
pub struct OutboxRunner<P: Publisher + 'static, S: Deref + Send + 'static = Arc<Store>>
where
    S::Target: Backend,
{
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Finished<P, S>>>,
}

impl<P: Publisher + 'static, S: Deref + Send + 'static> Outbox<S, P>
where
    S::Target: Backend,
{
    /// Runs this outbox in a background thread: rounds of [`run_once`](Self::run_once), waiting
    /// for new events when caught up and out the backoff after a failure, until
    /// [`OutboxRunner::stop`].
    pub fn spawn(self) -> Result<OutboxRunner<P, S>> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut outbox = self;
        let thread = std::thread::Builder::new()
            .name(format!("annals-outbox-{}", outbox.name))
            .spawn(move || {
                let result = (|| {
                    while !flag.load(Ordering::Acquire) {
                        let report = outbox.run_once()?;
                        if let Some(wait) = report.retry_in {
                            std::thread::sleep(wait.min(Duration::from_millis(50)));
                        } else if report.caught_up {
                            outbox
                                .store
                                .wait_past(outbox.next, Duration::from_millis(50));
                        }
                    }
                    Ok(())
                })();
                (outbox, result)
            })?;
        Ok(OutboxRunner {
            stop,
            thread: Some(thread),
        })
    }
}

impl<P: Publisher + 'static, S: Deref + Send + 'static> OutboxRunner<P, S>
where
    S::Target: Backend,
{
    /// Stops the runner after its current round and hands the outbox back (with its
    /// publisher); fails if a round failed.
    pub fn stop(mut self) -> Result<Outbox<S, P>> {
        self.stop.store(true, Ordering::Release);
        let (outbox, result) = self
            .thread
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| Error::InvalidArgument("the outbox thread panicked".into()))?;
        result.map(|()| outbox)
    }
}

impl<P: Publisher + 'static, S: Deref + Send + 'static> Drop for OutboxRunner<P, S>
where
    S::Target: Backend,
{
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            let _ = thread.join();
        }
    }
}

/// Published bincode events of unregistered types among the next [`START_LOOKAHEAD`] events
/// from `from`: what an outbox starting there could not turn into JSON.
fn undecodable_ahead<B: Backend + ?Sized>(store: &B, from: Position) -> Result<Option<String>> {
    let mut types: Vec<String> = Vec::new();
    let mut count = 0usize;
    for e in store.read_all_page(from, Direction::Forwards, START_LOOKAHEAD)? {
        if e.is_published()
            && e.encoding() == crate::log::format::PayloadEncoding::Bincode
            && !store.knows_type(e.event_type())
        {
            count += 1;
            if types.len() < 5 && !types.iter().any(|t| t == e.event_type()) {
                types.push(e.event_type().to_owned());
            }
        }
    }
    Ok((count > 0).then(|| {
        format!(
            "{count} published events ahead (of the next {START_LOOKAHEAD}) are bincode events of \
             types not registered with Store::register_events ({}): the outbox cannot turn them \
             into JSON and will park them; register their types before starting it",
            types.join(", ")
        )
    }))
}
