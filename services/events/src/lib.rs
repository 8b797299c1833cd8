//! Events out: every change a service makes is also a CloudEvent ([`envelope`], [`types`]),
//! written to the service's outbox in the change's own transaction ([`outbox`]) and relayed
//! exactly once, in order per aggregate, into the service's NATS JetStream stream ([`relay`],
//! [`stream`]). The design and its guarantees: services/README.md, "Events".

pub mod broker;
pub mod envelope;
pub mod metrics;
pub mod outbox;
pub mod relay;
pub mod settings;
pub mod stream;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
pub mod types;

pub use outbox::{append, commit};
pub use settings::EventsArgs;
pub use types::{Event, EventType};
