//! Real-node figures (`make bench-node`), printed as tables; nothing here asserts a time.
//!
//! 1. Image sizes (the tarballs `make images` wrote) and the cold and warm build times the build
//!    scripts recorded under `~/.cache/msa/build-times.tsv`.
//! 2. Node start → Ready, as `tests/cluster/cluster.sh` measured it.
//! 3. `kubectl apply -f manifests/shop.yaml` → `msa/shop` Ready, median of 5, on real pods beside
//!    the same on the kwok node (same cluster, same in-cluster operator, a namespace annotated to
//!    land on kwok) — the difference is what running real containers costs.
//! 4. The demo's wall time through the gateway's NodePort.
//! 5. `kubectl apply` → the three claims of the embedded databases Bound (PVC bind time).
//! 6. The durability scenarios of the node test (`msa_e2e::durability`): requests, failures,
//!    `503`s with `Retry-After` and the gap they span, per scenario under load, and the time from
//!    spec change to rollout complete per component.
//!
//! Every wait is bounded; the only addresses dialled are the API server and the node's NodePort
//! (both inside the blackholed 198.18.0.0/15).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use msa_e2e::durability;
use msa_e2e::node::{
    OnNode, RealNode, install_operator_chart, run_demo, wait_app_ready, wait_reachable,
};
use msa_e2e::{Cluster, Placement, TestNamespace, wait_until};

const RUNS: usize = 5;
const READY_LIMIT: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let on_node = OnNode::from_env().await?;
    let (cluster, node, admin) = (&on_node.cluster, &on_node.node, &on_node.admin);

    print_images(cluster)?;
    print_build_times();
    print_warm_builds(cluster)?;
    if let Ok(ready) = std::env::var("MSA_E2E_NODE_READY_SECONDS") {
        println!("\nnode start (containerd launched) → node Ready: {ready} s");
    }

    progress("helm install of the chart (operator on the real node)");
    let helm = install_operator_chart(cluster)?;
    println!(
        "helm install --wait (2 operator pods Ready): {:.1} s",
        helm.as_secs_f64()
    );

    let mut real = Vec::new();
    let mut kwok = Vec::new();
    let mut bound_real = Vec::new();
    let mut bound_kwok = Vec::new();
    let mut demo = None;
    for run in 1..=RUNS {
        for placement in [Placement::Default, Placement::Kwok] {
            progress(&format!(
                "apply → Ready, run {run}/{RUNS}, {placement:?} placement"
            ));
            let ns = TestNamespace::create_on(admin, "bench-node", placement)
                .await?
                .name;
            let (took, bound) = apply_and_wait_ready(cluster, admin, &ns).await?;
            if placement == Placement::Default {
                real.push(took);
                bound_real.push(bound);
                if run == RUNS {
                    demo = Some(demo_through_node_port(admin, node, &ns).await?);
                }
            } else {
                kwok.push(took);
                bound_kwok.push(bound);
            }
            cluster
                .kubectl(&["delete", "namespace", &ns, "--wait=true", "--timeout=180s"])
                .ok()?;
        }
    }

    println!("\n| kubectl apply → msa/shop Ready (5 pods) | median | min–max |");
    println!("| --- | ---: | ---: |");
    for (what, runs) in [
        ("real node (containerd, runc, kubelet)", &real),
        ("kwok node (nothing runs)", &kwok),
    ] {
        let (median, min, max) = spread(runs);
        println!("| {what} | {median:.2} s | {min:.2}–{max:.2} s |");
    }
    println!("\n| kubectl apply → 3 claims Bound (StorageClass standard) | median | min–max |");
    println!("| --- | ---: | ---: |");
    for (what, runs) in [("real node", &bound_real), ("kwok node", &bound_kwok)] {
        let (median, min, max) = spread(runs);
        println!("| {what} | {median:.2} s | {min:.2}–{max:.2} s |");
    }
    if let Some(demo) = demo {
        println!(
            "\nmsa-local demo through the NodePort (6 steps): {:.2} s",
            demo.as_secs_f64()
        );
    }

    progress("durability scenarios under load (embedded rollouts, node restart, PostgreSQL)");
    let ns = TestNamespace::create(admin, "bench-durable").await?.name;
    apply_and_wait_ready(cluster, admin, &ns).await?;
    let gateway = node.node_port_url(admin, &ns, "shop-gateway").await?;
    wait_reachable(&gateway, READY_LIMIT).await?;
    let mut rows = Vec::new();
    durability::embedded_default(&on_node, &ns, &gateway, &mut rows).await?;
    durability::replicated_on_postgres(&on_node, &mut rows).await?;
    durability::print_table(&rows);
    Ok(())
}

