//! Watching a list of namespaces instead of the whole cluster (issue 28, M2: least privilege
//! is a Role in each watched namespace, not a ClusterRole).
//!
//! Kubernetes has no watch across a chosen set of namespaces, so each namespace gets a watch of
//! its own, and their events are merged into the one reflector cache per kind the reconciler
//! reads (and the controller's own store of apps, which must be a single `Store`). A watch's
//! relist (`Init`, `InitApply`…, `InitDone`) replaces a whole cache when it ends, so the events
//! of one namespace's relist cannot be passed on as they are: they would wipe the others'
//! objects. [`ScopeMerger`] turns them into a relist of the whole cache (the other namespaces'
//! objects as the cache holds them, plus the relisted namespace's new ones), and holds the cache
//! back until every namespace has listed once, so it is "ready" (the reconciler waits for that
//! after a restart) only when it holds them all. With one watch (all namespaces, or one) the
//! events pass through unchanged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};
use tracing::warn;

use crate::app_index::IndexedWriter;

/// Where the operator looks for apps: every namespace, or the ones named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    namespaces: Vec<String>,
}

impl Scope {
    /// Every namespace (a ClusterRole).
    pub fn cluster() -> Self {
        Self::default()
    }

    /// The namespaces named (duplicates and empty names dropped); none means every namespace.
    pub fn namespaces<I: IntoIterator<Item = String>>(names: I) -> Self {
        let mut namespaces: Vec<String> = names.into_iter().filter(|n| !n.is_empty()).collect();
        namespaces.sort();
        namespaces.dedup();
        Self { namespaces }
    }

    /// One watch per entry: `None` for a watch of every namespace.
    pub fn watches(&self) -> Vec<Option<String>> {
        if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        }
    }

    /// For logs: "all namespaces" or the list.
    pub fn describe(&self) -> String {
        if self.namespaces.is_empty() {
            "all namespaces".to_owned()
        } else {
            self.namespaces.join(",")
        }
    }
}

/// A reflector cache's writing side: kube's [`Writer`], or the app-indexed one.
pub trait CacheWriter<K> {
    fn apply(&mut self, event: &Event<K>);
    /// What the cache holds now.
    fn current(&self) -> Vec<Arc<K>>;
}

impl<K> CacheWriter<K> for Writer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn apply(&mut self, event: &Event<K>) {
        self.apply_watcher_event(event);
    }

    fn current(&self) -> Vec<Arc<K>> {
        self.as_reader().state()
    }
}

impl<K> CacheWriter<K> for IndexedWriter<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn apply(&mut self, event: &Event<K>) {
        self.apply_watcher_event(event);
    }

    fn current(&self) -> Vec<Arc<K>> {
        self.as_reader().store().state()
    }
}

/// Turns the events of several namespaces' watches into events for one cache (see the module
/// documentation). Pure: it is handed what the cache holds when it needs it.
pub struct ScopeMerger<K> {
    /// The namespace each watch covers, by watch index (`None`: all, the only watch then).
    watches: Vec<Option<String>>,
    /// Relists under way, by watch.
    relisting: HashMap<usize, Vec<K>>,
    /// Until every watch has listed once: what each listed watch holds, by name.
    first_lists: HashMap<usize, BTreeMap<String, K>>,
    /// Every watch has listed once and the cache was filled.
    filled: bool,
}

impl<K: Resource + Clone> ScopeMerger<K> {
    pub fn new(watches: Vec<Option<String>>) -> Self {
        Self {
            watches,
            relisting: HashMap::new(),
            first_lists: HashMap::new(),
            filled: false,
        }
    }

