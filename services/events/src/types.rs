//! The events the shop publishes: one type per kind of change, each with the `data` a consumer
//! needs without calling the service back. These structs are the contract (documented with an
//! example each in services/README.md, which a test parses against them); the services' API
//! models may change without changing them.
//!
//! A type's name is `dev.msa.<service>.<change>.v<N>`: a change that breaks a consumer gets a
//! new version beside the old one, never an edit of it.

use serde::{Deserialize, Serialize};

/// Every kind of event, named by its CloudEvents `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    UserRegistered,
    UserUpdated,
    UserDeleted,
    ProductCreated,
    ProductUpdated,
    ProductPriceChanged,
    ProductStockChanged,
    OrderPlaced,
    OrderConfirmed,
    OrderFailed,
    OrderCancelled,
    OrderShipped,
    OrderDelivered,
}

impl EventType {
    pub const ALL: [EventType; 13] = [
        EventType::UserRegistered,
        EventType::UserUpdated,
        EventType::UserDeleted,
        EventType::ProductCreated,
        EventType::ProductUpdated,
        EventType::ProductPriceChanged,
        EventType::ProductStockChanged,
        EventType::OrderPlaced,
        EventType::OrderConfirmed,
        EventType::OrderFailed,
        EventType::OrderCancelled,
        EventType::OrderShipped,
        EventType::OrderDelivered,
    ];

    /// The service that publishes it, and what changed (`<service>.<change>.v1` is the tail of
    /// both the type and the NATS subject).
    pub fn parts(self) -> (&'static str, &'static str) {
        match self {
            EventType::UserRegistered => ("user", "registered"),
            EventType::UserUpdated => ("user", "updated"),
            EventType::UserDeleted => ("user", "deleted"),
            EventType::ProductCreated => ("product", "created"),
            EventType::ProductUpdated => ("product", "updated"),
            EventType::ProductPriceChanged => ("product", "price_changed"),
            EventType::ProductStockChanged => ("product", "stock_changed"),
            EventType::OrderPlaced => ("order", "placed"),
            EventType::OrderConfirmed => ("order", "confirmed"),
            EventType::OrderFailed => ("order", "failed"),
            EventType::OrderCancelled => ("order", "cancelled"),
            EventType::OrderShipped => ("order", "shipped"),
            EventType::OrderDelivered => ("order", "delivered"),
        }
    }

