//! Events out: every change a service makes is also a CloudEvent ([`envelope`], [`types`]),
//! written to the service's outbox in the change's own transaction ([`outbox`]) and relayed
//! exactly once, in order per aggregate, into the service's NATS JetStream stream ([`relay`],
//! [`stream`]). The design and its guarantees: services/README.md, "Events".

//!
//! Without the default feature `relay`, only [`broker`] and the streams' names ([`stream`]) are
//! built: what the operator needs to render a broker's configuration.

pub mod broker;
#[cfg(feature = "relay")]
pub mod envelope;
#[cfg(feature = "relay")]
pub mod keeper;
#[cfg(feature = "relay")]
pub mod metrics;
#[cfg(feature = "relay")]
pub mod outbox;
#[cfg(feature = "relay")]
pub mod relay;
#[cfg(feature = "relay")]
pub mod settings;
pub mod stream;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "relay")]
pub mod trace;
#[cfg(feature = "relay")]
pub mod types;

#[cfg(feature = "relay")]
pub use outbox::{append, commit};
#[cfg(feature = "relay")]
pub use settings::EventsArgs;
#[cfg(feature = "relay")]
pub use types::{Event, EventType};
