//! Events as they cross the public API: [`NewEvent`] to append, [`RecordedEvent`] read back,
//! and [`AppendResult`]. The one conversion from an event to its frame's fields
//! ([`NewEvent::record`]) is here.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use uuid::Uuid;

use crate::log::format::{EventRecord, EventRef, PayloadEncoding};
use crate::values::Position;

/// An event to append.
///
/// ```
/// use annals::NewEvent;
///
/// let e = NewEvent::new("OrderPlaced", r#"{"total":42}"#)
///     .with_metadata("{}")
///     .with_schema_version(2)
///     .published(true);
/// assert_eq!(e.event_type, "OrderPlaced");
/// assert_eq!(e.schema_version, 2);
/// assert_eq!(e.id.get_version_num(), 7, "ids are time-ordered UUIDv7");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique id (UUIDv7 by default: time-ordered).
    pub id: Uuid,
    /// Event type name: non-empty, at most 256 bytes, no control characters (a `&'static str`
    /// costs no allocation).
    pub event_type: Cow<'static, str>,
    /// Schema version of the event type (1 by default).
    pub schema_version: u32,
    /// Creation time (now, by default).
    pub timestamp: SystemTime,
    /// Id of the conversation this event belongs to.
    pub correlation_id: Option<Uuid>,
    /// Id of the message that caused this event.
    pub causation_id: Option<Uuid>,
    /// Whether the outbox should publish this event.
    pub publish: bool,
    /// How the payload is encoded (the typed layer sets it; raw bytes by default).
    pub encoding: PayloadEncoding,
    /// User metadata.
    pub metadata: Bytes,
    /// The event's data.
    pub payload: Bytes,
}

impl NewEvent {
    /// The frame fields of this event as event `version` of `stream`: the one conversion from
    /// an event to what the log writes (used to size, to stage and to detach frames).
    pub(crate) fn record<'a>(&'a self, stream: &'a str, version: u64) -> EventRecord<'a> {
        EventRecord {
            stream,
            version,
            timestamp: self.timestamp_nanos(),
            id: self.id.into_bytes(),
            event_type: &self.event_type,
            schema_version: self.schema_version,
            correlation_id: self.correlation_id.map(Uuid::into_bytes),
            causation_id: self.causation_id.map(Uuid::into_bytes),
            publish: self.publish,
            encoding: self.encoding,
            metadata: &self.metadata,
            payload: &self.payload,
        }
    }

    /// A new event with a fresh UUIDv7, the current time, schema version 1, no metadata.
    pub fn new(event_type: impl Into<Cow<'static, str>>, payload: impl Into<Bytes>) -> NewEvent {
        NewEvent {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            timestamp: SystemTime::now(),
            correlation_id: None,
            causation_id: None,
            publish: false,
            encoding: PayloadEncoding::Raw,
            metadata: Bytes::new(),
            payload: payload.into(),
        }
    }

    /// An event whose payload is `value` as JSON (the JSON of
    /// [`to_json_string`](crate::json::to_json_string)), marked [`PayloadEncoding::Json`].
    ///
    /// ```
    /// use annals::{NewEvent, PayloadEncoding};
    ///
    /// let e = NewEvent::json("Renamed", &serde_json::json!({"name": "Ada"}))?;
    /// assert_eq!((&e.payload[..], e.encoding), (&br#"{"name": "Ada"}"#[..], PayloadEncoding::Json));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn json<T: serde::Serialize + ?Sized>(
        event_type: &'static str,
        value: &T,
    ) -> crate::error::Result<NewEvent> {
        let payload =
            crate::json::to_json_string(value).map_err(|e| crate::error::Error::Encode {
                event_type: event_type.into(),
                reason: e.to_string(),
            })?;
        let mut event = NewEvent::new(event_type, payload);
        event.encoding = PayloadEncoding::Json;
        Ok(event)
    }

    /// Sets the id.
    pub fn with_id(mut self, id: Uuid) -> NewEvent {
        self.id = id;
        self
    }

    /// Sets the user metadata.
    pub fn with_metadata(mut self, metadata: impl Into<Bytes>) -> NewEvent {
        self.metadata = metadata.into();
        self
    }

    /// Sets the schema version.
    pub fn with_schema_version(mut self, version: u32) -> NewEvent {
        self.schema_version = version;
        self
    }

    /// Sets the creation time.
    pub fn with_timestamp(mut self, timestamp: SystemTime) -> NewEvent {
        self.timestamp = timestamp;
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: Uuid) -> NewEvent {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: Uuid) -> NewEvent {
        self.causation_id = Some(id);
        self
    }

    /// Marks the event for publication by the outbox.
    pub fn published(mut self, publish: bool) -> NewEvent {
        self.publish = publish;
        self
    }

    pub(crate) fn timestamp_nanos(&self) -> u64 {
        nanos_since_epoch(self.timestamp)
    }
}

