//! Whether the operator may apply a child over an object that already has its name (issue 28
//! L4). Applying makes the app the object's controller, and the garbage collector then deletes
//! it with the app: so an object another controller holds, or one somebody made by hand, is
//! never taken over. An object without a controller that carries this app's own labels is taken
//! back: it was this app's child, orphaned by `kubectl delete --cascade=orphan` (a common way to
//! recreate an app) or by a backup restored without owner references.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::labels::{INSTANCE, MANAGED_BY, MANAGER};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// The app controls it already (or nothing has the name).
    Ours,
    /// An orphan of this app: applying adopts it.
    Adopt,
    /// Not the app's: leave it alone, and say why.
    Refuse(&'static str),
}

/// Judges `live` (the object of the child's name) against `desired` (the child as rendered).
pub fn judge(live: Option<&ObjectMeta>, desired: &ObjectMeta) -> Takeover {
    let Some(live) = live else {
        return Takeover::Ours;
    };
    match (controller(live), controller(desired)) {
        (Some(theirs), Some(ours)) if theirs == ours => Takeover::Ours,
        (Some(_), _) => Takeover::Refuse(
            "is controlled by another object (an earlier app of this name that is still being \
             deleted, or another controller)",
        ),
        (None, _) if carries_labels_of(live, desired) => Takeover::Adopt,
        (None, _) => Takeover::Refuse("was not made by this operator for this app"),
    }
}

/// The uid of the object's controller (an object has at most one).
pub fn controller(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

fn carries_labels_of(live: &ObjectMeta, desired: &ObjectMeta) -> bool {
    label(live, MANAGED_BY) == Some(MANAGER)
        && label(live, INSTANCE).is_some()
        && label(live, INSTANCE) == label(desired, INSTANCE)
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use std::collections::BTreeMap;

    fn meta(controller: Option<&str>, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some("shop-order".into()),
            owner_references: controller.map(|uid| {
                vec![OwnerReference {
                    uid: uid.into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]
            }),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..ObjectMeta::default()
        }
    }

    const OURS: [(&str, &str); 2] = [(MANAGED_BY, MANAGER), (INSTANCE, "shop")];

    #[test]
    fn nothing_there_or_already_ours_is_applied() {
        let desired = meta(Some("app"), &OURS);
        assert_eq!(judge(None, &desired), Takeover::Ours);
        assert_eq!(
            judge(Some(&meta(Some("app"), &[])), &desired),
            Takeover::Ours
        );
    }

    #[test]
    fn another_controllers_object_is_refused_even_with_our_labels() {
        let desired = meta(Some("app"), &OURS);
        assert!(matches!(
            judge(Some(&meta(Some("earlier-app"), &OURS)), &desired),
            Takeover::Refuse(_)
        ));
    }

    #[test]
    fn an_orphan_with_this_apps_labels_is_adopted_anything_else_refused() {
        let desired = meta(Some("app"), &OURS);
        assert_eq!(judge(Some(&meta(None, &OURS)), &desired), Takeover::Adopt);
        for labels in [
            &[][..],
            &[(MANAGED_BY, MANAGER)][..],
            &[(MANAGED_BY, MANAGER), (INSTANCE, "other")][..],
            &[(MANAGED_BY, "helm"), (INSTANCE, "shop")][..],
        ] {
            assert!(
                matches!(
                    judge(Some(&meta(None, labels)), &desired),
                    Takeover::Refuse(_)
                ),
                "{labels:?}"
            );
        }
    }
}
