//! The `messagebus` cookbook's reading club, ported: a `RegisterBook` command, its handler
//! registering a `Book` and raising `BookRegistered` (name `register_book`, schema version 1,
//! published), and the event reaching an event-stream transport as
//! `{"id", "created_at", "payload", "type": "register_book_v1"}` through the store's outbox.
//! Registering the same ISBN twice is an integrity error and publishes nothing.
//!
//! Run it with `cargo run --example reading_club`.

use std::sync::Arc;

use annals::domain::{
    Aggregate, DomainError, EventStore, InMemoryTransport, MessageBus, PublishingStore, Recorder,
    UnitOfWork,
};
use annals::typed::EventType;
use annals::{Store, events};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A book was registered (published to the event stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookRegistered {
    /// The book's id.
    pub id: Uuid,
    /// Its ISBN.
    pub isbn: String,
    /// Its title.
    pub title: String,
    /// Its author.
    pub author: String,
}

impl EventType for BookRegistered {
    const NAME: &'static str = "register_book";
    const SCHEMA_VERSION: u32 = 1;
    const PUBLISHED: bool = true;
}

events! {
    /// What happens to a book.
    #[derive(Debug, Clone, PartialEq)]
    pub enum BookEvent {
        /// Registered.
        Registered(BookRegistered),
    }
}

/// Register a book in the club's library.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterBook {
    /// The new book's id.
    pub id: Uuid,
    /// Its ISBN (unique among books).
    pub isbn: String,
    /// Its title.
    pub title: String,
    /// Its author.
    pub author: String,
}

/// Why the book repository refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BookRepositoryError {
    /// The id or the ISBN is already registered.
    #[error("integrity error: the book or its ISBN is already registered")]
    IntegrityError,
    /// No such book.
    #[error("book not found")]
    NotFound,
}

/// A book of the club's library.
#[derive(Debug, Default)]
pub struct Book {
    /// Its id.
    pub id: Option<Uuid>,
    /// Its title.
    pub title: String,
    /// Its author.
    pub author: String,
    /// Its ISBN.
    pub isbn: String,
    recorder: Recorder<BookEvent>,
}

impl PartialEq for Book {
    /// Books are equal when their details are (whatever they have recorded).
    fn eq(&self, other: &Book) -> bool {
        (self.id, &self.title, &self.author, &self.isbn)
            == (other.id, &other.title, &other.author, &other.isbn)
    }
}

impl Book {
    /// A book with these details (what the seed's tests compare with).
    pub fn new(id: Uuid, title: &str, author: &str, isbn: &str) -> Book {
        Book {
            id: Some(id),
            title: title.into(),
            author: author.into(),
            isbn: isbn.into(),
            recorder: Recorder::default(),
        }
    }

    /// Registers a new book; an integrity error if this one already is.
    pub fn register(&mut self, cmd: &RegisterBook) -> Result<(), BookRepositoryError> {
        if self.id.is_some() {
            return Err(BookRepositoryError::IntegrityError);
        }
        self.record(BookRegistered {
            id: cmd.id,
            isbn: cmd.isbn.clone(),
            title: cmd.title.clone(),
            author: cmd.author.clone(),
        });
        Ok(())
    }

    /// The events recorded and not yet committed (the seed's `book.messages`).
    pub fn messages(&self) -> &[BookEvent] {
        self.recorder.changes()
    }
}

impl Aggregate for Book {
    const CATEGORY: &'static str = "book";
    type Event = BookEvent;

    fn apply(&mut self, event: &BookEvent) {
        match event {
            BookEvent::Registered(e) => {
                self.id = Some(e.id);
                self.title = e.title.clone();
                self.author = e.author.clone();
                self.isbn = e.isbn.clone();
            }
        }
    }

    fn recorder(&self) -> &Recorder<BookEvent> {
        &self.recorder
    }

    fn recorder_mut(&mut self) -> &mut Recorder<BookEvent> {
        &mut self.recorder
    }
}

/// The service handler: registers the book, claims its ISBN, and raises `BookRegistered`.
pub fn register_book<S: EventStore>(
    cmd: RegisterBook,
    uow: &mut UnitOfWork<'_, S>,
) -> Result<(), DomainError<BookRepositoryError>> {
    uow.claim_unique("isbn", &cmd.isbn, || BookRepositoryError::IntegrityError)?;
    let book = uow.get_or_create::<Book>(&cmd.id.to_string())?;
    book.register(&cmd).map_err(DomainError::Rejected)
}

/// The book `id` as the unit of work sees it (the seed's `uow.books.by_id`).
pub fn book_by_id<'u, S: EventStore>(
    uow: &'u mut UnitOfWork<'_, S>,
    id: Uuid,
) -> Result<&'u mut Book, BookRepositoryError> {
    uow.get::<Book>(&id.to_string())
        .map_err(|_| BookRepositoryError::NotFound)
}

/// The bus of the reading club: one handler, registered explicitly.
pub fn bus<S: EventStore + 'static>() -> MessageBus<S> {
    let mut bus = MessageBus::new();
    bus.handle_with(register_book)
        .expect("one handler per command");
    bus
}

/// The seed's `register_book_cmd` fixture.
pub fn register_book_cmd() -> RegisterBook {
    RegisterBook {
        id: Uuid::from_u128(1),
        title: "Domain Driven Design".into(),
        author: "Eric Evans".into(),
        isbn: "0-321-12521-5".into(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(dir.path().join("reading_club"))?);
    let transport = InMemoryTransport::default();
    let store = PublishingStore::new(store, "eventstream", transport.clone())?;
    let bus = bus();

    let () = bus.execute(register_book_cmd(), &store)?;
    println!("registered {:?}", register_book_cmd().title);
    for message in transport.events() {
        println!("published: {}", message.to_json());
    }

    let twin = RegisterBook {
        id: Uuid::from_u128(2),
        ..register_book_cmd()
    };
    let again = bus.execute::<_, ()>(twin, &store);
    match again
        .as_ref()
        .map_err(|e| e.rejection::<BookRepositoryError>())
    {
        Err(Some(e)) => println!("registering the same ISBN again: {e}"),
        _ => return Err(format!("expected an integrity error, got {again:?}").into()),
    }
    println!("published in all: {} message(s)", transport.events().len());
    Ok(())
}
