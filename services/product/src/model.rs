//! Products, prices and reservations, and the rules they follow (pure, unit-tested).

use msa_service_kit::Problem;
pub use msa_service_kit::format_cents;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// A JSON number (999.99) or a decimal string ("999.99"); checked by [`parse_price`].
    pub price: Value,
    pub stock: i64,
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
    /// `reserved` (stock held) or `released` (stock given back, or released before it arrived).
    pub state: String,
    pub items: Vec<ReservedItem>,
    pub total_cents: i64,
    pub created_at: String,
    pub updated_at: String,
}

pub fn valid_name(raw: &str) -> Result<String, Problem> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Problem::invalid("name", "name must be 1 to 200 characters"));
    }
    Ok(name.to_owned())
}

pub fn valid_stock(stock: i64) -> Result<i64, Problem> {
    if stock < 0 {
        return Err(Problem::invalid(
            "stock",
            format!("stock must be 0 or more, got {stock}"),
        ));
    }
    Ok(stock)
}

/// 1 000 000 000.00: far above any real price, far below overflow in order totals.
pub const MAX_PRICE_CENTS: i64 = 100_000_000_000;

/// A price in cents from a JSON number or decimal string with at most two decimal places.
/// Numbers are read through their shortest decimal form (999.99 stays 999.99), never by
/// multiplying a float.
pub fn parse_price(value: &Value) -> Result<i64, Problem> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => {
            return Err(Problem::invalid(
                "price",
                "price must be a number or a decimal string such as \"9.99\"",
            ));
        }
    };
    let invalid =
        |why: &str| Problem::invalid("price", format!("price {text:?} is not valid: {why}"));
    if text.starts_with('-') {
        return Err(invalid("it must not be negative"));
    }
    let (units, fraction) = text.split_once('.').unwrap_or((&text, ""));
    if units.is_empty()
        || !units.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid("expected digits with an optional decimal point"));
    }
    if fraction.len() > 2 {
        return Err(invalid("at most two decimal places (cents)"));
    }
    let units: i64 = units.parse().map_err(|_| invalid("too large"))?;
    let cents: i64 = format!("{fraction:0<2}").parse().unwrap_or(0);
    units
        .checked_mul(100)
        .and_then(|u| u.checked_add(cents))
        .filter(|c| *c <= MAX_PRICE_CENTS)
        .ok_or_else(|| invalid("at most 1000000000.00"))
}

/// Checks a reservation request and merges lines for the same product, sorted by product id
/// (a stable lock order, so concurrent reservations cannot deadlock on PostgreSQL).
pub fn normalise_items(items: &[ReservationItem]) -> Result<Vec<ReservationItem>, Problem> {
    if items.is_empty() {
        return Err(Problem::invalid("items", "items must not be empty"));
    }
    let mut merged: std::collections::BTreeMap<String, i64> = Default::default();
    for (i, item) in items.iter().enumerate() {
        let id = msa_service_kit::parse_id(&format!("items[{i}].product_id"), &item.product_id)?
            .to_string();
        if item.quantity < 1 {
            return Err(Problem::invalid(
                &format!("items[{i}].quantity"),
                format!("quantity must be at least 1, got {}", item.quantity),
            ));
        }
        let total = merged.entry(id).or_default();
        *total = total
            .checked_add(item.quantity)
            .ok_or_else(|| Problem::invalid("items", "quantity too large"))?;
    }
    Ok(merged
        .into_iter()
        .map(|(product_id, quantity)| ReservationItem {
            product_id,
            quantity,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prices_are_exact_cents() {
        assert_eq!(parse_price(&json!(999.99)).unwrap(), 99999);
        assert_eq!(parse_price(&json!("999.99")).unwrap(), 99999);
        assert_eq!(parse_price(&json!(0.1)).unwrap(), 10);
        assert_eq!(parse_price(&json!(5)).unwrap(), 500);
        assert_eq!(parse_price(&json!("5.5")).unwrap(), 550);
        for bad in [
            json!(-1),
            json!("1.999"),
            json!("abc"),
            json!(true),
            json!("1e3"),
            json!(".5"),
            json!(1e300),
        ] {
            assert_eq!(parse_price(&bad).unwrap_err().status, 422, "{bad}");
        }
        assert_eq!(format_cents(99999), "999.99");
        assert_eq!(format_cents(5), "0.05");
    }

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
            product_id: b,
            quantity: 0,
        }];
        assert_eq!(
            normalise_items(&zero).unwrap_err().extra["field"],
            "items[0].quantity"
        );
    }
}
