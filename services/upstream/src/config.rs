//! The flags (and `MSA_*` environment variables, as the operator sets them from the
//! MicroserviceApp's gateway settings) that tune calls to upstreams, and where each upstream's
//! endpoints come from.

use std::time::Duration;

use crate::balance::Strategy;
use crate::breaker::BreakerConfig;
use crate::client::CallConfig;
use crate::discovery::Discovery;
use crate::endpoint;
use crate::outlier::OutlierConfig;
use crate::pool::PoolConfig;

/// Balancing, ejection, breaking, retries and timeouts.
#[derive(clap::Args, Clone, Debug)]
pub struct PolicyArgs {
    /// How to choose an endpoint: peak-ewma, round-robin, weighted-round-robin, least-request.
    #[arg(long, env = "MSA_LB_STRATEGY", default_value = "peak-ewma")]
    pub lb_strategy: Strategy,

    /// Open a service's circuit when this share of calls in the window failed …
    #[arg(long, env = "MSA_BREAKER_FAILURE_RATE_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub breaker_failure_rate_percent: u8,
    /// … and at least this many calls were made in it.
    #[arg(long, env = "MSA_BREAKER_MINIMUM_CALLS", default_value_t = 20)]
    pub breaker_minimum_calls: u32,
    /// Length of the breaker's sliding window.
    #[arg(long, env = "MSA_BREAKER_WINDOW_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub breaker_window_seconds: u64,
    /// How long an open circuit fails calls fast before probing.
    #[arg(long, env = "MSA_BREAKER_OPEN_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub breaker_open_seconds: u64,
    /// Probe calls let through when half-open; all must succeed to close.
    #[arg(long, env = "MSA_BREAKER_HALF_OPEN_PROBES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_half_open_probes: u32,

    /// Eject an endpoint after this many failures in a row.
    #[arg(long, env = "MSA_OUTLIER_CONSECUTIVE_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub outlier_consecutive_failures: u32,
    /// First ejection length; doubles on each failed probe.
    #[arg(long, env = "MSA_OUTLIER_BASE_EJECTION_MS", default_value_t = 1000)]
    pub outlier_base_ejection_ms: u64,
    /// Longest ejection.
    #[arg(long, env = "MSA_OUTLIER_MAX_EJECTION_MS", default_value_t = 60_000)]
    pub outlier_max_ejection_ms: u64,
    /// Never eject more than this share of a service's endpoints.
    #[arg(long, env = "MSA_OUTLIER_MAX_EJECTION_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub outlier_max_ejection_percent: u8,
    /// Eject an endpoint whose latency EWMA is this many times its peers' median (0: never).
    #[arg(long, env = "MSA_OUTLIER_LATENCY_FACTOR", default_value_t = 5.0)]
    pub outlier_latency_factor: f64,

    /// Retries per call: 0 or 1 (a call never reaches the service more than twice).
    #[arg(long, env = "MSA_RETRY_MAX", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1))]
    pub retry_max: u32,
    /// Retries allowed as a share of calls (over 10 s) …
    #[arg(long, env = "MSA_RETRY_BUDGET_PERCENT", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub retry_budget_percent: u32,
    /// … plus this many per second regardless.
    #[arg(long, env = "MSA_RETRY_MIN_PER_SECOND", default_value_t = 10)]
    pub retry_min_per_second: u32,

    /// Connect timeout.
    #[arg(long, env = "MSA_TIMEOUT_CONNECT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_connect_ms: u64,
    /// Timeout of one attempt (until the response head); the peer is told it in
    /// `x-msa-timeout-ms`. An inner hop's timeouts must be shorter than the outer hop's (the
    /// defaults: a service's calls 2 s per try, 4 s in all; the gateway's 5 s per try).
    #[arg(long, env = "MSA_TIMEOUT_PER_TRY_MS", default_value_t = INNER_PER_TRY_MS, value_parser = clap::value_parser!(u64).range(1..=crate::deadline::MAX_TIMEOUT_MS))]
    pub timeout_per_try_ms: u64,
    /// Timeout of a whole call, retries included (cut further to the caller's own deadline).
    #[arg(long, env = "MSA_TIMEOUT_REQUEST_MS", default_value_t = INNER_REQUEST_MS, value_parser = clap::value_parser!(u64).range(1..=crate::deadline::MAX_TIMEOUT_MS))]
    pub timeout_request_ms: u64,
}

