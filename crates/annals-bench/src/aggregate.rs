//! The aggregate-load workload's domain: an `Account` built from `Deposited` events, each a
//! bincode payload of about 70 bytes. annals loads it through its domain floor
//! ([`annals::domain::Repository`]); SQLite and redb read the same payloads from their stream
//! index and decode and apply them the same way.

use annals::domain::{Aggregate, Recorder};
use annals::events;
use annals::typed::EventType;
use serde::{Deserialize, Serialize};

use crate::{BenchResult, Event};

/// The stream the aggregate lives in (category `account`, id `a`).
pub const AGGREGATE_STREAM: &str = "account-a";
/// The id of the aggregate in its category.
pub const AGGREGATE_ID: &str = "a";
/// Events of the aggregate the workload loads.
pub const AGGREGATE_EVENTS: u64 = 10_000;

/// A deposit into an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    /// The account.
    pub account: String,
    /// Amount deposited.
    pub amount: u64,
    /// What it was for.
    pub memo: String,
}

impl EventType for Deposited {
    const NAME: &'static str = "Deposited";
}

events! {
    /// The events of an account.
    #[derive(Debug, Clone, PartialEq)]
    pub enum AccountEvent { Deposited(Deposited) }
}

/// An account: its balance and how many deposits made it.
#[derive(Debug, Default)]
pub struct Account {
    /// Sum of the deposits.
    pub balance: u64,
    /// Number of deposits.
    pub deposits: u64,
    recorder: Recorder<AccountEvent>,
}

impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Event = AccountEvent;
    fn apply(&mut self, event: &AccountEvent) {
        let AccountEvent::Deposited(e) = event;
        self.balance += e.amount;
        self.deposits += 1;
    }
    fn recorder(&self) -> &Recorder<AccountEvent> {
        &self.recorder
    }
    fn recorder_mut(&mut self) -> &mut Recorder<AccountEvent> {
        &mut self.recorder
    }
}

impl Account {
    /// Applies one stored event of type `event_type` with bincode `payload`, as the peers do.
    pub fn apply_bincode(&mut self, event_type: &str, payload: &[u8]) -> BenchResult<()> {
        if event_type != Deposited::NAME {
            return Err(format!("unexpected event type `{event_type}`").into());
        }
        let (e, _): (Deposited, usize) =
            bincode::serde::decode_from_slice(payload, bincode::config::standard())?;
        self.apply(&AccountEvent::Deposited(e));
        Ok(())
    }
}

/// The `i`-th deposit of the history.
pub fn deposit(i: u64) -> Deposited {
    Deposited {
        account: "acc-42".into(),
        amount: i % 100,
        memo: "salary, rent, groceries: a memo of some fifty bytes".into(),
    }
}

/// The balance of an account holding deposits `0..n`.
pub fn balance_of(n: u64) -> u64 {
    (0..n).map(|i| deposit(i).amount).sum()
}

/// Deposits `from..to` as bench events (bincode payloads, type `Deposited`).
pub fn deposit_events(from: u64, to: u64) -> BenchResult<Vec<Event>> {
    (from..to)
        .map(|i| {
            let payload = bincode::serde::encode_to_vec(deposit(i), bincode::config::standard())?;
            Ok(Event {
                id: uuid::Uuid::now_v7(),
                event_type: Deposited::NAME,
                payload: payload.into(),
                bincode: true,
            })
        })
        .collect()
}

/// Appends the aggregate's history ([`AGGREGATE_EVENTS`] deposits) to `sys`, in batches of 1000.
pub fn fill_aggregate(sys: &dyn crate::System) -> BenchResult<()> {
    let mut at = 0;
    while at < AGGREGATE_EVENTS {
        let to = (at + 1000).min(AGGREGATE_EVENTS);
        sys.append(AGGREGATE_STREAM, &deposit_events(at, to)?)?;
        at = to;
    }
    Ok(())
}
