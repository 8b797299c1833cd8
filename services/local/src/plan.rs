//! Which processes a local run starts, on which loopback ports, with which flags — decided
//! without starting anything, so it is tested on its own.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::identity::{self, Issuer};

/// One service of the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    User,
    Order,
    Product,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::User, Service::Order, Service::Product];

    pub fn name(self) -> &'static str {
        match self {
            Service::User => "user",
            Service::Order => "order",
            Service::Product => "product",
        }
    }
}

/// How many replicas of each service to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replicas {
    pub user: u16,
    pub order: u16,
    pub product: u16,
}

impl Replicas {
    fn of(&self, service: Service) -> u16 {
        match service {
            Service::User => self.user,
            Service::Order => self.order,
            Service::Product => self.product,
        }
    }
}

/// A process to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// `user-0`, …, `gateway`: the instance name it reports and its log file's name.
    pub instance: String,
    /// The service it is a replica of (`None`: the gateway).
    pub service: Option<Service>,
    pub binary: &'static str,
    /// Where it listens: the planned address, or port 0 (the OS chooses) until the address it
    /// bound is known ([`Plan::bound`]).
    pub listen: SocketAddr,
    /// Where `/metrics`, `/info` and the gateway's `/debug/endpoints` are served when not on
    /// `listen` (`up --auth`: on [`ADMIN_HOST`], as a pod keeps them off its Service; the same
    /// port as `listen` when ports are given, else one the OS chooses, learnt when bound).
    pub admin: Option<SocketAddr>,
    /// Its own flags; [`Plan::command_args`] adds the addresses of the services it calls.
    pub args: Vec<String>,
    /// Flags that name every replica of a service (`--product-url`, `--upstream-user`, …).
    peers: Vec<(&'static str, Service)>,
    pub launch: Launch,
}

/// How a process is run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launch {
    /// An msa component: `bin_dir/<binary> --listen … <args>`, ready when `/readyz` says so.
    Component,
    /// The event broker: this `nats-server` with `args` (its configuration names the address),
    /// ready once it listens.
    Broker(PathBuf),
}

impl Process {
    /// The event broker, configured by `config` to listen on `listen`.
    pub fn broker(binary: PathBuf, listen: SocketAddr, config: &Path) -> Process {
        Process {
            instance: "events".to_owned(),
            service: None,
            binary: "nats-server",
            listen,
            admin: None,
            args: vec!["-c".to_owned(), config.display().to_string()],
            peers: Vec::new(),
            launch: Launch::Broker(binary),
        }
    }
}

/// The file listing the order service's addresses, which the product service follows
/// (`--order-url file:…`): the two call each other, so whichever starts first cannot be given
/// the other's addresses on its command line; the order service starts second and its
/// addresses are written as its replicas bind.
pub fn order_addresses(data_dir: &Path) -> PathBuf {
    data_dir.join("peers").join("order")
}

/// With `up --auth`, the operational routes listen on this address: the API's address
/// (127.0.0.1) then serves no `/metrics` or `/debug/endpoints` to the callers the tokens keep
/// out.
pub const ADMIN_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Who may do what in a local run. Service identities are always on (the reservation routes
/// take only the order service); users' tokens and the rate limit on request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// Require users' tokens (`up --auth`).
    pub auth: bool,
    /// Requests per second per caller at the gateway.
    pub rate_limit: Option<u32>,
}

/// Everything a local run starts, in start order (services before their callers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub processes: Vec<Process>,
    pub data_dir: PathBuf,
}

