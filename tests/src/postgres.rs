//! The test cluster's PostgreSQL (`cluster.sh` starts Debian's on 127.0.0.1 and on the node link
//! 198.18.250.1): a database and a role per stateful service of one app, and the Secret
//! `spec.database.secretRef` names. The test talks to it as the superuser over loopback with
//! `psql`; pods log in with their role's password over the node link.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, ensure};

use crate::Cluster;

/// The stateful services, which each get a database.
pub const SERVICES: [&str; 3] = ["user", "order", "product"];

/// Where the cluster's PostgreSQL is, from `cluster.sh`'s env file.
#[derive(Clone, Debug)]
pub struct Postgres {
    /// Superuser URL on 127.0.0.1 (trust, loopback only).
    admin: String,
    /// `host:port` as pods reach it.
    pod_address: String,
}

impl Postgres {
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| {
            std::env::var(name).with_context(|| {
                format!("{name} is not set: the cluster runs PostgreSQL only with its real node")
            })
        };
        let admin = var("MSA_E2E_POSTGRES_URL")?;
        ensure!(
            admin.contains("@127.0.0.1:"),
            "the admin URL must be loopback: {admin}"
        );
        let pod_address = var("MSA_E2E_POSTGRES_POD_ADDRESS")?;
        let host = pod_address.split(':').next().unwrap_or_default();
        crate::node::guarded(host.parse()?)?;
        Ok(Self { admin, pod_address })
    }

    /// The admin's URL of `database` (on loopback).
    pub fn url(&self, database: &str) -> String {
        let base = self
            .admin
            .rsplit_once('/')
            .map_or(self.admin.as_str(), |(b, _)| b);
        format!("{base}/{database}")
    }

    /// Runs each statement on `database` (separately: CREATE DATABASE refuses a transaction)
    /// and returns what the last printed.
    pub fn psql(&self, database: &str, statements: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new("psql");
        command.args([
            "--no-psqlrc",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            &self.url(database),
        ]);
        for statement in statements {
            command.args(["-c", statement]);
        }
        let output = command.output().context("run psql")?;
        ensure!(
            output.status.success(),
            "psql on {database}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// A database and a login role per stateful service for the app in `namespace`, and the
    /// Secret `secret` holding their URLs under the keys `user`, `order`, `product`. Returns
    /// service → database name.
    pub fn provision(
        &self,
        cluster: &Cluster,
        namespace: &str,
        secret: &str,
    ) -> anyhow::Result<BTreeMap<&'static str, String>> {
        let mut databases = BTreeMap::new();
        let mut literals = Vec::new();
        for service in SERVICES {
            // Role names may not start with `pg_` (reserved); namespaces may.
            let name = format!("msa_{}_{service}", namespace.replace('-', "_"));
            let password = crate::random_hex();
            self.psql(
                "postgres",
                &[
                    &format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"),
                    &format!("CREATE DATABASE {name} OWNER {name}"),
                ],
            )?;
            literals.push(format!(
                "--from-literal={service}=postgres://{name}:{password}@{}/{name}",
                self.pod_address
            ));
            databases.insert(service, name);
        }
        let mut args = vec!["create", "secret", "generic", secret, "-n", namespace];
        args.extend(literals.iter().map(String::as_str));
        cluster.kubectl(&args).ok()?;
        Ok(databases)
    }

    /// (migrations recorded as applied, distinct versions among them) in a database.
    pub fn migrations(&self, database: &str) -> anyhow::Result<(i64, i64)> {
        let out = self.psql(
            database,
            &["SELECT COUNT(*) || ' ' || COUNT(DISTINCT version) FROM _sqlx_migrations WHERE success"],
        )?;
        let (all, distinct) = out.split_once(' ').context("two counts")?;
        Ok((all.parse()?, distinct.parse()?))
    }
}