    /// The events the cache must apply for `event` of watch `watch`; `current` is what the
    /// cache holds (asked for only when a relist ends after the cache was filled).
    pub fn merge(
        &mut self,
        watch: usize,
        event: Event<K>,
        current: impl FnOnce() -> Vec<Arc<K>>,
    ) -> Vec<Event<K>> {
        if self.watches.len() <= 1 {
            return vec![event];
        }
        match event {
            Event::Init => {
                self.relisting.insert(watch, Vec::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                self.relisting.entry(watch).or_default().push(object);
                Vec::new()
            }
            Event::InitDone => {
                let listed = self.relisting.remove(&watch).unwrap_or_default();
                if self.filled {
                    return self.relist_of(watch, listed, current());
                }
                let by_name = listed.into_iter().map(|o| (o.name_any(), o)).collect();
                self.first_lists.insert(watch, by_name);
                if self.first_lists.len() < self.watches.len() {
                    return Vec::new();
                }
                self.filled = true;
                let objects = std::mem::take(&mut self.first_lists)
                    .into_values()
                    .flat_map(BTreeMap::into_values);
                std::iter::once(Event::Init)
                    .chain(objects.map(Event::InitApply))
                    .chain(std::iter::once(Event::InitDone))
                    .collect()
            }
            Event::Apply(object) if !self.filled => {
                self.change_before_filled(watch, object, true);
                Vec::new()
            }
            Event::Delete(object) if !self.filled => {
                self.change_before_filled(watch, object, false);
                Vec::new()
            }
            event @ (Event::Apply(_) | Event::Delete(_)) => vec![event],
        }
    }

    /// A change a watch reports before every watch listed: kept with its first list. (A watch
    /// lists before it reports changes, so its first list is there.)
    fn change_before_filled(&mut self, watch: usize, object: K, applied: bool) {
        let Some(listed) = self.first_lists.get_mut(&watch) else {
            warn!(
                watch,
                "a change reported before its watch listed; the next list has it"
            );
            return;
        };
        if applied {
            listed.insert(object.name_any(), object);
        } else {
            listed.remove(&object.name_any());
        }
    }

    /// One namespace relisted after the cache was filled, as the changes it makes: a delete of
    /// each of its cached objects the list no longer has, and an apply of each listed one. The
    /// other namespaces' objects are not touched (nor copied).
    fn relist_of(&self, watch: usize, listed: Vec<K>, current: Vec<Arc<K>>) -> Vec<Event<K>> {
        let relisted = self.watches.get(watch).cloned().flatten();
        let names: std::collections::HashSet<String> =
            listed.iter().map(ResourceExt::name_any).collect();
        let gone = current
            .into_iter()
            .filter(|object| object.namespace() == relisted && !names.contains(&object.name_any()))
            .map(|object| Event::Delete(K::clone(&object)));
        gone.chain(listed.into_iter().map(Event::Apply)).collect()
    }
}

/// A cache fed by the watches of a [`Scope`].
pub struct ScopedWriter<K, W> {
    merger: ScopeMerger<K>,
    writer: W,
}

impl<K: Resource + Clone, W: CacheWriter<K>> ScopedWriter<K, W> {
    pub fn new(scope: &Scope, writer: W) -> Self {
        Self {
            merger: ScopeMerger::new(scope.watches()),
            writer,
        }
    }

    /// Applies what `event` of watch `watch` means for the cache, and returns it: what
    /// triggers reconciles is what the cache holds, so a reconcile finds what triggered it.
    pub fn apply(&mut self, watch: usize, event: Event<K>) -> Vec<Event<K>> {
        let writer = &mut self.writer;
        let merged = self.merger.merge(watch, event, || writer.current());
        for event in &merged {
            writer.apply(event);
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector::{ObjectRef, store::Writer};

    use super::*;

    fn map(namespace: &str, name: &str, value: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
            "data": {"v": value},
        }))
        .unwrap()
    }

    fn two_namespaces() -> (
        ScopedWriter<ConfigMap, Writer<ConfigMap>>,
        kube::runtime::reflector::Store<ConfigMap>,
    ) {
        let writer = Writer::default();
        let reader = writer.as_reader();
        let scope = Scope::namespaces(["b".to_owned(), "a".to_owned()]);
        (ScopedWriter::new(&scope, writer), reader)
    }

    fn list(
        writer: &mut ScopedWriter<ConfigMap, Writer<ConfigMap>>,
        watch: usize,
        objects: &[ConfigMap],
    ) {
        writer.apply(watch, Event::Init);
        for object in objects {
            writer.apply(watch, Event::InitApply(object.clone()));
        }
        writer.apply(watch, Event::InitDone);
    }

