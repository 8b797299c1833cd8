#!/usr/bin/env python3
"""Training run for the gateway's profile-guided build (hack/pgo-gateway.sh): starts two msa-echo
backends and an instrumented msa-gateway on loopback, sends them a bounded mix of the traffic a
gateway meets, stops the gateway so it writes its profile, and checks that it did.

The mix weights what the profile should make fast: keep-alive proxy requests on one and on many
connections (GET, and POST with a body), request ids and trace context from the client, on a
gateway with the default policy (one thread, as the benchmark runs it, and one per CPU) and on
one that requires bearer tokens (HS256, as `spec.auth` configures it). The rarer paths
(HTTP/1.0, `Connection: close`, chunked bodies, unknown routes, bad heads, refused tokens) get
a few requests each, so they are measured as rare rather than never seen.

Every connection goes to 127.0.0.1; every loop is bounded in count, every wait in time.

Usage: hack/pgo-train.py GATEWAY ECHO PROFILE_DIR
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
DEADLINE = time.monotonic() + 300  # the whole run, whatever happens


def log(message):
    print(f">> pgo training: {message}", file=sys.stderr, flush=True)


def listening_port(process):
    """The port `process` listens on, read from the kernel's socket tables once it listens.

    Each server binds port 0 and the kernel chooses; a port probed free and handed over could be
    taken meanwhile by any of the machine's other connections (CI shares it with loopback load).
    """
    give_up = min(DEADLINE, time.monotonic() + 30)
    while time.monotonic() < give_up:
        if process.poll() is not None:
            raise SystemExit(f"a training process exited early ({process.returncode})")
        ports = listening_ports(process.pid)
        if len(ports) == 1:
            return ports.pop()
        if len(ports) > 1:
            raise SystemExit(f"process {process.pid} listens on several ports: {sorted(ports)}")
        time.sleep(0.05)
    raise SystemExit(f"process {process.pid} listens on nothing after 30 s")


def listening_ports(pid):
    """The TCP ports process `pid` listens on (its socket inodes matched in /proc/PID/net/tcp)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed while we look
                continue
            found = re.fullmatch(r"socket:\[(\d+)\]", target)
            if found:
                inodes.add(found.group(1))
        with open(f"/proc/{pid}/net/tcp") as table:
            rows = table.read().splitlines()[1:]
    except OSError:
        return set()
    ports = set()
    for row in rows:
        fields = row.split()
        # local_address is HEX_IP:HEX_PORT, st 0A is LISTEN, inode is field 9.
        if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
            ports.add(int(fields[1].split(":")[1], 16))
    return ports


def keep_alive(port, requests, method="GET", body=None, headers=None):
    """Sends `requests` (a list of paths) on one keep-alive connection; every answer must be 200."""
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        for path in requests:
            if time.monotonic() > DEADLINE:
                raise SystemExit("training ran out of time")
            connection.request(method, path, body=body, headers=headers or {})
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise SystemExit(f"{method} {path} through the gateway answered {answer.status}")
    finally:
        connection.close()


def concurrently(port, paths_of, headers=None, connections=16):
    """`keep_alive` on `connections` connections at once, connection n sending `paths_of(n)`."""
    failures = []

    def worker(n):
        try:
            keep_alive(port, paths_of(n), headers=headers)
        except BaseException as e:  # reported below, after every worker is joined
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, DEADLINE - time.monotonic()))
    if failures or any(t.is_alive() for t in threads):
        raise SystemExit(f"keep-alive workers failed: {failures[:1]}")


