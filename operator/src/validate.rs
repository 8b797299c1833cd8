//! Checks the API server's schema cannot express, with messages that say what to change.
//!
//! The schema and CEL rules reject most bad input at `kubectl apply` time; this catches the
//! rest before anything is written, so a bad spec becomes a `Degraded` condition and a Warning
//! Event instead of a half-applied app.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::component::Component;
use crate::crd::MicroserviceApp;
use crate::labels;

/// Longest app name whose child names (`<app>-product`, `<app>-discovery`) stay valid Service
/// and label values (63 characters).
pub const MAX_APP_NAME: usize = 63 - "-discovery".len();

/// Longest app name without `spec.database`: a StatefulSet's pods carry the label
/// `controller-revision-hash: <statefulset>-<10-character hash>`, which must fit in 63, and the
/// longest StatefulSet is `<app>-product`.
pub const MAX_EMBEDDED_APP_NAME: usize = 63 - "-product".len() - 11;

/// Longest app name while the operator runs the event broker: its StatefulSet `<app>-events`
/// has the same revision label.
pub const MAX_BROKER_APP_NAME: usize = 63 - "-events".len() - 11;

/// One thing wrong with a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecProblem {
    /// JSON path of the offending field.
    pub field: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in the app's spec; empty when it can be rendered.
pub fn problems(app: &MicroserviceApp) -> Vec<SpecProblem> {
    let mut found = Vec::new();
    let name = app.name_any();
    if !is_dns_label(&name) {
        found.push(problem(
            "metadata.name",
            "must be lowercase letters, digits and '-', starting with a letter and not ending with '-' (it names Services and is a NATS subject token)",
        ));
    }
    if name.len() > MAX_APP_NAME {
        found.push(problem(
            "metadata.name",
            format!(
                "is {} characters; at most {MAX_APP_NAME} fit, because child objects are named <name>-<component> and must stay within 63 characters",
                name.len()
            ),
        ));
    } else if app.spec.database.is_none() && name.len() > MAX_EMBEDDED_APP_NAME {
        found.push(problem(
            "metadata.name",
            format!(
                "is {} characters; without spec.database at most {MAX_EMBEDDED_APP_NAME} fit, because the embedded databases run in StatefulSets whose pods carry a revision label <name>-<component>-<hash> of at most 63 characters; shorten the name or set spec.database",
                name.len()
            ),
        ));
    }
    if name.len() <= MAX_APP_NAME
        && crate::build::broker::is_managed(app)
        && name.len() > MAX_BROKER_APP_NAME
    {
        found.push(problem(
            "metadata.name",
            format!(
                "is {} characters; while the operator runs the event broker at most {MAX_BROKER_APP_NAME} fit, because it runs in a StatefulSet <name>-events whose pods carry a revision label <name>-events-<hash> of at most 63 characters; shorten the name, or set spec.events.external or spec.events.enabled: false",
                name.len()
            ),
        ));
    }
    check_events(app, &mut found);
    for component in Component::ALL {
        check_component(app, component, &mut found);
    }
    if let Some(why) = crate::build::telemetry::problem(app) {
        found.push(problem("spec.tracing", why));
    }
    if let Some(auth) = &app.spec.components.gateway.auth {
        if let Some(uri) = &auth.jwks_uri
            && !(uri.starts_with("https://")
                && uri.len() > "https://".len()
                && !uri.contains(char::is_whitespace))
        {
            found.push(problem(
                "spec.components.gateway.auth.jwksUri",
                "must be an https URL (the identity provider's jwks_uri): keys fetched in the clear could be swapped on the way",
            ));
        }
        for (i, route) in auth.public_routes.iter().enumerate() {
            if let Err(why) = check_public_route(route) {
                found.push(problem(
                    format!("spec.components.gateway.auth.publicRoutes[{i}]"),
                    why,
                ));
            }
        }
    }
    found
}

/// `METHOD /template`: a standard method, a space, a path without spaces or commas.
fn check_public_route(route: &str) -> Result<(), String> {
    const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    let shown: String = route.chars().take(80).collect();
    let fits = route.len() <= 300
        && route.split_once(' ').is_some_and(|(method, path)| {
            METHODS.contains(&method)
                && path.starts_with('/')
                && !path.contains([' ', ','])
                && path.chars().all(|c| c.is_ascii_graphic())
        });
    if fits {
        Ok(())
    } else {
        Err(format!(
            "{shown:?} is not `METHOD /template` (for example `GET /products/{{id}}`); use GET, HEAD, POST, PUT, DELETE, PATCH or OPTIONS and a path without spaces or commas"
        ))
    }
}

