//! Typed events: serde types with a name, a schema version and a published flag (the
//! `Metadata(name, schema_version, published)` of the `messagebus` library), sets of them
//! ([`events!`](crate::events)), upcasting of old schema versions, and typed appends and reads.

use super::subscriptions;
use super::{AllEvents, Engine, StreamEvents};
use crate::event::AppendResult;
use crate::values::{Direction, ExpectedVersion, Position};
use std::borrow::Cow;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::event::{NewEvent, RecordedEvent};
use crate::log::format::PayloadEncoding;

/// The name, schema version and published flag of an event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventMeta {
    /// Type name, stored with every event.
    pub name: &'static str,
    /// Current schema version.
    pub schema_version: u32,
    /// Whether the outbox publishes events of this type.
    pub published: bool,
}

/// An event type: a serde type with a name, a schema version and a published flag.
///
/// ```
/// use annals::typed::EventType;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct BookRegistered {
///     isbn: String,
///     title: String,
/// }
///
/// impl EventType for BookRegistered {
///     const NAME: &'static str = "register_book";
///     const SCHEMA_VERSION: u32 = 1;
///     const PUBLISHED: bool = true;
/// }
/// assert_eq!(BookRegistered::META.name, "register_book");
/// ```
pub trait EventType: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Type name, stored with every event: keep it stable.
    const NAME: &'static str;
    /// Current schema version (1 by default). Raise it when the type changes, and register an
    /// upcaster from the old version ([`crate::store::Store::register_upcaster`]).
    const SCHEMA_VERSION: u32 = 1;
    /// Whether the outbox publishes events of this type (no by default).
    const PUBLISHED: bool = false;
    /// All three.
    const META: EventMeta = EventMeta {
        name: Self::NAME,
        schema_version: Self::SCHEMA_VERSION,
        published: Self::PUBLISHED,
    };
}

/// A set of event types a value can be one of: every [`EventType`] on its own, or an enum made
/// with [`events!`](crate::events) whose variants each hold one event type.
pub trait Events: Sized + Send + 'static {
    /// The member types, at their current schema versions.
    fn types() -> &'static [EventMeta];
    /// This value's type.
    fn meta(&self) -> EventMeta;
    /// Encodes this value's payload.
    fn encode(&self, encoding: PayloadEncoding) -> std::result::Result<Vec<u8>, String>;
    /// This value as JSON text (the outbox's payload).
    fn to_json(&self) -> serde_json::Result<String>;
    /// The event type value itself (the variant's content, for an enum), to hand to code that
    /// wants one concrete type (the message bus's listeners).
    fn inner(&self) -> &(dyn std::any::Any + Send);
    /// Decodes a payload of member type `name` at its current schema version; `None` if `name`
    /// is not a member type.
    fn decode(
        name: &str,
        payload: &[u8],
        encoding: PayloadEncoding,
    ) -> Option<std::result::Result<Self, String>>;
}

impl<T: EventType> Events for T {
    fn types() -> &'static [EventMeta] {
        const { &[T::META] }
    }

    fn meta(&self) -> EventMeta {
        T::META
    }

    fn encode(&self, encoding: PayloadEncoding) -> std::result::Result<Vec<u8>, String> {
        codec::encode(self, encoding)
    }

    fn to_json(&self) -> serde_json::Result<String> {
        crate::json::to_json_string(self)
    }

    fn inner(&self) -> &(dyn std::any::Any + Send) {
        self
    }

    fn decode(
        name: &str,
        payload: &[u8],
        encoding: PayloadEncoding,
    ) -> Option<std::result::Result<Self, String>> {
        (name == T::NAME).then(|| codec::decode(payload, encoding))
    }
}