    pub fn service(self) -> &'static str {
        self.parts().0
    }

    /// The CloudEvents `type`, e.g. `dev.msa.order.confirmed.v1`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UserRegistered => "dev.msa.user.registered.v1",
            EventType::UserUpdated => "dev.msa.user.updated.v1",
            EventType::UserDeleted => "dev.msa.user.deleted.v1",
            EventType::ProductCreated => "dev.msa.product.created.v1",
            EventType::ProductUpdated => "dev.msa.product.updated.v1",
            EventType::ProductPriceChanged => "dev.msa.product.price_changed.v1",
            EventType::ProductStockChanged => "dev.msa.product.stock_changed.v1",
            EventType::OrderPlaced => "dev.msa.order.placed.v1",
            EventType::OrderConfirmed => "dev.msa.order.confirmed.v1",
            EventType::OrderFailed => "dev.msa.order.failed.v1",
            EventType::OrderCancelled => "dev.msa.order.cancelled.v1",
            EventType::OrderShipped => "dev.msa.order.shipped.v1",
            EventType::OrderDelivered => "dev.msa.order.delivered.v1",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The NATS subject it is published to in app `app`: `msa.<app>.<service>.<change>.v1`.
    pub fn subject(self, app: &str) -> String {
        let (service, change) = self.parts();
        format!("msa.{app}.{service}.{change}.v1")
    }

    /// Checks that `data` is this type's payload (no field missing, none unknown).
    pub fn check_data(self, data: &serde_json::Value) -> Result<(), serde_json::Error> {
        fn check<T: serde::de::DeserializeOwned>(
            data: &serde_json::Value,
        ) -> Result<(), serde_json::Error> {
            T::deserialize(data).map(drop)
        }
        match self {
            EventType::UserRegistered | EventType::UserUpdated => check::<UserData>(data),
            EventType::UserDeleted => check::<UserDeleted>(data),
            EventType::ProductCreated | EventType::ProductUpdated => check::<ProductData>(data),
            EventType::ProductPriceChanged => check::<PriceChanged>(data),
            EventType::ProductStockChanged => check::<StockChanged>(data),
            EventType::OrderPlaced
            | EventType::OrderConfirmed
            | EventType::OrderFailed
            | EventType::OrderCancelled
            | EventType::OrderShipped
            | EventType::OrderDelivered => check::<OrderData>(data),
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user as registered or after an update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserData {
    pub id: String,
    pub name: String,
    pub email: String,
}

/// A user that no longer exists; its orders are its orders' business.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDeleted {
    pub id: String,
}

/// A product as created or after an update of its name or description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductData {
    pub id: String,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub stock: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceChanged {
    pub id: String,
    pub previous_price_cents: i64,
    pub price_cents: i64,
}

/// Why a product's stock changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockReason {
    /// An admin set it (`PUT /products/{id}/stock`).
    Set,
    /// An order's reservation took it.
    Reserved,
    /// A reservation was released before its order was confirmed.
    Released,
    /// A confirmed order was cancelled or failed: its stock came back.
    Returned,
    /// A reservation was held past its TTL and released by the product service.
    Expired,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockChanged {
    pub id: String,
    pub previous_stock: i64,
    pub stock: i64,
    pub reason: StockReason,
    /// The reservation (the order's id) that took or gave the stock; none when set by hand.
    pub reservation_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLineData {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

/// An order as the change left it: every order event carries the whole order (lines, prices,
/// total), so a consumer never calls back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderData {
    pub id: String,
    pub user_id: String,
    pub status: String,
    pub items: Vec<OrderLineData>,
    pub total_cents: i64,
    pub failure_reason: Option<String>,
    pub created_at: String,
}

/// One change, ready for the outbox: its type, the aggregate it belongs to (the CloudEvents
/// `subject`) and its payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub kind: EventType,
    pub subject: String,
    pub data: serde_json::Value,
}

impl Event {
    fn new(kind: EventType, subject: &str, data: impl Serialize) -> Event {
        Event {
            kind,
            subject: subject.to_owned(),
            // Plain structs of strings and integers: serialising them cannot fail.
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn user(kind: EventType, user: &UserData) -> Event {
        Event::new(kind, &user.id, user)
    }

    pub fn user_deleted(id: &str) -> Event {
        Event::new(
            EventType::UserDeleted,
            id,
            UserDeleted { id: id.to_owned() },
        )
    }

    pub fn product(kind: EventType, product: &ProductData) -> Event {
        Event::new(kind, &product.id, product)
    }

    pub fn price_changed(change: &PriceChanged) -> Event {
        Event::new(EventType::ProductPriceChanged, &change.id, change)
    }

    pub fn stock_changed(change: &StockChanged) -> Event {
        Event::new(EventType::ProductStockChanged, &change.id, change)
    }

    pub fn order(kind: EventType, order: &OrderData) -> Event {
        Event::new(kind, &order.id, order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_parses_back_and_has_its_own_subject() {
        let mut subjects = std::collections::BTreeSet::new();
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
            let (service, change) = kind.parts();
            assert_eq!(kind.as_str(), format!("dev.msa.{service}.{change}.v1"));
            assert!(subjects.insert(kind.subject("shop")));
        }
        assert_eq!(
            EventType::OrderConfirmed.subject("shop"),
            "msa.shop.order.confirmed.v1"
        );
        assert_eq!(EventType::parse("dev.msa.order.confirmed.v2"), None);
    }

    #[test]
    fn data_is_checked_against_its_type() {
        let deleted = Event::user_deleted("u1");
        assert!(EventType::UserDeleted.check_data(&deleted.data).is_ok());
        assert!(EventType::UserRegistered.check_data(&deleted.data).is_err());
        let extra = serde_json::json!({"id": "u1", "admin": true});
        assert!(EventType::UserDeleted.check_data(&extra).is_err());
    }
}
