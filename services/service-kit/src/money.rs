//! Money and quantities: the bounds every service enforces, and the only arithmetic done on them.
//!
//! The bounds are chosen so that no sum or product the services compute can overflow an `i64`,
//! and every stored figure stays an integer JSON readers hold exactly (at most 2^53 − 1).
//! Arithmetic is checked anyway: a total past the bound is refused, never wrapped or panicked on.

use serde_json::value::RawValue;

use crate::Problem;

/// 1 000 000 000.00: far above any real price.
pub const MAX_PRICE_CENTS: i64 = 100_000_000_000;
/// Most units of one product a client may set or create.
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Most units of one product in one order or reservation (lines for it merged).
pub const MAX_QUANTITY: i64 = MAX_STOCK;
/// Most lines in one order or reservation.
pub const MAX_LINES: usize = 100;
/// Largest total of one order, and largest stock a cancellation can give back to:
/// 2^53 − 1, the largest integer every JSON reader (JavaScript included) holds exactly.
pub const MAX_EXACT: i64 = 9_007_199_254_740_991;

/// Cents as a decimal string with two places: 99999 → "999.99".
pub fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", (cents / 100).abs(), (cents % 100).abs())
}

/// A price in cents from its JSON text: a number (`999.99`) or a decimal string (`"999.99"`),
/// at most two decimal places, 0 to [`MAX_PRICE_CENTS`]. The digits are read as written, so
/// `19.990000000000001` is refused whichever way it is spelled (a float would round it to 19.99).
pub fn parse_price(field: &str, raw: &RawValue) -> Result<i64, Problem> {
    parse_amount(field, raw, MAX_PRICE_CENTS)
}

/// An amount in cents read like [`parse_price`], 0 to `max_cents` (a client's expected order
/// total may reach [`MAX_EXACT`]).
pub fn parse_amount(field: &str, raw: &RawValue, max_cents: i64) -> Result<i64, Problem> {
    let json = raw.get().trim();
    let text = if json.starts_with('"') {
        serde_json::from_str::<String>(json)
            .map_err(|_| Problem::invalid(field, format!("{field} is not a valid string")))?
            .trim()
            .to_owned()
    } else if json.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        json.to_owned()
    } else {
        return Err(Problem::invalid(
            field,
            format!("{field} must be a number or a decimal string such as \"9.99\""),
        ));
    };
    let shown: String = text.chars().take(40).collect();
    let invalid =
        |why: &str| Problem::invalid(field, format!("{field} {shown:?} is not valid: {why}"));
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
    let units = units.trim_start_matches('0');
    let limit = format_cents(max_cents);
    let too_large = || invalid(&format!("at most {limit}"));
    if units.len() > 16 {
        return Err(too_large());
    }
    let units: i64 = if units.is_empty() {
        0
    } else {
        units.parse().map_err(|_| too_large())?
    };
    let cents: i64 = format!("{fraction:0<2}").parse().unwrap_or(0);
    units
        .checked_mul(100)
        .and_then(|u| u.checked_add(cents))
        .filter(|c| *c <= max_cents)
        .ok_or_else(too_large)
}

/// A stock level a client sets: 0 to [`MAX_STOCK`].
pub fn valid_stock(stock: i64) -> Result<i64, Problem> {
    if !(0..=MAX_STOCK).contains(&stock) {
        return Err(Problem::invalid(
            "stock",
            format!("stock must be 0 to {MAX_STOCK}, got {stock}"),
        ));
    }
    Ok(stock)
}

/// A line's quantity: 1 to [`MAX_QUANTITY`]; `field` names it in the answer.
pub fn valid_quantity(field: &str, quantity: i64) -> Result<i64, Problem> {
    if !(1..=MAX_QUANTITY).contains(&quantity) {
        return Err(Problem::invalid(
            field,
            format!("quantity must be 1 to {MAX_QUANTITY}, got {quantity}"),
        ));
    }
    Ok(quantity)
}

/// The number of lines of an order or reservation: 1 to [`MAX_LINES`].
pub fn valid_line_count(count: usize) -> Result<(), Problem> {
    if count == 0 {
        return Err(Problem::invalid("items", "items must not be empty"));
    }
    if count > MAX_LINES {
        return Err(Problem::invalid(
            "items",
            format!("at most {MAX_LINES} lines, got {count}"),
        ));
    }
    Ok(())
}

/// quantity × unit price, `None` when past [`MAX_EXACT`] (or negative input).
pub fn line_total(quantity: i64, unit_price_cents: i64) -> Option<i64> {
    quantity
        .checked_mul(unit_price_cents)
        .filter(|t| (0..=MAX_EXACT).contains(t))
}