/// Declares an enum whose variants each hold one [`EventType`], and implements [`Events`] (and
/// `From` each type) for it.
///
/// ```
/// use annals::events;
/// use annals::typed::{EventType, Events};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct TurnedOn;
/// impl EventType for TurnedOn {
///     const NAME: &'static str = "TurnedOn";
/// }
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct TurnedOff;
/// impl EventType for TurnedOff {
///     const NAME: &'static str = "TurnedOff";
/// }
///
/// events! {
///     #[derive(Debug, Clone, PartialEq)]
///     pub enum LightEvent {
///         On(TurnedOn),
///         Off(TurnedOff),
///     }
/// }
///
/// assert_eq!(LightEvent::from(TurnedOff).meta().name, "TurnedOff");
/// assert_eq!(LightEvent::types().len(), 2);
/// ```
#[macro_export]
macro_rules! events {
    ($(#[$attr:meta])* $vis:vis enum $name:ident { $($(#[$vattr:meta])* $variant:ident($ty:ty)),+ $(,)? }) => {
        $(#[$attr])*
        $vis enum $name {
            $(
                #[doc = concat!("A `", stringify!($ty), "` event.")]
                $(#[$vattr])*
                $variant($ty),
            )+
        }

        impl $crate::typed::Events for $name {
            fn types() -> &'static [$crate::typed::EventMeta] {
                const { &[$(<$ty as $crate::typed::EventType>::META),+] }
            }

            fn meta(&self) -> $crate::typed::EventMeta {
                match self {
                    $(Self::$variant(_) => <$ty as $crate::typed::EventType>::META,)+
                }
            }

            fn encode(&self, encoding: $crate::PayloadEncoding) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                match self {
                    $(Self::$variant(e) => $crate::typed::Events::encode(e, encoding),)+
                }
            }

            fn to_json(&self) -> $crate::__private::serde_json::Result<::std::string::String> {
                match self {
                    $(Self::$variant(e) => $crate::typed::Events::to_json(e),)+
                }
            }

            fn inner(&self) -> &(dyn ::std::any::Any + ::std::marker::Send) {
                match self {
                    $(Self::$variant(e) => e,)+
                }
            }

            fn decode(
                name: &str,
                payload: &[u8],
                encoding: $crate::PayloadEncoding,
            ) -> ::std::option::Option<::std::result::Result<Self, ::std::string::String>> {
                $(
                    if name == <$ty as $crate::typed::EventType>::NAME {
                        return <$ty as $crate::typed::Events>::decode(name, payload, encoding)
                            .map(|r| r.map(Self::$variant));
                    }
                )+
                None
            }
        }

        $(
            impl ::std::convert::From<$ty> for $name {
                fn from(e: $ty) -> Self {
                    Self::$variant(e)
                }
            }
        )+
    };
}

/// A decoded event and the record it came from.
#[derive(Debug, Clone)]
pub struct TypedEvent<E> {
    /// The event, upcast to its type's current schema version.
    pub event: E,
    /// The stored record (stream, version, position, id, timestamps, tracing ids, metadata).
    pub record: RecordedEvent,
}

impl<E> std::ops::Deref for TypedEvent<E> {
    type Target = RecordedEvent;

    fn deref(&self) -> &RecordedEvent {
        &self.record
    }
}

/// One step of an upcast: old payload bytes (in their encoding) to the next version's.
type Step =
    Arc<dyn Fn(&[u8], PayloadEncoding) -> std::result::Result<Vec<u8>, String> + Send + Sync>;

/// Schema migrations of event types, by (type name, version they migrate from). A store keeps
/// its own ([`crate::store::Store::register_upcaster`]); other event stores (the domain floor's
/// in-memory one) use this directly with [`decode_with`].
#[derive(Default, Clone)]
pub struct Upcasters {
    steps: HashMap<(String, u32), Step>,
}

impl Upcasters {
    /// Registers the migration of `name` from version `from` to `from + 1`.
    pub fn register<Old, New>(
        &mut self,
        name: &str,
        from: u32,
        upcast: impl Fn(Old) -> New + Send + Sync + 'static,
    ) where
        Old: DeserializeOwned,
        New: Serialize,
    {
        let step: Step = Arc::new(move |bytes, encoding| {
            let old: Old = codec::decode(bytes, encoding)?;
            codec::encode(&upcast(old), encoding)
        });
        self.steps.insert((name.to_owned(), from), step);
    }

    /// Brings a payload from schema version `version` to `target`, one registered step at a
    /// time.
    pub(crate) fn upcast<'a>(
        &self,
        name: &str,
        mut version: u32,
        target: u32,
        payload: &'a [u8],
        encoding: PayloadEncoding,
    ) -> std::result::Result<Cow<'a, [u8]>, String> {
        if version > target {
            return Err(format!(
                "schema version {version} is newer than this program's ({target})"
            ));
        }
        let mut bytes = Cow::Borrowed(payload);
        while version < target {
            let step = self.steps.get(&(name.to_owned(), version)).ok_or_else(|| {
                format!("schema version {version} is old and no upcaster from it is registered")
            })?;
            bytes = Cow::Owned(
                step(&bytes, encoding)
                    .map_err(|e| format!("upcasting from version {version}: {e}"))?,
            );
            version += 1;
        }
        Ok(bytes)
    }
}

