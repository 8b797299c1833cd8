#!/usr/bin/env python3
"""The image tarballs as a general container engine sees them (issue 32, part 3).

Every tarball `make images` wrote is inspected with `skopeo inspect docker-archive:` (platform,
user, entrypoint, layers) and loaded with `podman load` — the loader kind's podman provider uses.
Then the shop runs under podman: user, product and order, then the gateway in front of them, each
container rootful, read-only, on the host's network but listening on 127.0.0.1 only (a port the
kernel picks, read back with `ss`), its data on a tmpfs. Each must answer /healthz and /readyz,
run as 65532, and the gateway must serve a product list from the product service; then each is
stopped with SIGTERM and must exit 0 within its grace. If podman cannot run a container here
(shown by the smallest image, msa-pause, failing to start), the exact error is printed and only
the skopeo checks and `podman load` count; any other failure fails the check.

Everything podman keeps (images, containers, its run state) lives in a temporary folder given as
--root/--runroot (vfs storage: no overlay mounts) and is removed at the end, also after a failure
or a SIGTERM/SIGHUP/SIGINT.

Usage: hack/podman-check.py IMAGES_DIR
"""

import glob
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

# The services' shutdown: a drain delay, then in-flight requests get the grace.
DRAIN_SECONDS = 1
GRACE_SECONDS = 10
# podman's own SIGKILL comes after this; a clean stop is well inside it.
STOP_TIMEOUT = DRAIN_SECONDS + GRACE_SECONDS + 5
USER = "65532"
# Without --ulimit, rootful podman asks the runtime for 1048576 open files and as many processes;
# on a machine that caps them (this one: "error setting rlimit type 7 / 6: operation not
# permitted", also with `--ulimit host`) no container starts. The services need far less: this
# shell's open-files limit and 4096 processes (between 8192 and 65536 already failed here).
_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)
RUN_LIMITS = ("--ulimit", f"nofile={_NOFILE[0]}:{_NOFILE[1]}", "--ulimit", "nproc=4096:4096")


def log(message):
    print(f">> podman check: {message}", file=sys.stderr, flush=True)


def run(args, timeout=120, check=True):
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise SystemExit(
            f"`{' '.join(args)}` failed ({result.returncode}):\n{result.stderr}{result.stdout}"
        )
    return result


class Podman:
    """podman with all of its state in one temporary folder."""

    def __init__(self, state):
        self.base = [
            "podman",
            "--root", os.path.join(state, "root"),
            "--runroot", os.path.join(state, "run"),
            "--tmpdir", os.path.join(state, "tmp"),
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
        ]

    def __call__(self, *args, timeout=120, check=True):
        return run(self.base + list(args), timeout=timeout, check=check)

    def clean(self):
        """Every step tried, whatever the one before did."""
        for args in (("rm", "--all", "--force", "--time", "0"), ("rmi", "--all", "--force")):
            try:
                self(*args, check=False)
            except (OSError, subprocess.SubprocessError) as error:
                log(f"cleaning up: podman {args[0]}: {error}")


def inspect(tarball):
    """skopeo's view of one tarball: a row of the table, checked."""
    source = f"docker-archive:{tarball}"
    manifest = json.loads(run(["skopeo", "inspect", source]).stdout)
    config = json.loads(run(["skopeo", "inspect", "--config", source]).stdout)
    image = config.get("config", {})
    name = os.path.basename(tarball).removesuffix(".tar")
    problems = []
    if (manifest.get("Os"), manifest.get("Architecture")) != ("linux", "amd64"):
        problems.append(f"platform {manifest.get('Os')}/{manifest.get('Architecture')}")
    if image.get("User") != f"{USER}:{USER}":
        problems.append(f"user {image.get('User')!r}, not {USER}:{USER}")
    if not image.get("Entrypoint"):
        problems.append("no entrypoint")
    if problems:
        raise SystemExit(f"{tarball}: {', '.join(problems)}")
    size = os.path.getsize(tarball)
    return {
        "image": name,
        "size": f"{size / 2**20:.1f} MiB",
        "layers": str(len(manifest.get("Layers", []))),
        "user": image.get("User", ""),
        "entrypoint": " ".join(image.get("Entrypoint", [])),
    }


def table(rows, columns):
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def loaded_name(output):
    found = re.search(r"Loaded image(?:\(s\))?: (\S+)", output)
    if not found:
        raise SystemExit(f"podman load named no image:\n{output}")
    return found.group(1)


def listening_port(pid, deadline):
    """The one TCP port process `pid` listens on, as `ss` reports it once it listens."""
    while time.monotonic() < deadline:
        out = run(["ss", "-Hltnp"], check=False).stdout
        ports = {
            int(line.split()[3].rsplit(":", 1)[1])
            for line in out.splitlines()
            if f"pid={pid}," in line and " 127.0.0.1:" in f" {line.split()[3]}"
        }
        if len(ports) == 1:
            return ports.pop()
        if len(ports) > 1:
            raise SystemExit(f"process {pid} listens on several ports: {sorted(ports)}")
        time.sleep(0.1)
    raise SystemExit(f"process {pid} listens on nothing on 127.0.0.1 after 60 s")


