//! Orders, their lines, and the status machine (pure, unit-tested).

use axum::http::StatusCode;
use msa_service_kit::Problem;
use msa_service_kit::caller::Caller;
use msa_service_kit::money::{self, valid_line_count, valid_quantity};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Recorded; the saga is running (or the recoverer will finish it).
    Pending,
    /// Stock sold to the order (its reservation committed).
    Confirmed,
    Shipped,
    Delivered,
    /// Cancelled while pending or confirmed; its stock is given back.
    Cancelled,
    /// The saga could not complete (for example insufficient stock); its stock is given back.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Confirmed => "confirmed",
            Status::Shipped => "shipped",
            Status::Delivered => "delivered",
            Status::Cancelled => "cancelled",
            Status::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Result<Status, Problem> {
        Ok(match raw {
            "pending" => Status::Pending,
            "confirmed" => Status::Confirmed,
            "shipped" => Status::Shipped,
            "delivered" => Status::Delivered,
            "cancelled" => Status::Cancelled,
            "failed" => Status::Failed,
            other => {
                return Err(Problem::invalid(
                    "status",
                    format!("unknown status {other:?}; use one of shipped, delivered, cancelled"),
                ));
            }
        })
    }

    /// Whether `PUT /orders/{id}/status` may move an order from `self` to `next`. Pending,
    /// confirmed and failed are set by the saga only; cancelling (a pending or a confirmed
    /// order) gives stock back.
    pub fn may_become(self, next: Status) -> bool {
        matches!(
            (self, next),
            (Status::Confirmed, Status::Shipped)
                | (Status::Shipped, Status::Delivered)
                | (Status::Confirmed | Status::Pending, Status::Cancelled)
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderLine {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
    pub unit_price: String,
    pub line_total_cents: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub status: Status,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub total: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// An order's standing as the product service needs it before giving stock back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settlement {
    pub id: String,
    /// `None` when there is no such order.
    pub status: Option<Status>,
    /// Whether stock held or sold under this id may be given back: when the order was
    /// cancelled or failed, and when there is no such order (this service records every order
    /// before it reserves, so stock under an id it never recorded was bought by nobody).
    pub stock_returnable: bool,
}

impl Settlement {
    pub fn of(id: &str, order: Option<&Order>) -> Self {
        let status = order.map(|o| o.status);
        Settlement {
            id: id.to_owned(),
            status,
            stock_returnable: matches!(status, None | Some(Status::Cancelled | Status::Failed)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// Whom the order is for. With authentication on it comes from the token: a user may leave
    /// it out or name themselves; only an admin may name someone else.
    #[serde(default)]
    pub user_id: Option<String>,
    pub items: Vec<RequestedItem>,
    /// The total the client expects (a number or decimal string, as it saw the prices). The
    /// server prices the order itself; a `total` that differs is refused, so a client never
    /// pays an amount it did not expect. Optional.
    #[serde(default)]
    pub total: Option<Box<serde_json::value::RawValue>>,
}

/// A checked order request: canonical ids, and the user it is placed for.
#[derive(Debug, PartialEq)]
pub struct ValidOrder {
    pub user_id: String,
    pub items: Vec<RequestedItem>,
    /// The client's expected total in cents, when it sent one.
    pub expected_total_cents: Option<i64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestedItem {
    pub product_id: String,
    pub quantity: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStatus {
    pub status: String,
}

/// A line with its price, and the order total; `None` past [`money::MAX_EXACT`] (refused as
/// too large, never wrapped).
pub fn price_lines(items: &[(RequestedItem, i64)]) -> Option<(Vec<OrderLine>, i64)> {
    let total = money::total(items.iter().map(|(item, price)| (item.quantity, *price)))?;
    let mut lines = Vec::with_capacity(items.len());
    for (item, unit_price_cents) in items {
        let line_total_cents = money::line_total(item.quantity, *unit_price_cents)?;
        lines.push(OrderLine {
            product_id: item.product_id.clone(),
            quantity: item.quantity,
            unit_price_cents: *unit_price_cents,
            unit_price: msa_service_kit::format_cents(*unit_price_cents),
            line_total_cents,
        });
    }
    Some((lines, total))
}

/// Checks the request — ids are UUIDs (400 otherwise), at least one line, quantities ≥ 1, and
/// the lines for one product together within [`money::MAX_QUANTITY`], as the product service
/// merges them — and returns it with the ids in canonical form, placed for [`owner`]. The lines
/// are kept as sent.
pub fn validate(body: CreateOrder, caller: &Caller) -> Result<ValidOrder, Problem> {
    let user_id = owner(caller, body.user_id.as_deref())?;
    valid_line_count(body.items.len())?;
    let mut items = Vec::with_capacity(body.items.len());
    let mut per_product: std::collections::HashMap<String, i64> = Default::default();
    for (i, item) in body.items.into_iter().enumerate() {
        let field = format!("items[{i}].quantity");
        let product_id =
            msa_service_kit::parse_id(&format!("items[{i}].product_id"), &item.product_id)?
                .to_string();
        valid_quantity(&field, item.quantity)?;
        let merged = per_product.entry(product_id.clone()).or_default();
        *merged = merged
            .checked_add(item.quantity)
            .filter(|q| *q <= money::MAX_QUANTITY)
            .ok_or_else(|| {
                Problem::invalid(
                    &field,
                    format!(
                        "the lines for product {product_id} add up to more than {}; order at most that many of one product",
                        money::MAX_QUANTITY
                    ),
                )
            })?;
        items.push(RequestedItem {
            product_id,
            quantity: item.quantity,
        });
    }
    let expected_total_cents = body
        .total
        .as_deref()
        .map(|raw| money::parse_amount("total", raw, money::MAX_EXACT))
        .transpose()?;
    Ok(ValidOrder {
        user_id,
        items,
        expected_total_cents,
    })
}

/// 422 when the client's expected total is not the server's.
pub fn check_expected_total(expected: Option<i64>, computed: i64) -> Result<(), Problem> {
    match expected {
        Some(expected) if expected != computed => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "total-mismatch",
            format!(
                "the order's total is {} at today's prices, not {}; send that total or none",
                money::format_cents(computed),
                money::format_cents(expected)
            ),
        )
        .with("field", "total")
        .with("computed_total", money::format_cents(computed))
        .with("computed_total_cents", computed)),
        _ => Ok(()),
    }
}

/// The user an order is placed for: the signed-in user; the one `requested` in the body when
/// the caller is an admin or authentication is off.
pub fn owner(caller: &Caller, requested: Option<&str>) -> Result<String, Problem> {
    caller.require_user()?;
    let requested = requested
        .map(|id| msa_service_kit::parse_id("user_id", id))
        .transpose()?
        .map(|id| id.to_string());
    match (caller.user(), requested) {
        (_, Some(other)) if caller.is_admin() => Ok(other),
        (Some(me), requested) => {
            let me = uuid::Uuid::parse_str(me)
                .map(|id| id.to_string())
                .map_err(|_| {
                    Problem::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "your token's subject is not a user id of this shop; sign up first",
                    )
                })?;
            match requested {
                Some(other) if other != me => Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "orders are placed for the signed-in user: leave out user_id",
                )
                .with("field", "user_id")),
                _ => Ok(me),
            }
        }
        // (Authentication is off, and no user was named.)
        (None, _) => Err(Problem::invalid("user_id", "user_id is required")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 27: what the product service is told before a return.
    #[test]
    fn stock_may_come_back_for_ended_orders_and_ids_no_order_has() {
        let order = |status| Order {
            id: "o".into(),
            user_id: "u".into(),
            status,
            items: Vec::new(),
            total_cents: 0,
            total: "0.00".into(),
            failure_reason: None,
            created_at: String::new(),
            updated_at: String::new(),
        };
        for (status, returnable) in [
            (Status::Pending, false),
            (Status::Confirmed, false),
            (Status::Shipped, false),
            (Status::Delivered, false),
            (Status::Cancelled, true),
            (Status::Failed, true),
        ] {
            let settlement = Settlement::of("o", Some(&order(status)));
            assert_eq!(
                (settlement.status, settlement.stock_returnable),
                (Some(status), returnable)
            );
        }
        let nobodys = Settlement::of("x", None);
        assert_eq!((nobodys.status, nobodys.stock_returnable), (None, true));
        assert_eq!(
            serde_json::to_value(&nobodys).unwrap(),
            serde_json::json!({"id": "x", "status": null, "stock_returnable": true})
        );
    }

    #[test]
    fn only_forward_moves_and_cancel_before_shipping_are_allowed() {
        use Status::*;
        let all = [Pending, Confirmed, Shipped, Delivered, Cancelled, Failed];
        let allowed: Vec<(Status, Status)> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.may_become(*b))
            .collect();
        assert_eq!(
            allowed,
            [
                (Pending, Cancelled),
                (Confirmed, Shipped),
                (Confirmed, Cancelled),
                (Shipped, Delivered)
            ]
        );
        assert_eq!(Status::parse("lost").unwrap_err().status, 422);
        for s in all {
            assert_eq!(Status::parse(s.as_str()).unwrap(), s);
        }
    }

    #[test]
    fn totals_come_from_prices_and_refuse_overflow() {
        let item = |q| RequestedItem {
            product_id: "p".into(),
            quantity: q,
        };
        let (lines, total) = price_lines(&[(item(2), 99999), (item(1), 1)]).unwrap();
        assert_eq!(
            (
                lines[0].line_total_cents,
                lines[0].unit_price.as_str(),
                total
            ),
            (199998, "999.99", 199999)
        );
        assert!(price_lines(&[(item(i64::MAX), 2)]).is_none());
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let user = uuid::Uuid::new_v4().to_string();
        let product = uuid::Uuid::new_v4().to_string();
        let order = |items: Vec<RequestedItem>| CreateOrder {
            user_id: Some(user.clone()),
            items,
            total: None,
        };
        let validate = |body| validate(body, &Caller::unchecked());
        let canonical = validate(order(vec![RequestedItem {
            product_id: product.to_uppercase(),
            quantity: 1,
        }]))
        .unwrap();
        assert_eq!(
            canonical.items[0].product_id, product,
            "ids come back canonical"
        );
        assert_eq!(validate(order(vec![])).unwrap_err().status, 422);
        let zero = validate(order(vec![RequestedItem {
            product_id: product.clone(),
            quantity: 0,
        }]))
        .unwrap_err();
        assert_eq!(zero.extra["field"], "items[0].quantity");
        let bad_id = validate(order(vec![RequestedItem {
            product_id: "7".into(),
            quantity: 1,
        }]))
        .unwrap_err();
        assert_eq!(bad_id.status, 400);
        // Issue 27: two lines within the bound, together past it (the product service merges
        // them): refused here, before anything is recorded.
        let line = |quantity| RequestedItem {
            product_id: product.clone(),
            quantity,
        };
        let merged = validate(order(vec![line(600_000_000), line(600_000_000)])).unwrap_err();
        assert_eq!(
            (merged.status, merged.extra["field"].as_str()),
            (422, Some("items[1].quantity"))
        );
        let at_the_bound = validate(order(vec![line(600_000_000), line(400_000_000)])).unwrap();
        assert_eq!(at_the_bound.items.len(), 2, "lines are kept as sent");
    }

    #[test]
    fn a_clients_total_must_be_the_servers() {
        assert!(check_expected_total(None, 99_999).is_ok());
        assert!(check_expected_total(Some(99_999), 99_999).is_ok());
        let refused = check_expected_total(Some(100_000), 99_999).unwrap_err();
        assert_eq!(refused.status, 422);
        assert!(refused.kind.ends_with("/total-mismatch"));
        assert_eq!(refused.extra["computed_total"], "999.99");
    }

    #[test]
    fn orders_are_placed_for_the_signed_in_user() {
        use msa_service_kit::auth::Identity;
        use msa_service_kit::caller::Who;
        let me = uuid::Uuid::new_v4().to_string();
        let other = uuid::Uuid::new_v4().to_string();
        let user = |subject: &str, roles: &[&str]| {
            Caller::new(
                Who::User(Identity {
                    subject: subject.into(),
                    roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                }),
                true,
            )
        };
        let alice = user(&me, &[]);
        assert_eq!(owner(&alice, None).unwrap(), me);
        assert_eq!(owner(&alice, Some(&me.to_uppercase())).unwrap(), me);
        assert_eq!(owner(&alice, Some(&other)).unwrap_err().status, 403);
        assert_eq!(
            owner(&user("root", &["admin"]), Some(&other)).unwrap(),
            other
        );
        assert_eq!(
            owner(&user("not-a-uuid", &[]), None).unwrap_err().status,
            403
        );
        assert_eq!(
            owner(&Caller::new(Who::Anonymous, true), Some(&me))
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(owner(&Caller::unchecked(), None).unwrap_err().status, 422);
        assert_eq!(owner(&Caller::unchecked(), Some(&other)).unwrap(), other);
    }
}
