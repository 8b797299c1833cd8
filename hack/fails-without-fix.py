#!/usr/bin/env python3
"""Shows that each defect's test fails without its fix: applies one small source change that
undoes a fix, runs the test that guards it, expects it to FAIL, and puts the file back (also
after Ctrl-C). Prints one line per defect. Not part of `make test`: it rebuilds crates once per
change (about 10 minutes on 2 cores).

    python3 hack/fails-without-fix.py            # all
    python3 hack/fails-without-fix.py 2b 4e      # the ones whose id starts so

PostgreSQL variants need MSA_TEST_POSTGRES_URL (`export MSA_TEST_POSTGRES_URL=$(hack/postgres.sh up | tail -1)`);
the msa-local process tests need `cargo build --workspace --bins` first.
"""
import os
import signal
import subprocess
import sys

# (id, file, the fix's text, the same without the fix, cargo test arguments; the last one is
# the test's name filter). Ids 1–5 are the defects of issue 27, as its text numbers them.
MUTATIONS = [
("1a detach", "services/service-kit/src/server.rs", """    Ok(shared_layers(router, &ops, args)?.layer(DetachLayer::new(
        ops.work.clone(),
        usize::try_from(args.limits.max_requests_in_flight).unwrap_or(usize::MAX),
    )))""", """    let _ = DetachLayer::new;
    Ok(shared_layers(router, &ops, args)?)""", "-p msa-service-kit --test hang_ups work_goes_on_after"),
("1b pool hygiene", "services/service-kit/src/db.rs", "let pool = hygiene::checked(pool, backend, discarded.clone())", "let pool = pool", "-p msa-service-kit --test database_truth a_connection_left_inside_a_transaction_is_discarded_and_counted::sqlite"),
("2a-i upstream told its time", "services/upstream/src/client.rs", "parts.headers.insert(&TIMEOUT_HEADER, told);", "let _ = told;", "-p msa-gateway --test client_limits the_upstream_is_told"),
("2a-ii client shortens", "services/gateway/src/lib.rs", "Some(Ok(wait)) => Some(std::time::Instant::now() + wait),", "Some(Ok(_)) => None,", "-p msa-gateway --test client_limits the_upstream_is_told"),
("2a-iii inner shorter", "services/upstream/src/config.rs", "pub const INNER_REQUEST_MS: u64 = 4_000;", "pub const INNER_REQUEST_MS: u64 = 5_000;", "-p msa-upstream --lib an_inner_hop_gives_up"),
("2a-iv 202 not 504", "services/order/src/lib.rs", "Err(_) => Ok((StatusCode::ACCEPTED, order)),", "Err(_) => Err(Problem::unavailable(\"still pending\", 1)),", "-p msa-order --test recovery product_writes_slower_than_the_caller_get_202_not_504::sqlite"),
("2b recoverer", "services/order/src/store.rs", "(status = 'pending' AND created_at_ms <= $1)", "(status = 'pending' AND created_at_ms <= $1 AND 1 = 0)", "-p msa-order --test api the_recoverer_ends_every_stranded_order::sqlite"),
("2c committed->confirmed", "services/order/src/steps.rs", "return Step::Confirm { lines, total_cents };", "return if driver == Driver::Recovery { Step::Wait } else { Step::Confirm { lines, total_cents } };", "-p msa-order --test api the_recoverer_ends_every_stranded_order::sqlite"),
("2d reservations expire", "services/product/src/store.rs", "AND held_since_ms <= $1 \\", "AND held_since_ms <= $1 AND 1 = 0 \\", "-p msa-product --test api a_reservation_nobody_finishes_expires::sqlite"),
("2f cancel pending", "services/order/src/model.rs", "| (Status::Confirmed | Status::Pending, Status::Cancelled)", "| (Status::Confirmed, Status::Cancelled)", "-p msa-order --test api a_pending_order_cancelled_before_its_reservation_arrives::sqlite"),
("3 min rate", "services/service-kit/src/connections.rs", "Some(slow) => due.min(slow),", "Some(_) => due,", "-p msa-service-kit --test slow_clients a_trickled_body_under"),
("3 body deadline", "services/service-kit/src/connections.rs", "let due = paused.min(started + self.body_deadline);", "let due = paused;", "-p msa-gateway --test client_limits a_body_that_never_ends"),
("3 per-client cap", "services/gateway/src/client_connections.rs", "if *open >= self.limit {", "if *open >= u32::MAX {", "-p msa-gateway --test client_limits one_address_gets_its_share"),
("4a quantity merged", "services/order/src/model.rs", ".filter(|q| *q <= money::MAX_QUANTITY)", ".filter(|q| *q <= money::MAX_EXACT)", "-p msa-order --test api bad_orders_are_refused_before_anything_is_recorded::sqlite"),
("4b half-open", "services/upstream/src/breaker.rs", "awaiting_probes: true,", "awaiting_probes: false,", "-p msa-upstream --lib a_burst_"),
("4c return only for an ended order", "services/product/src/lib.rs", "    orders::permit_return(&id, state.orders.standing(&id, answer_by).await?)?;\n", "", "-p msa-product --test api a_return_needs_the_order_service_to_say_the_order_ended::sqlite"),
("4d stock max", "services/product/src/model.rs", "let added = quantity.min(room);", "let added = quantity;", "-p msa-product --test api stock_given_back_stays_within_its_maximum::sqlite"),
("4e readyz sqlite", "services/service-kit/src/db/readiness.rs", "begin_and_roll_back(conn, \"BEGIN IMMEDIATE\")", "begin_and_roll_back(conn, \"BEGIN\")", "-p msa-service-kit --test database_truth readiness_fails_while_the_sqlite"),
("4e readyz pg", "services/service-kit/src/db/readiness.rs", "if read_only == \"off\" {", "if read_only == \"off\" || read_only == \"on\" {", "-p msa-service-kit --test database_truth readiness_fails_while_postgresql_is_read_only_and_recovers"),
("4g auth admin port", "services/local/src/plan.rs", ".then(|| SocketAddr::from((ADMIN_HOST, listen.port())))", ".then(|| SocketAddr::from((ADMIN_HOST, listen.port()))).filter(|_| false)", "-p msa-local --bin msa-local with_auth_the_operational"),
("5 exited early", "services/local/src/run.rs", "        exited_before(running, \"listening\")?;", "        let _ = exited_before(running, \"listening\");", "-p msa-local --test local a_component_that_exits_before_listening"),
("28 transport aborts", "operator/src/reconcile.rs", """        Err(other) => Err(other.into()),
    }
}

/// Applies the app's PodMonitor""", """        Err(other) => {
            report.failed.push((kind.to_string(), other.to_string()));
            Ok(None)
        }
    }
}

/// Applies the app's PodMonitor""", "-p msa-operator --test reconcile_api a_transport_error_aborts"),
("28 earlier app's workloads", "operator/src/reconcile.rs", """                    .filter(|d| controlled_by(d.as_ref(), app))
""", "", "-p msa-operator --test reconcile_api workloads_of_an_earlier_app"),
("28 earlier app's storage", "operator/src/reconcile.rs", """                .get(&ObjectRef::new(&name).within(&namespace))
                .filter(|s| controlled_by(s.as_ref(), app))?;""", """                .get(&ObjectRef::new(&name).within(&namespace))?;""", "-p msa-operator --test reconcile_api an_earlier_apps_children_lend"),
("28 earlier app's facts", "operator/src/reconcile.rs", """                .get(&ObjectRef::new(&product).within(&namespace))
                .filter(|s| controlled_by(s.as_ref(), app))""", """                .get(&ObjectRef::new(&product).within(&namespace))""", "-p msa-operator --test reconcile_api an_earlier_apps_children_lend"),
("28 M4 stateful deadline", "operator/src/reconcile.rs", """        if let Some(message) = judged.stuck {
            state.mark_past_deadline(message);
        }""", """        let _ = judged.stuck;""", "-p msa-operator --test reconcile_api a_stateful_set_pod_not_ready_past_its_deadline"),
("28 M4 forced rollback", "operator/src/reconcile.rs", "    delete_abandoned_pods(ctx, app, &abandoned_pods).await;\n", "    let _ = &abandoned_pods;\n", "-p msa-operator --test reconcile_api a_pod_of_an_abandoned_revision"),
("28 M7 replicas handover", "operator/src/reconcile.rs", """                if component.spec(app).autoscaled {
                    hand_over_replicas(ctx, app, &deployment).await?;
                }""", "", "-p msa-operator --test reconcile_api turning_autoscaling_on_hands"),
("28 L4 no take-over", "operator/src/ownership.rs", """(None, _) => Takeover::Refuse("was not made by this operator for this app"),""", """(None, _) => Takeover::Adopt,""", "-p msa-operator --test reconcile_api an_object_the_app_did_not_create"),
("28 L2 own PodMonitor only", "operator/src/reconcile.rs", "Some(live) if controlled_by(&live, app) => live.uid(),", "Some(live) => live.uid(),", "-p msa-operator --test reconcile_api only_the_apps_own_pod_monitor"),
("28 M5 rollout pacing", "operator/src/reconcile.rs", "lock(&ctx.rollout_slots).take(&app.uid().unwrap_or_default(), now)", "{ let _ = now; true }", "-p msa-operator --test reconcile_api the_operators_own_rollouts_are_paced"),
("28 M2 one namespace's relist", "operator/src/scope.rs", "                if self.filled {\n                    return self.relist_of(watch, listed, current());\n                }\n", "                if self.filled {\n                    let _ = current;\n                    return std::iter::once(Event::Init).chain(listed.into_iter().map(Event::InitApply)).chain(std::iter::once(Event::InitDone)).collect();\n                }\n", "-p msa-operator --lib one_namespaces_relist_keeps_the_others_objects"),
("28 empty value drift", "operator/src/drift.rs", "None => is_empty(value),", "None => false,", "-p msa-operator --lib empty_values_the_api_server_drops_are_not_drift"),
("2a-v order answers by the caller's time", "services/order/src/lib.rs", "let answer_by = Instant::from_std(deadline.answer_by(state.settings.wait_max));", "let answer_by = Instant::now() + state.settings.wait_max; let _ = &deadline;", "-p msa-order --test recovery product_writes_slower_than_the_caller_get_202_not_504::sqlite"),
]

