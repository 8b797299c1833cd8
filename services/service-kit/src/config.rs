//! Flags every service takes (each also read from an `MSA_*` environment variable, as the
//! operator passes them), and the CORS policy they describe.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{AuthConfig, Verifier};
use crate::caller::{Gate, ServiceTrust};
use crate::context::{REQUEST_ID, TRACEPARENT};

#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on (the operator passes 0.0.0.0:<port> in a pod).
    #[arg(long, env = "MSA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Where `/info` and `/metrics` (and the gateway's `/debug/endpoints`) are served, apart
    /// from the API, so a Service exposing the API does not expose them (the operator passes
    /// 0.0.0.0:9090). Unset: on the API's address. `/healthz` and `/readyz` are on both.
    #[arg(long, env = "MSA_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Origins allowed by CORS, comma-separated, or `*` for any (not with credentials).
    /// Empty: no CORS headers at all, so browsers on other origins are refused.
    #[arg(long, env = "MSA_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Let browsers send cookies/credentials cross-origin (needs explicit origins).
    #[arg(long, env = "MSA_CORS_ALLOW_CREDENTIALS", default_value_t = false)]
    pub cors_allow_credentials: bool,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "MSA_BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    pub body_limit_bytes: usize,

    /// On SIGTERM, how long in-flight requests may take before the process exits anyway.
    #[arg(long, env = "MSA_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,

    /// On SIGTERM, how long to keep serving with readiness failing before refusing new
    /// connections, so load balancers stop sending first (default: 5 for the gateway, 0 for
    /// the services, which are behind it).
    #[arg(long, env = "MSA_DRAIN_DELAY_SECONDS")]
    pub drain_delay_seconds: Option<u64>,

    /// Log format: json (default) or text.
    #[arg(long, env = "MSA_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,

    /// This instance's name in /info and logs (default: the pod name, else host name and pid).
    #[arg(long, env = "MSA_POD_NAME")]
    pub instance: Option<String>,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub service_identity: ServiceIdentityArgs,
}

/// Users' bearer tokens: who issues them, for which audience, with which keys. Off (every
/// route open, the demo) without `--auth-issuer`. The gateway and every service take the same
/// flags, so each verifies the token itself.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AuthArgs {
    /// Issuer whose bearer tokens are required (`iss`); authentication is off without it.
    #[arg(long, env = "MSA_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// Audiences accepted (`aud`), comma-separated.
    #[arg(long, env = "MSA_AUTH_AUDIENCES", value_delimiter = ',')]
    pub auth_audiences: Vec<String>,
    /// JWKS file with the issuer's public keys (RS256, ES256, EdDSA); re-read on an unknown
    /// `kid` and every 30 s, so keys can rotate.
    #[arg(long, env = "MSA_AUTH_JWKS_FILE")]
    pub auth_jwks_file: Option<PathBuf>,
    /// The issuer's JWKS URL (its `jwks_uri`; https, or http on a loopback address), fetched at
    /// start, every 5 minutes, and on an unknown `kid` (at most once a second).
    #[arg(long, env = "MSA_AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<String>,
    /// File with a shared HS256 secret (at least 32 bytes).
    #[arg(long, env = "MSA_AUTH_HMAC_SECRET_FILE")]
    pub auth_hmac_secret_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "MSA_AUTH_CLOCK_SKEW_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub auth_clock_skew_seconds: u64,
}

impl AuthArgs {
    /// The verifier of users' tokens; `None` when authentication is off.
    pub fn verifier(&self) -> anyhow::Result<Option<Arc<Verifier>>> {
        let Some(issuer) = self.auth_issuer.clone() else {
            return Ok(None);
        };
        if self.auth_audiences.is_empty() {
            anyhow::bail!(
                "--auth-issuer needs --auth-audiences (the audiences tokens must be for)"
            );
        }
        Verifier::start(AuthConfig {
            issuer,
            audiences: self.auth_audiences.clone(),
            leeway: Duration::from_secs(self.auth_clock_skew_seconds),
            jwks_file: self.auth_jwks_file.clone(),
            jwks_url: self.auth_jwks_url.clone(),
            hmac_secret_file: self.auth_hmac_secret_file.clone(),
        })
        .map(Some)
    }
}

