//! The aggregate-load and typed-append workloads' domain: an `Account` built from `Deposited`
//! events, each a JSON (about 100 bytes) or bincode (about 70 bytes) payload. annals loads it through its domain floor
//! ([`annals::domain::Repository`]); SQLite and redb read the same payloads from their stream
//! index and decode and apply them the same way.

use annals::domain::{Aggregate, Recorder};
use annals::events;
use annals::typed::EventType;
use serde::{Deserialize, Serialize};

use crate::{BenchResult, Event, PayloadCodec};

/// The stream and the id (in category `account`) of the aggregate whose events use `codec`.
pub fn aggregate_stream(codec: PayloadCodec) -> (&'static str, &'static str) {
    match codec {
        PayloadCodec::Json => ("account-a", "a"),
        PayloadCodec::Bincode => ("account-b", "b"),
    }
}

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
    /// Applies one stored event of type `event_type` whose `payload` is encoded with `codec`,
    /// as the peers do.
    pub fn apply_encoded(
        &mut self,
        event_type: &str,
        payload: &[u8],
        codec: PayloadCodec,
    ) -> BenchResult<()> {
        if event_type != Deposited::NAME {
            return Err(format!("unexpected event type `{event_type}`").into());
        }
        let e: Deposited = match codec {
            PayloadCodec::Json => serde_json::from_slice(payload)?,
            PayloadCodec::Bincode => {
                bincode::serde::decode_from_slice(payload, bincode::config::standard())?.0
            }
        };
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

/// Deposits `from..to` as bench events (type `Deposited`, payloads encoded with `codec`).
pub fn deposit_events(from: u64, to: u64, codec: PayloadCodec) -> BenchResult<Vec<Event>> {
    (from..to)
        .map(|i| {
            let payload = match codec {
                PayloadCodec::Json => annals::typed::to_json_string(&deposit(i))?.into_bytes(),
                PayloadCodec::Bincode => {
                    bincode::serde::encode_to_vec(deposit(i), bincode::config::standard())?
                }
            };
            Ok(Event {
                id: uuid::Uuid::now_v7(),
                event_type: Deposited::NAME,
                payload: payload.into(),
                codec: Some(codec),
            })
        })
        .collect()
}

/// Appends both aggregates' histories ([`AGGREGATE_EVENTS`] deposits each, JSON and bincode)
/// to `sys`, in batches of 1000.
pub fn fill_aggregate(sys: &dyn crate::System) -> BenchResult<()> {
    for codec in [PayloadCodec::Json, PayloadCodec::Bincode] {
        let (stream, _) = aggregate_stream(codec);
        let mut at = 0;
        while at < AGGREGATE_EVENTS {
            let to = (at + 1000).min(AGGREGATE_EVENTS);
            sys.append(stream, &deposit_events(at, to, codec)?)?;
            at = to;
        }
    }
    Ok(())
}

/// Appends `batches` durable batches of `batch` typed deposits to one stream, each encoded with
/// `codec` inside the timed part. Returns the elapsed time.
pub fn typed_batches(
    sys: &dyn crate::System,
    batches: u64,
    batch: u64,
    codec: PayloadCodec,
) -> BenchResult<std::time::Duration> {
    let mut elapsed = std::time::Duration::ZERO;
    for b in 0..batches {
        let start = std::time::Instant::now();
        let events = deposit_events(b * batch, (b + 1) * batch, codec)?;
        sys.append(&format!("typed-{}", codec.name()), &events)?;
        elapsed += start.elapsed();
    }
    Ok(elapsed)
}
