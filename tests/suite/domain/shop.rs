//! The shop both the workflow tests and the workflow kill test run: placing an order makes the
//! `Shipping` workflow dispatch a `Ship` command once; what handles `Ship` is up to the test.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use annals::Store;
use annals::domain::{Aggregate, BusError, Command, EventStore, MessageBus, Recorder, UnitOfWork};
use annals::events;
use annals::typed::EventType;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Placed {
    pub(crate) order: u64,
    /// Whether shipping this order is to fail.
    #[serde(default)]
    pub(crate) fail: bool,
}
impl EventType for Placed {
    const NAME: &'static str = "Placed";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Requested {
    pub(crate) order: u64,
}
impl EventType for Requested {
    const NAME: &'static str = "ShippingRequested";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Shipped {
    pub(crate) order: u64,
}
impl EventType for Shipped {
    const NAME: &'static str = "Shipped";
    const PUBLISHED: bool = true;
}

events! { #[derive(Debug, Clone)] pub(crate) enum OrderEvent { Placed(Placed), Shipped(Shipped) } }
events! { #[derive(Debug, Clone)] pub(crate) enum FlowEvent { Requested(Requested) } }

#[derive(Default)]
pub(crate) struct Order {
    pub(crate) shipped: bool,
    recorder: Recorder<OrderEvent>,
}
impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    type Event = OrderEvent;
    fn apply(&mut self, e: &OrderEvent) {
        if matches!(e, OrderEvent::Shipped(_)) {
            self.shipped = true;
        }
    }
    fn recorder(&self) -> &Recorder<OrderEvent> {
        &self.recorder
    }
    fn recorder_mut(&mut self) -> &mut Recorder<OrderEvent> {
        &mut self.recorder
    }
}

/// The workflow: its own state is event-sourced; it dispatches `Ship` once per order.
#[derive(Default)]
pub(crate) struct Shipping {
    pub(crate) requested: bool,
    recorder: Recorder<FlowEvent>,
}
impl Aggregate for Shipping {
    const CATEGORY: &'static str = "shipping";
    type Event = FlowEvent;
    fn apply(&mut self, _: &FlowEvent) {
        self.requested = true;
    }
    fn recorder(&self) -> &Recorder<FlowEvent> {
        &self.recorder
    }
    fn recorder_mut(&mut self) -> &mut Recorder<FlowEvent> {
        &mut self.recorder
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Ship {
    pub(crate) order: u64,
    #[serde(default)]
    pub(crate) fail: bool,
}
impl Command for Ship {
    const NAME: &'static str = "Ship";
}

#[derive(Debug, thiserror::Error)]
#[error("the carrier refused order {0}")]
pub(crate) struct Refused(pub(crate) u64);

/// A bus whose workflow dispatches `Ship` once per placed order (no handler for it yet).
pub(crate) fn orders_bus() -> MessageBus<Store> {
    orders_bus_for::<Store>()
}

/// [`orders_bus`] on any event store.
pub(crate) fn orders_bus_for<S: EventStore + 'static>() -> MessageBus<S> {
    let mut bus = MessageBus::new();
    bus.listen(
        |e: &Placed, uow: &mut UnitOfWork<'_, S>| -> annals::Result<()> {
            let flow = uow.get_or_create::<Shipping>(&e.order.to_string())?;
            if !flow.requested {
                flow.record(Requested { order: e.order });
                flow.dispatch(&Ship {
                    order: e.order,
                    fail: e.fail,
                })?;
            }
            Ok(())
        },
    );
    bus
}

/// The shop of the workflow tests: `Ship` counts its runs in `handled`, fails for orders
/// placed to fail, and records `Shipped` on the order otherwise.
pub(crate) fn shop(handled: Arc<AtomicUsize>) -> MessageBus<Store> {
    shop_for::<Store>(handled)
}

/// [`shop`] on any event store.
pub(crate) fn shop_for<S: EventStore + 'static>(handled: Arc<AtomicUsize>) -> MessageBus<S> {
    let mut bus = orders_bus_for::<S>();
    bus.handle_command(
        move |c: Ship, uow: &mut UnitOfWork<'_, S>| -> Result<(), BusError> {
            handled.fetch_add(1, Ordering::SeqCst);
            if c.fail {
                return Err(BusError::rejected(Refused(c.order)));
            }
            let order = uow.get::<Order>(&c.order.to_string())?;
            order.record(Shipped { order: c.order });
            Ok(())
        },
    )
    .unwrap();
    bus
}

/// Places an order (and lets the workflow dispatch its command) in one unit of work.
pub(crate) fn place<S: EventStore + 'static>(
    bus: &MessageBus<S>,
    store: &S,
    order: u64,
    fail: bool,
) {
    let mut uow = UnitOfWork::new(store);
    uow.create::<Order>(&order.to_string())
        .record(Placed { order, fail });
    bus.settle(&mut uow).unwrap();
    uow.commit().unwrap();
}