def get(port, path):
    """(status, body) of a GET on 127.0.0.1; an error status is an answer too."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as answer:
        return answer.code, answer.read()


class Service:
    def __init__(self, podman, name, image, env):
        self.podman, self.name = podman, name
        args = [
            "run", "--detach", "--name", name,
            "--network", "host", "--read-only", *RUN_LIMITS,
            "--tmpfs", "/data:rw,size=64m,mode=1777",
            "--env", "MSA_LISTEN=127.0.0.1:0",
            "--env", "MSA_DATA_DIR=/data",
            "--env", f"MSA_DRAIN_DELAY_SECONDS={DRAIN_SECONDS}",
            "--env", f"MSA_SHUTDOWN_GRACE_SECONDS={GRACE_SECONDS}",
            "--env", "MSA_LOG_FORMAT=text",
        ]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        podman(*args, image)
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        self.pid = state["Pid"]
        self.port = listening_port(self.pid, time.monotonic() + 60)

    def uid(self):
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return line.split()[1]
        return "?"

    def stop(self):
        started = time.monotonic()
        self.podman("stop", "--time", str(STOP_TIMEOUT), self.name, timeout=STOP_TIMEOUT + 30)
        seconds = time.monotonic() - started
        state = json.loads(self.podman("inspect", self.name).stdout)[0]["State"]
        return state["ExitCode"], seconds

    def logs(self):
        return self.podman("logs", self.name, check=False).stderr[-3000:]


def run_the_shop(podman, images):
    """Starts the four services under podman and checks each; returns the table's rows."""
    services = {}
    try:
        for name in ("user", "product"):
            services[name] = Service(podman, f"msa-check-{name}", images[f"msa-{name}"], {})
        services["order"] = Service(podman, "msa-check-order", images["msa-order"], {
            "MSA_UPSTREAM_USER": f"127.0.0.1:{services['user'].port}",
            "MSA_UPSTREAM_PRODUCT": f"127.0.0.1:{services['product'].port}",
        })
        services["gateway"] = Service(podman, "msa-check-gateway", images["msa-gateway"], {
            "MSA_UPSTREAM_USER": f"127.0.0.1:{services['user'].port}",
            "MSA_UPSTREAM_ORDER": f"127.0.0.1:{services['order'].port}",
            "MSA_UPSTREAM_PRODUCT": f"127.0.0.1:{services['product'].port}",
        })
        rows = []
        for name, service in services.items():
            for path in ("/healthz", "/readyz"):
                deadline = time.monotonic() + 60
                while True:
                    try:
                        status, _ = get(service.port, path)
                    except OSError:
                        status = None
                    if status == 200 or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                if status != 200:
                    raise SystemExit(f"{name}: {path} answered {status}\n{service.logs()}")
            uid = service.uid()
            if uid != USER:
                raise SystemExit(f"{name} runs as uid {uid}, not {USER}")
            rows.append({"service": name, "port": str(service.port), "uid": uid,
                         "health": "/healthz /readyz 200"})
        status, body = get(services["gateway"].port, "/products")
        if status != 200 or not isinstance(json.loads(body or b"null"), (list, dict)):
            raise SystemExit(f"GET /products through the gateway: {status} {body[:200]!r}")
        log("GET /products through the gateway container: 200 from the product container")
        for row in rows:
            code, seconds = services[row["service"]].stop()
            if code != 0 or seconds >= STOP_TIMEOUT:
                raise SystemExit(
                    f"{row['service']}: SIGTERM → exit {code} after {seconds:.1f} s "
                    f"(must be 0 within {STOP_TIMEOUT} s)\n{services[row['service']].logs()}"
                )
            row["SIGTERM"] = f"exit 0 in {seconds:.1f} s"
        return rows
    except Exception:  # any failure: show what each container said
        for service in services.values():
            sys.stderr.write(f"--- {service.name} log ---\n{service.logs()}\n")
        raise


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    images_dir = sys.argv[1]
    tarballs = sorted(
        os.path.join(images_dir, f) for f in os.listdir(images_dir) if f.endswith(".tar")
    )
    if not tarballs:
        raise SystemExit(f"no image tarballs in {images_dir}: run `make images` first")
    for tool in ("podman", "skopeo", "ss"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (make images-check installs podman and skopeo)")

    # Ended by a signal, the cleanup below still runs.
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: sys.exit(128 + number))
    # skopeo and `podman load` keep a blob-info cache in /var/lib/containers/cache whatever
    # they are told: what this run made there is removed afterwards, nothing else.
    made = [d for d in ("/var/lib/containers", "/var/lib/containers/cache") if not os.path.exists(d)]
    try:
        check(tarballs)
    finally:
        for cache in glob.glob("/var/lib/containers/cache/blob-info-cache-v1.*"):
            if made:
                os.remove(cache)
        for directory in reversed(made):
            try:
                os.rmdir(directory)
            except OSError:
                pass


def check(tarballs):
    rows = [inspect(t) for t in tarballs]
    log(f"skopeo inspect: {len(rows)} tarballs, linux/amd64, each with its entrypoint\n"
        + table(rows, ["image", "size", "layers", "user", "entrypoint"]))

    state = tempfile.mkdtemp(prefix="msa-podman-")
    podman = Podman(state)
    try:
        images = {}
        for tarball in tarballs:
            name = os.path.basename(tarball).removesuffix(".tar")
            images[name] = loaded_name(podman("load", "--input", tarball, timeout=300).stdout)
        log(f"podman load: {len(images)} images")
        # The engine, told apart from the images: the pause image only sleeps until signalled.
        probe = podman("run", "--detach", "--name", "msa-check-engine", "--network", "none",
                       *RUN_LIMITS, images["msa-pause"], check=False)
        if probe.returncode != 0:
            log("podman cannot run containers on this machine; only the skopeo checks and "
                f"`podman load` count. Its error, exactly:\n{probe.stderr.strip()}")
            return
        podman("rm", "--force", "--time", "0", "msa-check-engine")
        rows = run_the_shop(podman, images)
        log("the shop under podman\n"
            + table(rows, ["service", "port", "uid", "health", "SIGTERM"]))
    finally:
        podman.clean()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
