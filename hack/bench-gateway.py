#!/usr/bin/env python3
"""Gateway benchmark: requests/s, p50 and p99 latency, and proxy CPU per request, measured in one
run on loopback directly against a backend, through msa-gateway, through nginx and through
HAProxy (keep-alive upstreams, the same two msa-echo backends, one worker each).

Fairness on a 2-core machine: the load generator (wrk, one thread) has CPU 0 to itself; the
proxy under test and the backends share CPU 1. Targets are interleaved over several rounds and
medians are quoted. Not a pass/fail test: it prints figures (see BENCHMARKS.md).

The closing table is the goal of issue 14: each proxy's CPU per request at 1 and 16
connections and its added p50 at one connection, with the gateway's ratio to the lower of nginx's
and HAProxy's (goal: at or below 1.00). With --syscalls it also counts each proxy's system calls
per request under strace (a separate short run; strace slows it, the counts stay exact). With
--instructions it counts each proxy's user-space instructions per request under valgrind's
callgrind (16 connections): unlike CPU time on a shared virtual machine, that figure does not
drift from run to run, so it shows changes of a few percent.

Usage: hack/bench-gateway.py [--rounds 5] [--seconds 3] [--connections 1,16] [--syscalls]
       [--instructions] [--gateway BINARY] [--baseline BINARY]
(`make bench-gateway` builds the gateway as its image ships it, with profile-guided optimisation
(hack/pgo-gateway.sh), and the plain release build as the baseline, and installs nginx, haproxy,
wrk, strace and valgrind first.)
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
BACKENDS = [("127.0.0.1", 27101), ("127.0.0.1", 27102)]
PORTS = {"direct": 27101, "msa-gateway": 27180, "nginx": 27181, "haproxy": 27182,
         "baseline": 27183}
LOAD_CPU, SERVER_CPU = "0", "1"
PATH = "/users/1"


def log(message):
    print(f">> {message}", file=sys.stderr, flush=True)


def wait_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def start(name, argv, port, env=None):
    process = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU] + argv,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(WORK, f"{name}.log"), "w"),
        env={**os.environ, **(env or {})},
    )
    wait_port(port)
    return process


def cpu_seconds(pid):
    """(user, system) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def parse_duration_us(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]


