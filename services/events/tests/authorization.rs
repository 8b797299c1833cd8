//! The broker enforces who publishes what (a real `nats-server` with the authorization msa
//! renders): each service relays its own events with its own credentials, and a `user.deleted`
//! forged with the product service's credentials is refused by the server and never stored.

use std::time::Duration;

use async_nats::jetstream;
use msa_events::broker::{self, Credential};
use msa_events::metrics::RelayMetrics;
use msa_events::relay;
use msa_events::settings::{Broker, RelaySettings};
use msa_events::stream::StreamSettings;
use msa_events::testing::{NatsServer, drained};
use msa_events::{Event, EventType};
use msa_service_kit::db::Database;
use msa_service_kit::testing::{TestBackend, fresh_database};
use prometheus_client::registry::Registry;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

fn login(credentials: &[Credential], service: &str) -> Credential {
    credentials
        .iter()
        .find(|c| c.service == service)
        .unwrap()
        .clone()
}

async fn client_as(nats: &NatsServer, credential: &Credential) -> jetstream::Context {
    let client = async_nats::ConnectOptions::with_user_and_password(
        credential.user.clone(),
        credential.password.clone(),
    )
    .custom_inbox_prefix(broker::inbox_prefix(&credential.service))
    .request_timeout(Some(Duration::from_secs(2)))
    .connect(nats.url())
    .await
    .expect("connect with a service's credentials");
    jetstream::new(client)
}

#[tokio::test]
async fn only_a_service_speaks_for_itself() {
    let credentials = broker::credentials("test");
    let nats = NatsServer::start_with(&broker::authorization("test", &credentials)).await;
    let user = login(&credentials, "user");
    let db = Database::connect(
        &fresh_database(TestBackend::Sqlite, "user").await,
        &MIGRATOR,
    )
    .await
    .unwrap();
    let settings = RelaySettings {
        service: "user",
        app: "test".into(),
        broker: Some(Broker {
            url: nats.url(),
            credentials: Some((user.user.clone(), user.password.clone())),
        }),
        stream: StreamSettings {
            max_bytes: 16 << 20,
            max_age: Duration::from_secs(3600),
            replicas: 1,
            duplicate_window: Duration::from_secs(900),
        },
        retention: Duration::from_secs(3600),
        lease: Duration::from_secs(5),
        poll: Duration::from_millis(50),
        batch: 16,
    };
    let _relay = relay::spawn(
        db.clone(),
        settings,
        RelayMetrics::register(&mut Registry::default()),
    );
    let mut tx = db.begin_write().await.unwrap();
    msa_events::append(&mut tx, &Event::user_deleted("u1"))
        .await
        .unwrap();
    msa_events::commit(tx).await.unwrap();
    drained(&db.pool, Duration::from_secs(30)).await;

    // The product service's credentials cannot publish a user event, touch the user stream, or
    // read another service's replies.
    let product = client_as(&nats, &login(&credentials, "product")).await;
    let forged = product
        .publish(EventType::UserDeleted.subject("test"), "{}".into())
        .await;
    let refused = match forged {
        Err(_) => true,
        Ok(ack) => ack.await.is_err(),
    };
    assert!(refused, "a forged user.deleted was acknowledged");
    assert!(
        product.get_stream("msa-test-user").await.is_err(),
        "the product service read the user stream's state"
    );
    // Its own subjects work.
    product
        .create_or_update_stream(msa_events::stream::config(
            "test",
            "product",
            &StreamSettings {
                max_bytes: 16 << 20,
                max_age: Duration::from_secs(3600),
                replicas: 1,
                duplicate_window: Duration::from_secs(900),
            },
        ))
        .await
        .expect("the product service manages its own stream");
    product
        .publish(EventType::ProductCreated.subject("test"), "{}".into())
        .await
        .unwrap()
        .await
        .expect("the product service publishes its own events");

    // Wrong password: no connection at all.
    let mut stolen = login(&credentials, "user");
    stolen.password = broker::password();
    let wrong = async_nats::ConnectOptions::with_user_and_password(stolen.user, stolen.password)
        .connect(nats.url())
        .await;
    assert!(wrong.is_err(), "a wrong password connected");

    // Read back as the user service, which may read its own stream's state.
    let own = client_as(&nats, &user).await;
    let stored = own
        .get_stream("msa-test-user")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(
        stored, 1,
        "only the user service's own event is in its stream"
    );
}