/// The gateway on `port`; service replicas on the ports after it (users, then orders, then
/// products); replicas of a service share its SQLite file under `data_dir`. Port 0 puts every
/// process on a port the OS chooses when it binds.
pub fn plan(
    port: u16,
    replicas: Replicas,
    data_dir: &Path,
    security: Security,
) -> Result<Plan, String> {
    let total: u16 = Service::ALL.iter().map(|s| replicas.of(*s)).sum();
    if port.checked_add(total).is_none() {
        return Err(format!(
            "--port {port} leaves no room for {total} services above it"
        ));
    }
    let at = |offset: u16| {
        SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            if port == 0 { 0 } else { port + offset },
        ))
    };
    let mut next = 1;
    let mut addresses = Vec::new();
    for service in Service::ALL {
        let mut list = Vec::new();
        for _ in 0..replicas.of(service) {
            list.push(at(next));
            next += 1;
        }
        addresses.push((service, list));
    }
    let data = data_dir.display().to_string();
    let path = |p: PathBuf| p.display().to_string();
    let users = Issuer::users(data_dir);
    let auth: Vec<String> = if security.auth {
        vec![
            "--auth-issuer".into(),
            identity::USER_ISSUER.into(),
            "--auth-audiences".into(),
            identity::USER_AUDIENCE.into(),
            "--auth-jwks-file".into(),
            path(users.jwks),
        ]
    } else {
        vec![]
    };
    let admin = |listen: SocketAddr| {
        security
            .auth
            .then(|| SocketAddr::from((ADMIN_HOST, listen.port())))
    };
    let mut processes = Vec::new();
    // Order calls user and product, so those start first.
    for service in [Service::User, Service::Product, Service::Order] {
        let listed = &addresses
            .iter()
            .find(|(s, _)| *s == service)
            .expect("every service")
            .1;
        for (i, listen) in listed.iter().enumerate() {
            let mut args = vec!["--data-dir".to_owned(), data.clone()];
            args.extend(auth.iter().cloned());
            let mut peers = Vec::new();
            // Order and product call each other's internal routes, each with its own token.
            let trust = |audience: &str, caller: &str| {
                [
                    "--service-issuer".to_owned(),
                    identity::SERVICE_ISSUER.to_owned(),
                    "--service-jwks-file".to_owned(),
                    path(Issuer::services(data_dir).jwks),
                    "--service-audience".to_owned(),
                    audience.to_owned(),
                    "--service-callers".to_owned(),
                    caller.to_owned(),
                ]
            };
            if service == Service::Order {
                peers = vec![
                    ("--user-url", Service::User),
                    ("--product-url", Service::Product),
                ];
                args.extend([
                    "--service-token-file".to_owned(),
                    path(identity::order_token(data_dir)),
                ]);
                args.extend(trust(identity::ORDER_AUDIENCE, identity::PRODUCT_SUBJECT));
            }
            if service == Service::Product {
                args.extend(trust(identity::PRODUCT_AUDIENCE, identity::ORDER_SUBJECT));
                // The order service starts after this one, so its addresses come in a file
                // written once it listens.
                args.extend([
                    "--service-token-file".to_owned(),
                    path(identity::product_token(data_dir)),
                    "--order-url".to_owned(),
                    format!("file:{}", path(order_addresses(data_dir))),
                ]);
            }
            processes.push(Process {
                instance: format!("{}-{i}", service.name()),
                service: Some(service),
                binary: match service {
                    Service::User => "msa-user",
                    Service::Order => "msa-order",
                    Service::Product => "msa-product",
                },
                listen: *listen,
                admin: admin(*listen),
                args,
                peers,
                launch: Launch::Component,
            });
        }
    }
    let mut args = vec![
        // Local runs stop at once on Ctrl-C; there is no load balancer to tell.
        "--drain-delay-seconds".to_owned(),
        "0".to_owned(),
    ];
    if security.auth {
        args.extend(auth);
        args.extend([
            "--auth-public-routes".to_owned(),
            identity::PUBLIC_ROUTES.to_owned(),
        ]);
    }
    if let Some(rate) = security.rate_limit {
        args.extend(["--rate-limit-per-second".to_owned(), rate.to_string()]);
    }
    processes.push(Process {
        instance: "gateway".to_owned(),
        service: None,
        binary: "msa-gateway",
        listen: at(0),
        admin: admin(at(0)),
        args,
        peers: vec![
            ("--upstream-user", Service::User),
            ("--upstream-order", Service::Order),
            ("--upstream-product", Service::Product),
        ],
        launch: Launch::Component,
    });
    Ok(Plan {
        processes,
        data_dir: data_dir.to_path_buf(),
    })
}

impl Plan {
    /// The gateway's address (port 0 until it is bound).
    pub fn gateway(&self) -> SocketAddr {
        self.processes
            .iter()
            .find(|p| p.service.is_none())
            .map(|p| p.listen)
            .expect("a plan has a gateway")
    }

    /// Where the replicas of `service` that have bound listen.
    pub fn bound_addresses_of(&self, service: Service) -> Vec<SocketAddr> {
        self.processes
            .iter()
            .filter(|p| p.service == Some(service) && p.listen.port() != 0)
            .map(|p| p.listen)
            .collect()
    }

    /// Records where process `index` listens, once it has bound.
    pub fn bound(&mut self, index: usize, address: SocketAddr, admin: Option<SocketAddr>) {
        self.processes[index].listen = address;
        self.processes[index].admin = admin;
    }