/// Services' own tokens, for internal routes (the product service's reservations): in a
/// cluster, projected ServiceAccount tokens checked against the API server's keys; locally,
/// tokens `msa-local` issues. Off without `--service-issuer`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServiceIdentityArgs {
    /// Issuer of service tokens (the cluster's ServiceAccount issuer).
    #[arg(long, env = "MSA_SERVICE_ISSUER")]
    pub service_issuer: Option<String>,
    /// JWKS file with the service issuer's public keys.
    #[arg(long, env = "MSA_SERVICE_JWKS_FILE")]
    pub service_jwks_file: Option<PathBuf>,
    /// The audience service tokens sent to this service carry (its own name, for example
    /// `msa-product`).
    #[arg(long, env = "MSA_SERVICE_AUDIENCE")]
    pub service_audience: Option<String>,
    /// Subjects whose service tokens may call internal routes, comma-separated (for example
    /// `system:serviceaccount:shop:shop-order`).
    #[arg(long, env = "MSA_SERVICE_CALLERS", value_delimiter = ',')]
    pub service_callers: Vec<String>,
}

impl ServiceIdentityArgs {
    pub fn trust(&self) -> anyhow::Result<Option<ServiceTrust>> {
        let Some(issuer) = self.service_issuer.clone() else {
            return Ok(None);
        };
        let (Some(jwks), Some(audience)) = (&self.service_jwks_file, &self.service_audience) else {
            anyhow::bail!("--service-issuer needs --service-jwks-file and --service-audience");
        };
        let verifier = Verifier::start(AuthConfig {
            issuer,
            audiences: vec![audience.clone()],
            leeway: Duration::from_secs(30),
            jwks_file: Some(jwks.clone()),
            jwks_url: None,
            hmac_secret_file: None,
        })?;
        Ok(Some(ServiceTrust {
            verifier,
            callers: self.service_callers.clone(),
        }))
    }
}

/// The default of `--max-requests-in-flight`: the connection limit's. Every request still
/// connected holds a connection, so slow clients meet the connection limit first (a lower cap
/// would let 1,024 clients trickling bodies refuse everyone, where 10,000 were needed before);
/// what the cap adds is a bound on work whose client hung up, which no connection holds.
pub const MAX_REQUESTS_IN_FLIGHT: u64 = 10_000;

/// How long the server waits for a client, and how many it holds (see
/// [`crate::connections::ConnectionLimits`] for why these defaults).
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct LimitArgs {
    /// From a request's first byte to the end of its headers; then 408 and close.
    #[arg(long, env = "MSA_HEADER_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_seconds: u64,

    /// Longest pause while a request body arrives; then 408 and close (nginx's
    /// `client_body_timeout`, 60 s there).
    #[arg(long, env = "MSA_BODY_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_timeout_seconds: u64,

    /// Longest a whole request body may take, however it is paced; then 408 and close (nginx
    /// and HAProxy have no such total by default).
    #[arg(long, env = "MSA_BODY_DEADLINE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_deadline_seconds: u64,

    /// Slowest average a request body may arrive at once --body-rate-grace-seconds have passed,
    /// in bytes per second (0: no minimum); slower gets 408 and close (Apache's `MinRate`).
    #[arg(long, env = "MSA_BODY_MIN_RATE_BYTES", default_value_t = 500, value_parser = clap::value_parser!(u32).range(0..=1_000_000_000))]
    pub body_min_rate_bytes: u32,

    /// How long a request body may arrive at any rate before the minimum rate applies.
    #[arg(long, env = "MSA_BODY_RATE_GRACE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub body_rate_grace_seconds: u64,

    /// How long an idle keep-alive connection is kept open.
    #[arg(long, env = "MSA_IDLE_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout_seconds: u64,

    /// Client connections open at once; more wait to be accepted.
    #[arg(long, env = "MSA_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Requests at work at once, including work whose client hung up (it runs to its end);
    /// more are answered 503 with `Retry-After` (`/healthz` excepted).
    #[arg(long, env = "MSA_MAX_REQUESTS_IN_FLIGHT", default_value_t = MAX_REQUESTS_IN_FLIGHT, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_requests_in_flight: u64,
}