def wrk(port, connections, seconds):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
         "--latency", f"http://127.0.0.1:{port}{PATH}"],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    dist = out.split("Latency Distribution", 1)[1]
    p50 = parse_duration_us(re.search(r"\s50%\s+(\S+)", dist).group(1))
    p99 = parse_duration_us(re.search(r"\s99%\s+(\S+)", dist).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or "Socket errors" in out:
        raise SystemExit(f"errors against port {port}:\n{out}")
    return rps, p50, p99, total


def nginx_config(master=True):
    servers = "".join(f"    server {h}:{p};\n" for h, p in BACKENDS)
    return f"""worker_processes 1;
daemon off;
master_process {"on" if master else "off"};
pid {WORK}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {WORK}/nginx-body;
  proxy_temp_path {WORK}/nginx-proxy;
  fastcgi_temp_path {WORK}/nginx-fastcgi;
  uwsgi_temp_path {WORK}/nginx-uwsgi;
  scgi_temp_path {WORK}/nginx-scgi;
  upstream backends {{
{servers}    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{PORTS["nginx"]};
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def haproxy_config():
    servers = "".join(f"  server s{i} {h}:{p}\n" for i, (h, p) in enumerate(BACKENDS))
    return f"""global
  nbthread 1
defaults
  mode http
  option http-keep-alive
  timeout connect 1s
  timeout client 30s
  timeout server 30s
frontend gateway
  bind 127.0.0.1:{PORTS["haproxy"]}
  default_backend backends
backend backends
  balance roundrobin
  http-reuse always
{servers}"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--syscalls", action="store_true",
                        help="also count system calls per request with strace")
    parser.add_argument("--instructions", action="store_true",
                        help="also count user-space instructions per request under callgrind")
    parser.add_argument("--gateway", metavar="BINARY", default=os.path.join(RELEASE, "msa-gateway"),
                        help="the msa-gateway build to measure (`make bench-gateway` passes the "
                             "image's, built with its profile by hack/pgo-gateway.sh)")
    parser.add_argument("--baseline", metavar="BINARY",
                        help="also measure this msa-gateway build (say, one of an earlier commit) "
                             "as the target `baseline`, to see a change's effect in one run")
    args = parser.parse_args()
    connections = [int(c) for c in args.connections.split(",")]
    for tool in ["wrk", "nginx", "haproxy", "taskset"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing; run `make bench-gateway` (it installs it)")

    processes = {}
    try:
        for i, (host, port) in enumerate(BACKENDS):
            processes[f"echo{i}"] = start(f"echo{i}", [
                os.path.join(RELEASE, "msa-echo"), "--listen", f"{host}:{port}"], port)
        upstreams = ",".join(f"{h}:{p}" for h, p in BACKENDS)
        gateways = {"msa-gateway": args.gateway}
        if args.baseline:
            gateways["baseline"] = args.baseline
        # Each proxy's command line and environment.
        commands = {}
        for name, binary in gateways.items():
            commands[name] = ([
                binary, "--listen", f"127.0.0.1:{PORTS[name]}",
                "--upstream-user", upstreams, "--upstream-order", upstreams,
                "--upstream-product", upstreams, "--worker-threads", "1",
                "--drain-delay-seconds", "0"], {"RUST_LOG": "warn"})
        for master in (True, False):
            with open(os.path.join(WORK, f"nginx-{'master' if master else 'single'}.conf"), "w") as f:
                f.write(nginx_config(master))
        commands["nginx"] = (["nginx", "-c", os.path.join(WORK, "nginx-master.conf"), "-p", WORK], {})
        with open(os.path.join(WORK, "haproxy.cfg"), "w") as f:
            f.write(haproxy_config())
        commands["haproxy"] = (["haproxy", "-db", "-f", os.path.join(WORK, "haproxy.cfg")], {})
        for name, (argv, env) in commands.items():
            processes[name] = start(name, argv, PORTS[name], env=env)

        targets = ["direct", "msa-gateway", "nginx", "haproxy"] + list(gateways)[1:]
        # nginx's master forks the worker that does the work; count the whole process tree.
        def tree_cpu(names):
            """(user, system) CPU seconds of the named processes and their children."""
            user = system = 0.0
            for name in names:
                pid = processes[name].pid
                pids = [pid] + [int(p) for p in subprocess.run(
                    ["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
                for p in pids:
                    u, s_ = cpu_seconds(p)
                    user, system = user + u, system + s_
            return user, system

        def sample(target):
            proxy = (0.0, 0.0) if target == "direct" else tree_cpu([target])
            return proxy, tree_cpu(["echo0", "echo1"])

        results = {(t, c): [] for t in targets for c in connections}
        log("warming up")
        for target in targets:
            wrk(PORTS[target], 4, 1)
        for round_ in range(1, args.rounds + 1):
            for c in connections:
                for target in targets:
                    (pu0, ps0), (bu0, bs0) = sample(target)
                    rps, p50, p99, total = wrk(PORTS[target], c, args.seconds)
                    (pu1, ps1), (bu1, bs1) = sample(target)
                    per_req = lambda seconds: seconds / total * 1e6 if total else 0.0
                    user, system = per_req(pu1 - pu0), per_req(ps1 - ps0)
                    backend = per_req(bu1 - bu0 + bs1 - bs0)
                    results[(target, c)].append(
                        (rps, p50, p99, user + system, user, system, backend))
                    log(f"round {round_}/{args.rounds} c={c:<3} {target:<12} {rps:>9.0f} req/s  "
                        f"p50 {p50:>7.1f} µs  p99 {p99:>7.1f} µs  proxy CPU {user + system:>5.1f} "
                        f"µs/req (user {user:.1f}, sys {system:.1f}), backends {backend:.1f}")
        syscalls = {}
        if args.syscalls:
            for target in targets[1:]:
                syscalls[target] = count_syscalls(processes[target].pid, PORTS[target])
        instructions = {}
        if args.instructions:
            for target in targets[1:]:
                # The same proxy again, under callgrind; nginx as a single process (no master
                # forking the worker that does the work).
                stop(processes.pop(target))
                argv, env = commands[target]
                if target == "nginx":
                    argv = ["nginx", "-c", os.path.join(WORK, "nginx-single.conf"), "-p", WORK]
                instructions[target] = count_instructions(target, argv, env, PORTS[target])
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            stop(process)

    med = lambda xs: statistics.median(xs)
    print(f"\nmedians of {args.rounds} rounds × {args.seconds} s, GET {PATH}, wrk -t1 on CPU {LOAD_CPU}; "
          f"proxy and both backends on CPU {SERVER_CPU}; one worker per proxy\n")
    for c in connections:
        direct_p50 = med([r[1] for r in results[("direct", c)]])
        print(f"connections: {c}")
        print("| target | req/s | p50 µs | p99 µs | added p50 µs | proxy CPU µs/req "
              "| of it user | of it kernel | backends' CPU µs/req |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        figures = {}
        for target in targets:
            rows = results[(target, c)]
            figures[target] = [med([r[i] for r in rows]) for i in range(7)]
            rps, p50, p99, cpu, user, system, backend = figures[target]
            proxy = target != "direct"
            cells = [f"{rps:.0f}", f"{p50:.1f}", f"{p99:.1f}",
                     f"{p50 - direct_p50:+.1f}" if proxy else "—",
                     f"{cpu:.1f}" if proxy else "—", f"{user:.1f}" if proxy else "—",
                     f"{system:.1f}" if proxy else "—", f"{backend:.1f}"]
            print(f"| {target} | " + " | ".join(cells) + " |")
        gw = figures["msa-gateway"]
        for ref in ["haproxy", "nginx"]:
            print(f"msa-gateway / {ref} req/s: {gw[0] / figures[ref][0]:.2f}×")
        # Proxy and backends share one CPU, so req/s is bounded by their CPU per request.
        # With no user-space time at all the gateway would still pay its kernel time.
        hap = figures["haproxy"]
        ceiling = (hap[3] + hap[6]) / (gw[5] + gw[6])
        print(f"ceiling: with zero user-space time, the gateway's kernel time ({gw[5]:.1f} µs) "
              f"and the backends' CPU ({gw[6]:.1f} µs) allow at most {ceiling:.2f}× HAProxy "
              f"(which spends {hap[3]:.1f} + {hap[6]:.1f} µs)")
        print()

    # The goal of issue 14, with the ratios against the better of the two references.
    medians = {key: [med([r[i] for r in rows]) for i in range(7)] for key, rows in results.items()}
    print("goal: the gateway at or below the lower of nginx and HAProxy (ratio ≤ 1.00)\n")
    print("| | " + " | ".join(f"proxy CPU µs/req, {c} conn{'s' if c > 1 else ''} (user + kernel)"
                              for c in connections)
          + f" | added p50 µs, {connections[0]} conn{'s' if connections[0] > 1 else ''} | req/s, "
          f"{connections[-1]} conns |" + (" syscalls/req |" if syscalls else "")
          + (" user instructions/req |" if instructions else ""))
    print("| --- |" + " ---: |" * (len(connections) + 2 + (1 if syscalls else 0)
                                   + (1 if instructions else 0)))
    one = connections[0]
    added = lambda t: medians[(t, one)][1] - medians[("direct", one)][1]
    for target in targets[1:]:
        cells = [f"{medians[(target, c)][3]:.1f} ({medians[(target, c)][4]:.1f} + "
                 f"{medians[(target, c)][5]:.1f})" for c in connections]
        cells += [f"+{added(target):.0f}", f"{medians[(target, connections[-1])][0]:.0f}"]
        if syscalls:
            cells.append(f"{syscalls[target]:.1f}")
        if instructions:
            cells.append(f"{instructions[target]:,.0f}")
        print(f"| {target} | " + " | ".join(cells) + " |")
    ratios = [("CPU/req", c, lambda t, c=c: medians[(t, c)][3]) for c in connections]
    ratios.append(("added p50", one, added))
    if syscalls:
        ratios.append(("syscalls/req", connections[-1], lambda t: syscalls[t]))
    if instructions:
        ratios.append(("user instructions/req", 16, lambda t: instructions[t]))
    print()
    for label, c, figure in ratios:
        best = min(("nginx", "haproxy"), key=figure)
        ratio = figure("msa-gateway") / figure(best) if figure(best) else float("inf")
        verdict = "met" if ratio <= 1.0 else "not met"
        print(f"{label} at {c} conn{'s' if c > 1 else ''}: msa-gateway / {best} = {ratio:.2f}× ({verdict})")


def count_syscalls(pid, port, seconds=2, connections=16):
    """System calls per request of a proxy (its whole process tree) during a short wrk run."""
    if not shutil.which("strace"):
        raise SystemExit("strace is missing: apt-get install strace")
    pids = [pid] + [int(p) for p in subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    out = os.path.join(WORK, f"strace-{port}.txt")
    argv = ["strace", "-f", "-c", "-o", out]
    for p in pids:
        argv += ["-p", str(p)]
    tracer = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    _, _, _, total = wrk(port, connections, seconds)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    with open(out) as f:
        summary = f.read()
    match = re.findall(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?total$", summary, re.M)
    total_calls = int(match[-1]) if match else 0
    log(f"strace on port {port}: {total_calls} calls for {total} requests")
    return total_calls / total if total else 0.0


def stop(process):
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def count_instructions(name, argv, env, port, seconds=4, connections=16):
    """User-space instructions per request of a proxy run under callgrind: instrumentation is
    switched on after a warm-up, for one wrk run, and the counts dumped."""
    for tool in ["valgrind", "callgrind_control"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install valgrind")
    out = os.path.join(WORK, f"callgrind-{name}.out")
    process = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, "valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={out}"] + argv,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(WORK, f"{name}-callgrind.log"), "w"),
        env={**os.environ, **env},
    )
    try:
        wait_port(port, timeout=60)
        wrk(port, connections, 1)
        control = lambda *a: subprocess.run(["callgrind_control", *a, str(process.pid)],
                                            capture_output=True, check=True, timeout=60)
        control("-i", "on")
        _, _, _, total = wrk(port, connections, seconds)
        control("-i", "off")
        control("-d")
    finally:
        stop(process)
    with open(out + ".1") as f:
        counted = max(int(n) for n in re.findall(r"^(?:totals|summary):\s+(\d+)", f.read(), re.M))
    log(f"callgrind {name}: {counted} instructions for {total} requests")
    return counted / total if total else 0.0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="msa-bench-") as WORK:
        main()