/// Nanoseconds since the Unix epoch (0 before it, saturating far after it).
pub(crate) fn nanos_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An event read back from the store. Cheap to clone: it shares the bytes it was read from.
#[derive(Clone)]
pub struct RecordedEvent {
    /// The whole checked frame; fields are read from it in place.
    frame: Bytes,
    position: Position,
    prev: u32,
    /// How far the next position is: the frame's length in a file store's log, 1 in a
    /// database whose positions count events.
    span: u32,
}

impl RecordedEvent {
    /// An event from the bytes of a frame that passed its checks as an event.
    pub(crate) fn new(frame: Bytes, position: u64) -> RecordedEvent {
        // A frame is at most the largest event's size, far below 4 GiB.
        let span = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        RecordedEvent {
            frame,
            position: Position::new(position),
            prev: 0,
            span,
        }
    }

    /// This event with its next position `span` past its own (a backend whose positions are
    /// not byte offsets).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn with_span(mut self, span: u32) -> RecordedEvent {
        self.span = span;
        self
    }

    #[inline]
    pub(crate) fn view(&self) -> EventRef<'_> {
        EventRef::new(&self.frame)
    }

    pub(crate) fn with_prev(mut self, prev: u32) -> RecordedEvent {
        self.prev = prev;
        self
    }

    /// An event that is not in a store's log: `event` as it would read back as `version` of
    /// `stream` at `position`. For event stores other than annals (in memory, sink-hole) and
    /// for tests; the bytes are laid out and checked exactly as in a log.
    ///
    /// ```
    /// use annals::{NewEvent, Position, RecordedEvent};
    ///
    /// let e = RecordedEvent::detached("order-1", 3, Position::new(77 * 8), &NewEvent::new("Placed", "x"))?;
    /// assert_eq!((e.stream(), e.version(), e.event_type(), e.payload()), ("order-1", 3, "Placed", &b"x"[..]));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn detached(
        stream: &str,
        version: u64,
        position: Position,
        event: &NewEvent,
    ) -> crate::error::Result<RecordedEvent> {
        use crate::log::format::{Body, FrameLink, decode_frame, encode_event};
        crate::names::check_stream_name(stream, true)?;
        crate::names::check_event_type(&event.event_type)?;
        let record = event.record(stream, version);
        if record.frame_len().is_none() {
            return Err(crate::error::Error::TooLarge {
                what: "event",
                size: (event.payload.len() + event.metadata.len()) as u64,
                limit: u64::from(u32::MAX),
            });
        }
        // A detached frame never touches a file: it is encoded at position 0 with no frame key,
        // and carries `position` only as the place it is said to be.
        let mut buf = Vec::new();
        let link = FrameLink {
            position: 0,
            durable: 0,
            prev: 0,
            commit_end: true,
        };
        encode_event(&mut buf, link, 0, &record);
        let frame = decode_frame(&buf, 0, 0)
            .map_err(|e| crate::error::Error::corrupt(position.as_u64(), e.to_string()))?;
        debug_assert_eq!(frame.body, Body::Event);
        Ok(RecordedEvent::new(Bytes::from(buf), position.as_u64()))
    }

    /// The stream the event belongs to.
    #[inline]
    pub fn stream(&self) -> &str {
        self.view().stream()
    }

    /// Whether the event belongs to `stream` (cheaper than comparing [`stream`](Self::stream)).
    #[inline]
    pub(crate) fn is_in(&self, stream: &str) -> bool {
        self.view().stream_bytes() == stream.as_bytes()
    }

    /// The event's version in its stream (from 0).
    #[inline]
    pub fn version(&self) -> u64 {
        self.view().version()
    }

    /// The event's position in the global log.
    #[inline]
    pub fn position(&self) -> Position {
        self.position
    }

    /// The position just after this event: where a reader that has handled this event resumes.
    #[inline]
    pub fn next_position(&self) -> Position {
        Position::new(self.position.as_u64().saturating_add(u64::from(self.span)))
    }

    /// The event's id.
    #[inline]
    pub fn id(&self) -> Uuid {
        Uuid::from_bytes(self.view().event_id())
    }

    /// The event type name.
    #[inline]
    pub fn event_type(&self) -> &str {
        self.view().event_type()
    }

    /// The schema version of the event type.
    #[inline]
    pub fn schema_version(&self) -> u32 {
        self.view().schema_version()
    }

    /// Creation time.
    #[inline]
    pub fn timestamp(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.view().timestamp())
    }

    /// Creation time in nanoseconds since the Unix epoch.
    #[inline]
    pub fn timestamp_nanos(&self) -> u64 {
        self.view().timestamp()
    }

    /// Correlation id.
    #[inline]
    pub fn correlation_id(&self) -> Option<Uuid> {
        self.view().correlation_id().map(Uuid::from_bytes)
    }

    /// Causation id.
    #[inline]
    pub fn causation_id(&self) -> Option<Uuid> {
        self.view().causation_id().map(Uuid::from_bytes)
    }

    /// How the payload is encoded.
    #[inline]
    pub fn encoding(&self) -> PayloadEncoding {
        self.view().encoding()
    }

    /// Whether the event was marked for publication.
    #[inline]
    pub fn is_published(&self) -> bool {
        self.view().publish()
    }

    /// User metadata.
    #[inline]
    pub fn metadata(&self) -> &[u8] {
        &self.frame[self.view().metadata_range()]
    }

    /// The event's data.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.view().payload_range()]
    }

    /// The event's data as shared bytes (no copy).
    #[inline]
    pub fn payload_bytes(&self) -> Bytes {
        self.frame.slice(self.view().payload_range())
    }

    /// User metadata as shared bytes (no copy).
    #[inline]
    pub fn metadata_bytes(&self) -> Bytes {
        self.frame.slice(self.view().metadata_range())
    }
}