fn check_component(app: &MicroserviceApp, component: Component, found: &mut Vec<SpecProblem>) {
    let spec = component.spec(app);
    let path = format!("spec.components.{component}");

    if spec.port == crate::build::ADMIN_PORT {
        found.push(problem(
            format!("{path}.port"),
            format!(
                "is {}, the admin port every pod also opens (/metrics, /info, probes); choose another",
                spec.port
            ),
        ));
    }
    if component.image(app).trim().is_empty() {
        found.push(problem(
            format!("{path}.image"),
            "is empty; set an image reference",
        ));
    }
    for (key, value) in &spec.labels {
        if labels::is_reserved(key) {
            found.push(problem(
                format!("{path}.labels[{key}]"),
                "is set by the operator and cannot be overridden; remove it",
            ));
        } else if let Err(why) = check_label_key(key) {
            found.push(problem(format!("{path}.labels[{key}]"), why));
        } else if let Err(why) = check_label_value(value) {
            found.push(problem(format!("{path}.labels[{key}]"), why));
        }
    }
    for key in spec.annotations.keys() {
        if let Err(why) = check_label_key(key) {
            found.push(problem(format!("{path}.annotations[{key}]"), why));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, env) in spec.env.iter().enumerate() {
        if env.name.is_empty() {
            found.push(problem(
                format!("{path}.env[{i}].name"),
                "is empty; name the variable",
            ));
        } else if !seen.insert(env.name.as_str()) {
            found.push(problem(
                format!("{path}.env[{i}].name"),
                format!("{} is listed twice; keep one entry", env.name),
            ));
        }
    }
    check_config(spec, &path, found);
    let rollout = &spec.rollout;
    if is_zero(&rollout.max_surge) && is_zero(&rollout.max_unavailable) {
        found.push(problem(
            format!("{path}.rollout"),
            "maxSurge and maxUnavailable are both 0, so no rollout could ever make progress; raise one of them",
        ));
    }
    for (field, value) in [
        ("maxSurge", &rollout.max_surge),
        ("maxUnavailable", &rollout.max_unavailable),
    ] {
        if let Err(why) = check_fraction(value) {
            found.push(problem(format!("{path}.rollout.{field}"), why));
        }
    }
}

/// The longest value of one `config` key, and of all of them together (a ConfigMap holds at
/// most 1 MiB; the pod's environment is bounded too).
pub const CONFIG_VALUE_MAX: usize = 8 * 1024;
pub const CONFIG_TOTAL_MAX: usize = 64 * 1024;

/// `config` keys are environment variable names (C identifiers, as POSIX shells accept them);
/// values are bounded; each `configFrom` entry names exactly one object, by a valid name, once.
fn check_config(spec: &crate::crd::ComponentSpec, path: &str, found: &mut Vec<SpecProblem>) {
    let mut total = 0usize;
    for (key, value) in &spec.config {
        let field = format!("{path}.config[{}]", shown(key));
        if !is_env_name(key) {
            found.push(problem(
                field,
                "is not an environment variable name: use letters, digits and _, not starting with a digit, at most 128 characters",
            ));
        } else if value.len() > CONFIG_VALUE_MAX {
            found.push(problem(
                field,
                format!(
                    "is {} bytes long; a value may be at most {CONFIG_VALUE_MAX} (mount larger files from a ConfigMap of your own)",
                    value.len()
                ),
            ));
        }
        total = total.saturating_add(key.len()).saturating_add(value.len());
    }
    if total > CONFIG_TOTAL_MAX {
        found.push(problem(
            format!("{path}.config"),
            format!("holds {total} bytes; at most {CONFIG_TOTAL_MAX} in all"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, source) in spec.config_from.iter().enumerate() {
        let field = format!("{path}.configFrom[{i}]");
        let named = match (&source.config_map, &source.secret) {
            (Some(name), None) => ("configMap", name),
            (None, Some(name)) => ("secret", name),
            _ => {
                found.push(problem(
                    field,
                    "must name exactly one of configMap or secret",
                ));
                continue;
            }
        };
        if !is_dns_subdomain(named.1) {
            found.push(problem(
                format!("{field}.{}", named.0),
                format!(
                    "{:?} is not an object name: lower-case letters, digits, '-' and '.', at most 253 characters",
                    named.1
                ),
            ));
        } else if !seen.insert(named) {
            found.push(problem(
                format!("{field}.{}", named.0),
                format!("{} is listed twice; keep one entry", named.1),
            ));
        }
    }
}

/// A key as a message shows it: at most 64 characters (a status condition must stay small
/// whatever a spec holds).
fn shown(key: &str) -> String {
    match key.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &key[..end]),
        None => key.to_owned(),
    }
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 128
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A DNS-1123 subdomain: the names ConfigMaps and Secrets may have.
fn is_dns_subdomain(name: &str) -> bool {
    let label = |part: &str| {
        (1..=63).contains(&part.len())
            && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    name.len() <= 253 && name.split('.').all(label)
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> SpecProblem {
    SpecProblem {
        field: field.into(),
        message: message.into(),
    }
}

fn is_zero(value: &IntOrString) -> bool {
    match value {
        IntOrString::Int(n) => *n == 0,
        IntOrString::String(s) => s.trim_end_matches('%').parse::<i64>() == Ok(0),
    }
}

fn check_fraction(value: &IntOrString) -> Result<(), String> {
    match value {
        IntOrString::Int(n) if *n < 0 => Err(format!("is {n}; use 0 or more")),
        IntOrString::Int(_) => Ok(()),
        IntOrString::String(s) => match s.strip_suffix('%').map(str::parse::<u32>) {
            Some(Ok(p)) if p <= 100 => Ok(()),
            _ => Err(format!(
                "is \"{s}\"; use a whole number or a percentage such as \"25%\""
            )),
        },
    }
}

/// A label or annotation key: an optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 alphanumerics, `-`, `_` or `.`, beginning and ending alphanumeric.
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let valid_prefix = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !valid_prefix {
            return Err(format!(
                "key prefix \"{prefix}\" must be a lower-case DNS subdomain such as example.com"
            ));
        }
    }
    if !is_qualified_name(name) {
        return Err(format!(
            "key name \"{name}\" must be 1-63 characters of letters, digits, '-', '_' or '.', beginning and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name(value) {
        Ok(())
    } else {
        Err(format!(
            "value \"{value}\" must be at most 63 characters of letters, digits, '-', '_' or '.', beginning and ending with a letter or digit"
        ))
    }
}

fn is_qualified_name(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// What the CEL rules of `spec.events` say, for API servers that did not check them, and what
/// CEL cannot say: that the streams fit the broker's volume.
fn check_events(app: &MicroserviceApp, found: &mut Vec<SpecProblem>) {
    let events = &app.spec.events;
    if crate::build::broker::is_managed(app) {
        let (streams, store) = (
            crate::build::broker::streams_bytes(app),
            crate::build::broker::file_store_bytes(app),
        );
        if streams > store {
            found.push(problem(
                "spec.events.retention.maxMegabytes",
                format!(
                    "3 streams of {} MiB need {} MiB, more than the {} MiB JetStream may use of each server's volume (nine tenths of spec.events.storage.size); lower maxMegabytes or set a larger size on a new app",
                    events.retention.max_megabytes,
                    streams >> 20,
                    store >> 20
                ),
            ));
        }
    }
    if !matches!(events.replicas, 1 | 3) {
        found.push(problem(
            "spec.events.replicas",
            "must be 1 or 3: a stream kept by 2 servers stops when either is down",
        ));
    }
    if let Some(external) = &events.external
        && !valid_broker_url(&external.url)
    {
        found.push(problem(
            "spec.events.external.url",
            "must be nats://host:port or tls://host:port (the passwords go in the Secret)",
        ));
    }
}

/// `nats://host:port` or `tls://host:port`, nothing else (no credentials, no path).
fn valid_broker_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
    else {
        return false;
    };
    let Some((host, port)) = rest.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && !host.contains(['@', '/', ' '])
        && port.parse::<u16>().is_ok_and(|port| port > 0)
}

/// A DNS-1035 label (what a Service's name must be), the length aside.
fn is_dns_label(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
