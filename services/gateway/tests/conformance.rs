//! HTTP/1.1 conformance of the gateway, side by side with nginx (issue 14): the same raw
//! requests go through msa-gateway and through nginx (Debian's, configured as a plain reverse
//! proxy) to the same `msa-echo` backend, which answers with what it received. Each case checks
//! the gateway against RFC 9110/9112 and prints what both did, so a difference from nginx is
//! visible and, where the RFC leaves a choice, explained in the assertion.
//!
//! Needs `nginx` on the PATH (`make unit` installs Debian's `nginx-light` when it is missing).

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::Duration;

use msa_service_kit::testing::{ServiceProcess, read_until_closed};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// nginx as a plain reverse proxy, killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: std::sync::Arc<TempDir>,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port for nginx, which cannot bind port 0 and report it ("invalid port"): outside the
/// kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), where neither an
/// outgoing connection nor anyone's `bind(0)` takes it, and below the ports this project fixes
/// (PostgreSQL's 25432, the test cluster's 26400–26459). Another program may hold it anyway:
/// nginx then exits and [`nginx`] starts it again on another.
fn port_outside_the_ephemeral_range() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("the ephemeral port range (Linux)");
    let (low, high) = range
        .split_once(char::is_whitespace)
        .map(|(l, h)| (l.trim().parse::<u16>(), h.trim().parse::<u16>()))
        .and_then(|(l, h)| Some((l.ok()?, h.ok()?)))
        .unwrap_or_else(|| panic!("cannot read the ephemeral port range {range:?}"));
    let (first, last) = if low > 20_000 {
        (20_000, low.min(25_000) - 1)
    } else if high < 65_000 {
        (high + 1, 65_535)
    } else {
        panic!("the ephemeral range {low}-{high} leaves no port for nginx")
    };
    let spread = u128::from(last - first) + 1;
    let offset = u16::try_from(uuid::Uuid::new_v4().as_u128() % spread).expect("within the range");
    first + offset
}