/// An event read in place: it borrows the bytes of the store's log (no copy, no reference
/// count), for scans that look at many events and keep few, such as rebuilding a projection.
/// Every frame is checked before a view of it is made, as for [`RecordedEvent`]. Get views
/// with `next_ref` on the read iterators ([`crate::read::AllEvents::next_ref`],
/// [`crate::read::StreamEvents::next_ref`]); keep one with [`EventView::to_owned`].
///
/// ```
/// use annals::{Direction, ExpectedVersion, NewEvent, Position, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path().join("views"))?;
/// store.append("order-1", ExpectedVersion::NoStream, [NewEvent::new("Placed", "x"), NewEvent::new("Paid", "yy")])?;
/// let mut events = store.read_all(Position::START, Direction::Forwards, usize::MAX)?;
/// let mut bytes = 0;
/// while let Some(e) = events.next_ref() {
///     let e = e?;
///     assert_eq!(e.stream(), "order-1");
///     bytes += e.payload().len();
/// }
/// assert_eq!(bytes, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy)]
pub struct EventView<'a> {
    frame: &'a [u8],
    position: u64,
    prev: u32,
}

impl<'a> EventView<'a> {
    /// A view of the bytes of a frame that passed its checks as an event.
    pub(crate) fn new(frame: &'a [u8], position: u64, prev: u32) -> EventView<'a> {
        EventView {
            frame,
            position,
            prev,
        }
    }

    #[inline]
    fn fields(&self) -> EventRef<'a> {
        EventRef::new(self.frame)
    }