impl Default for LimitArgs {
    fn default() -> Self {
        let limits = crate::connections::ConnectionLimits::default();
        LimitArgs {
            header_timeout_seconds: limits.header_timeout.as_secs(),
            body_timeout_seconds: limits.body_timeout.as_secs(),
            body_deadline_seconds: limits.body_deadline.as_secs(),
            body_min_rate_bytes: limits.body_min_rate,
            body_rate_grace_seconds: limits.body_rate_grace.as_secs(),
            idle_timeout_seconds: limits.idle_timeout.as_secs(),
            max_connections: limits.max_connections as u64,
            max_requests_in_flight: MAX_REQUESTS_IN_FLIGHT,
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct DatabaseArgs {
    /// sqlite://<path> (default: <data-dir>/<service>.db) or postgres://user:pass@host/db.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Folder for the default SQLite file.
    #[arg(long, env = "MSA_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

impl DatabaseArgs {
    /// The URL to connect to: `--database-url`, else a SQLite file named after the service.
    pub fn url_for(&self, service: &str) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.data_dir.join(format!("{service}.db")).display()
            )
        })
    }
}

impl ServeArgs {
    /// Whom this service accepts, as the auth flags say (reads the key files).
    pub fn gate(&self) -> anyhow::Result<Gate> {
        let gate = Gate {
            users: self.auth.verifier()?,
            services: self.service_identity.trust()?,
        };
        if gate.users.is_none() {
            tracing::warn!(
                "authentication is OFF: anyone who reaches this service may act as anyone (set --auth-issuer)"
            );
        }
        if gate.services.is_none() {
            tracing::warn!(
                "service identities are OFF: this service's internal routes (the product service's reservations, the order service's /internal) answer any caller that reaches them (set --service-issuer)"
            );
        }
        Ok(gate)
    }

    /// The drain on SIGTERM, with `default_delay_seconds` unless `--drain-delay-seconds` says.
    pub fn drain(&self, default_delay_seconds: u64) -> crate::server::Drain {
        crate::server::Drain {
            delay: std::time::Duration::from_secs(
                self.drain_delay_seconds.unwrap_or(default_delay_seconds),
            ),
            grace: std::time::Duration::from_secs(self.shutdown_grace_seconds),
        }
    }

    pub fn connection_limits(&self) -> crate::connections::ConnectionLimits {
        let limits = &self.limits;
        crate::connections::ConnectionLimits {
            header_timeout: std::time::Duration::from_secs(limits.header_timeout_seconds),
            body_timeout: std::time::Duration::from_secs(limits.body_timeout_seconds),
            body_deadline: std::time::Duration::from_secs(limits.body_deadline_seconds),
            body_min_rate: limits.body_min_rate_bytes,
            body_rate_grace: std::time::Duration::from_secs(limits.body_rate_grace_seconds),
            idle_timeout: std::time::Duration::from_secs(limits.idle_timeout_seconds),
            max_connections: usize::try_from(limits.max_connections).unwrap_or(usize::MAX),
        }
    }

    pub fn instance_id(&self) -> String {
        self.instance.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The CORS layer, `None` when no origin is configured. Wildcard plus credentials is refused
    /// (browsers reject it, and allowing any origin to send credentials would be unsafe).
    pub fn cors(&self) -> anyhow::Result<Option<CorsLayer>> {
        let origins: Vec<&str> = self
            .cors_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .collect();
        if origins.is_empty() {
            return Ok(None);
        }
        let wildcard = origins.contains(&"*");
        if wildcard && self.cors_allow_credentials {
            anyhow::bail!(
                "--cors-origins '*' cannot be combined with --cors-allow-credentials: list the allowed origins explicitly"
            );
        }
        let allow_origin = if wildcard {
            AllowOrigin::any()
        } else {
            let parsed = origins
                .iter()
                .map(|o| {
                    HeaderValue::from_str(o)
                        .map_err(|_| anyhow::anyhow!("--cors-origins: {o:?} is not a valid origin"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            AllowOrigin::list(parsed)
        };
        let headers: [HeaderName; 4] = [
            http::header::CONTENT_TYPE,
            http::header::AUTHORIZATION,
            REQUEST_ID.clone(),
            TRACEPARENT.clone(),
        ];
        Ok(Some(
            CorsLayer::new()
                .allow_origin(allow_origin)
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .allow_headers(headers)
                .expose_headers([REQUEST_ID.clone()])
                .allow_credentials(self.cors_allow_credentials),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags' defaults are the library's (the documented ones), whichever way a service
    /// is started.
    #[test]
    fn limit_flags_default_to_the_connection_limits() {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let serve = <Only as clap::Parser>::parse_from(["defaults"]).serve;
        assert_eq!(serve.limits, LimitArgs::default());
        assert_eq!(
            serve.connection_limits(),
            crate::connections::ConnectionLimits::default()
        );
    }
}
