//! Products, prices and reservations, and the rules they follow (pure, unit-tested).

use msa_service_kit::Problem;
pub use msa_service_kit::format_cents;
use msa_service_kit::money::{self, valid_line_count, valid_quantity};
use msa_service_kit::text::TextRule;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Decimal string, two places ("999.99"): exact, unlike a JSON float.
    pub price: String,
    pub price_cents: i64,
    pub stock: i64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A JSON number (999.99) or a decimal string ("999.99"), kept as its JSON text so the
    /// digits are read as written ([`money::parse_price`]).
    pub price: Box<RawValue>,
    pub stock: i64,
}

/// `PATCH /products/{id}`: only the fields present change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProduct {
    pub name: Option<String>,
    pub description: Option<String>,
    /// As in [`CreateProduct::price`].
    pub price: Option<Box<RawValue>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStock {
    pub stock: i64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReservationItem {
    pub product_id: String,
    pub quantity: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateReservation {
    /// The caller's id for this reservation (the order id): retrying with the same id is safe.
    pub id: String,
    pub items: Vec<ReservationItem>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReservedItem {
    pub product_id: String,
    pub quantity: i64,
    /// The price when reserved: what the order is charged.
    pub unit_price_cents: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reservation {
    pub id: String,
    /// `reserved` (stock held for a pending order), `committed` (sold: the order was confirmed)
    /// or `released` (stock given back, expired, or released before it arrived).
    pub state: String,
    pub items: Vec<ReservedItem>,
    pub total_cents: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// A product's name: one line, 1 to 200 characters.
pub const NAME: TextRule = TextRule::line("name", 200);
/// A product's description: optional, up to 2000 characters, line feeds and tabs allowed.
pub const DESCRIPTION: TextRule = TextRule {
    required: false,
    multiline: true,
    ..TextRule::line("description", 2000)
};

/// Checks a reservation request and merges lines for the same product, sorted by product id
/// (a stable lock order, so concurrent reservations cannot deadlock on PostgreSQL).
pub fn normalise_items(items: &[ReservationItem]) -> Result<Vec<ReservationItem>, Problem> {
    valid_line_count(items.len())?;
    let mut merged: std::collections::BTreeMap<String, i64> = Default::default();
    for (i, item) in items.iter().enumerate() {
        let id = msa_service_kit::parse_id(&format!("items[{i}].product_id"), &item.product_id)?
            .to_string();
        valid_quantity(&format!("items[{i}].quantity"), item.quantity)?;
        let total = merged.entry(id).or_default();
        *total = total
            .checked_add(item.quantity)
            .filter(|q| *q <= money::MAX_QUANTITY)
            .ok_or_else(|| {
                Problem::invalid(
                    &format!("items[{i}].quantity"),
                    format!(
                        "at most {} of one product per reservation",
                        money::MAX_QUANTITY
                    ),
                )
            })?;
    }
    Ok(merged
        .into_iter()
        .map(|(product_id, quantity)| ReservationItem {
            product_id,
            quantity,
        })
        .collect())
}

/// What a reservation's lines cost; `None` past [`money::MAX_EXACT`].
pub fn reservation_total(items: &[ReservedItem]) -> Option<i64> {
    money::total(items.iter().map(|i| (i.quantity, i.unit_price_cents)))
}

/// The stock after `quantity` units come back (a release, a return, an expiry), and the units
/// dropped: stock never passes [`money::MAX_STOCK`], the most a client may set, because an
/// admin may have set it to the maximum while the units were out. A stock already above it (a
/// database from before the bound) is left as it is and the units are dropped.
pub fn returned_stock(stock: i64, quantity: i64) -> (i64, i64) {
    let quantity = quantity.max(0);
    if stock >= money::MAX_STOCK {
        return (stock, quantity);
    }
    let room = money::MAX_STOCK - stock.max(0);
    let added = quantity.min(room);
    (stock.max(0) + added, quantity - added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_lines_are_checked_and_merged_in_a_stable_order() {
        let a = uuid::Uuid::from_u128(1).to_string();
        let b = uuid::Uuid::from_u128(2).to_string();
        let items = [
            ReservationItem {
                product_id: b.clone(),
                quantity: 1,
            },
            ReservationItem {
                product_id: a.clone(),
                quantity: 2,
            },
            ReservationItem {
                product_id: b.clone(),
                quantity: 3,
            },
        ];
        let merged = normalise_items(&items).unwrap();
        assert_eq!(
            merged,
            [
                ReservationItem {
                    product_id: a,
                    quantity: 2
                },
                ReservationItem {
                    product_id: b.clone(),
                    quantity: 4
                }
            ]
        );
        assert_eq!(normalise_items(&[]).unwrap_err().status, 422);
        let zero = [ReservationItem {
            product_id: b.clone(),
            quantity: 0,
        }];
        assert_eq!(
            normalise_items(&zero).unwrap_err().extra["field"],
            "items[0].quantity"
        );
        // Two lines each within the bound, merged past it (or past i64): refused, not wrapped.
        for quantity in [money::MAX_QUANTITY, i64::MAX] {
            let line = ReservationItem {
                product_id: b.clone(),
                quantity,
            };
            assert_eq!(
                normalise_items(&[line.clone(), line]).unwrap_err().status,
                422
            );
        }
    }

    /// Issue 27: stock given back never passes the maximum a client may set; what did not fit
    /// is reported.
    #[test]
    fn stock_given_back_stays_within_its_maximum() {
        assert_eq!(returned_stock(5, 3), (8, 0));
        assert_eq!(
            returned_stock(money::MAX_STOCK - 1, 3),
            (money::MAX_STOCK, 2)
        );
        assert_eq!(returned_stock(money::MAX_STOCK, 3), (money::MAX_STOCK, 3));
        assert_eq!(returned_stock(money::MAX_EXACT, 3), (money::MAX_EXACT, 3));
        assert_eq!(
            returned_stock(0, money::MAX_QUANTITY),
            (money::MAX_STOCK, 0)
        );
        for stock in [
            0,
            1,
            money::MAX_STOCK / 2,
            money::MAX_STOCK - 1,
            money::MAX_STOCK,
        ] {
            for quantity in [1, 2, money::MAX_QUANTITY] {
                let (after, dropped) = returned_stock(stock, quantity);
                assert!(after <= money::MAX_STOCK && after >= stock);
                assert_eq!(after - stock + dropped, quantity, "every unit is counted");
            }
        }
    }

    #[test]
    fn a_reservation_total_past_the_exact_range_is_none() {
        let line = |quantity, unit_price_cents| ReservedItem {
            product_id: String::new(),
            quantity,
            unit_price_cents,
        };
        assert_eq!(reservation_total(&[line(3, 250), line(1, 1)]), Some(751));
        assert_eq!(
            reservation_total(&[line(money::MAX_QUANTITY, money::MAX_PRICE_CENTS)]),
            None
        );
    }
}