    /// The stream the event belongs to.
    #[inline]
    pub fn stream(&self) -> &'a str {
        self.fields().stream()
    }

    /// The event's version in its stream (from 0).
    #[inline]
    pub fn version(&self) -> u64 {
        self.fields().version()
    }

    /// The event's position in the global log.
    #[inline]
    pub fn position(&self) -> Position {
        Position::new(self.position)
    }

    /// The position just after this event.
    #[inline]
    pub fn next_position(&self) -> Position {
        Position::new(self.position + self.frame.len() as u64)
    }

    /// The event's id.
    #[inline]
    pub fn id(&self) -> Uuid {
        Uuid::from_bytes(self.fields().event_id())
    }

    /// The event type name.
    #[inline]
    pub fn event_type(&self) -> &'a str {
        self.fields().event_type()
    }

    /// The schema version of the event type.
    #[inline]
    pub fn schema_version(&self) -> u32 {
        self.fields().schema_version()
    }

    /// Creation time in nanoseconds since the Unix epoch.
    #[inline]
    pub fn timestamp_nanos(&self) -> u64 {
        self.fields().timestamp()
    }

    /// How the payload is encoded.
    #[inline]
    pub fn encoding(&self) -> PayloadEncoding {
        self.fields().encoding()
    }

    /// Whether the event was marked for publication.
    #[inline]
    pub fn is_published(&self) -> bool {
        self.fields().publish()
    }

    /// User metadata.
    #[inline]
    pub fn metadata(&self) -> &'a [u8] {
        &self.frame[self.fields().metadata_range()]
    }

    /// The event's data.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.frame[self.fields().payload_range()]
    }

    /// The event as a [`RecordedEvent`] of its own (copies its frame).
    pub fn to_owned(&self) -> RecordedEvent {
        RecordedEvent::new(Bytes::copy_from_slice(self.frame), self.position).with_prev(self.prev)
    }
}

impl fmt::Debug for EventView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventView")
            .field("stream", &self.stream())
            .field("version", &self.version())
            .field("position", &self.position)
            .field("event_type", &self.event_type())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RecordedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordedEvent")
            .field("stream", &self.stream())
            .field("version", &self.version())
            .field("position", &self.position)
            .field("event_type", &self.event_type())
            .field("id", &self.id())
            .field("payload_len", &self.payload().len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for RecordedEvent {
    fn eq(&self, other: &Self) -> bool {
        self.position == other.position && self.frame == other.frame
    }
}

impl Eq for RecordedEvent {}

/// What an append wrote.
///
/// An append of no events is a successful no-op (as in KurrentDB and `eventsourcing`): its
/// expected version is still checked, and the result reports the stream's current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's version after the append: that of its last event. `None` only for an
    /// append of no events to a stream that does not exist.
    pub version: Option<u64>,
    /// Position of the first new event (for an append of no events: where the log ended).
    pub first_position: Position,
    /// Position of the last new event (for an append of no events: where the log ended).
    pub last_position: Position,
    /// Synchronous subscribers that failed on this append's events. The events are durable
    /// whatever these say: never retry the append because of them (see
    /// [`crate::store::Store::subscribe`] and [`crate::store::Store::redeliver`]).
    pub subscriber_failures: Vec<crate::error::SubscriberFailure>,
}

impl AppendResult {
    /// The result of an append that wrote events from `first` to `last`, leaving its stream at
    /// `version`.
    pub(crate) fn new(version: u64, first: Position, last: Position) -> AppendResult {
        AppendResult {
            version: Some(version),
            first_position: first,
            last_position: last,
            subscriber_failures: Vec::new(),
        }
    }

    /// The result of an append of no events to a stream at `version`, the log ending at `end`.
    pub(crate) fn nothing(version: Option<u64>, end: Position) -> AppendResult {
        AppendResult {
            version,
            first_position: end,
            last_position: end,
            subscriber_failures: Vec::new(),
        }
    }

    /// The expected version for the next append to this stream.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// let none = store.append("new", ExpectedVersion::NoStream, [])?;
    /// assert_eq!((none.version, none.next_expected()), (None, ExpectedVersion::NoStream));
    /// let r = store.append("new", none.next_expected(), [NewEvent::new("E", "x")])?;
    /// assert_eq!(r.next_expected(), ExpectedVersion::Exact(0));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn next_expected(&self) -> crate::values::ExpectedVersion {
        match self.version {
            Some(v) => crate::values::ExpectedVersion::Exact(v),
            None => crate::values::ExpectedVersion::NoStream,
        }
    }
}
