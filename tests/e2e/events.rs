//! The event broker the operator runs for the README's shop (`spec.events` as the manifest
//! has it), on kwok: its objects, the credentials made once, the services given the broker's
//! address and their own logins, `EventsReady`, the schema's refusals, and turning it off.

use k8s_openapi::api::core::v1::{Container, Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use msa_e2e::wait_until;

use crate::support::{Setup, WAIT, condition, shop_manifest};

fn env<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .as_deref()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: make e2e"]
async fn the_operator_runs_the_broker_and_each_service_publishes_as_itself() -> anyhow::Result<()> {
    let s = Setup::new("events").await?;
    let _operator = s.start_operator("events")?;
    s.apply_manifest(&shop_manifest()?)?;
    s.wait_ready("shop")?;
    let apps = s.apps();
    let events_ready = wait_until("msa/shop EventsReady=True", WAIT, || async {
        let app = apps.get("shop").await?;
        Ok(condition(&app, "EventsReady").filter(|c| c.status == "True"))
    })
    .await?;
    assert_eq!(events_ready.reason, "StreamsReady");

    // The broker: one server with its keeper, reached through its Service's address.
    let broker = s.stateful_sets().get("shop-events").await?;
    let pod = broker.spec.unwrap().template.spec.unwrap();
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["nats", "streams"]);
    let services = Api::<Service>::namespaced(s.admin.clone(), &s.ns);
    let address = services
        .get("shop-events")
        .await?
        .spec
        .and_then(|spec| spec.cluster_ip)
        .expect("the broker's Service has an address");
    let headless = services.get("shop-events-pods").await?.spec.unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));

    // The credentials: made once, a password per login (and the servers' routes), named with
    // the app's uid, deleted with the app.
    let uid = apps.get("shop").await?.uid().unwrap();
    let secret = Api::<Secret>::namespaced(s.admin.clone(), &s.ns)
        .get(&format!("shop-events-credentials-{}", &uid[..8]))
        .await?;
    let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["admin", "observer", "order", "product", "route", "user"]
    );
    assert!(
        secret
            .owner_references()
            .iter()
            .any(|o| o.kind == "MicroserviceApp" && o.controller == Some(true))
    );

    // Each service publishes to that address as itself, with its own password only.
    for component in ["user", "order", "product"] {
        let set = s.stateful_sets().get(&format!("shop-{component}")).await?;
        let pod = set.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(
            env(container, "MSA_NATS_URL"),
            Some(format!("nats://{address}:4222").as_str()),
            "{component}"
        );
        assert_eq!(
            env(container, "MSA_NATS_USER"),
            Some(format!("shop-{component}").as_str())
        );
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "events-credentials")
            .expect("the password volume");
        assert_eq!(volume.secret.unwrap().items.unwrap()[0].key, component);
    }
    let gateway = s.deployments().get("shop-gateway").await?;
    assert!(
        env(
            &gateway.spec.unwrap().template.spec.unwrap().containers[0],
            "MSA_NATS_URL"
        )
        .is_none(),
        "the gateway publishes nothing"
    );

    // What the schema refuses, it refuses with the reason.
    let out = s.cluster.kubectl(&[
        "patch",
        "msa/shop",
        "-n",
        &s.ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"events":{"replicas":2}}}"#,
    ]);
    assert!(
        !out.success && out.stderr.contains("spec.events.replicas must be 1 or 3"),
        "{}",
        out.stderr
    );

    // Off: the servers go, the services are rendered without a broker, the condition goes.
    s.patch_app("shop", "merge", r#"{"spec":{"events":{"enabled":false}}}"#)?;
    let sets = s.stateful_sets();
    wait_until("the broker's StatefulSet to go", WAIT, || async {
        Ok(sets.get_opt("shop-events").await?.is_none().then_some(()))
    })
    .await?;
    wait_until("the user service without a broker", WAIT, || async {
        let set = sets.get("shop-user").await?;
        let container = set.spec.unwrap().template.spec.unwrap().containers[0].clone();
        Ok(env(&container, "MSA_NATS_URL").is_none().then_some(()))
    })
    .await?;
    s.wait_ready("shop")?;
    wait_until("EventsReady to go", WAIT, || async {
        let app = apps.get("shop").await?;
        Ok(condition(&app, "EventsReady").is_none().then_some(()))
    })
    .await?;
    let claims = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(
        s.admin.clone(),
        &s.ns,
    )
    .list_metadata(&ListParams::default())
    .await?;
    assert!(
        claims
            .items
            .iter()
            .any(|c| c.name_any() == "data-shop-events-0"),
        "the broker's volume stays (spec.storage.whenDeleted: Retain)"
    );
    Ok(())
}
