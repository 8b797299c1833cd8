//! Content hashes stamped on rendered objects.

use kube::Resource;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::labels::RENDERED_HASH_ANNOTATION;

/// A short, stable hash of a value's JSON form (struct fields serialize in declaration order and
/// maps are `BTreeMap`s, so equal values give equal hashes across runs).
pub fn short_hash(value: &impl Serialize) -> String {
    let json = serde_json::to_vec(value).expect("rendered objects always serialize to JSON");
    let digest = Sha256::digest(json);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Adds the rendered-hash annotation, computed over the object without it.
pub fn stamp_rendered_hash<K: Resource + Serialize>(mut object: K) -> K {
    let hash = short_hash(&object);
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(RENDERED_HASH_ANNOTATION.to_owned(), hash);
    object
}
