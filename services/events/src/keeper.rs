//! Makes an app's streams and keeps them as configured. Only the admin login may (a service that
//! could change a stream could make the server write into another service's subjects, see
//! [`crate::broker::ADMIN`]), so this runs where that login is held: in `msa-local`, and as the
//! `msa-streams` container beside each broker the operator runs, talking to it on loopback.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::Context;
use tracing::{info, warn};

use crate::broker::SERVICES;
use crate::stream::{self, Ensured, StreamSettings};

/// How often a kept stream is looked at again (someone may have changed or deleted it).
pub const RECHECK: Duration = Duration::from_secs(30);
/// How soon a failed round is tried again (JetStream may still be starting, or electing).
pub const RETRY: Duration = Duration::from_secs(2);
/// Failed rounds in a row before the keeper says it is not ready: one failure during a leader
/// election must not take every server's pod out of its Service at once.
pub const FAILURES_BEFORE_UNREADY: u32 = 3;

/// Brings every service's stream of `app` to `settings`, stopping at the first that cannot be:
/// what was done to each, or why not.
pub async fn ensure_all(
    admin: &Context,
    app: &str,
    settings: &StreamSettings,
) -> Result<Vec<(String, Ensured)>, String> {
    let mut done = Vec::with_capacity(SERVICES.len());
    for service in SERVICES {
        let wanted = stream::config(app, service, settings);
        let name = wanted.name.clone();
        let ensured = stream::ensure(admin, wanted)
            .await
            .map_err(|error| format!("stream {name}: {error}"))?;
        done.push((name, ensured));
    }
    Ok(done)
}

/// Whether every stream was as configured at the last look (what the keeper's readiness
/// answers, and so the broker pod's: the operator's `EventsReady` condition counts ready pods).
#[derive(Clone, Default)]
pub struct Streams {
    ready: Arc<AtomicBool>,
}

impl Streams {
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// [`ensure_all`] now and every [`RECHECK`] (every [`RETRY`] after a failure) until `stop`;
/// logs each change and each failure, never gives up.
pub async fn keep(
    admin: Context,
    app: String,
    settings: StreamSettings,
    streams: Streams,
    stop: impl Future<Output = ()>,
) {
    let rounds = async {
        let mut failures = 0u32;
        loop {
            let wait = match ensure_all(&admin, &app, &settings).await {
                Ok(done) => {
                    // A stream the admin could not bring to its configuration is not "as
                    // configured": not ready, looked at again soon.
                    let mut all_as_configured = true;
                    for (name, ensured) in done {
                        match ensured {
                            Ensured::AsWanted => {}
                            Ensured::Kept { refused } => {
                                all_as_configured = false;
                                warn!(stream = %name, %refused, "the stream differs and could not be changed")
                            }
                            other => info!(stream = %name, done = ?other, "stream"),
                        }
                    }
                    if all_as_configured {
                        if std::mem::take(&mut failures) > 0 {
                            info!(app, "every stream is as configured again");
                        }
                        streams.ready.store(true, Ordering::Relaxed);
                        RECHECK
                    } else {
                        failures = failures.saturating_add(1);
                        if failures >= FAILURES_BEFORE_UNREADY {
                            streams.ready.store(false, Ordering::Relaxed);
                        }
                        RETRY
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    if failures >= FAILURES_BEFORE_UNREADY {
                        streams.ready.store(false, Ordering::Relaxed);
                    }
                    warn!(app, %error, "could not make the streams; trying again");
                    RETRY
                }
            };
            tokio::time::sleep(wait).await;
        }
    };
    tokio::select! {
        () = rounds => {}
        () = stop => {}
    }
}

/// Connections the readiness responder serves at once; more are closed unanswered (the kubelet
/// probes one at a time; a flood must not grow memory or starve the stream loop).
const PROBES_AT_ONCE: usize = 8;

/// Answers every HTTP request on `listener` with 200 while the streams are ready, 503 before
/// (the kubelet's readiness probe; nothing else is served). Each request is read for at most
/// a second and never more than 4 KiB of it; at most [`PROBES_AT_ONCE`] at a time.
pub async fn serve_readiness(listener: tokio::net::TcpListener, streams: Streams) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let slots = Arc::new(tokio::sync::Semaphore::new(PROBES_AT_ONCE));
    loop {
        let Ok((mut connection, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(connection);
            continue;
        };
        let streams = streams.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut head = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(1), connection.read(&mut head)).await;
            let answer: &[u8] = if streams.ready() {
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
            } else {
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 10\r\nconnection: close\r\n\r\nnot ready\n"
            };
            let _ =
                tokio::time::timeout(Duration::from_secs(1), connection.write_all(answer)).await;
        });
    }
}
