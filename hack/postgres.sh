#!/usr/bin/env bash
# A throwaway PostgreSQL for the services' tests: Debian's package (installed when missing),
# listening on 127.0.0.1 only, data under $MSA_PG_STATE (default /tmp/msa-postgres).
# The test cluster (tests/cluster/cluster.sh) also listens on its host-side 198.18.x address
# (MSA_PG_LISTEN) and lets its pods in with a password (MSA_PG_POD_CIDR). MSA_PG_PASSWORD_AUTH=1
# (a plain `cargo test` starting one it leaves running) makes every TCP login need the
# superuser's random password, kept in the state folder and put in the printed URL;
# MSA_PG_NO_INSTALL=1 refuses to install the package.
#   hack/postgres.sh up     start it if needed; prints an admin URL for MSA_TEST_POSTGRES_URL
#   hack/postgres.sh down   stop it and delete its data
set -euo pipefail
state="${MSA_PG_STATE:-${TMPDIR:-/tmp}/msa-postgres}"
port="${MSA_PG_PORT:-25432}"
url="postgres://postgres@127.0.0.1:$port/postgres"
listen="${MSA_PG_LISTEN:-127.0.0.1}"
pod_cidr="${MSA_PG_POD_CIDR:-}"

bin_dir() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
  if [[ -z "$dir" || ! -x "$dir/initdb" ]]; then
    if [[ "${MSA_PG_NO_INSTALL:-}" == 1 ]]; then
      echo "PostgreSQL is not installed: apt-get install postgresql (or run make unit, which does)" >&2
      exit 1
    fi
    echo ">> installing Debian's postgresql package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
    dir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  fi
  echo "$dir"
}

# PostgreSQL refuses to run as root; run it as the package's `postgres` user when we are root.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

up() {
  local bin
  bin="$(bin_dir)"
  if as_owner "$bin/pg_ctl" -D "$state/data" status >/dev/null 2>&1; then
    admin_url
    return
  fi
  rm -rf "$state"
  mkdir -p "$state"
  # Only its owner reaches the socket folder.
  chmod 700 "$state"
  [[ $(id -u) -eq 0 ]] && chown postgres: "$state"
  local auth=(--auth=trust)
  if [[ "${MSA_PG_PASSWORD_AUTH:-}" == 1 ]]; then
    # Left running after the tests: no local user may log in without the password.
    (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=\n' >"$state/password")
    [[ $(id -u) -eq 0 ]] && chown postgres: "$state/password"
    auth=(--auth-local=trust --auth-host=scram-sha-256 --pwfile="$state/password")
  fi
  # Otherwise trust on loopback only: a server for the length of a test run, holding nothing
  # of value.
  as_owner "$bin/initdb" -D "$state/data" -U postgres "${auth[@]}" --no-sync >/dev/null
  if [[ -n "$pod_cidr" ]]; then
    # Pods are not trusted: they log in with the password of their app's own role.
    echo "host all all $pod_cidr scram-sha-256" >>"$state/data/pg_hba.conf"
  fi
  as_owner "$bin/pg_ctl" -D "$state/data" -l "$state/postgres.log" -w -t 30 start \
    -o "-c listen_addresses=$listen -p $port -k $state -c fsync=off -c max_connections=300" >&2
  admin_url
}

# The superuser's URL, with its password when logins need one.
admin_url() {
  if [[ -f "$state/password" ]]; then
    echo "postgres://postgres:$(cat "$state/password")@127.0.0.1:$port/postgres"
  else
    echo "$url"
  fi
}

down() {
  local bin
  bin="$(bin_dir)"
  as_owner "$bin/pg_ctl" -D "$state/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$state"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
