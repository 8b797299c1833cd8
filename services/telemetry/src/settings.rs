//! Which of the standard OpenTelemetry variables this build honours, checked before anything
//! starts: a setting it cannot honour stops the binary with the reason, instead of a process
//! that silently exports nothing.

/// Where spans go.
#[derive(Debug, PartialEq, Eq)]
pub enum Export {
    /// No exporter; the reason, for the start-up log line.
    Off(&'static str),
    /// OTLP over HTTP/protobuf to this endpoint.
    Otlp { endpoint: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error(
        "{variable}={value:?}: only http/protobuf is supported; point it at the collector's OTLP/HTTP port (usually 4318)"
    )]
    Protocol {
        variable: &'static str,
        value: String,
    },
    #[error(
        "{variable}={value:?}: give an http:// URL of an OTLP/HTTP receiver, for example http://otel-collector.monitoring:4318 (TLS is not supported: run the collector beside the app)"
    )]
    Endpoint {
        variable: &'static str,
        value: String,
    },
    #[error("OTEL_TRACES_EXPORTER={0:?}: only otlp and none are supported")]
    Exporter(String),
    #[error(
        "OTEL_TRACES_SAMPLER={0:?}: use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
    )]
    Sampler(String),
    #[error("OTEL_TRACES_SAMPLER_ARG={0:?}: give the sampled share of traces, from 0 to 1")]
    SamplerArgument(String),
}

/// Longest endpoint accepted.
const MAX_ENDPOINT: usize = 2048;

/// Reads the OpenTelemetry variables through `lookup` (the environment, in a binary).
///
/// Tracing is on when an endpoint is set (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else
/// `OTEL_EXPORTER_OTLP_ENDPOINT`), unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
/// Unlike the specification's default of localhost:4318, no endpoint means no exporter: a
/// process nobody asked to trace spends nothing on it.
pub fn settings(lookup: impl Fn(&str) -> Option<String>) -> Result<Export, SettingsError> {
    let set = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
        return Ok(Export::Off("OTEL_SDK_DISABLED=true"));
    }
    match set("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None | Some("otlp") => {}
        Some("none") => return Ok(Export::Off("OTEL_TRACES_EXPORTER=none")),
        Some(other) => return Err(SettingsError::Exporter(other.to_owned())),
    }
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|variable| set(variable).map(|value| (variable, value)));
    let Some((variable, endpoint)) = endpoint else {
        return Ok(Export::Off(
            "no OTEL_EXPORTER_OTLP_ENDPOINT (set it to export spans over OTLP/HTTP)",
        ));
    };
    if !is_http_url(&endpoint) {
        return Err(SettingsError::Endpoint {
            variable,
            value: shorten(&endpoint),
        });
    }
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = set(variable)
            && value.trim() != "http/protobuf"
        {
            return Err(SettingsError::Protocol {
                variable,
                value: shorten(&value),
            });
        }
    }
    check_sampler(set("OTEL_TRACES_SAMPLER"), set("OTEL_TRACES_SAMPLER_ARG"))?;
    Ok(Export::Otlp { endpoint })
}

fn is_http_url(value: &str) -> bool {
    value.len() <= MAX_ENDPOINT
        && value.parse::<http::Uri>().is_ok_and(|uri| {
            uri.scheme_str() == Some("http") && uri.host().is_some_and(|host| !host.is_empty())
        })
}

/// The SDK would fall back to sampling everything on a sampler it does not know, or on a
/// ratio it cannot read; refusing says so at once.
fn check_sampler(sampler: Option<String>, argument: Option<String>) -> Result<(), SettingsError> {
    let Some(sampler) = sampler else {
        return Ok(());
    };
    match sampler.trim() {
        "always_on" | "always_off" | "parentbased_always_on" | "parentbased_always_off" => Ok(()),
        "traceidratio" | "parentbased_traceidratio" => match argument {
            None => Ok(()),
            Some(argument) => match argument.trim().parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(()),
                _ => Err(SettingsError::SamplerArgument(shorten(&argument))),
            },
        },
        other => Err(SettingsError::Sampler(shorten(other))),
    }
}

/// A value quoted back in an error, cut so a huge variable cannot flood the log.
fn shorten(value: &str) -> String {
    value.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<Export, SettingsError> {
        settings(|name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn no_endpoint_means_no_exporter() {
        assert!(matches!(read(&[]), Ok(Export::Off(_))));
        assert!(matches!(
            read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]),
            Ok(Export::Off(_))
        ));
        assert!(matches!(
            read(&[("OTEL_SERVICE_NAME", "gateway")]),
            Ok(Export::Off(_))
        ));
    }

    #[test]
    fn an_endpoint_turns_tracing_on_unless_switched_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(
            read(&[endpoint]),
            Ok(Export::Otlp {
                endpoint: "http://127.0.0.1:4318".into()
            })
        );
        assert_eq!(
            read(&[
                endpoint,
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://collector:4318/v1/traces"
                )
            ]),
            Ok(Export::Otlp {
                endpoint: "http://collector:4318/v1/traces".into()
            }),
            "the signal's own variable wins"
        );
        assert!(matches!(
            read(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]),
            Ok(Export::Off(_))
        ));
        assert!(matches!(
            read(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(Export::Off(_))
        ));
        assert!(matches!(
            read(&[endpoint, ("OTEL_SDK_DISABLED", "false")]),
            Ok(Export::Otlp { .. })
        ));
    }

    #[test]
    fn settings_it_cannot_honour_are_refused_with_the_reason() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        for (pairs, expected) in [
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                "only http/protobuf",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")],
                "TLS is not supported",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
                "give an http:// URL",
            ),
            (
                vec![endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")],
                "only otlp and none",
            ),
            (
                vec![endpoint, ("OTEL_TRACES_SAMPLER", "sometimes")],
                "use always_on",
            ),
            (
                vec![
                    endpoint,
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
                ],
                "from 0 to 1",
            ),
        ] {
            let error = read(&pairs).expect_err(expected).to_string();
            assert!(error.contains(expected), "{error}");
        }
        let long = format!("http://{}", "a".repeat(5000));
        let error = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &long)])
            .unwrap_err()
            .to_string();
        assert!(error.len() < 400, "the value is cut: {error}");
    }

    #[test]
    fn a_ratio_sampler_takes_a_share_between_zero_and_one() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        for (share, accepted) in [
            ("0", true),
            ("0.25", true),
            ("1", true),
            ("-0.1", false),
            ("NaN", false),
            ("half", false),
        ] {
            let read = read(&[
                endpoint,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", share),
            ]);
            assert_eq!(read.is_ok(), accepted, "{share}: {read:?}");
        }
    }
}
