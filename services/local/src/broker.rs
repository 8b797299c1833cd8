//! The event broker of a local run: a `nats-server` with JetStream, its data under
//! `<data>/nats/` (kept between runs, like the SQLite files), `sync_interval: always`, and a
//! login per service that may publish only that service's events (plus a read-only observer
//! for `msa-local events`). Passwords are made once and kept, 0600, beside the data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use msa_events::broker::{self, ADMIN, Credential, LOGINS};

use crate::identity::write_atomically;

/// The app name of a local run: subjects `msa.local.<service>.…`, streams `msa-local-<service>`.
pub const APP: &str = "local";

pub fn folder(data_dir: &Path) -> PathBuf {
    data_dir.join("nats")
}

pub fn config_file(data_dir: &Path) -> PathBuf {
    folder(data_dir).join("nats.conf")
}

pub fn password_file(data_dir: &Path, login: &str) -> PathBuf {
    folder(data_dir).join("credentials").join(login)
}

/// Where the running broker listens, for `msa-local events`.
pub fn url_file(data_dir: &Path) -> PathBuf {
    folder(data_dir).join("url")
}

/// The `nats-server` to run: `--nats-server`, else one beside the components, else one on the
/// `PATH`; `None` when there is none (the run goes on without publishing events).
pub fn find_binary(given: Option<&Path>, bin_dir: &Path) -> Option<PathBuf> {
    if let Some(given) = given {
        return Some(given.to_path_buf());
    }
    let beside = bin_dir.join("nats-server");
    if beside.is_file() {
        return Some(beside);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    })
}

/// The services', the observer's and the admin's logins, made on the first run and read on the
/// next.
pub fn credentials(data_dir: &Path) -> anyhow::Result<Vec<Credential>> {
    LOGINS
        .iter()
        .map(|login| {
            let file = password_file(data_dir, login);
            let password = match std::fs::read_to_string(&file) {
                Ok(password) => password.trim().to_owned(),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    let password = broker::password();
                    write_atomically(&file, password.as_bytes(), true)?;
                    password
                }
                Err(error) => {
                    return Err(error).with_context(|| format!("cannot read {}", file.display()));
                }
            };
            Ok(Credential {
                service: (*login).to_owned(),
                user: broker::user(APP, login),
                password,
            })
        })
        .collect()
}

/// The server's configuration: on `listen` (port 0: one the OS chooses, written back once
/// known so a restarted broker comes back on the same address).
pub fn config(data_dir: &Path, listen: SocketAddr, credentials: &[Credential]) -> String {
    let port = match listen.port() {
        0 => "-1".to_owned(),
        port => port.to_string(),
    };
    format!(
        "# Written by msa-local up; rewritten at every start.\n\
         host: \"{}\"\nport: {port}\n\
         jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n  max_memory_store: 64MB\n  max_file_store: 10GB\n}}\n{}",
        listen.ip(),
        folder(data_dir).join("jetstream").display(),
        broker::authorization(APP, credentials)
    )
}

/// A client of the broker at `url` as `login` (its password from the data folder).
pub async fn connect(
    data_dir: &Path,
    url: &str,
    login: &str,
) -> anyhow::Result<async_nats::jetstream::Context> {
    let file = password_file(data_dir, login);
    let password = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let client = async_nats::ConnectOptions::with_user_and_password(
        broker::user(APP, login),
        password.trim().to_owned(),
    )
    .custom_inbox_prefix(broker::inbox_prefix(login))
    .connection_timeout(std::time::Duration::from_secs(5))
    .request_timeout(Some(std::time::Duration::from_secs(5)))
    .connect(url)
    .await
    .with_context(|| format!("cannot connect to the run's broker at {url}"))?;
    Ok(async_nats::jetstream::new(client))
}

/// Makes the services' streams (as the admin login: the services may not), before they start.
pub async fn make_streams(data_dir: &Path, url: &str) -> anyhow::Result<()> {
    let admin = connect(data_dir, url, ADMIN).await?;
    let settings = msa_events::stream::StreamSettings::default();
    // JetStream may still be starting for a moment after the server listens.
    let mut tries = 0;
    while let Err(error) = msa_events::keeper::ensure_all(&admin, APP, &settings).await {
        tries += 1;
        if tries == 20 {
            anyhow::bail!("cannot make the streams: {error}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    Ok(())
}

/// The flags that connect service `service` to the broker at `url`.
pub fn service_args(data_dir: &Path, url: &str, service: &str) -> Vec<String> {
    vec![
        "--nats-url".to_owned(),
        url.to_owned(),
        "--nats-user".to_owned(),
        broker::user(APP, service),
        "--nats-password-file".to_owned(),
        password_file(data_dir, service).display().to_string(),
        "--app".to_owned(),
        APP.to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_syncs_always_and_gives_each_service_its_login() {
        let data = Path::new("/tmp/data");
        let credentials = vec![Credential {
            service: "user".into(),
            user: "local-user".into(),
            password: "p".repeat(32),
        }];
        let text = config(data, "127.0.0.1:0".parse().unwrap(), &credentials);
        assert!(text.contains("port: -1"));
        assert!(text.contains("sync_interval: always"));
        assert!(text.contains("store_dir: \"/tmp/data/nats/jetstream\""));
        assert!(text.contains("user: \"local-user\""));
        let fixed = config(data, "127.0.0.1:4222".parse().unwrap(), &credentials);
        assert!(fixed.contains("port: 4222"));
        let args = service_args(data, "nats://127.0.0.1:4222", "order");
        assert_eq!(args[3], "local-order");
        assert_eq!(args[5], "/tmp/data/nats/credentials/order");
    }

    #[test]
    fn logins_are_made_once_and_kept() {
        let data = std::env::temp_dir().join(format!("msa-local-broker-{}", uuid::Uuid::new_v4()));
        let first = credentials(&data).unwrap();
        let again = credentials(&data).unwrap();
        assert_eq!(first, again);
        assert_eq!(first.len(), 5);
        let _ = std::fs::remove_dir_all(&data);
    }
}
