//! `msa-streams`' work (the stream keeper beside an operator-run broker): it makes every stream
//! of the app as the admin login and its readiness answers 200 only from then on.

use std::time::{Duration, Instant};

use msa_events::broker;
use msa_events::keeper::{self, Streams};
use msa_events::stream::StreamSettings;
use msa_events::testing::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn probe(addr: std::net::SocketAddr) -> String {
    let mut connection = tokio::net::TcpStream::connect(addr).await.unwrap();
    connection
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: k\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        connection.read_to_string(&mut answer),
    )
    .await
    .expect("the probe answers within 5 s")
    .unwrap();
    answer
}

#[tokio::test]
async fn the_keeper_makes_every_stream_and_only_then_is_ready() {
    let credentials = broker::credentials("shop");
    let nats = NatsServer::start_as_operator_configures("shop", &credentials).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Streams::default();
    tokio::spawn(keeper::serve_readiness(listener, streams.clone()));
    assert!(
        probe(addr).await.starts_with("HTTP/1.1 503"),
        "ready before any stream"
    );

    let admin = credentials
        .iter()
        .find(|c| c.service == broker::ADMIN)
        .unwrap();
    let client = async_nats::ConnectOptions::with_user_and_password(
        admin.user.clone(),
        admin.password.clone(),
    )
    .custom_inbox_prefix(broker::inbox_prefix(broker::ADMIN))
    .connect(nats.url())
    .await
    .unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let settings = StreamSettings {
        max_bytes: 32 << 20,
        ..StreamSettings::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let keeping = tokio::spawn(keeper::keep(
        jetstream.clone(),
        "shop".into(),
        settings,
        streams.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe(addr).await.starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "not ready after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for service in broker::SERVICES {
        let info = jetstream
            .get_stream(msa_events::stream::name("shop", service))
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .clone();
        assert_eq!(info.max_bytes, 32 << 20, "{service}");
        assert_eq!(info.subjects, [format!("msa.shop.{service}.>")]);
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), keeping)
        .await
        .expect("the keeper stops when told")
        .unwrap();
}
