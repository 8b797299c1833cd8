//! Configuration per component (issue 32, part 2): `config` becomes an immutable ConfigMap
//! named after its content, and a change to it or to a ConfigMap named in `configFrom` rolls
//! the pods reading it; the ConfigMaps rolled away from are deleted.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use msa_e2e::wait_until;

use crate::support::{Setup, WAIT};

const SELECTOR: &str = "msa.dev/component-config=true,app.kubernetes.io/instance=conf";

/// The gateway's pod-template hashes (of the pod spec, and of what it reads through
/// `configFrom`) and the ConfigMaps its container reads.
fn gateway_template(deployment: &Deployment) -> (String, Vec<String>) {
    let template = &deployment.spec.as_ref().expect("a spec").template;
    let annotation = |name: &str| {
        template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(name))
            .cloned()
            .unwrap_or_default()
    };
    let hash = format!(
        "{}/{}",
        annotation("msa.dev/config-hash"),
        annotation("msa.dev/config-sources-hash")
    );
    let container = &template.spec.as_ref().expect("a pod spec").containers[0];
    let mut read: Vec<String> = container
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.value_from.as_ref()?.config_map_key_ref.as_ref())
        .map(|r| r.name.clone())
        .chain(
            container
                .env_from
                .iter()
                .flatten()
                .filter_map(|e| e.config_map_ref.as_ref().map(|r| r.name.clone())),
        )
        .collect();
    read.sort();
    read.dedup();
    (hash, read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: make e2e"]
async fn config_and_referenced_config_maps_roll_the_pods_and_unused_ones_go() -> anyhow::Result<()>
{
    let s = Setup::new("config").await?;
    let _operator = s.start_operator("config")?;
    s.apply_manifest(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: gateway-settings}\ndata: {MSA_CORS_ORIGINS: 'https://a.example'}\n",
    )?;
    s.apply_manifest(
        r#"apiVersion: msa.dev/v1alpha1
kind: MicroserviceApp
metadata: {name: conf}
spec:
  components:
    gateway:
      config: {MSA_RATE_LIMIT_PER_SECOND: "50"}
      configFrom: [{configMap: gateway-settings}]
"#,
    )?;
    s.wait_ready("conf")?;
    let deployments = s.deployments();
    let config_maps = Api::<ConfigMap>::namespaced(s.admin.clone(), &s.ns);
    let (first_hash, read) = gateway_template(&deployments.get("conf-gateway").await?);
    let [own, _] = &read[..] else {
        panic!("the gateway reads its own config and gateway-settings: {read:?}")
    };
    assert!(own.starts_with("conf-gateway-config-"), "{own}");
    assert!(read.contains(&"gateway-settings".to_owned()), "{read:?}");
    let stored = config_maps.get(own).await?;
    assert_eq!(stored.immutable, Some(true));
    assert_eq!(stored.data.unwrap()["MSA_RATE_LIMIT_PER_SECOND"], "50");

    // Editing the referenced ConfigMap rolls the gateway: a new template, a new ReplicaSet.
    let sets_before = s
        .replica_set_count("app.kubernetes.io/instance=conf,app.kubernetes.io/name=gateway")
        .await?;
    s.cluster
        .kubectl(&[
            "patch",
            "configmap",
            "gateway-settings",
            "-n",
            &s.ns,
            "--type=merge",
            "-p",
            r#"{"data":{"MSA_CORS_ORIGINS":"https://b.example"}}"#,
        ])
        .ok()?;
    let second_hash = wait_until("the gateway's template to change", WAIT, || async {
        let (hash, _) = gateway_template(&deployments.get("conf-gateway").await?);
        Ok((hash != first_hash).then_some(hash))
    })
    .await?;
    wait_until("a new ReplicaSet for the gateway", WAIT, || async {
        let sets = s
            .replica_set_count("app.kubernetes.io/instance=conf,app.kubernetes.io/name=gateway")
            .await?;
        Ok((sets > sets_before).then_some(()))
    })
    .await?;
    s.wait_ready("conf")?;

    // Editing `config` makes a new ConfigMap, rolls the pods, and the old one goes once the
    // rollout is over.
    s.patch_app(
        "conf",
        "merge",
        r#"{"spec":{"components":{"gateway":{"config":{"MSA_RATE_LIMIT_PER_SECOND":"60"}}}}}"#,
    )?;
    let (third_hash, read) = wait_until("the gateway to read a new config", WAIT, || async {
        let (hash, read) = gateway_template(&deployments.get("conf-gateway").await?);
        Ok((!read.contains(own)).then_some((hash, read)))
    })
    .await?;
    assert_ne!(third_hash, second_hash);
    let new_own = read
        .iter()
        .find(|name| name.starts_with("conf-gateway-config-"))
        .expect("its own config")
        .clone();
    s.wait_ready("conf")?;
    let left = wait_until("only the ConfigMap in use to remain", WAIT, || async {
        let names: Vec<String> = config_maps
            .list_metadata(&ListParams::default().labels(SELECTOR))
            .await?
            .items
            .iter()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .map(|c| c.name_any())
            .collect();
        Ok((names == [new_own.clone()]).then_some(names))
    })
    .await?;
    assert_eq!(
        config_maps.get(&new_own).await?.data.unwrap()["MSA_RATE_LIMIT_PER_SECOND"],
        "60"
    );
    eprintln!("config ConfigMaps left: {left:?}");

    // Removing `config` leaves none.
    s.patch_app(
        "conf",
        "merge",
        r#"{"spec":{"components":{"gateway":{"config":null}}}}"#,
    )?;
    s.wait_ready("conf")?;
    wait_until("no config ConfigMap once unused", WAIT, || async {
        let left = config_maps
            .list_metadata(&ListParams::default().labels(SELECTOR))
            .await?;
        Ok(left
            .items
            .iter()
            .all(|c| c.metadata.deletion_timestamp.is_some())
            .then_some(()))
    })
    .await?;
    Ok(())
}
