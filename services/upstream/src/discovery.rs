//! Where an upstream's endpoints come from: the EndpointSlices of a Kubernetes Service, watched
//! through kube-runtime's watcher and reflector, or a fixed list (local runs, tests,
//! benchmarks). Both publish the current set on a `watch` channel, so the caller never knows
//! which it has.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::endpoint::Endpoint;
use crate::slices;

/// The label EndpointSlices carry naming their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A live view of one upstream's endpoints.
#[derive(Clone, Debug)]
pub struct Discovery {
    source: Arc<str>,
    endpoints: watch::Receiver<Arc<[Endpoint]>>,
}

/// Feeds a [`Discovery`] by hand (tests, and sources of our own).
#[derive(Clone, Debug)]
pub struct DiscoveryFeed(Arc<watch::Sender<Arc<[Endpoint]>>>);

impl DiscoveryFeed {
    /// Publishes a new set; a set equal to the current one wakes nobody.
    pub fn set(&self, endpoints: Vec<Endpoint>) {
        let endpoints: Arc<[Endpoint]> = endpoints.into();
        self.0.send_if_modified(|current| {
            if *current == endpoints {
                false
            } else {
                *current = endpoints;
                true
            }
        });
    }
}

impl Discovery {
    /// A source fed by hand, starting empty.
    pub fn manual(source: impl Into<Arc<str>>) -> (DiscoveryFeed, Discovery) {
        let (tx, rx) = watch::channel(Arc::from(Vec::new()));
        (
            DiscoveryFeed(Arc::new(tx)),
            Discovery {
                source: source.into(),
                endpoints: rx,
            },
        )
    }

    /// A fixed list of addresses.
    pub fn fixed(endpoints: Vec<Endpoint>) -> Discovery {
        let source = endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let (feed, discovery) = Discovery::manual(format!("static:{source}"));
        feed.set(endpoints);
        // The sender lives as long as any receiver needs the value; dropping it is fine
        // because a watch receiver keeps the last value.
        drop(feed);
        discovery
    }

    /// The addresses listed in the file at `path` (`ip:port[@weight]`, separated by commas or
    /// new lines), read again every `every` and published when they change: for peers whose
    /// addresses are learnt only after this process starts (`msa-local` writes the file once
    /// every component listens). A file that is missing, too large or does not parse keeps the
    /// last good set (and says so in the log, once per change).
    pub fn file(path: std::path::PathBuf, every: std::time::Duration) -> Discovery {
        let (feed, discovery) = Discovery::manual(format!("file:{}", path.display()));
        tokio::spawn(async move {
            let mut last: Option<Result<String, String>> = None;
            loop {
                let read = read_list_file(&path).await;
                if last.as_ref() != Some(&read) {
                    match &read {
                        // An empty file: no endpoints (yet).
                        Ok(list) if list.is_empty() => feed.set(Vec::new()),
                        Ok(list) => match crate::endpoint::parse_list(list) {
                            Ok(endpoints) => {
                                info!(file = %path.display(), endpoints = endpoints.len(), "discovered endpoints");
                                feed.set(endpoints);
                            }
                            Err(error) => {
                                warn!(file = %path.display(), %error, "cannot use the endpoints file; keeping the last known endpoints");
                            }
                        },
                        Err(error) => {
                            warn!(file = %path.display(), %error, "cannot read the endpoints file; keeping the last known endpoints");
                        }
                    }
                    last = Some(read);
                }
                // Nobody listens any more: the upstream is gone.
                if feed.0.is_closed() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
        discovery
    }

    /// The ready endpoints of Service `service` in `namespace`, port `port_name`, kept current
    /// by a background watch. Re-lists (after a watch expires or errors) swap the set only
    /// once complete, so the set never drops out meanwhile; errors are retried with backoff.
    pub fn kubernetes(
        client: Client,
        namespace: &str,
        service: &str,
        port_name: &str,
    ) -> Discovery {
        let (feed, discovery) =
            Discovery::manual(format!("kubernetes:{namespace}/{service}:{port_name}"));
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={service}"));
        let (store, writer) = reflector::store();
        let port_name = port_name.to_owned();
        let service = service.to_owned();
        tokio::spawn(async move {
            let events = reflector(writer, watcher::watcher(api, config).default_backoff());
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) => {
                        let slices: Vec<EndpointSlice> =
                            store.state().iter().map(|s| (**s).clone()).collect();
                        let endpoints = slices::endpoints(&slices, &port_name);
                        info!(service = %service, endpoints = endpoints.len(), "discovered endpoints");
                        feed.set(endpoints);
                    }
                    Ok(Event::Init | Event::InitApply(_)) => {}
                    Err(error) => {
                        warn!(service = %service, %error, "EndpointSlice watch failed; keeping the last known endpoints and retrying");
                    }
                }
            }
        });
        discovery
    }

    /// Where the endpoints come from, for logs and the admin view.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn current(&self) -> Arc<[Endpoint]> {
        self.endpoints.borrow().clone()
    }

    /// Waits for the next change; `None` once the source is gone for good (a fixed list).
    pub async fn changed(&mut self) -> Option<Arc<[Endpoint]>> {
        self.endpoints.changed().await.ok()?;
        Some(self.endpoints.borrow_and_update().clone())
    }
}

/// Largest endpoints file read (thousands of addresses).
const MAX_LIST_FILE: u64 = 64 * 1024;

/// The file's addresses as one comma-separated list.
async fn read_list_file(path: &std::path::Path) -> Result<String, String> {
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|e| e.to_string())?
        .len();
    if size > MAX_LIST_FILE {
        return Err(format!(
            "{size} bytes is more than the {MAX_LIST_FILE} an endpoints file may have"
        ));
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| e.to_string())?;
    Ok(text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_of_addresses_is_followed_as_it_changes() {
        let path = std::env::temp_dir().join(format!(
            "msa-upstream-addrs-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut discovery = Discovery::file(path.clone(), std::time::Duration::from_millis(20));
        assert!(discovery.current().is_empty(), "no file yet: no endpoints");
        std::fs::write(&path, "127.0.0.1:1\n127.0.0.1:2\n").unwrap();
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), discovery.changed())
            .await
            .expect("the file is read again")
            .unwrap();
        assert_eq!(first.len(), 2);
        std::fs::write(&path, "not an address").unwrap();
        std::fs::write(&path, "127.0.0.1:3").unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), discovery.changed())
            .await
            .expect("a change is published")
            .unwrap();
        assert_eq!(&*next, &["127.0.0.1:3".parse::<Endpoint>().unwrap()]);
        std::fs::write(&path, "garbage").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(
            discovery.current().len(),
            1,
            "a file that does not parse keeps the last good set"
        );
        std::fs::write(&path, "").unwrap();
        let emptied = tokio::time::timeout(std::time::Duration::from_secs(10), discovery.changed())
            .await
            .expect("an empty file is published")
            .unwrap();
        assert!(emptied.is_empty(), "an empty file lists no endpoints");
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn a_manual_feed_publishes_changes_only() {
        let (feed, mut discovery) = Discovery::manual("test");
        let a: Endpoint = "127.0.0.1:1".parse().unwrap();
        feed.set(vec![a]);
        assert_eq!(&*discovery.changed().await.unwrap(), &[a]);
        feed.set(vec![a]);
        assert!(
            !discovery.endpoints.has_changed().unwrap(),
            "same set, no wake-up"
        );
        let fixed = Discovery::fixed(vec![a]);
        assert_eq!(&*fixed.current(), &[a]);
        assert_eq!(fixed.source(), "static:127.0.0.1:1");
    }
}
