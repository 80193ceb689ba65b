//! `roster-wan-bench`: several datacenters on this machine. Two `roster dev` processes, dc1 on
//! 127.0.0.1 and another datacenter on 127.0.0.2, joined by the WAN pool. Measures, side by side
//! with the local read as the peer: the latency a `?dc=` read adds (through dc1 to the other
//! datacenter's server and back); how long a new datacenter takes to appear in dc1's
//! `catalog/datacenters`; how long the WAN pool takes to declare a killed datacenter's server
//! failed (dc1 then answers "none of its servers is reachable").

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(name = "roster-wan-bench", about = "Cross-datacenter latency, join and failure detection over the WAN pool")]
struct Args {
    #[arg(long, default_value = "target/release/roster")]
    roster_bin: PathBuf,
    /// Sequential reads per kind (local, cross-datacenter).
    #[arg(long, default_value_t = 2000)]
    reads: usize,
    /// Datacenters started (join time) and killed (failure detection), one after the other.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value_t = 17950)]
    port: u16,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dev(bin: &PathBuf, ip: &str, port: u16, dc: &str, join: Option<&str>) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.args(["dev", "--datacenter", dc, "--gossip-addr", "off", "--dns-addr", "off"])
        .args(["--http-addr", &format!("{ip}:{port}"), "--rpc-addr", &format!("{ip}:{}", port + 1)])
        .args(["--wan-addr", &format!("{ip}:{}", port + 2)]);
    if let Some(j) = join {
        cmd.args(["--retry-join-wan", j]);
    }
    Ok(Proc(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?))
}

async fn until(timeout: Duration, mut ok: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = registry::client::http_builder().timeout(Duration::from_secs(10)).build()?;
    let dc1_addr = format!("127.0.0.1:{}", args.port);
    let dc1_wan = format!("127.0.0.1:{}", args.port + 2);
    let other_addr = format!("127.0.0.2:{}", args.port);
    let _dc1 = dev(&args.roster_bin, "127.0.0.1", args.port, "dc1", None)?;
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.ok()?;
            let status = r.status().as_u16();
            Some((status, r.text().await.ok()?))
        }
    };
    until(Duration::from_secs(30), async || {
        get(format!("http://{dc1_addr}/v1/status/leader")).await.is_some_and(|(s, b)| s == 200 && b.len() > 2)
    })
    .await
    .ok_or_else(|| anyhow::anyhow!("dc1 did not start"))?;

    let mut joins = Vec::new();
    let mut detections = Vec::new();
    let mut latencies: Option<(Vec<Duration>, Vec<Duration>)> = None;
    for round in 0..args.rounds {
        let dc = format!("bench{round}");
        let started = Instant::now();
        let proc = dev(&args.roster_bin, "127.0.0.2", args.port, &dc, Some(&dc1_wan))?;
        until(Duration::from_secs(60), async || {
            get(format!("http://{dc1_addr}/v1/catalog/datacenters"))
                .await
                .is_some_and(|(_, b)| b.contains(&format!("\"{dc}\"")))
        })
        .await
        .ok_or_else(|| anyhow::anyhow!("{dc} never appeared in dc1's datacenters"))?;
        // From the process start: its own start-up is part of what a new datacenter waits for.
        joins.push(started.elapsed());

        if latencies.is_none() {
            let put = http.put(format!("http://{other_addr}/v1/kv/bench")).body("v").send().await?;
            anyhow::ensure!(put.status().is_success(), "write in {dc}: {}", put.status());
            let put = http.put(format!("http://{dc1_addr}/v1/kv/bench")).body("v").send().await?;
            anyhow::ensure!(put.status().is_success(), "write in dc1: {}", put.status());
            let mut local = Vec::with_capacity(args.reads);
            let mut remote = Vec::with_capacity(args.reads);
            for _ in 0..args.reads {
                for (url, into) in [
                    (format!("http://{dc1_addr}/v1/kv/bench"), &mut local),
                    (format!("http://{dc1_addr}/v1/kv/bench?dc={dc}"), &mut remote),
                ] {
                    let t = Instant::now();
                    let r = http.get(url).send().await?;
                    anyhow::ensure!(r.status().is_success(), "read: {}", r.status());
                    r.bytes().await?;
                    into.push(t.elapsed());
                }
            }
            local.sort();
            remote.sort();
            latencies = Some((local, remote));
        }

        let killed = Instant::now();
        drop(proc);
        until(Duration::from_secs(60), async || {
            get(format!("http://{dc1_addr}/v1/kv/bench?dc={dc}"))
                .await
                .is_some_and(|(s, b)| s == 503 && b.contains("none of its servers is reachable"))
        })
        .await
        .ok_or_else(|| anyhow::anyhow!("{dc}'s server was never declared failed"))?;
        detections.push(killed.elapsed());
    }

    println!(
        "## roster-wan-bench: two datacenters on loopback ({} rounds, {} reads of each kind)\n",
        args.rounds, args.reads
    );
    if let Some((local, remote)) = &latencies {
        println!("| read through dc1 | p50 | p99 |\n|---|---|---|");
        println!("| local `GET /v1/kv/bench` | {} | {} |", ms(percentile(local, 0.5)), ms(percentile(local, 0.99)));
        println!(
            "| `GET /v1/kv/bench?dc=<other>` | {} | {} |",
            ms(percentile(remote, 0.5)),
            ms(percentile(remote, 0.99))
        );
        let ratio = percentile(remote, 0.5).as_secs_f64() / percentile(local, 0.5).as_secs_f64().max(1e-9);
        println!(
            "\ncross-datacenter / local, p50: {ratio:.2}x (added: {})",
            ms(percentile(remote, 0.5).saturating_sub(percentile(local, 0.5)))
        );
    }
    joins.sort();
    detections.sort();
    println!("\n| | median | max |\n|---|---|---|");
    println!(
        "| new datacenter's process start to listed in dc1's `catalog/datacenters` | {} | {} |",
        ms(percentile(&joins, 0.5)),
        ms(percentile(&joins, 1.0))
    );
    println!(
        "| its server killed (SIGKILL) to dc1 answering \"none of its servers is reachable\" | {} | {} |",
        ms(percentile(&detections, 0.5)),
        ms(percentile(&detections, 1.0))
    );
    Ok(())
}
