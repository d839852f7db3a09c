//! The command context: the correlation and causation ids, and the user metadata, that every
//! event saved while a command runs carries, set once per command (`event_sourcery`'s tracing
//! ids). Events saved by a [`Repository`](super::Repository) or a
//! [`UnitOfWork`](super::UnitOfWork) on a thread inside [`CommandContext::run`] (or while an
//! [`enter`](CommandContext::enter) guard lives) get them, unless the event sets its own. The
//! [`CommandRelay`](super::CommandRelay) runs every stored command in the context
//! [`following`](CommandContext::following) it: its effects carry the conversation's
//! correlation id, and the command's id as their cause.

use std::cell::RefCell;
use std::marker::PhantomData;

use bytes::Bytes;
use uuid::Uuid;

use crate::event::{NewEvent, RecordedEvent};

thread_local! {
    static CONTEXTS: RefCell<Vec<CommandContext>> = const { RefCell::new(Vec::new()) };
}

/// Correlation and causation ids and user metadata for the events a command causes.
///
/// ```
/// use annals::domain::CommandContext;
/// use annals::NewEvent;
/// use uuid::Uuid;
///
/// let conversation = Uuid::now_v7();
/// let request = Uuid::now_v7();
/// let ctx = CommandContext::correlated(conversation)
///     .caused_by(request)
///     .with_metadata(r#"{"user": "ada"}"#);
/// ctx.run(|| {
///     let current = CommandContext::current().unwrap();
///     assert_eq!(current.correlation_id, Some(conversation));
///     assert_eq!(current.causation_id, Some(request));
/// });
/// assert!(CommandContext::current().is_none(), "only while it runs");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandContext {
    /// The conversation the events belong to.
    pub correlation_id: Option<Uuid>,
    /// The message that caused them.
    pub causation_id: Option<Uuid>,
    /// User metadata (bytes, usually JSON) for events that have none of their own.
    pub metadata: Option<Bytes>,
}

/// Leaves the context when dropped (on the thread that entered it).
#[must_use = "the context is left when the guard is dropped"]
pub struct ContextGuard {
    /// Not `Send`: the context belongs to the thread that entered it.
    _thread: PhantomData<*const ()>,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        CONTEXTS.with(|c| c.borrow_mut().pop());
    }
}

impl CommandContext {
    /// A context that starts a new conversation: a fresh correlation id (UUIDv7).
    pub fn new() -> CommandContext {
        CommandContext::correlated(Uuid::now_v7())
    }

    /// A context in the conversation `correlation_id`.
    pub fn correlated(correlation_id: Uuid) -> CommandContext {
        CommandContext {
            correlation_id: Some(correlation_id),
            ..CommandContext::default()
        }
    }

    /// Sets the message that caused the command.
    pub fn caused_by(mut self, causation_id: Uuid) -> CommandContext {
        self.causation_id = Some(causation_id);
        self
    }

    /// Sets user metadata for the events that have none of their own.
    pub fn with_metadata(mut self, metadata: impl Into<Bytes>) -> CommandContext {
        self.metadata = Some(metadata.into());
        self
    }

    /// The context of what `event` causes: its correlation id (or its own id, when it starts
    /// a conversation) and its id as the cause.
    pub fn following(event: &RecordedEvent) -> CommandContext {
        CommandContext {
            correlation_id: Some(event.correlation_id().unwrap_or_else(|| event.id())),
            causation_id: Some(event.id()),
            metadata: None,
        }
    }

    /// Enters the context on this thread until the guard is dropped (contexts nest: the
    /// innermost counts).
    pub fn enter(self) -> ContextGuard {
        CONTEXTS.with(|c| c.borrow_mut().push(self));
        ContextGuard {
            _thread: PhantomData,
        }
    }

    /// Runs `f` in this context.
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        let _guard = self.enter();
        f()
    }

    /// The context this thread is in, if any.
    pub fn current() -> Option<CommandContext> {
        CONTEXTS.with(|c| c.borrow().last().cloned())
    }

    /// Gives `event` what it does not set itself.
    pub(crate) fn apply(&self, event: &mut NewEvent) {
        if event.correlation_id.is_none() {
            event.correlation_id = self.correlation_id;
        }
        if event.causation_id.is_none() {
            event.causation_id = self.causation_id;
        }
        if let (true, Some(m)) = (event.metadata.is_empty(), &self.metadata) {
            event.metadata = m.clone();
        }
    }

    /// Applies the current context, if any, to `events`.
    pub(crate) fn apply_current(events: &mut [NewEvent]) {
        if let Some(ctx) = CommandContext::current() {
            for e in events {
                ctx.apply(e);
            }
        }
    }
}