/// The sum of (quantity, unit price) lines, `None` when any step passes [`MAX_EXACT`].
pub fn total(lines: impl IntoIterator<Item = (i64, i64)>) -> Option<i64> {
    lines.into_iter().try_fold(0i64, |sum, (quantity, price)| {
        sum.checked_add(line_total(quantity, price)?)
            .filter(|t| *t <= MAX_EXACT)
    })
}

/// The answer when a total passes [`MAX_EXACT`].
pub fn total_too_large() -> Problem {
    Problem::invalid(
        "items",
        format!(
            "the total would exceed {}; split the order",
            format_cents(MAX_EXACT)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn price(json: &str) -> Result<i64, Problem> {
        parse_price("price", &raw(json))
    }

    #[test]
    fn prices_are_exact_cents() {
        assert_eq!(price("999.99").unwrap(), 99999);
        assert_eq!(price(r#""999.99""#).unwrap(), 99999);
        assert_eq!(price("0.1").unwrap(), 10);
        assert_eq!(price("5").unwrap(), 500);
        assert_eq!(price(r#"" 5.5 ""#).unwrap(), 550);
        assert_eq!(price("1000000000.00").unwrap(), MAX_PRICE_CENTS);
        for bad in [
            "-1",
            r#""1.999""#,
            r#""abc""#,
            "true",
            "null",
            "1e3",
            r#""1e3""#,
            r#"".5""#,
            "1e300",
            "1000000000.01",
            "99999999999999999999999",
            "{}",
        ] {
            assert_eq!(price(bad).unwrap_err().status, 422, "{bad}");
        }
        assert_eq!(format_cents(99999), "999.99");
        assert_eq!(format_cents(5), "0.05");
    }

    /// Issue 15, defect 5: a float would have stored this as 19.99.
    #[test]
    fn both_spellings_of_a_long_decimal_get_the_same_answer() {
        let number = price("19.990000000000001").unwrap_err();
        let string = price(r#""19.990000000000001""#).unwrap_err();
        assert_eq!((number.status, string.status), (422, 422));
        assert_eq!(number.detail, string.detail);
    }

    /// Issue 15, defect 2: quantity × price near the limits is refused, not wrapped or panicked.
    #[test]
    fn totals_past_the_exact_range_are_refused() {
        assert_eq!(total([(2, 99999), (1, 1)]), Some(199999));
        assert_eq!(line_total(MAX_QUANTITY, MAX_PRICE_CENTS), None);
        assert_eq!(line_total(i64::MAX, 2), None);
        assert_eq!(line_total(-1, 5), None);
        assert_eq!(total([(1, MAX_EXACT), (1, 1)]), None);
        assert_eq!(total([(1, MAX_EXACT)]), Some(MAX_EXACT));
        assert_eq!(valid_stock(MAX_STOCK + 1).unwrap_err().status, 422);
        assert_eq!(valid_stock(-1).unwrap_err().status, 422);
        assert_eq!(
            valid_quantity("q", i64::MAX).unwrap_err().extra["field"],
            "q"
        );
        assert!(valid_line_count(MAX_LINES + 1).is_err() && valid_line_count(0).is_err());
    }

    proptest! {
        /// Every price in range reads back to its cents from either spelling, and formats to
        /// the text it came from.
        #[test]
        fn every_price_round_trips(cents in 0..=MAX_PRICE_CENTS) {
            let text = format_cents(cents);
            prop_assert_eq!(price(&text).unwrap(), cents);
            prop_assert_eq!(price(&format!("{text:?}")).unwrap(), cents);
        }

        /// Whatever the text, the number and the string spelling agree, and nothing panics.
        #[test]
        fn number_and_string_spellings_agree(text in "-?[0-9]{0,14}(\\.[0-9]{0,4})?") {
            if let Ok(number) = RawValue::from_string(text.clone()) {
                let as_number = parse_price("price", &number);
                let as_string = price(&format!("{text:?}"));
                prop_assert_eq!(as_number.is_ok(), as_string.is_ok());
                if let (Ok(a), Ok(b)) = (as_number, as_string) {
                    prop_assert_eq!(a, b);
                    prop_assert!((0..=MAX_PRICE_CENTS).contains(&a));
                }
            }
        }

        /// Totals are exact when in range and refused otherwise, never wrapped.
        #[test]
        fn totals_are_exact_or_refused(lines in proptest::collection::vec((any::<i64>(), any::<i64>()), 0..5)) {
            let exact: Option<i128> = lines.iter().try_fold(0i128, |sum, (q, p)| {
                let line = i128::from(*q) * i128::from(*p);
                (0..=i128::from(MAX_EXACT)).contains(&line).then_some(sum + line)
            }).filter(|t| *t <= i128::from(MAX_EXACT));
            prop_assert_eq!(total(lines.iter().copied()).map(i128::from), exact);
        }
    }
}