def run(mutation):
    name, path, fixed, unfixed, args = mutation
    if subprocess.run(["git", "diff", "--quiet", "--", path]).returncode != 0:
        return f"{name}: {path} has changes of its own; commit or stash them first"
    with open(path) as f:
        source = f.read()
    if source.count(fixed) != 1:
        return f"{name}: the fix's text is not found once in {path}: update this list"
    *target, test_filter = args.split()

    def put_back(*_):
        with open(path, "w") as f:
            f.write(source)
        sys.exit(f"{name}: interrupted; {path} put back")

    previous = {s: signal.signal(s, put_back) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with open(path, "w") as f:
            f.write(source.replace(fixed, unfixed))
        done = subprocess.run(
            ["timeout", "900", "cargo", "test", *target, "--", test_filter],
            capture_output=True, text=True,
        )
    finally:
        with open(path, "w") as f:
            f.write(source)
        for s, handler in previous.items():
            signal.signal(s, handler)
    lines = (done.stdout + done.stderr).splitlines()
    ran = [l[5:].split(" ... ")[0] for l in lines if l.startswith("test ") and " ... " in l]
    failed = [l[5:].split(" ... ")[0] for l in lines if l.startswith("test ") and l.endswith("FAILED")]
    if done.returncode == 124:
        return f"{name}: TIMED OUT (no verdict): {', '.join(ran)}"
    if not ran:
        return f"{name}: NO TEST RAN (build failed or filter matches nothing), exit {done.returncode}"
    if failed:
        return f"{name}: fails without the fix: {', '.join(failed)}"
    return f"{name}: STILL PASSES without the fix: {', '.join(ran)}"


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    wanted = sys.argv[1:]
    chosen = [m for m in MUTATIONS if not wanted or any(m[0].startswith(w) for w in wanted)]
    failures = 0
    for i, mutation in enumerate(chosen, 1):
        print(f">> [{i}/{len(chosen)}] {mutation[0]} ...", file=sys.stderr, flush=True)
        line = run(mutation)
        failures += "fails without the fix" not in line
        print(line, flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
