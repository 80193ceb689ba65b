//! `roster-bench`: Roster against etcd on the same machine, in one run. Starts a 3-server cluster of
//! each on loopback, runs every workload on Roster then on etcd with the same load generator, prints
//! a table, and writes `results.json` and `chart.svg`. See bench/README.md.

mod cluster;
mod dns_load;
mod load;
mod report;
mod target;
mod workloads;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use cluster::{EtcdCluster, RosterCluster};
use report::{Machine, Report, Section};
use target::{Etcd, Roster};
use workloads::{Plan, Systems};

/// Workloads in the order they run. `memory` restarts both clusters first, so it measures fresh ones.
const WORKLOADS: &[&str] = &["put1", "put500", "get", "catalog", "watch", "memory"];

#[derive(Debug, Parser)]
#[command(name = "roster-bench", about = "Benchmarks Roster against etcd on this machine, in one run")]
struct Args {
    /// Tiny counts and 1 s durations: checks the harness end to end in well under a minute (CI).
    #[arg(long)]
    smoke: bool,
    /// Comma-separated subset of: put1, put500, get, catalog, watch, memory (they always run in this order).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Seconds for every timed workload (put1, put500, get, catalog reads).
    #[arg(long)]
    duration: Option<f64>,
    /// Client count of the many-clients runs (put500's 500 and get's 256).
    #[arg(long)]
    clients: Option<usize>,
    /// Comma-separated watcher counts of the watch workload (default 1000,10000; smoke 50).
    #[arg(long, value_delimiter = ',')]
    watchers: Vec<usize>,
    /// Where results.json and chart.svg go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The roster binary [default: `roster` next to this binary, else target/release/roster].
    #[arg(long)]
    roster_bin: Option<PathBuf>,
    /// The etcd binary (Debian's etcd-server package) [default: /usr/bin/etcd, else etcd on PATH].
    #[arg(long)]
    etcd_bin: Option<PathBuf>,
    /// With --smoke only: run Roster alone when etcd is not installed.
    #[arg(long)]
    allow_no_etcd: bool,
    /// Roster listens on 127.0.0.{1,2,3}:BASE (HTTP) and BASE+1 (RPC); etcd on BASE+10 and BASE+11.
    #[arg(long, default_value_t = 28500)]
    base_port: u16,
    /// Keep the servers' data directories and logs (printed at the end) instead of removing them.
    #[arg(long)]
    keep: bool,
}

/// Both clusters and the targets driving them. Dropping it kills every server.
struct Running {
    sys: Systems,
    // Held only to be dropped after `sys`: that kills the servers and removes their directories.
    _roster: RosterCluster,
    _etcd: Option<EtcdCluster>,
}

impl Running {
    async fn start(args: &Args, roster_bin: &Path, etcd_bin: Option<&Path>) -> Result<Running> {
        let t = Instant::now();
        // Start both at once; each waits for its own quorum.
        let (roster, etcd) = tokio::join!(RosterCluster::start(roster_bin, args.base_port, args.keep), async {
            match etcd_bin {
                Some(bin) => EtcdCluster::start(bin, args.base_port, args.keep).await.map(Some),
                None => Ok(None),
            }
        });
        let (roster, etcd) = (roster.context("starting Roster")?, etcd.context("starting etcd")?);
        let sys = Systems {
            roster: Arc::new(Roster::new(&roster).await?),
            etcd: match &etcd {
                Some(e) => Some(Arc::new(Etcd::new(e).await?)),
                None => None,
            },
        };
        eprintln!("clusters up in {:.1} s", t.elapsed().as_secs_f64());
        if args.keep {
            eprintln!("keeping Roster data and logs in {}", roster.dir.path().display());
            if let Some(e) = &etcd {
                eprintln!("keeping etcd data and logs in {}", e.dir.path().display());
            }
        }
        Ok(Running { sys, _roster: roster, _etcd: etcd })
    }
}

fn plan_of(args: &Args) -> Plan {
    let mut plan = if args.smoke { Plan::smoke() } else { Plan::full() };
    if let Some(secs) = args.duration {
        let d = Duration::from_secs_f64(secs.max(0.1));
        plan.put1_duration = d;
        plan.put_duration = d;
        plan.get_duration = d;
        plan.catalog_read_duration = d;
    }
    if let Some(c) = args.clients {
        plan.put_clients = c.max(1);
        plan.get_clients = c.max(1);
    }
    if !args.watchers.is_empty() {
        plan.watchers = args.watchers.iter().map(|w| (*w).max(1)).collect();
    }
    plan
}

