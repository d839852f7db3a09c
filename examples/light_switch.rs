//! `event_sourcery`'s light switch, ported: an aggregate with two command methods that refuse
//! what the current state does not allow, a repository that creates it and then works on it
//! again (`with repository.aggregate(stream_id) as switch:`), all on a real annals store.
//!
//! Run it with `cargo run --example light_switch`.

use annals::domain::{Aggregate, DomainError, Recorder, Repository};
use annals::typed::EventType;
use annals::{Direction, Store, events};
use serde::{Deserialize, Serialize};

/// The light was turned on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnedOn;

impl EventType for TurnedOn {
    const NAME: &'static str = "TurnedOn";
}

/// The light was turned off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnedOff;

impl EventType for TurnedOff {
    const NAME: &'static str = "TurnedOff";
}

events! {
    /// What happens to a light switch.
    #[derive(Debug, Clone, PartialEq)]
    pub enum LightEvent {
        /// Turned on.
        On(TurnedOn),
        /// Turned off.
        Off(TurnedOff),
    }
}

/// Why a light switch refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LightSwitchError {
    /// `turn_on` on a shining light.
    #[error("the light is already on")]
    AlreadyTurnedOn,
    /// `turn_off` on a dark light.
    #[error("the light is already off")]
    AlreadyTurnedOff,
}

/// A simple aggregate that models a light switch.
#[derive(Debug, Default)]
pub struct LightSwitch {
    shines: bool,
    recorder: Recorder<LightEvent>,
}

impl Aggregate for LightSwitch {
    const CATEGORY: &'static str = "light_switch";
    type Event = LightEvent;

    fn apply(&mut self, event: &LightEvent) {
        match event {
            LightEvent::On(_) => self.shines = true,
            LightEvent::Off(_) => self.shines = false,
        }
    }

    fn recorder(&self) -> &Recorder<LightEvent> {
        &self.recorder
    }

    fn recorder_mut(&mut self) -> &mut Recorder<LightEvent> {
        &mut self.recorder
    }
}

impl LightSwitch {
    /// Whether the light is on.
    pub fn shines(&self) -> bool {
        self.shines
    }

    /// Turns the light on; refused if it already is.
    pub fn turn_on(&mut self) -> Result<(), LightSwitchError> {
        if self.shines {
            return Err(LightSwitchError::AlreadyTurnedOn);
        }
        self.record(TurnedOn);
        Ok(())
    }

    /// Turns the light off; refused if it already is.
    pub fn turn_off(&mut self) -> Result<(), LightSwitchError> {
        if !self.shines {
            return Err(LightSwitchError::AlreadyTurnedOff);
        }
        self.record(TurnedOff);
        Ok(())
    }
}

/// The seed's walk-through: a first incarnation turns the light on; a second one tries to
/// turn it on again, is refused, and turns it off instead. Returns the stream's event types.
pub fn walk_through(
    store: &Store,
    stream_id: &str,
) -> Result<Vec<String>, DomainError<LightSwitchError>> {
    let repository = Repository::<LightSwitch, _>::new(store);

    // A repository creates a new instance of the aggregate...
    repository.create(stream_id, LightSwitch::turn_on)?;

    // ...or works with an existing one, saving its changes at the end.
    repository.aggregate(stream_id, |switch_second_incarnation| {
        match switch_second_incarnation.turn_on() {
            // o mon Dieu, I made a mistake!
            Err(LightSwitchError::AlreadyTurnedOn) => switch_second_incarnation.turn_off(),
            other => other,
        }
    })?;

    let stream = LightSwitch::stream_name(stream_id);
    let mut types = Vec::new();
    for event in store.read_stream(&stream, 0, Direction::Forwards, usize::MAX)? {
        types.push(event?.event_type().to_owned());
    }
    Ok(types)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("switches"))?;
    let events = walk_through(&store, "hall")?;
    let switch = Repository::<LightSwitch, _>::new(&store).get("hall")?;
    println!("stream light_switch-hall: {}", events.join(", "));
    println!(
        "the light is {} at version {:?}",
        if switch.shines() { "on" } else { "off" },
        switch.version()
    );
    match Repository::<LightSwitch, _>::new(&store).update("hall", LightSwitch::turn_off) {
        Err(DomainError::Rejected(e)) => println!("turning it off again: refused ({e})"),
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }
    Ok(())
}
