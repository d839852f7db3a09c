//! Publishing to an event stream (a broker, another service) through a transport, as the
//! `messagebus` library's `AbstractEventstreamTransport` and `EventstreamPublisher` do.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::BoxError;
use crate::outbox::{Envelope, OutboxMessage, Publisher};

/// Sends serialized messages to an event stream.
pub trait Transport: Send {
    /// Sends one message (the `messagebus` envelope).
    fn send_message_serialized(&mut self, message: &Envelope) -> Result<(), BoxError>;
}

/// An outbox [`Publisher`] that hands each message's envelope to a [`Transport`].
pub struct EventstreamPublisher<T: Transport> {
    transport: T,
}

impl<T: Transport> EventstreamPublisher<T> {
    /// Publishes through `transport`.
    pub fn new(transport: T) -> Self {
        EventstreamPublisher { transport }
    }

    /// The transport.
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }
}

impl<T: Transport> Publisher for EventstreamPublisher<T> {
    fn publish(&mut self, message: &OutboxMessage) -> Result<(), BoxError> {
        self.transport.send_message_serialized(&message.envelope)
    }
}

/// A transport that keeps what it is sent, for tests (the `EventstreamTransport` of the
/// `messagebus` cookbook). Clones share the same list.
///
/// ```
/// use annals::domain::{InMemoryTransport, Transport};
/// use annals::outbox::Envelope;
///
/// let transport = InMemoryTransport::default();
/// let mut sender = transport.clone();
/// let message = Envelope {
///     id: "1".into(),
///     created_at: "2026-01-01T00:00:00.000000Z".into(),
///     payload: "{}".into(),
///     message_type: "ping_v1".into(),
/// };
/// sender.send_message_serialized(&message).unwrap();
/// assert_eq!(transport.events(), [message]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryTransport {
    events: Arc<Mutex<Vec<Envelope>>>,
}

impl InMemoryTransport {
    /// What was sent, in order.
    pub fn events(&self) -> Vec<Envelope> {
        self.events.lock().clone()
    }

    /// Forgets what was sent.
    pub fn clear(&self) {
        self.events.lock().clear();
    }
}

impl Transport for InMemoryTransport {
    fn send_message_serialized(&mut self, message: &Envelope) -> Result<(), BoxError> {
        self.events.lock().push(message.clone());
        Ok(())
    }
}