    /// Where the gateway serves `/debug/endpoints`.
    pub fn gateway_admin(&self) -> SocketAddr {
        self.processes
            .iter()
            .find(|p| p.service.is_none())
            .map(|p| p.admin.unwrap_or(p.listen))
            .expect("a plan has a gateway")
    }

    /// The flags process `index` starts with: its own, then the addresses of every replica of
    /// each service it calls. Those must be known by then (the plan starts services before
    /// their callers).
    pub fn command_args(&self, index: usize) -> Result<Vec<String>, String> {
        let process = &self.processes[index];
        let mut args = process.args.clone();
        for (flag, service) in &process.peers {
            let replicas: Vec<&Process> = self
                .processes
                .iter()
                .filter(|p| p.service == Some(*service))
                .collect();
            if let Some(unknown) = replicas.iter().find(|p| p.listen.port() == 0) {
                return Err(format!(
                    "{}'s address is not known yet, and {} needs it: start {} first",
                    unknown.instance, process.instance, unknown.instance
                ));
            }
            let list: Vec<String> = replicas.iter().map(|p| p.listen.to_string()).collect();
            args.extend([(*flag).to_owned(), list.join(",")]);
        }
        Ok(args)
    }

    /// A Prometheus configuration that scrapes every process of the run (`msa-local up` writes
    /// it as `prometheus.yml` in the data folder), each target labelled with its component and
    /// instance, as a pod's would be.
    pub fn scrape_config(&self) -> String {
        let mut out = String::from(
            "# Written by msa-local up: prometheus --config.file=<this file> scrapes the whole run.\n\
             global:\n  scrape_interval: 5s\nscrape_configs:\n  - job_name: msa\n    static_configs:\n",
        );
        for process in &self.processes {
            let component = process
                .instance
                .rsplit_once('-')
                .map_or(process.instance.as_str(), |(name, _)| name);
            out.push_str(&format!(
                "      - targets: ['{}']\n        labels: {{component: {component}, pod: {}}}\n",
                process.admin.unwrap_or(process.listen),
                process.instance
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_auth_the_operational_routes_leave_the_apis_address() {
        let replicas = Replicas {
            user: 1,
            order: 1,
            product: 2,
        };
        let data = Path::new("/tmp/d");
        let open = plan(8080, replicas, data, Security::default()).unwrap();
        assert!(open.processes.iter().all(|p| p.admin.is_none()));
        let auth = Security {
            auth: true,
            rate_limit: None,
        };
        let guarded = plan(8080, replicas, data, auth).unwrap();
        for process in &guarded.processes {
            assert_eq!(
                process.admin,
                Some(SocketAddr::from((ADMIN_HOST, process.listen.port()))),
                "{}",
                process.instance
            );
        }
        assert_eq!(guarded.gateway_admin(), "127.0.0.2:8080".parse().unwrap());
        let scraped = guarded.scrape_config();
        assert!(
            scraped.contains("127.0.0.2:8080") && !scraped.contains("127.0.0.1:"),
            "{scraped}"
        );
        // Port 0 stays port 0 until bound.
        let chosen = plan(0, replicas, data, auth).unwrap();
        assert!(
            chosen
                .processes
                .iter()
                .all(|p| p.admin == Some(SocketAddr::from((ADMIN_HOST, 0))))
        );
    }

    #[test]
    fn services_start_before_their_callers_and_replicas_share_a_list() {
        let replicas = Replicas {
            user: 1,
            order: 1,
            product: 2,
        };
        let planned = plan(8080, replicas, Path::new("/tmp/d"), Security::default()).unwrap();
        let order: Vec<(&str, u16)> = planned
            .processes
            .iter()
            .map(|p| (p.instance.as_str(), p.listen.port()))
            .collect();
        assert_eq!(
            order,
            [
                ("user-0", 8081),
                ("product-0", 8083),
                ("product-1", 8084),
                ("order-0", 8082),
                ("gateway", 8080)
            ]
        );
        assert_eq!(planned.gateway().port(), 8080);
        let gateway = planned.command_args(4).unwrap();
        assert!(
            gateway
                .windows(2)
                .any(|w| w == ["--upstream-product", "127.0.0.1:8083,127.0.0.1:8084"])
        );
        let order = planned.command_args(3).unwrap();
        assert!(
            order
                .windows(2)
                .any(|w| w == ["--product-url", "127.0.0.1:8083,127.0.0.1:8084"])
        );
        assert!(order.windows(2).any(|w| w == ["--data-dir", "/tmp/d"]));
        assert!(
            plan(65534, replicas, Path::new("d"), Security::default())
                .unwrap_err()
                .contains("--port")
        );
    }

    #[test]
    fn on_port_0_callers_are_given_the_addresses_their_services_bound() {
        let replicas = Replicas {
            user: 1,
            order: 1,
            product: 2,
        };
        let mut planned = plan(0, replicas, Path::new("/d"), Security::default()).unwrap();
        assert!(planned.processes.iter().all(|p| p.listen.port() == 0));
        // Start order: user-0, product-0, product-1, order-0, gateway.
        let refused = planned.command_args(3).unwrap_err();
        assert!(
            refused.contains("user-0's address is not known"),
            "{refused}"
        );
        assert!(
            planned.command_args(0).is_ok(),
            "the user service calls no one"
        );
        for (index, port) in [(0, 40001), (1, 40003), (2, 40005)] {
            planned.bound(index, SocketAddr::from((Ipv4Addr::LOCALHOST, port)), None);
        }
        let order = planned.command_args(3).unwrap();
        assert!(
            order
                .windows(2)
                .any(|w| w == ["--product-url", "127.0.0.1:40003,127.0.0.1:40005"]),
            "{order:?}"
        );
        assert!(
            order
                .windows(2)
                .any(|w| w == ["--user-url", "127.0.0.1:40001"])
        );
        let refused = planned.command_args(4).unwrap_err();
        assert!(refused.contains("order-0"), "{refused}");
        planned.bound(3, SocketAddr::from((Ipv4Addr::LOCALHOST, 40007)), None);
        let gateway = planned.command_args(4).unwrap();
        assert!(
            gateway
                .windows(2)
                .any(|w| w == ["--upstream-order", "127.0.0.1:40007"])
        );
        assert_eq!(planned.gateway().port(), 0, "not bound yet");
        planned.bound(4, SocketAddr::from((Ipv4Addr::LOCALHOST, 40009)), None);
        assert_eq!(planned.gateway().port(), 40009);
    }

    #[test]
    fn the_scrape_config_lists_every_process_with_its_component() {
        let replicas = Replicas {
            user: 1,
            order: 1,
            product: 2,
        };
        let config = plan(8080, replicas, Path::new("/d"), Security::default())
            .unwrap()
            .scrape_config();
        assert!(config.contains("- targets: ['127.0.0.1:8084']\n        labels: {component: product, pod: product-1}"), "{config}");
        assert!(
            config.contains(
                "- targets: ['127.0.0.1:8080']\n        labels: {component: gateway, pod: gateway}"
            ),
            "{config}"
        );
        assert_eq!(config.matches("- targets").count(), 5);
    }

    #[test]
    fn reservations_take_the_order_service_only_and_auth_reaches_every_component() {
        let replicas = Replicas {
            user: 1,
            order: 1,
            product: 1,
        };
        let has =
            |p: &Process, flag: &str, value: &str| p.args.windows(2).any(|w| w == [flag, value]);
        let open = plan(8080, replicas, Path::new("/d"), Security::default()).unwrap();
        let product = &open.processes[1];
        let order = &open.processes[2];
        assert!(has(product, "--service-callers", identity::ORDER_SUBJECT));
        assert!(has(
            order,
            "--service-token-file",
            "/d/identity/order.token"
        ));
        // The product service asks the order service before a return, with its own token.
        assert!(has(order, "--service-callers", identity::PRODUCT_SUBJECT));
        assert!(has(order, "--service-audience", identity::ORDER_AUDIENCE));
        assert!(has(
            product,
            "--service-token-file",
            "/d/identity/product.token"
        ));
        assert!(has(product, "--order-url", "file:/d/peers/order"));
        assert!(
            open.processes
                .iter()
                .all(|p| !p.args.contains(&"--auth-issuer".to_owned()))
        );
        let closed = Security {
            auth: true,
            rate_limit: Some(20),
        };
        let closed = plan(8080, replicas, Path::new("/d"), closed).unwrap();
        assert!(
            closed
                .processes
                .iter()
                .all(|p| has(p, "--auth-issuer", identity::USER_ISSUER))
        );
        let gateway = closed.processes.last().unwrap();
        assert!(has(
            gateway,
            "--auth-public-routes",
            identity::PUBLIC_ROUTES
        ));
        assert!(has(gateway, "--rate-limit-per-second", "20"));
    }
}