/// nginx in front of `backend`, on a loopback port where the kernel shows nginx itself
/// listening (so nothing else answers for it). A start that finds its port taken is made again
/// on another port; any other early exit fails with nginx's log.
async fn nginx(backend: SocketAddr) -> Nginx {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nginx is not installed: `make unit` installs Debian's nginx-light, or apt-get install nginx-light");
    let dir = std::env::temp_dir().join(format!("msa-conformance-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = std::sync::Arc::new(TempDir(dir));
    for _attempt in 0..10 {
        let addr = SocketAddr::from(([127, 0, 0, 1], port_outside_the_ephemeral_range()));
        let d = dir.0.display();
        let config = format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream backend {{ server {backend}; keepalive 8; }}\n\
             server {{\n    listen {addr};\n    location / {{\n      proxy_pass http://backend;\n\
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
        );
        let conf = dir.0.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let log = dir.0.join("error.log");
        let _ = std::fs::remove_file(&log);
        let child = Command::new(binary)
            .args(["-c", &conf.display().to_string(), "-p", &d.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx {
            child,
            addr,
            _dir: dir.clone(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = nginx.child.try_wait().unwrap() {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(
                    said.contains("Address already in use"),
                    "nginx exited with {status} before listening on {addr}:\n{said}"
                );
                break; // taken: another port
            }
            let listening =
                msa_service_kit::testing::listening_addresses(nginx.child.id()).unwrap_or_default();
            if listening.contains(&addr) {
                return nginx;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not listen on {addr} within 30 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("nginx found ten ports in a row taken");
}

/// One response as a client reads it off the wire.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: u16,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body ended as its framing said (length reached, last chunk seen, or close-delimited).
    complete: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The backend's echo of what it received.
    fn echo(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("an echo ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// What came back on one connection: the responses in order, and whether it was closed.
#[derive(Debug)]
struct Exchange {
    answers: Vec<Answer>,
    closed: bool,
}

/// Parses responses from `bytes` (to a request with method `head_request` for HEAD).
fn parse(mut bytes: &[u8], closed: bool, head_request: bool) -> Vec<Answer> {
    let mut answers = Vec::new();
    while let Some(end) = find(bytes, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        bytes = &bytes[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut answer = Answer {
            status,
            version,
            headers,
            body: Vec::new(),
            complete: true,
        };
        let bodiless = head_request || status == 204 || status == 304 || status / 100 == 1;
        if bodiless {
        } else if answer
            .header("transfer-encoding")
            .is_some_and(|te| te.contains("chunked"))
        {
            answer.complete = false;
            while let Some(line_end) = find(bytes, b"\r\n") {
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&bytes[..line_end])
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                )
                .unwrap_or(0);
                let data = line_end + 2;
                if bytes.len() < data + size + 2 {
                    answer
                        .body
                        .extend_from_slice(&bytes[data.min(bytes.len())..]);
                    bytes = &[];
                    break;
                }
                answer.body.extend_from_slice(&bytes[data..data + size]);
                bytes = &bytes[data + size + 2..];
                if size == 0 {
                    answer.complete = true;
                    break;
                }
            }
        } else if let Some(length) = answer.header("content-length") {
            let length: usize = length.parse().unwrap_or(0);
            let taken = length.min(bytes.len());
            answer.body = bytes[..taken].to_vec();
            answer.complete = taken == length;
            bytes = &bytes[taken..];
        } else {
            answer.body = bytes.to_vec();
            answer.complete = closed;
            bytes = &[];
        }
        answers.push(answer);
    }
    answers
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes `request` (in pieces: a pause between them) and reads until the server closes or
/// `wait` passes.
async fn exchange(addr: SocketAddr, pieces: &[&[u8]], wait: Duration, head: bool) -> Exchange {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // A server may close before the whole request was sent (a refusal): that is an answer.
        if stream.write_all(piece).await.is_err() {
            break;
        }
    }
    let (bytes, closed) = read_until_closed(&mut stream, wait).await;
    Exchange {
        answers: parse(&bytes, closed, head),
        closed,
    }
}

/// The gateway and nginx in front of one backend.
struct Stage {
    gateway: ServiceProcess,
    nginx: Nginx,
    _backend: ServiceProcess,
}

impl Stage {
    async fn new() -> Stage {
        let (backend, backend_addr, gateway) = common::echo_behind_gateway(&[]).await;
        let nginx = nginx(backend_addr).await;
        Stage {
            gateway,
            nginx,
            _backend: backend,
        }
    }

    /// The same request through both; prints a line comparing them.
    async fn both(&self, case: &str, pieces: &[&[u8]], head: bool) -> (Exchange, Exchange) {
        let wait = Duration::from_secs(3);
        let gateway = exchange(self.gateway.addr, pieces, wait, head).await;
        let nginx = exchange(self.nginx.addr, pieces, wait, head).await;
        let summary = |e: &Exchange| {
            let statuses: Vec<String> = e
                .answers
                .iter()
                .map(|a| format!("{}{}", a.status, if a.complete { "" } else { " (cut)" }))
                .collect();
            format!(
                "{}{}",
                statuses.join("+"),
                if e.closed { ", closed" } else { "" }
            )
        };
        println!(
            "{case:<44} gateway: {:<24} nginx: {}",
            summary(&gateway),
            summary(&nginx)
        );
        (gateway, nginx)
    }
}

fn only(exchange: &Exchange, case: &str) -> Answer {
    assert_eq!(exchange.answers.len(), 1, "{case}: {exchange:?}");
    exchange.answers[0].clone()
}

#[tokio::test]
async fn the_gateway_speaks_http_1_1_like_nginx_or_stricter() {
    let stage = Stage::new().await;

    // Bodies both ways: Content-Length and chunked requests arrive whole; a chunked response
    // arrives whole and correctly framed.
    let case = "content-length request body";
    let (gw, ng) = stage
        .both(
            case,
            &[b"POST /users/__echo/request HTTP/1.1\r\nhost: t\r\ncontent-length: 11\r\nconnection: close\r\n\r\nhello world"],
            false,
        )
        .await;
    for answer in [only(&gw, case), only(&ng, case)] {
        assert_eq!(answer.echo()["body"], "hello world", "{case}");
    }

    let case = "chunked request body";
    let (gw, ng) = stage
        .both(
            case,
            &[b"POST /users/__echo/request HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"],
            false,
        )
        .await;
    for answer in [only(&gw, case), only(&ng, case)] {
        let echo = answer.echo();
        assert_eq!(echo["body"], "hello world", "{case}");
        assert!(
            echo["headers"].get("transfer-encoding").is_none()
                || echo["headers"]["transfer-encoding"] == "chunked"
        );
    }

    let case = "chunked response body";
    let (gw, ng) = stage
        .both(
            case,
            &[b"GET /users/__echo/chunked HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"],
            false,
        )
        .await;
    for answer in [only(&gw, case), only(&ng, case)] {
        assert!(answer.complete, "{case}: {answer:?}");
        assert_eq!(answer.body, b"first,second,third", "{case}");
    }

    // No body where none may be: HEAD, 204, 304.
    for (case, request, head) in [
        (
            "HEAD",
            &b"HEAD /users/__echo/status/200 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"[..],
            true,
        ),
        (
            "204 No Content",
            &b"GET /users/__echo/status/204 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"[..],
            false,
        ),
        (
            "304 Not Modified",
            &b"GET /users/__echo/status/304 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"[..],
            false,
        ),
    ] {
        let (gw, ng) = stage.both(case, &[request], head).await;
        let (gw, ng) = (only(&gw, case), only(&ng, case));
        assert_eq!(gw.status, ng.status, "{case}");
        assert!(gw.body.is_empty(), "{case}: {gw:?}");
        if !head {
            assert!(gw.header("transfer-encoding").is_none(), "{case}: {gw:?}");
        }
    }

    // Expect: 100-continue: an interim 100 before the body is sent, then the answer.
    let case = "Expect: 100-continue";
    let (gw, ng) = stage
        .both(
            case,
            &[
                b"POST /users/__echo/request HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
                b"hello",
            ],
            false,
        )
        .await;
    for exchange in [&gw, &ng] {
        let last = exchange.answers.last().expect("an answer");
        assert_eq!(last.status, 200, "{case}: {exchange:?}");
        assert_eq!(last.echo()["body"], "hello", "{case}");
    }
    assert_eq!(
        gw.answers[0].status, 100,
        "{case}: the gateway sends 100 Continue"
    );

    // Pipelining and keep-alive: two requests in one write, answered in order on one connection.
    let case = "two pipelined requests";
    let (gw, ng) = stage
        .both(
            case,
            &[b"GET /users/__echo/request?n=1 HTTP/1.1\r\nhost: t\r\n\r\nGET /users/__echo/request?n=2 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"],
            false,
        )
        .await;
    for exchange in [&gw, &ng] {
        let paths: Vec<Value> = exchange
            .answers
            .iter()
            .map(|a| a.echo()["path"].clone())
            .collect();
        assert_eq!(
            paths,
            ["/users/__echo/request?n=1", "/users/__echo/request?n=2"],
            "{case}"
        );
        assert!(
            exchange.closed,
            "{case}: closed after the second (connection: close)"
        );
    }

    let case = "keep-alive: connection stays open";
    let (gw, _) = stage
        .both(
            case,
            &[
                b"GET /users/__echo/request HTTP/1.1\r\nhost: t\r\n\r\n",
                b"GET /users/__echo/request HTTP/1.1\r\nhost: t\r\n\r\n",
            ],
            false,
        )
        .await;
    assert_eq!(gw.answers.len(), 2, "{case}: {gw:?}");
    assert!(!gw.closed, "{case}: kept open between and after requests");

    // An HTTP/1.0 client without keep-alive: answered, then the connection closes.
    let case = "HTTP/1.0 client";
    let (gw, ng) = stage
        .both(
            case,
            &[b"GET /users/__echo/request HTTP/1.0\r\nhost: t\r\n\r\n"],
            false,
        )
        .await;
    for exchange in [&gw, &ng] {
        assert_eq!(only(exchange, case).status, 200, "{case}");
        assert!(exchange.closed, "{case}: closed after the answer");
    }

    // Hop-by-hop headers stay on their hop, including those `Connection` names (RFC 9110 §7.6.1).
    let case = "hop-by-hop headers";
    let (gw, ng) = stage
        .both(
            case,
            &[b"GET /users/__echo/request HTTP/1.1\r\nhost: t\r\nconnection: close, x-hop\r\nx-hop: secret\r\nkeep-alive: timeout=5\r\nte: trailers\r\nproxy-authorization: Basic eDp5\r\nx-end-to-end: kept\r\n\r\n"],
            false,
        )
        .await;
    let seen = only(&gw, case).echo()["headers"].clone();
    for dropped in ["x-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            seen.get(dropped).is_none(),
            "{case}: {dropped} reached the backend: {seen}"
        );
    }
    assert_eq!(seen["x-end-to-end"], "kept", "{case}");
    let nginx_seen = only(&ng, case).echo()["headers"].clone();
    println!(
        "{:<44} (nginx passed on: {:?})",
        "",
        ["x-hop", "keep-alive", "te", "proxy-authorization"]
            .into_iter()
            .filter(|h| nginx_seen.get(*h).is_some())
            .collect::<Vec<_>>()
    );

    // Oversized heads are refused before anything reaches the backend.
    let long_uri = format!(
        "GET /users/{} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        "a".repeat(70_000)
    );
    let case = "request line of 70 kB";
    let (gw, _) = stage.both(case, &[long_uri.as_bytes()], false).await;
    assert_eq!(only(&gw, case).status, 414, "{case}");
    let huge_header = format!(
        "GET /users/__echo/request HTTP/1.1\r\nhost: t\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "b".repeat(500_000)
    );
    let case = "a header of 500 kB";
    let (gw, _) = stage.both(case, &[huge_header.as_bytes()], false).await;
    assert_eq!(only(&gw, case).status, 431, "{case}");

    // Request smuggling. A body framed two ways: hyper takes the RFC 9112 §6.3 option of reading
    // it by Transfer-Encoding alone, dropping Content-Length before anything is forwarded, and
    // closing the connection after the answer — so the bytes after it are never read as a second
    // request. (nginx refuses it with 400; both stop the smuggling.) Two different lengths are
    // refused outright.
    let case = "Content-Length with Transfer-Encoding";
    let (gw, ng) = stage
        .both(
            case,
            &[b"POST /users/__echo/request HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /users/__echo/request?smuggled HTTP/1.1\r\nhost: t\r\n\r\n"],
            false,
        )
        .await;
    for (who, exchange) in [("gateway", &gw), ("nginx", &ng)] {
        assert!(exchange.closed, "{case}: {who} kept the connection");
        assert!(
            exchange.answers.len() == 1
                && !exchange.answers[0]
                    .body
                    .windows(8)
                    .any(|w| w == b"smuggled"),
            "{case}: {who} read a second request: {exchange:?}"
        );
    }
    let answer = only(&gw, case);
    if answer.status == 200 {
        let seen = answer.echo();
        // The smuggled length never reaches the backend: no length, or the empty body's 0.
        assert!(
            seen["headers"].get("content-length").is_none()
                || seen["headers"]["content-length"] == "0",
            "{case}: {seen}"
        );
        assert_eq!(seen["body"], "", "{case}: {seen}");
    } else {
        assert_eq!(answer.status, 400, "{case}: {answer:?}");
    }
    let case = "two different Content-Lengths";
    let (gw, _) = stage
        .both(
            case,
            &[b"POST /users/__echo/request HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"],
            false,
        )
        .await;
    assert_eq!(only(&gw, case).status, 400, "{case}");
    assert!(gw.closed, "{case}");

    // Upgrades are not supported: the request is answered as a plain one, without the upgrade
    // headers reaching the backend (README, "The gateway").
    let case = "Upgrade: websocket";
    let (gw, _) = stage
        .both(
            case,
            &[b"GET /users/__echo/request HTTP/1.1\r\nhost: t\r\nconnection: upgrade, close\r\nupgrade: websocket\r\n\r\n"],
            false,
        )
        .await;
    let answer = only(&gw, case);
    assert_eq!(answer.status, 200, "{case}");
    assert!(answer.echo()["headers"].get("upgrade").is_none(), "{case}");

    // A backend that breaks off: before its head, a 502 (POST) or 503 (GET, already retried:
    // nothing was answered, so it may come again); mid-body, the client sees the cut — the
    // connection closes short of the announced length — never a shortened "complete" answer.
    let case = "backend closes before answering a POST";
    let (gw, ng) = stage
        .both(
            case,
            &[b"POST /users/__echo/no-answer HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"],
            false,
        )
        .await;
    assert_eq!(only(&gw, case).status, 502, "{case}");
    assert_eq!(only(&ng, case).status, 502, "{case}");
    let case = "backend closes before answering a GET";
    let (gw, _) = stage
        .both(
            case,
            &[b"GET /users/__echo/no-answer HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"],
            false,
        )
        .await;
    let answer = only(&gw, case);
    assert_eq!(answer.status, 503, "{case}");
    assert_eq!(answer.header("retry-after"), Some("1"), "{case}");
    let case = "backend closes mid-body";
    let (gw, ng) = stage
        .both(
            case,
            &[b"GET /users/__echo/cut-body HTTP/1.1\r\nhost: t\r\n\r\n"],
            false,
        )
        .await;
    for (who, exchange) in [("gateway", &gw), ("nginx", &ng)] {
        let answer = only(exchange, case);
        assert!(
            !answer.complete && exchange.closed,
            "{case}: {who} passed a cut body off as complete: {answer:?}"
        );
    }
}
