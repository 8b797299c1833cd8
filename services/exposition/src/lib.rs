//! The two exposition formats a `/metrics` endpoint is asked for, from one encoding.
//!
//! `prometheus-client` writes OpenMetrics, where a counter's family is named without `_total`
//! (`# TYPE http_requests counter`, samples `http_requests_total`). Prometheus asks for that
//! format and reads it. Everything else — `promtool check metrics`, `curl`, older scrapers —
//! reads the classic text format 0.0.4, where the family carries the sample's name: read as
//! classic text, the OpenMetrics document has counters without help and a stray `# EOF`. So the
//! endpoint negotiates (as Prometheus' own Go client does): OpenMetrics when `Accept` names it,
//! the classic format otherwise.

#[cfg(feature = "promtool")]
pub mod promtool;

/// `Content-Type` of each format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The body and content type for a client whose `Accept` header is `accept`, from the
/// OpenMetrics document `openmetrics`.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (OPENMETRICS, openmetrics)
    } else {
        (CLASSIC, to_classic(&openmetrics))
    }
}

/// The classic text format of an OpenMetrics document: counter families take their samples'
/// `_total` name, info families become gauges named `_info`, and `# UNIT` and `# EOF` go
/// (the classic format has neither). Samples are unchanged.
pub fn to_classic(openmetrics: &str) -> String {
    let mut renamed: Vec<(String, String)> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            match kind {
                "counter" if !name.ends_with("_total") => {
                    renamed.push((name.to_owned(), format!("{name}_total")));
                }
                "info" => renamed.push((name.to_owned(), format!("{name}_info"))),
                _ => {}
            }
        }
    }
    let rename = |name: &str| {
        renamed
            .iter()
            .find(|(from, _)| from == name)
            .map_or_else(|| name.to_owned(), |(_, to)| to.clone())
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let converted = if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            format!("# HELP {} {help}", rename(name))
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = if kind == "info" { "gauge" } else { kind };
            format!("# TYPE {} {kind}", rename(name))
        } else {
            line.to_owned()
        };
        out.push_str(&converted);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCUMENT: &str = "# HELP app_requests Requests handled.\n# TYPE app_requests counter\napp_requests_total{route=\"/\"} 3\n# HELP app_build Build.\n# TYPE app_build info\napp_build_info{version=\"1\"} 1\n# HELP app_latency_seconds Latency.\n# TYPE app_latency_seconds histogram\n# UNIT app_latency_seconds seconds\napp_latency_seconds_sum 0.5\napp_latency_seconds_count 1\napp_latency_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";

    #[test]
    fn classic_text_names_families_as_their_samples() {
        assert_eq!(
            to_classic(DOCUMENT),
            "# HELP app_requests_total Requests handled.\n# TYPE app_requests_total counter\napp_requests_total{route=\"/\"} 3\n# HELP app_build_info Build.\n# TYPE app_build_info gauge\napp_build_info{version=\"1\"} 1\n# HELP app_latency_seconds Latency.\n# TYPE app_latency_seconds histogram\napp_latency_seconds_sum 0.5\napp_latency_seconds_count 1\napp_latency_seconds_bucket{le=\"+Inf\"} 1\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_classic_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let (kind, body) = negotiate(Some(prometheus), DOCUMENT.to_owned());
        assert_eq!((kind, body.as_str()), (OPENMETRICS, DOCUMENT));
        for other in [None, Some("*/*"), Some("text/plain")] {
            let (kind, body) = negotiate(other, DOCUMENT.to_owned());
            assert_eq!(kind, CLASSIC);
            assert!(!body.contains("# EOF"));
        }
    }
}
