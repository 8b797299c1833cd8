//! The broker enforces who publishes what (a real `nats-server` with the authorization msa
//! renders): each service relays its own events with its own credentials into a stream the
//! admin login made; a `user.deleted` forged with the product service's credentials is refused
//! by the server and never stored, whether published directly or through anything the server
//! would deliver itself (a stream's republish, a push consumer's delivery subject), which a
//! service may not set up.

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

/// Whether a `user.deleted` published with `client`'s login is refused (not acknowledged).
async fn forgery_refused(client: &jetstream::Context) -> bool {
    match client
        .publish(EventType::UserDeleted.subject("test"), "{}".into())
        .await
    {
        Err(_) => true,
        Ok(ack) => ack.await.is_err(),
    }
}

fn stream_settings() -> StreamSettings {
    StreamSettings {
        max_bytes: 16 << 20,
        max_age: Duration::from_secs(3600),
        replicas: 1,
        duplicate_window: Duration::from_secs(900),
    }
}

#[tokio::test]
async fn only_a_service_speaks_for_itself() {
    let credentials = broker::credentials("test");
    let nats = NatsServer::start_with(&broker::authorization("test", &credentials)).await;
    let admin = client_as(&nats, &login(&credentials, broker::ADMIN)).await;
    for service in broker::SERVICES {
        let made = msa_events::stream::ensure(
            &admin,
            msa_events::stream::config("test", service, &stream_settings()),
        )
        .await;
        assert_eq!(made, Ok(msa_events::stream::Ensured::Made));
    }
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
        stream: stream_settings(),
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
    assert!(
        forgery_refused(&product).await,
        "a forged user.deleted was acknowledged"
    );
    assert!(
        product.get_stream("msa-test-user").await.is_err(),
        "the product service read the user stream's state"
    );
    // Nor make the server deliver one for it: no stream update (a republish into the user
    // subjects), no consumer (a push delivery subject in them).
    let mut republishing = msa_events::stream::config("test", "product", &stream_settings());
    republishing.republish = Some(jetstream::stream::Republish {
        source: "msa.test.product.>".into(),
        destination: EventType::UserDeleted.subject("test"),
        headers_only: false,
    });
    assert!(
        product.update_stream(&republishing).await.is_err(),
        "a service changed its stream"
    );
    let own = product
        .get_stream("msa-test-product")
        .await
        .expect("its own stream's state");
    let pushed = own
        .create_consumer(jetstream::consumer::push::Config {
            deliver_subject: EventType::UserDeleted.subject("test"),
            ..Default::default()
        })
        .await;
    assert!(pushed.is_err(), "a service made a push consumer");
    // Its own events go through.
    product
        .publish(EventType::ProductCreated.subject("test"), "{}".into())
        .await
        .unwrap()
        .await
        .expect("the product service publishes its own events");
    // The observer reads, and makes nothing.
    let observer = client_as(&nats, &login(&credentials, broker::OBSERVER)).await;
    let user_stream = observer.get_stream("msa-test-user").await.unwrap();
    let first = user_stream
        .get_raw_message(1)
        .await
        .expect("the observer reads an event");
    assert!(String::from_utf8_lossy(&first.payload).contains("dev.msa.user.deleted.v1"));
    let observing = user_stream
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await;
    assert!(observing.is_err(), "the observer made a consumer");

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

/// The operator's broker configuration names each password as an environment variable (the
/// passwords stay in a Secret): the server resolves them and enforces the same permissions.
#[tokio::test]
async fn passwords_from_the_environment_are_resolved_and_enforced() {
    let credentials = broker::credentials("test");
    let nats = NatsServer::start_as_operator_configures("test", &credentials).await;
    let admin = client_as(&nats, &login(&credentials, broker::ADMIN)).await;
    let made = msa_events::keeper::ensure_all(&admin, "test", &stream_settings())
        .await
        .expect("the admin makes every stream");
    assert_eq!(made.len(), 3);
    let product = client_as(&nats, &login(&credentials, "product")).await;
    product
        .publish(EventType::ProductCreated.subject("test"), "{}".into())
        .await
        .unwrap()
        .await
        .expect("the product service publishes its own events");
    assert!(
        forgery_refused(&product).await,
        "a forged user.deleted was acknowledged"
    );
    let messages = |name: &'static str| {
        let admin = admin.clone();
        async move {
            admin
                .get_stream(name)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .messages
        }
    };
    assert_eq!(messages("msa-test-user").await, 0);
    assert_eq!(messages("msa-test-product").await, 1);
    // The variable's value is the password, nothing else is.
    let literal = async_nats::ConnectOptions::with_user_and_password(
        "test-user".into(),
        "$MSA_NATS_PASSWORD_USER".into(),
    )
    .connect(nats.url())
    .await;
    assert!(literal.is_err(), "the variable's name worked as a password");
}