fn progress(what: &str) {
    eprintln!(">> {what}");
}

fn print_images(cluster: &Cluster) -> anyhow::Result<()> {
    let dir = std::env::var_os("MSA_CLUSTER_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| cluster.repo_path("target/images"));
    let mut rows: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}: run `make images`", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "tar"))
        .filter_map(|e| {
            Some((
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().ok()?.len(),
            ))
        })
        .collect();
    rows.sort();
    println!("| image tarball ({}) | size |", dir.display());
    println!("| --- | ---: |");
    for (name, bytes) in rows {
        println!("| {name} | {:.1} MiB |", bytes as f64 / (1024.0 * 1024.0));
    }
    Ok(())
}

/// The build scripts append `what<TAB>kind<TAB>seconds<TAB>when` per build (kind: cold or warm).
fn print_build_times() {
    let cache = std::env::var_os("MSA_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/msa")));
    let Some(text) = cache.and_then(|c| std::fs::read_to_string(c.join("build-times.tsv")).ok())
    else {
        println!("\n(no build times recorded yet)");
        return;
    };
    println!("\n| build (latest recorded) | cold | warm |");
    println!("| --- | ---: | ---: |");
    let mut latest: std::collections::BTreeMap<&str, (Option<&str>, Option<&str>)> =
        Default::default();
    for line in text.lines() {
        let mut fields = line.split('\t');
        let (Some(what), Some(kind), Some(seconds)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let entry = latest.entry(what).or_default();
        match kind {
            "cold" => entry.0 = Some(seconds),
            "warm" => entry.1 = Some(seconds),
            _ => {}
        }
    }
    for (what, (cold, warm)) in latest {
        println!(
            "| {what} | {} s | {} s |",
            cold.unwrap_or("–"),
            warm.unwrap_or("–")
        );
    }
}

/// Each build script run again with everything cached: what a warm `make test` pays for them.
fn print_warm_builds(cluster: &Cluster) -> anyhow::Result<()> {
    println!("\n| build script, warm (everything cached) | time |");
    println!("| --- | ---: |");
    for script in ["hack/build-k8s.sh", "hack/build-node.sh", "hack/images.sh"] {
        let started = Instant::now();
        let output = std::process::Command::new(cluster.repo_path(script)).output()?;
        anyhow::ensure!(
            output.status.success(),
            "{script} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        println!("| {script} | {:.1} s |", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Returns (apply → Ready, apply → every claim of the app Bound).
async fn apply_and_wait_ready(
    cluster: &Cluster,
    admin: &kube::Client,
    ns: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let manifest = cluster.repo_path("manifests/shop.yaml");
    let started = Instant::now();
    cluster
        .kubectl(&[
            "apply",
            "-n",
            ns,
            "-f",
            manifest.to_str().context("non-UTF-8 path")?,
        ])
        .ok()?;
    let claims = kube::Api::<PersistentVolumeClaim>::namespaced(admin.clone(), ns);
    let bound = wait_until("the three claims Bound", READY_LIMIT, || async {
        let list = claims.list(&Default::default()).await?;
        let bound = list
            .items
            .iter()
            .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
            .count();
        Ok((bound == 3).then(|| started.elapsed()))
    })
    .await?;
    wait_app_ready(admin, ns, "shop", READY_LIMIT).await?;
    Ok((started.elapsed(), bound))
}

async fn demo_through_node_port(
    admin: &kube::Client,
    node: &RealNode,
    ns: &str,
) -> anyhow::Result<Duration> {
    let url = node.node_port_url(admin, ns, "shop-gateway").await?;
    wait_reachable(&url, READY_LIMIT).await?;
    run_demo(&url).await
}

/// Median, min and max in seconds.
fn spread(runs: &[Duration]) -> (f64, f64, f64) {
    let mut secs: Vec<f64> = runs.iter().map(Duration::as_secs_f64).collect();
    secs.sort_by(f64::total_cmp);
    let median = secs.get(secs.len() / 2).copied().unwrap_or(f64::NAN);
    (
        median,
        secs.first().copied().unwrap_or(f64::NAN),
        secs.last().copied().unwrap_or(f64::NAN),
    )
}
