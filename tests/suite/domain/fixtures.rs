//! The aggregates most domain tests use: a counter (with snapshots) and a ledger moved by a
//! `Transfer` command.
#![allow(dead_code)]

use annals::domain::{
    Aggregate, DomainError, EventStore, MessageBus, Recorder, Repository, Snapshot, UnitOfWork,
};
use annals::events;
use annals::typed::EventType;
use serde::{Deserialize, Serialize};

// ---- a counter: the aggregate most tests use ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Added {
    pub(crate) n: u64,
}
impl EventType for Added {
    const NAME: &'static str = "Added";
    const PUBLISHED: bool = true;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Capped {
    pub(crate) at: u64,
}
impl EventType for Capped {
    const NAME: &'static str = "Capped";
}

events! {
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) enum CounterEvent { Added(Added), Capped(Capped) }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Counter {
    pub(crate) total: u64,
    pub(crate) applied: u64,
    pub(crate) cap: Option<u64>,
    #[serde(skip)]
    pub(crate) recorder: Recorder<CounterEvent>,
}

impl Aggregate for Counter {
    const CATEGORY: &'static str = "counter";
    type Event = CounterEvent;

    fn apply(&mut self, event: &CounterEvent) {
        self.applied += 1;
        match event {
            CounterEvent::Added(e) => self.total += e.n,
            CounterEvent::Capped(e) => self.cap = Some(e.at),
        }
    }

    fn recorder(&self) -> &Recorder<CounterEvent> {
        &self.recorder
    }

    fn recorder_mut(&mut self) -> &mut Recorder<CounterEvent> {
        &mut self.recorder
    }
}

impl Snapshot for Counter {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("over the cap")]
pub(crate) struct OverCap;

impl Counter {
    pub(crate) fn add(&mut self, n: u64) -> Result<u64, OverCap> {
        if self.cap.is_some_and(|cap| self.total + n > cap) {
            return Err(OverCap);
        }
        self.record(Added { n });
        Ok(self.total)
    }
}

pub(crate) fn add(n: u64) -> impl FnMut(&mut Counter) -> Result<u64, OverCap> {
    move |c| c.add(n)
}

// ---- a ledger and the commands that move it ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Transferred {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) n: u64,
}
impl EventType for Transferred {
    const NAME: &'static str = "Transferred";
    const PUBLISHED: bool = true;
}
events! {
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) enum LedgerEvent { Transferred(Transferred) }
}
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) entries: u64,
    pub(crate) recorder: Recorder<LedgerEvent>,
}
impl Aggregate for Ledger {
    const CATEGORY: &'static str = "ledger";
    type Event = LedgerEvent;
    fn apply(&mut self, _: &LedgerEvent) {
        self.entries += 1;
    }
    fn recorder(&self) -> &Recorder<LedgerEvent> {
        &self.recorder
    }
    fn recorder_mut(&mut self) -> &mut Recorder<LedgerEvent> {
        &mut self.recorder
    }
}

/// Move `n` from one counter to another (both recorded in one unit of work).
pub(crate) struct Transfer {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) n: u64,
}
/// Add to a counter (queued by a listener).
pub(crate) struct Bump {
    pub(crate) id: String,
}

pub(crate) fn transfer<S: EventStore>(
    t: Transfer,
    uow: &mut UnitOfWork<'_, S>,
) -> Result<u64, DomainError<OverCap>> {
    uow.get::<Counter>(&t.from)
        .map_err(DomainError::widen)?
        .add(0)
        .map_err(DomainError::Rejected)?;
    let total = uow
        .get_or_create::<Counter>(&t.to)?
        .add(t.n)
        .map_err(DomainError::Rejected)?;
    uow.get_or_create::<Ledger>("main")?.record(Transferred {
        from: t.from,
        to: t.to,
        n: t.n,
    });
    Ok(total)
}

pub(crate) fn bank<S: EventStore + 'static>() -> MessageBus<S> {
    let mut bus = MessageBus::new();
    bus.handle_with(transfer::<S>).unwrap();
    bus.handle_with(
        |b: Bump, uow: &mut UnitOfWork<'_, S>| -> Result<(), DomainError<OverCap>> {
            uow.get_or_create::<Counter>(&b.id)?
                .add(1)
                .map_err(DomainError::Rejected)?;
            Ok(())
        },
    )
    .unwrap();
    // Every transfer bumps the "audit" counter through a queued command.
    bus.listen(
        |_: &Transferred, uow: &mut UnitOfWork<'_, S>| -> annals::Result<()> {
            uow.dispatch(Bump { id: "audit".into() });
            Ok(())
        },
    );
    bus
}

pub(crate) fn seed_counter<S: EventStore>(store: &S, id: &str, n: u64) {
    Repository::<Counter, _>::new(store)
        .create(id, add(n))
        .unwrap();
}
