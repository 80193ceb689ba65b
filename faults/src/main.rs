//! `roster-faults check <history.json>...`: runs the checkers on saved histories (a scenario's
//! output in target/faults/, or a fixture) and prints per-key results.

use std::process::ExitCode;
use std::time::Instant;

use roster_faults::checker::{self, Options, Outcome};
use roster_faults::history::History;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some("check"), files) = (args.first().map(String::as_str), &args[1.min(args.len())..]) else {
        eprintln!("usage: roster-faults check [--no-default-reads] <history.json>...");
        return ExitCode::from(2);
    };
    let default_reads = !files.iter().any(|f| f == "--no-default-reads");
    let mut bad = false;
    for file in files.iter().filter(|f| !f.starts_with("--")) {
        let history: History = match std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(h) => h,
            Err(e) => {
                eprintln!("{file}: {e}");
                return ExitCode::from(2);
            }
        };
        let started = Instant::now();
        let report = checker::check(&history.ops, &Options { default_reads, ..Options::default() });
        for k in &report.keys {
            if k.outcome != Outcome::Linearizable {
                bad = true;
                println!("{file}: {} ({} ops, {} steps): {:?}", k.key, k.ops, k.steps, k.outcome);
            }
        }
        let stale = checker::stale_monotonicity(&history.ops);
        bad |= !stale.is_empty();
        println!(
            "{file}: {} operations, {} keys, {} not linearizable, {} undecided, {} stale reads going back ({:.2}s)",
            history.ops.len(),
            report.keys.len(),
            report.violations().count(),
            report.unknown().count(),
            stale.len(),
            started.elapsed().as_secs_f64()
        );
    }
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