fn roster_bin(args: &Args) -> Result<PathBuf> {
    if let Some(p) = &args.roster_bin {
        return if p.is_file() { Ok(p.clone()) } else { bail!("--roster-bin {} does not exist", p.display()) };
    }
    let sibling = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("roster")));
    let found = sibling.filter(|p| p.is_file()).or_else(|| Some(PathBuf::from("target/release/roster")));
    match found.filter(|p| p.is_file()) {
        Some(p) => Ok(p),
        None => bail!("no roster binary: build it with `cargo build --release -p roster-registry --bin roster`"),
    }
}

fn etcd_bin(args: &Args) -> Option<PathBuf> {
    if let Some(p) = &args.etcd_bin {
        return p.is_file().then(|| p.clone());
    }
    let default = PathBuf::from("/usr/bin/etcd");
    if default.is_file() {
        return Some(default);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("etcd")).find(|p| p.is_file()))
}

/// Thousands of watchers need thousands of sockets, here and in the servers (which inherit it).
fn raise_nofile() -> u64 {
    use rlimit::Resource;
    let want = 1 << 17;
    if Resource::NOFILE.get().is_ok_and(|(_, hard)| hard < want) {
        // Raising the hard limit needs CAP_SYS_RESOURCE; without it, the soft limit still goes to the hard one.
        let _ = Resource::NOFILE.set(want, want);
    }
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

fn shell_quote(a: &str) -> String {
    if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c)) {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

async fn run(args: Args) -> Result<bool> {
    let plan = plan_of(&args);
    let selected: Vec<&str> = if args.only.is_empty() {
        WORKLOADS.to_vec()
    } else {
        for w in &args.only {
            if !WORKLOADS.contains(&w.as_str()) {
                bail!("unknown workload {w:?}; choose from {}", WORKLOADS.join(", "));
            }
        }
        WORKLOADS.iter().copied().filter(|w| args.only.iter().any(|o| o == w)).collect()
    };
    let roster_bin = roster_bin(&args)?;
    let etcd_bin = etcd_bin(&args);
    if etcd_bin.is_none() {
        let looked = match &args.etcd_bin {
            Some(p) => format!("--etcd-bin {} does not exist", p.display()),
            None => "not at /usr/bin/etcd nor on PATH".into(),
        };
        let msg = format!("etcd is not installed ({looked}); install it with `apt-get install -y etcd-server`");
        if !(args.smoke && args.allow_no_etcd) {
            bail!("{msg}, or pass --smoke --allow-no-etcd to check the harness on Roster alone");
        }
        eprintln!("WARNING: {msg}. Running Roster only (--smoke --allow-no-etcd): no comparison.");
    }
    let nofile = raise_nofile();
    let most_watchers = plan.watchers.iter().copied().max().unwrap_or(0);
    if (nofile as usize) < most_watchers + 1024 {
        eprintln!("WARNING: open-file limit {nofile} is low for {most_watchers} watchers");
    }

    let mut systems = BTreeMap::new();
    systems.insert(
        "roster".to_string(),
        format!("{} ({})", cluster::version_of(&roster_bin, "--version"), roster_bin.display()),
    );
    if let Some(e) = &etcd_bin {
        systems.insert("etcd".to_string(), format!("{} ({})", cluster::version_of(e, "--version"), e.display()));
    }
    let mut report = Report {
        tool: format!("roster-bench {}", env!("CARGO_PKG_VERSION")),
        date_utc: report::utc_now(),
        command: std::env::args().map(|a| shell_quote(&a)).collect::<Vec<_>>().join(" "),
        mode: if plan.smoke { "smoke (tiny counts: not meaningful figures)".into() } else { "full".into() },
        machine: Machine::probe(nofile),
        systems,
        settings: serde_json::json!({ "plan": &plan, "base_port": args.base_port, "workloads": &selected }),
        sections: Vec::new(),
        goals: Vec::new(),
    };

    let mut running = Running::start(&args, &roster_bin, etcd_bin.as_deref()).await?;
    let mut failed = Vec::new();
    for (i, name) in selected.iter().enumerate() {
        if *name == "memory" && i > 0 {
            // Fresh clusters: earlier workloads' allocations and history must not count as key memory.
            drop(running);
            running = Running::start(&args, &roster_bin, etcd_bin.as_deref()).await?;
        }
        let t = Instant::now();
        eprintln!("running {name} ...");
        let sys = &running.sys;
        let result = match *name {
            "put1" => workloads::put1(&plan, sys).await,
            "put500" => workloads::put_many(&plan, sys).await,
            "get" => workloads::get(&plan, sys).await,
            "watch" => workloads::watch(&plan, sys).await,
            "catalog" => workloads::catalog(&plan, sys).await,
            _ => workloads::memory(&plan, sys).await,
        };
        let section = match result {
            Ok(s) => s,
            Err(e) => {
                // Report the failure and go on: the other workloads' figures are still worth having.
                eprintln!("workload {name} failed: {e:#}");
                failed.push(format!("{name}: {e:#}"));
                let mut s = Section::new(name, format!("{name}: FAILED"));
                s.note(format!("{e:#}"));
                s
            }
        };
        // Progress on stderr; the whole table goes to stdout at the end.
        eprint!("{}", report_of_one(&section));
        eprintln!("{name} done in {:.1} s", t.elapsed().as_secs_f64());
        report.sections.push(section);
    }
    drop(running);

    add_goals(&mut report, &plan);
    println!("{}", "=".repeat(86));
    println!("roster-bench, {}, {}", report.mode, report.date_utc);
    print!("{}", report.table());
    report.write(&args.out)?;
    println!("\nwrote {} and {}", args.out.join("results.json").display(), args.out.join("chart.svg").display());

    let errors: u64 = report.sections.iter().map(|s| s.errors).sum();
    for f in &failed {
        eprintln!("FAILED workload {f}");
    }
    // In smoke mode any failed request means the harness (or a server) is broken: fail CI.
    Ok(failed.is_empty() && !(plan.smoke && errors > 0))
}

fn report_of_one(s: &Section) -> String {
    let one = Report {
        tool: String::new(),
        date_utc: String::new(),
        command: String::new(),
        mode: String::new(),
        machine: Machine::probe(0),
        systems: BTreeMap::new(),
        settings: serde_json::Value::Null,
        sections: vec![s.clone()],
        goals: Vec::new(),
    };
    let table = one.table();
    // Drop the empty goals footer of this one-section report.
    table.split("\n== Goals").next().unwrap_or("").to_string() + "\n"
}

/// The issue's goals. They are reported, never fatal.
fn add_goals(report: &mut Report, plan: &Plan) {
    let (c, g) = (plan.put_clients, plan.get_clients);
    report.goal(
        &format!("KV put, {}: ops/s", workloads::clients(c)),
        ">= 2x etcd",
        "put500.leader.ops_per_s",
        true,
        |r, e| r >= 2.0 * e,
    );
    report.goal(&format!("KV put, {}: p99", workloads::clients(c)), "<= etcd", "put500.leader.p99_ms", true, |r, e| {
        r <= e
    });
    report.goal("KV put, 1 client: p50", "<= 0.5 ms", "put1.leader.p50_ms", false, |r, _| r <= 0.5);
    for n in [1, g] {
        let id = format!("get.default.{n}c.ops_per_s");
        report.goal(
            &format!("linearizable get, {}: ops/s", workloads::clients(n)),
            ">= 1.5x etcd",
            &id,
            true,
            |r, e| r >= 1.5 * e,
        );
    }
    if let Some(n) = plan.watchers.iter().max() {
        let id = format!("watch.kv.{n}.p99_ms");
        report.goal(&format!("{n} watchers: p99 from the write"), "<= 100 ms", &id, false, |r, _| r <= 100.0);
    }
    let k = plan.mem_keys;
    report.goal(&format!("RSS with {k} keys (sum of 3)"), "<= etcd", "memory.loaded.sum_mib", true, |r, e| r <= e);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("roster-bench: cannot handle SIGTERM: {e}");
            std::process::exit(2);
        }
    };
    // On Ctrl-C or SIGTERM the run future is dropped, which kills the servers and removes temp dirs.
    let outcome = tokio::select! {
        r = run(args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    match outcome {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("roster-bench: {e:#}");
            std::process::exit(1);
        }
    }
}