def raw(port, text):
    """One request written as bytes on its own connection; the answer is read until close."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(text.encode())
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass


def traffic(port):
    paths = [f"/users/{i}" for i in range(200)] + [f"/products/{i}" for i in range(100)] + \
            [f"/orders/{i}" for i in range(100)] + ["/users", "/products", "/orders"]
    log("one connection: 6000 GETs")
    keep_alive(port, [paths[i % len(paths)] for i in range(6000)])
    log("16 connections: 16 x 500 GETs")
    concurrently(port, lambda n: [paths[(n * 37 + i) % len(paths)] for i in range(500)])
    log("POST with bodies, client request ids and trace context: 1500")
    body = b'{"user_id":7,"items":[{"product_id":3,"quantity":2}],"note":"' + b"x" * 120 + b'"}'
    keep_alive(port, ["/orders"] * 1000, "POST", body, {"content-type": "application/json"})
    keep_alive(port, ["/users/7"] * 500, headers={
        "x-request-id": "pgo-training-request",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    })
    log("rare paths: 40 each")
    for i in range(40):
        raw(port, f"GET /users/{i} HTTP/1.0\r\nHost: t\r\n\r\n")
        raw(port, f"GET /products/{i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw(port, "POST /orders HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                  "Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        raw(port, "GET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw(port, "GET /users HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        raw(port, "GET /users/1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                  "Content-Length: 3\r\n\r\n")


def token(secret, issuer, audience):
    """An HS256 bearer token for user `pgo-training`, valid for an hour."""
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=")
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"iss": issuer, "aud": audience, "sub": "pgo-training",
                             "roles": ["customer"], "exp": int(time.time()) + 3600}).encode())
    signature = b64(hmac.new(secret, header + b"." + claims, hashlib.sha256).digest())
    return (header + b"." + claims + b"." + signature).decode()


def authenticated_traffic(port, bearer):
    log("bearer tokens: one connection, 3000 GETs; 16 connections, 16 x 200")
    keep_alive(port, [f"/users/{i % 50}" for i in range(3000)],
               headers={"authorization": f"Bearer {bearer}"})
    concurrently(port, lambda n: [f"/orders/{(n + i) % 50}" for i in range(200)],
                 {"authorization": f"Bearer {bearer}"})
    log("public routes without a token: 500; refused tokens: 40 each")
    keep_alive(port, [f"/products/{i % 50}" for i in range(500)])
    for i in range(40):
        raw(port, f"GET /users/{i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw(port, f"GET /users/{i} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {bearer[:-4]}AAAA"
                  "\r\nConnection: close\r\n\r\n")


def stop(process, sig=signal.SIGTERM, timeout=30):
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main():
    gateway, echo, profile_dir = sys.argv[1:4]
    os.makedirs(profile_dir, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="msa-pgo-")
    # The backends are instrumented too (same build); their counts go to scratch, not the profile.
    echo_env = {**os.environ, "LLVM_PROFILE_FILE": os.path.join(scratch, "echo-%p.profraw")}
    processes = []
    try:
        backends = []
        for _ in range(2):
            p = subprocess.Popen([echo, "--listen", f"{HOST}:0"], env=echo_env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            processes.append(p)
            port = listening_port(p)
            backends.append(f"{HOST}:{port}")
        upstreams = ",".join(backends)
        secret = os.urandom(32)
        with open(os.path.join(scratch, "secret"), "wb") as f:
            f.write(secret)
        authenticated = ["--auth-issuer", "pgo-training", "--auth-audiences", "shop",
                         "--auth-hmac-secret-file", os.path.join(scratch, "secret"),
                         "--auth-public-routes", "GET /products,GET /products/{id}"]
        # Both runtimes the gateway has: one thread (as the benchmark runs it) and one per CPU
        # (the default in a pod); then bearer tokens required.
        for flags, send in ((["--worker-threads", "1"], traffic), ([], traffic),
                            (authenticated, lambda port: authenticated_traffic(
                                port, token(secret, "pgo-training", "shop")))):
            gateway_env = {**os.environ, "RUST_LOG": "warn",
                           "LLVM_PROFILE_FILE": os.path.join(profile_dir, "gateway-%p.profraw")}
            gw = subprocess.Popen([gateway, "--listen", f"{HOST}:0",
                                   "--upstream-user", upstreams, "--upstream-order", upstreams,
                                   "--upstream-product", upstreams, "--drain-delay-seconds", "0"]
                                  + flags, env=gateway_env, stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(scratch, "gateway.log"), "a"))
            processes.append(gw)
            port = listening_port(gw)
            started = time.monotonic()
            log(f"gateway {' '.join(flags) or '(a thread per CPU)'}")
            send(port)
            log(f"traffic sent in {time.monotonic() - started:.1f} s; stopping the gateway")
            stop(gw)
            if gw.returncode != 0:
                raise SystemExit(f"the gateway exited with {gw.returncode}; its log: {scratch}/gateway.log")
    finally:
        for p in processes:
            stop(p, timeout=10)
    # Reached only on success: the scratch folder (secret, backends' counts, log) goes; after a
    # failure it stays, for the gateway's log.
    shutil.rmtree(scratch, ignore_errors=True)
    written = [f for f in os.listdir(profile_dir) if f.endswith(".profraw")]
    if not written:
        raise SystemExit(f"the gateway wrote no profile into {profile_dir}")
    log(f"profile written: {', '.join(written)}")


if __name__ == "__main__":
    main()