/// Decodes `event` as one of `E`'s types, upcast to the current schema version with
/// `upcasters`.
pub fn decode_with<E: Events>(upcasters: &Upcasters, event: &RecordedEvent) -> Result<E> {
    decode(upcasters, event)
}

pub(crate) fn decode<E: Events>(upcasters: &Upcasters, event: &RecordedEvent) -> Result<E> {
    let name = event.event_type();
    let fail = |reason: String| Error::Decode {
        position: event.position().as_u64(),
        event_type: name.to_owned(),
        reason,
    };
    let Some(meta) = E::types().iter().find(|m| m.name == name) else {
        return Err(fail(format!(
            "not one of the event types of {} ({})",
            std::any::type_name::<E>(),
            E::types()
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let payload = upcasters
        .upcast(
            name,
            event.schema_version(),
            meta.schema_version,
            event.payload(),
            event.encoding(),
        )
        .map_err(fail)?;
    match E::decode(name, &payload, event.encoding()) {
        Some(result) => result.map_err(fail),
        None => Err(fail("not a member type".into())),
    }
}

/// Makes the [`NewEvent`] for a typed event, encoded with `codec`, with its type's name,
/// schema version and published flag.
pub fn new_event<E: Events>(event: &E, codec: Codec) -> Result<NewEvent> {
    let meta = event.meta();
    let encoding = codec.encoding();
    let payload = event.encode(encoding).map_err(|reason| Error::Encode {
        event_type: meta.name.to_owned(),
        reason,
    })?;
    Ok(NewEvent {
        schema_version: meta.schema_version,
        publish: meta.published,
        encoding,
        ..NewEvent::new(meta.name, payload)
    })
}

/// An iterator of typed events over an iterator of records. With `skip_others`, records of
/// types not in `E` are passed over (reading the whole log); otherwise they are errors
/// (reading a stream that should hold only `E`).
pub struct TypedEvents<'s, I, E> {
    pub(crate) inner: I,
    pub(crate) upcasters: &'s parking_lot::RwLock<Upcasters>,
    pub(crate) skip_others: bool,
    pub(crate) _events: PhantomData<fn() -> E>,
}

impl<I, E> Iterator for TypedEvents<'_, I, E>
where
    I: Iterator<Item = Result<RecordedEvent>>,
    E: Events,
{
    type Item = Result<TypedEvent<E>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let record = match self.inner.next()? {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            if self.skip_others && !E::types().iter().any(|m| m.name == record.event_type()) {
                continue;
            }
            let upcasters = self.upcasters.read();
            return Some(decode(&upcasters, &record).map(|event| TypedEvent { event, record }));
        }
    }
}

/// How a known event type turns into JSON: decoded (and upcast) as its Rust type, then
/// serialized; with the schema version it is then at.
type JsonForm = Arc<dyn Fn(&Upcasters, &RecordedEvent) -> Result<(String, u32)> + Send + Sync>;

/// Event types registered with a store ([`crate::store::Store::register_events`]).
#[derive(Default, Clone)]
pub(crate) struct Registry {
    json: HashMap<&'static str, JsonForm>,
}

impl Registry {
    /// Whether event type `name` has a JSON form here.
    pub fn knows_name(&self, name: &str) -> bool {
        self.json.contains_key(name)
    }

    /// Whether every event type of `E` has a JSON form here.
    pub fn knows<E: Events>(&self) -> bool {
        E::types().iter().all(|m| self.json.contains_key(m.name))
    }

    pub fn register<E: Events>(&mut self) {
        for meta in E::types() {
            let version = meta.schema_version;
            let form: JsonForm = Arc::new(move |upcasters: &Upcasters, record: &RecordedEvent| {
                let event: E = decode(upcasters, record)?;
                let json = event.to_json().map_err(|e| Error::Encode {
                    event_type: record.event_type().to_owned(),
                    reason: e.to_string(),
                })?;
                Ok((json, version))
            });
            self.json.insert(meta.name, form);
        }
    }

    /// The JSON form of a record and the schema version it is at: through its registered type
    /// if it has one (upcast to the current version), else its payload if that is JSON.
    pub fn to_json(&self, upcasters: &Upcasters, record: &RecordedEvent) -> Result<(String, u32)> {
        if let Some(form) = self.json.get(record.event_type()) {
            return form(upcasters, record);
        }
        let fail = |reason: &str| Error::Decode {
            position: record.position().as_u64(),
            event_type: record.event_type().to_owned(),
            reason: reason.to_owned(),
        };
        match record.encoding() {
            PayloadEncoding::Bincode => Err(fail(
                "a bincode payload has no JSON form until its type is registered (Store::register_events)",
            )),
            PayloadEncoding::Json | PayloadEncoding::Raw => {
                let text = std::str::from_utf8(record.payload())
                    .map_err(|_| fail("the payload is not UTF-8 JSON"))?;
                serde_json::from_str::<serde::de::IgnoredAny>(text)
                    .map_err(|e| fail(&format!("the payload is not JSON: {e}")))?;
                Ok((text.to_owned(), record.schema_version()))
            }
        }
    }
}

impl super::Store {
    /// The codec typed events are written with.
    pub fn codec(&self) -> codec::Codec {
        self.engine.codec
    }

    /// Registers an upcaster: events of type `event_type` stored at schema version
    /// `from_version` are decoded as `Old`, passed through `upcast`, and read on as version
    /// `from_version + 1`, on every typed read path. Chains of upcasters take old events all
    /// the way to the current version.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, PayloadEncoding, Store};
    /// use annals::typed::EventType;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct RenamedV1 { name: String }
    /// #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// struct Renamed { first: String, last: String }
    /// impl EventType for Renamed {
    ///     const NAME: &'static str = "Renamed";
    ///     const SCHEMA_VERSION: u32 = 2;
    /// }
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("people"))?;
    /// // An event written by an older program, at schema version 1:
    /// let old = serde_json::to_vec(&RenamedV1 { name: "Ada Lovelace".into() }).unwrap();
    /// let mut e = NewEvent::new("Renamed", old);
    /// e.encoding = PayloadEncoding::Json;
    /// store.append("person-1", ExpectedVersion::Any, [e])?;
    ///
    /// store.register_upcaster("Renamed", 1, |v1: RenamedV1| {
    ///     let (first, last) = v1.name.split_once(' ').unwrap_or((&v1.name, ""));
    ///     Renamed { first: first.into(), last: last.into() }
    /// });
    /// let read = store.read_stream_as::<Renamed>("person-1", 0, annals::Direction::Forwards, 1)?
    ///     .next().unwrap()?;
    /// assert_eq!(read.event, Renamed { first: "Ada".into(), last: "Lovelace".into() });
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn register_upcaster<Old, New>(
        &self,
        event_type: &str,
        from_version: u32,
        upcast: impl Fn(Old) -> New + Send + Sync + 'static,
    ) where
        Old: serde::de::DeserializeOwned,
        New: serde::Serialize,
    {
        self.engine
            .upcasters
            .write()
            .register(event_type, from_version, upcast);
    }

    /// Registers the event types of `E` with the store, so that their events have a JSON form
    /// ([`to_json`](Self::to_json)): the outbox publishes it, whatever codec stored them.
    pub fn register_events<E: Events>(&self) {
        self.engine.registry.write().register::<E>();
    }

    /// Registers the event types of `E` unless they all are already: what the domain floor
    /// calls for every repository and every aggregate a unit of work touches, so a read lock
    /// is all it costs after the first time.
    pub(crate) fn ensure_registered<E: Events>(&self) {
        if !self.engine.registry.read().knows::<E>() {
            self.register_events::<E>();
        }
    }

    /// The JSON form of an event and the schema version it is at: through its registered type
    /// if it has one (upcast to the current version), else its payload if that is JSON.
    pub fn to_json(&self, event: &RecordedEvent) -> Result<(String, u32)> {
        self.engine
            .registry
            .read()
            .to_json(&self.engine.upcasters.read(), event)
    }

    /// The [`NewEvent`] for a typed event, encoded with the store's codec, with its type's
    /// name, schema version and published flag; add tracing ids or metadata before appending.
    pub fn new_event<E: Events>(&self, event: &E) -> Result<NewEvent> {
        new_event(event, self.engine.codec)
    }

    /// Appends typed events (see [`append`](Self::append)).
    ///
    /// ```
    /// use annals::{ExpectedVersion, Store};
    /// use annals::typed::EventType;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// struct Deposited { cents: u64 }
    /// impl EventType for Deposited {
    ///     const NAME: &'static str = "Deposited";
    /// }
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("bank"))?;
    /// store.append_events("account-1", ExpectedVersion::NoStream, [Deposited { cents: 500 }])?;
    /// let e = store.read_stream_as::<Deposited>("account-1", 0, annals::Direction::Forwards, 1)?
    ///     .next().unwrap()?;
    /// assert_eq!((e.event.cents, e.version(), e.event_type()), (500, 0, "Deposited"));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn append_events<E: Events>(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = E>,
    ) -> Result<AppendResult> {
        let events = events
            .into_iter()
            .map(|e| self.new_event(&e))
            .collect::<Result<Vec<_>>>()?;
        self.append(stream, expected, events)
    }

    /// The upcasters registered so far (a copy).
    pub fn upcasters(&self) -> Upcasters {
        self.engine.upcasters.read().clone()
    }

    /// Decodes a recorded event as one of `E`'s types, upcast to the type's current schema
    /// version. An event of another type or a payload that does not decode is
    /// [`Error::Decode`](crate::error::Error::Decode), naming the position.
    pub fn decode<E: Events>(&self, event: &RecordedEvent) -> Result<E> {
        decode(&self.engine.upcasters.read(), event)
    }

    /// Reads a stream as typed events (see [`read_stream`](Self::read_stream)); an event of a
    /// type not in `E` is an error.
    pub fn read_stream_as<E: Events>(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<TypedEvents<'_, StreamEvents<'_>, E>> {
        Ok(self.typed(self.read_stream(stream, from, direction, limit)?, false))
    }

    /// Reads the whole log as typed events (see [`read_all`](Self::read_all)), passing over
    /// events of types not in `E`.
    pub fn read_all_as<E: Events>(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<TypedEvents<'_, AllEvents<'_>, E>> {
        Ok(self.typed(self.read_all(from, direction, limit)?, true))
    }

    /// Decodes any iterator of records as typed events: with `skip_others`, records of types
    /// not in `E` are passed over, otherwise they are errors.
    pub fn typed<I, E>(&self, records: I, skip_others: bool) -> TypedEvents<'_, I, E>
    where
        I: Iterator<Item = Result<RecordedEvent>>,
        E: Events,
    {
        TypedEvents {
            inner: records,
            upcasters: &self.engine.upcasters,
            skip_others,
            _events: std::marker::PhantomData,
        }
    }

    /// Registers a synchronous subscription to the event types of `E`, decoded (and upcast):
    /// see [`subscribe`](Self::subscribe).
    pub fn subscribe_to<E: Events>(
        &self,
        name: &str,
        callback: impl Fn(&TypedEvent<E>) -> std::result::Result<(), subscriptions::BoxError>
        + Send
        + Sync
        + 'static,
    ) -> crate::values::SubscriptionId {
        let filter = subscriptions::Filter::EventTypes(
            E::types().iter().map(|m| m.name.to_owned()).collect(),
        );
        let callback: Arc<subscriptions::Callback> =
            Arc::new(move |engine: &Engine, record: &RecordedEvent| {
                let event = decode::<E>(&engine.upcasters.read(), record)?;
                callback(&TypedEvent {
                    event,
                    record: record.clone(),
                })
            });
        self.engine
            .subscribers
            .add(name.to_owned(), filter, callback)
    }
}
