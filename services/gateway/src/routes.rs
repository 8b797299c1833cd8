//! The route templates of the services behind the gateway (their OpenAPI paths), so calls can
//! be told apart per route — each method × template has a circuit breaker of its own, and
//! authentication names its public routes by template — without
//! letting clients invent routes: a path that matches no template falls in its prefix's
//! catch-all, so the number of routes stays what this table says.

/// Every route the services serve through the gateway.
const TEMPLATES: &[&str] = &[
    "/users",
    "/users/{id}",
    "/orders",
    "/orders/{id}",
    "/orders/{id}/status",
    "/orders/user/{user_id}",
    "/products",
    "/products/{id}",
    "/products/{id}/stock",
];

/// Catch-alls for paths under a prefix that match no template.
const CATCH_ALLS: &[(&str, &str)] = &[
    ("/users", "/users/{*rest}"),
    ("/orders", "/orders/{*rest}"),
    ("/products", "/products/{*rest}"),
];

/// The most segments a template has; longer paths can only fall in a catch-all.
const MAX_SEGMENTS: usize = 3;

/// The template `path` belongs to: the one with the most literal segments among those of the
/// same shape, else its prefix's catch-all, else `"*"`.
pub fn template(path: &str) -> &'static str {
    // On every proxied request: no allocation, the path split once.
    let mut segments = [""; MAX_SEGMENTS];
    let mut count = 0;
    for segment in path.strip_prefix('/').unwrap_or(path).split('/') {
        if count == MAX_SEGMENTS {
            return catch_all(path);
        }
        segments[count] = segment;
        count += 1;
    }
    let segments = &segments[..count];
    let mut best: Option<(&'static str, usize)> = None;
    for (candidate, parts) in split_templates() {
        if parts.len() != count {
            continue;
        }
        let mut literals = 0;
        let fits = parts.iter().zip(segments).all(|(part, segment)| {
            if part.starts_with('{') {
                !segment.is_empty()
            } else {
                literals += 1;
                part == segment
            }
        });
        if fits && best.is_none_or(|(_, most)| literals > most) {
            best = Some((candidate, literals));
        }
    }
    match best {
        Some((template, _)) => template,
        None => catch_all(path),
    }
}

/// Every template with its segments, split once.
fn split_templates() -> &'static [(&'static str, Vec<&'static str>)] {
    static SPLIT: std::sync::LazyLock<Vec<(&'static str, Vec<&'static str>)>> =
        std::sync::LazyLock::new(|| {
            TEMPLATES
                .iter()
                .map(|t| (*t, t[1..].split('/').collect()))
                .collect()
        });
    &SPLIT
}

/// The catch-all of the prefix `path` is under, else `"*"`.
fn catch_all(path: &str) -> &'static str {
    CATCH_ALLS
        .iter()
        .find(|(prefix, _)| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .map_or("*", |(_, catch_all)| catch_all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_template_is_longer_than_the_longest_path_looked_at() {
        assert!(
            TEMPLATES
                .iter()
                .all(|t| t[1..].split('/').count() <= MAX_SEGMENTS)
        );
    }

    #[test]
    fn paths_map_to_their_service_routes() {
        for (path, expected) in [
            ("/users", "/users"),
            ("/users/42", "/users/{id}"),
            ("/orders/7", "/orders/{id}"),
            ("/orders/7/status", "/orders/{id}/status"),
            ("/orders/user/9", "/orders/user/{user_id}"),
            ("/products/3/stock", "/products/{id}/stock"),
            ("/orders/7/unknown", "/orders/{*rest}"),
            ("/orders//status", "/orders/{*rest}"),
            ("/products/a/b/c/d", "/products/{*rest}"),
            ("/payments", "*"),
        ] {
            assert_eq!(template(path), expected, "{path}");
        }
    }

    proptest! {
        /// Whatever the path, its route is one of the table's: clients cannot add routes.
        #[test]
        fn every_path_lands_on_a_known_route(path in "(/[a-z0-9{}*]{0,6}){0,5}") {
            let route = template(&path);
            prop_assert!(
                TEMPLATES.contains(&route)
                    || CATCH_ALLS.iter().any(|(_, c)| *c == route)
                    || route == "*"
            );
        }
    }
}
