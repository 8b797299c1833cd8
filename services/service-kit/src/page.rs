//! Offset pagination for list endpoints: `?limit=` (1–100, default 20) and `?offset=`.

use serde::{Deserialize, Serialize};

use crate::Problem;

pub const MAX_LIMIT: i64 = 100;
pub const DEFAULT_LIMIT: i64 = 20;

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct PageQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// A validated page request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: i64,
    pub offset: i64,
}

impl PageQuery {
    pub fn validate(self) -> Result<PageRequest, Problem> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Problem::invalid(
                "limit",
                format!("limit must be between 1 and {MAX_LIMIT}, got {limit}"),
            ));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            return Err(Problem::invalid(
                "offset",
                format!("offset must be 0 or more, got {offset}"),
            ));
        }
        Ok(PageRequest { limit, offset })
    }
}

/// One page of a list, with what a client needs to fetch the next.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub limit: i64,
    pub offset: i64,
    pub total: i64,
    /// The offset of the next page, absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<i64>,
}

impl<T> Page<T> {
    pub fn new(items: Vec<T>, request: PageRequest, total: i64) -> Self {
        let end = request.offset + items.len() as i64;
        Page {
            next_offset: (end < total).then_some(end),
            items,
            limit: request.limit,
            offset: request.offset,
            total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_bounded_and_the_next_offset_stops_at_the_end() {
        let ok = PageQuery {
            limit: Some(2),
            offset: Some(2),
        }
        .validate()
        .unwrap();
        assert_eq!(Page::new(vec![1, 2], ok, 5).next_offset, Some(4));
        assert_eq!(Page::new(vec![1], ok, 3).next_offset, None);
        for (limit, offset) in [(Some(0), None), (Some(101), None), (None, Some(-1))] {
            let refused = PageQuery { limit, offset }.validate().unwrap_err();
            assert_eq!(refused.status, 422, "limit {limit:?}, offset {offset:?}");
        }
    }
}