/// A service's calls to its peers (the inner hop): 2 s per try, 4 s in all, so a call with its
/// retry ends before the gateway's 5 s try of the service that makes it.
pub const INNER_PER_TRY_MS: u64 = 2_000;
pub const INNER_REQUEST_MS: u64 = 4_000;
/// The gateway's calls (the outer hop; the MicroserviceApp's `timeouts` defaults).
pub const GATEWAY_PER_TRY_MS: u64 = 5_000;
pub const GATEWAY_REQUEST_MS: u64 = 15_000;

/// `command` (whose flags include [`PolicyArgs`]) with the gateway's timeout defaults instead
/// of an inner hop's (written out: clap keeps a default as `'static` text; a test checks they
/// are the constants above).
pub fn with_gateway_defaults(command: clap::Command) -> clap::Command {
    command
        .mut_arg("timeout_per_try_ms", |arg| arg.default_value("5000"))
        .mut_arg("timeout_request_ms", |arg| arg.default_value("15000"))
}

impl PolicyArgs {
    /// Pool settings; an error names the flag to fix.
    pub fn pool(&self) -> Result<PoolConfig, String> {
        if self.timeout_per_try_ms > self.timeout_request_ms {
            return Err(format!(
                "--timeout-per-try-ms ({}) must not exceed --timeout-request-ms ({})",
                self.timeout_per_try_ms, self.timeout_request_ms
            ));
        }
        if !(self.outlier_latency_factor == 0.0 || self.outlier_latency_factor >= 1.0) {
            return Err(format!(
                "--outlier-latency-factor {} must be 0 (off) or at least 1",
                self.outlier_latency_factor
            ));
        }
        Ok(PoolConfig {
            strategy: self.lb_strategy,
            outliers: OutlierConfig {
                consecutive_failures: self.outlier_consecutive_failures,
                base_ejection: Duration::from_millis(self.outlier_base_ejection_ms),
                max_ejection: Duration::from_millis(
                    self.outlier_max_ejection_ms
                        .max(self.outlier_base_ejection_ms),
                ),
                max_ejection_percent: self.outlier_max_ejection_percent,
                latency_factor: self.outlier_latency_factor,
            },
            breaker: BreakerConfig {
                failure_rate_percent: self.breaker_failure_rate_percent,
                minimum_calls: self.breaker_minimum_calls,
                window: Duration::from_secs(self.breaker_window_seconds),
                open_for: Duration::from_secs(self.breaker_open_seconds),
                half_open_probes: self.breaker_half_open_probes,
            },
            retry_budget_percent: self.retry_budget_percent,
            retry_min_per_second: self.retry_min_per_second,
            ..PoolConfig::default()
        })
    }

    pub fn calls(&self) -> CallConfig {
        CallConfig {
            connect_timeout: Duration::from_millis(self.timeout_connect_ms),
            per_try_timeout: Duration::from_millis(self.timeout_per_try_ms),
            request_timeout: Duration::from_millis(self.timeout_request_ms),
            max_retries: self.retry_max,
            ..CallConfig::default()
        }
    }
}

/// How often an endpoints file (`file:<path>`) is read again.
const ENDPOINTS_FILE_POLL: Duration = Duration::from_millis(500);

/// Where upstream endpoints come from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscoveryMode {
    /// Each upstream flag lists ip:port[@weight] addresses.
    Static,
    /// Each upstream flag names a Service whose EndpointSlices are watched (port `http`).
    Kubernetes,
}

#[derive(clap::Args, Clone, Debug)]
pub struct DiscoveryArgs {
    /// static (addresses on the command line) or kubernetes (watch EndpointSlices).
    #[arg(long, env = "MSA_DISCOVERY", value_enum, default_value_t = DiscoveryMode::Static)]
    pub discovery: DiscoveryMode,
    /// Namespace of the upstream Services (kubernetes discovery).
    #[arg(long, env = "MSA_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Name of the Service port to send to (kubernetes discovery).
    #[arg(
        long = "upstream-port-name",
        env = "MSA_UPSTREAM_PORT_NAME",
        default_value = "http"
    )]
    pub port_name: String,
}