    fn names(store: &kube::runtime::reflector::Store<ConfigMap>) -> Vec<String> {
        let mut names: Vec<String> = store
            .state()
            .iter()
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_scope_watches_each_namespace_once_or_the_whole_cluster() {
        assert_eq!(Scope::cluster().watches(), [None]);
        assert_eq!(Scope::namespaces([String::new()]).watches(), [None]);
        let scope = Scope::namespaces(["b", "a", "b"].map(str::to_owned));
        assert_eq!(
            scope.watches(),
            [Some("a".to_owned()), Some("b".to_owned())]
        );
        assert_eq!(scope.describe(), "a,b");
    }

    #[tokio::test]
    async fn the_cache_is_ready_only_once_every_namespace_listed() {
        let ready = |store: kube::runtime::reflector::Store<ConfigMap>| async move {
            let wait = std::time::Duration::from_millis(50);
            tokio::time::timeout(wait, store.wait_until_ready())
                .await
                .is_ok()
        };
        let (mut writer, reader) = two_namespaces();
        list(&mut writer, 0, &[map("a", "one", "1")]);
        // A change in `a` while `b` is still listing is kept, not lost.
        writer.apply(0, Event::Apply(map("a", "two", "2")));
        writer.apply(0, Event::Delete(map("a", "one", "1")));
        assert!(reader.state().is_empty(), "not filled before b listed");
        assert!(!ready(reader.clone()).await, "not ready before b listed");
        list(&mut writer, 1, &[map("b", "three", "3")]);
        assert_eq!(names(&reader), ["a/two", "b/three"]);
        assert!(ready(reader.clone()).await);
    }

    #[test]
    fn one_namespaces_relist_keeps_the_others_objects() {
        let (mut writer, reader) = two_namespaces();
        list(&mut writer, 0, &[map("a", "one", "1")]);
        list(&mut writer, 1, &[map("b", "two", "2")]);
        writer.apply(1, Event::Apply(map("b", "three", "3")));
        // `a` relists (its watch expired): `one` was deleted meanwhile, `four` created.
        writer.apply(0, Event::Init);
        writer.apply(0, Event::InitApply(map("a", "four", "4")));
        assert_eq!(
            names(&reader),
            ["a/one", "b/three", "b/two"],
            "unchanged until it ends"
        );
        let changes = writer.apply(0, Event::InitDone);
        assert_eq!(names(&reader), ["a/four", "b/three", "b/two"]);
        // Told as changes of `a` alone (they trigger the reconciles of a's apps only).
        let told: Vec<String> = changes
            .iter()
            .map(|event| match event {
                Event::Apply(o) => format!("apply {}/{}", o.namespace().unwrap(), o.name_any()),
                Event::Delete(o) => format!("delete {}/{}", o.namespace().unwrap(), o.name_any()),
                _ => "a whole relist".to_owned(),
            })
            .collect();
        assert_eq!(told, ["delete a/one", "apply a/four"]);
        let three = reader.get(&ObjectRef::new("three").within("b")).unwrap();
        assert_eq!(three.data.as_ref().unwrap()["v"], "3");
    }

    #[test]
    fn a_namespace_relisting_before_the_others_listed_loses_nothing() {
        let (mut writer, reader) = two_namespaces();
        list(&mut writer, 0, &[map("a", "one", "1")]);
        // `a` lists again (its watch broke) while `b` has not listed once.
        list(&mut writer, 0, &[map("a", "two", "2")]);
        writer.apply(1, Event::Init);
        writer.apply(1, Event::InitApply(map("b", "three", "3")));
        // A change in `a` while `b` lists.
        writer.apply(0, Event::Apply(map("a", "four", "4")));
        assert!(reader.state().is_empty());
        writer.apply(1, Event::InitDone);
        assert_eq!(names(&reader), ["a/four", "a/two", "b/three"]);
        // Later, a deletion in `b` while `a` relists.
        writer.apply(0, Event::Init);
        writer.apply(1, Event::Delete(map("b", "three", "3")));
        writer.apply(0, Event::InitApply(map("a", "two", "2")));
        writer.apply(0, Event::InitDone);
        assert_eq!(names(&reader), ["a/two"]);
    }

    #[test]
    fn with_one_watch_events_pass_unchanged() {
        let mut merger = ScopeMerger::<ConfigMap>::new(vec![None]);
        for event in [
            Event::Init,
            Event::InitApply(map("a", "one", "1")),
            Event::InitDone,
        ] {
            let merged = merger.merge(0, event, || panic!("not asked for"));
            assert_eq!(merged.len(), 1);
        }
    }
}
