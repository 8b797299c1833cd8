//! A reflector cache plus an index of its objects by the app they belong to (namespace and
//! `app.kubernetes.io/instance` label), for kinds whose names the operator cannot predict
//! (EndpointSlices are named by Kubernetes). A reconcile then reads its own app's objects
//! instead of scanning every object of the kind in the cluster, which made a fleet's
//! convergence quadratic.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use kube::Resource;
use kube::ResourceExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::labels;

/// (namespace, app) → names of its objects, and each object's app (to move it when its label
/// changes).
#[derive(Debug, Default)]
struct Index {
    by_app: HashMap<(String, String), BTreeSet<String>>,
    app_of: HashMap<(String, String), String>,
}

impl Index {
    fn insert<K: Resource>(&mut self, object: &K) {
        self.remove(object);
        let (Some(namespace), Some(app)) =
            (object.namespace(), object.labels().get(labels::INSTANCE))
        else {
            return;
        };
        let name = object.name_any();
        self.by_app
            .entry((namespace.clone(), app.clone()))
            .or_default()
            .insert(name.clone());
        self.app_of.insert((namespace, name), app.clone());
    }

    fn remove<K: Resource>(&mut self, object: &K) {
        let namespace = object.namespace().unwrap_or_default();
        let name = object.name_any();
        let Some(app) = self.app_of.remove(&(namespace.clone(), name.clone())) else {
            return;
        };
        let key = (namespace, app);
        if let Some(names) = self.by_app.get_mut(&key) {
            names.remove(&name);
            if names.is_empty() {
                self.by_app.remove(&key);
            }
        }
    }
}

/// The reading side: a [`Store`] and the index.
#[derive(Clone)]
pub struct IndexedStore<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    index: Arc<RwLock<Index>>,
}

impl<K> IndexedStore<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// The objects of one app, by name.
    pub fn of_app(&self, namespace: &str, app: &str) -> Vec<Arc<K>> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let Some(names) = index.by_app.get(&(namespace.to_owned(), app.to_owned())) else {
            return Vec::new();
        };
        names
            .iter()
            .filter_map(|name| self.store.get(&ObjectRef::new(name).within(namespace)))
            .collect()
    }

    /// The cache itself (readiness, lookups by name).
    pub fn store(&self) -> &Store<K> {
        &self.store
    }
}

/// The writing side, fed with the watch's events in place of a reflector's [`Writer`].
pub struct IndexedWriter<K: Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    index: Arc<RwLock<Index>>,
    /// The index being rebuilt during a relist; swapped in when it ends, like the store.
    relisting: Option<Index>,
}

impl<K> Default for IndexedWriter<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn default() -> Self {
        Self {
            writer: Writer::default(),
            index: Arc::default(),
            relisting: None,
        }
    }
}

impl<K> IndexedWriter<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    pub fn as_reader(&self) -> IndexedStore<K> {
        IndexedStore {
            store: self.writer.as_reader(),
            index: self.index.clone(),
        }
    }

    pub fn apply_watcher_event(&mut self, event: &watcher::Event<K>) {
        self.writer.apply_watcher_event(event);
        let write = |change: &dyn Fn(&mut Index)| {
            change(&mut self.index.write().unwrap_or_else(PoisonError::into_inner));
        };
        match event {
            watcher::Event::Apply(object) => write(&|index| index.insert(object)),
            watcher::Event::Delete(object) => write(&|index| index.remove(object)),
            watcher::Event::Init => self.relisting = Some(Index::default()),
            watcher::Event::InitApply(object) => {
                self.relisting
                    .get_or_insert_with(Index::default)
                    .insert(object);
            }
            watcher::Event::InitDone => {
                let rebuilt = self.relisting.take().unwrap_or_default();
                *self.index.write().unwrap_or_else(PoisonError::into_inner) = rebuilt;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    use super::*;

    fn slice(name: &str, namespace: &str, app: &str) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/instance": app}},
            "addressType": "IPv4", "endpoints": []
        }))
        .unwrap()
    }

    fn names(store: &IndexedStore<EndpointSlice>, namespace: &str, app: &str) -> Vec<String> {
        store
            .of_app(namespace, app)
            .iter()
            .map(|s| s.name_any())
            .collect()
    }

    #[test]
    fn objects_are_found_by_namespace_and_app_and_follow_their_label() {
        let mut writer = IndexedWriter::default();
        let reader = writer.as_reader();
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(slice("shop-a", "demo", "shop")),
            watcher::Event::InitApply(slice("other-a", "demo", "other")),
            watcher::Event::InitApply(slice("shop-b", "prod", "shop")),
            watcher::Event::InitDone,
            watcher::Event::Apply(slice("shop-c", "demo", "shop")),
        ] {
            writer.apply_watcher_event(&event);
        }
        assert_eq!(names(&reader, "demo", "shop"), ["shop-a", "shop-c"]);
        assert_eq!(names(&reader, "prod", "shop"), ["shop-b"]);
        assert_eq!(names(&reader, "demo", "other"), ["other-a"]);

        // Relabelled: it moves to its new app. Deleted: it is gone.
        writer.apply_watcher_event(&watcher::Event::Apply(slice("shop-a", "demo", "other")));
        writer.apply_watcher_event(&watcher::Event::Delete(slice("shop-c", "demo", "shop")));
        assert!(names(&reader, "demo", "shop").is_empty());
        assert_eq!(names(&reader, "demo", "other"), ["other-a", "shop-a"]);
    }

    #[test]
    fn a_relist_replaces_the_index_when_it_ends() {
        let mut writer = IndexedWriter::default();
        let reader = writer.as_reader();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(slice("shop-a", "demo", "shop")));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        // The next relist no longer has shop-a (deleted while the watch was down).
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(slice("shop-b", "demo", "shop")));
        assert_eq!(
            names(&reader, "demo", "shop"),
            ["shop-a"],
            "the old view holds until the relist ends"
        );
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(names(&reader, "demo", "shop"), ["shop-b"]);
    }
}