impl DiscoveryArgs {
    /// The discovery for one upstream flag's value: addresses, `file:<path>` (a file of them,
    /// followed as it changes), or a Service name.
    pub fn discovery(
        &self,
        flag: &str,
        value: &str,
        client: Option<&kube::Client>,
    ) -> Result<Discovery, String> {
        match self.discovery {
            DiscoveryMode::Static if value.starts_with("file:") => {
                let path = value.trim_start_matches("file:");
                if path.is_empty() {
                    return Err(format!(
                        "--{flag}: file: needs a path, as in file:/run/peers"
                    ));
                }
                Ok(Discovery::file(path.into(), ENDPOINTS_FILE_POLL))
            }
            DiscoveryMode::Static => endpoint::parse_list(value)
                .map(Discovery::fixed)
                .map_err(|e| format!("--{flag}: {e}")),
            DiscoveryMode::Kubernetes => {
                let service = value.trim();
                if service.is_empty() || service.contains([':', '/', ',']) {
                    return Err(format!(
                        "--{flag}: with --discovery kubernetes give the Service's name, not {value:?}"
                    ));
                }
                let client = client.ok_or("kubernetes discovery needs an API client")?;
                Ok(Discovery::kubernetes(
                    client.clone(),
                    &self.namespace,
                    service,
                    &self.port_name,
                ))
            }
        }
    }

    /// An API client when discovery needs one (in-cluster config or KUBECONFIG).
    pub async fn client(&self) -> Result<Option<kube::Client>, String> {
        match self.discovery {
            DiscoveryMode::Static => Ok(None),
            DiscoveryMode::Kubernetes => kube::Client::try_default().await.map(Some).map_err(|e| {
                format!("kubernetes discovery: cannot reach the API server ({e}); run in a pod with a ServiceAccount token or set KUBECONFIG")
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags as if none were given.
    fn defaults() -> PolicyArgs {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            policy: PolicyArgs,
        }
        <Only as clap::Parser>::parse_from(["defaults"]).policy
    }

    /// Issue 27: the gateway's try of a service outlasts that service's whole call to its own
    /// peer, retry included, so the outer hop never gives up first.
    #[test]
    fn an_inner_hop_gives_up_before_the_outer_one() {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            policy: PolicyArgs,
        }
        use clap::{CommandFactory, FromArgMatches};
        let matches = with_gateway_defaults(Only::command()).get_matches_from(["gateway"]);
        let gateway = Only::from_arg_matches(&matches).unwrap().policy.calls();
        let inner = defaults().calls();
        assert_eq!(gateway, CallConfig::gateway());
        assert_eq!(inner, CallConfig::default());
        assert!(
            inner.request_timeout < gateway.per_try_timeout,
            "a service's call ({:?}, retry included) ends before the gateway's try ({:?})",
            inner.request_timeout,
            gateway.per_try_timeout
        );
        let flags = with_gateway_defaults(Only::command()).get_matches_from([
            "gateway",
            "--timeout-per-try-ms",
            "800",
        ]);
        assert_eq!(
            Only::from_arg_matches(&flags)
                .unwrap()
                .policy
                .timeout_per_try_ms,
            800,
            "a flag still wins over the gateway's default"
        );
    }

    #[test]
    fn defaults_match_the_issue_and_refuse_inconsistent_timeouts() {
        let policy = defaults();
        let pool = policy.pool().unwrap();
        assert_eq!(
            pool,
            PoolConfig::default(),
            "the flags' defaults are the library's"
        );
        assert_eq!(policy.calls(), CallConfig::default());
        assert_eq!(pool.outliers.consecutive_failures, 5);
        assert_eq!(pool.retry_budget_percent, 20);
        assert_eq!(pool.retry_min_per_second, 10);
        assert_eq!(pool.default_rtt, Duration::from_millis(30));
        assert_eq!(pool.ewma_decay, Duration::from_secs(10));
        assert_eq!(policy.calls().retry_body_limit, 64 * 1024);
        let mut bad = policy.clone();
        bad.timeout_per_try_ms = 20_000;
        assert!(bad.pool().unwrap_err().contains("--timeout-request-ms"));
    }
}
