//! Results: the table on stdout, `results.json`, and `chart.svg`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::load::LoadStats;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
    /// A count to read, not to rank.
    Info,
}

/// One figure for both systems.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Stable identifier, e.g. `put500.leader.ops_per_s`; goals look figures up by it.
    pub id: String,
    pub label: String,
    pub unit: String,
    pub better: Better,
    pub roster: Option<f64>,
    pub etcd: Option<f64>,
    /// Roster / etcd.
    pub ratio: Option<f64>,
    /// Short label when the row belongs on the throughput chart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
}

/// The raw statistics behind a set of rows.
#[derive(Debug, Clone, Serialize)]
pub struct Raw {
    pub roster: Option<serde_json::Value>,
    pub etcd: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub id: String,
    pub title: String,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// Failed requests or watchers in this section, both systems together.
    pub errors: u64,
    pub raw: BTreeMap<String, Raw>,
}

impl Section {
    pub fn new(id: &str, title: impl Into<String>) -> Section {
        Section {
            id: id.into(),
            title: title.into(),
            rows: Vec::new(),
            notes: Vec::new(),
            errors: 0,
            raw: BTreeMap::new(),
        }
    }

    pub fn row(&mut self, id: &str, label: &str, unit: &str, better: Better, roster: Option<f64>, etcd: Option<f64>) {
        // No ratio against ~0: latencies are clamped at 1 µs (0.001 ms) and CPU times can be 0.
        let ratio = match (roster, etcd) {
            (Some(r), Some(e)) if r > 0.001 && e > 0.001 => Some(r / e),
            _ => None,
        };
        self.rows.push(Row {
            id: format!("{}.{id}", self.id),
            label: label.into(),
            unit: unit.into(),
            better,
            roster,
            etcd,
            ratio,
            chart: None,
        });
    }

    /// ops/s, p50, p99 and max of one load run on each system; `chart` puts ops/s on the chart.
    pub fn load(&mut self, id: &str, label: &str, r: Option<&LoadStats>, e: Option<&LoadStats>, chart: Option<&str>) {
        let f = |s: Option<&LoadStats>, g: fn(&LoadStats) -> f64| s.map(g);
        self.row(
            &format!("{id}.ops_per_s"),
            &format!("{label}: ops/s"),
            "ops/s",
            Better::Higher,
            f(r, |s| s.ops_per_s),
            f(e, |s| s.ops_per_s),
        );
        if let Some(c) = chart {
            if let Some(last) = self.rows.last_mut() {
                last.chart = Some(c.to_string());
            }
        }
        self.row(
            &format!("{id}.p50_ms"),
            &format!("{label}: p50"),
            "ms",
            Better::Lower,
            f(r, |s| s.p50_ms),
            f(e, |s| s.p50_ms),
        );
        self.row(
            &format!("{id}.p99_ms"),
            &format!("{label}: p99"),
            "ms",
            Better::Lower,
            f(r, |s| s.p99_ms),
            f(e, |s| s.p99_ms),
        );
        self.row(
            &format!("{id}.max_ms"),
            &format!("{label}: max"),
            "ms",
            Better::Lower,
            f(r, |s| s.max_ms),
            f(e, |s| s.max_ms),
        );
        for (name, s) in [("Roster", r), ("etcd", e)] {
            if let Some(s) = s.filter(|s| s.errors > 0) {
                let first = s.first_error.as_deref().unwrap_or("");
                self.notes.push(format!("{label}: {name} had {} errors (first: {first})", s.errors));
                self.errors += s.errors;
            }
        }
        self.raw(id, r, e);
    }

    pub fn raw<T: Serialize>(&mut self, id: &str, r: Option<&T>, e: Option<&T>) {
        let v = |x: Option<&T>| x.and_then(|x| serde_json::to_value(x).ok());
        self.raw.insert(id.to_string(), Raw { roster: v(r), etcd: v(e) });
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub name: String,
    pub target: String,
    pub roster: Option<f64>,
    pub etcd: Option<f64>,
    /// None when the figure was not measured in this run.
    pub pass: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_kib: Option<u64>,
    pub cpu_model: Option<String>,
    pub kernel: Option<String>,
    pub nofile_limit: u64,
}

impl Machine {
    pub fn probe(nofile_limit: u64) -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            mem_total_kib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|v| v.split_once(':'))
                .map(|(_, m)| m.trim().to_string()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
            nofile_limit,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: String,
    pub date_utc: String,
    /// The exact command line, shell-quoted.
    pub command: String,
    pub mode: String,
    pub machine: Machine,
    pub systems: BTreeMap<String, String>,
    pub settings: serde_json::Value,
    pub sections: Vec<Section>,
    pub goals: Vec<Goal>,
}

impl Report {
    pub fn find(&self, id: &str) -> Option<&Row> {
        self.sections.iter().flat_map(|s| &s.rows).find(|r| r.id == id)
    }

    /// A goal on one row: `check(roster, etcd)`; not measured when a needed side is missing.
    pub fn goal(&mut self, name: &str, target: &str, id: &str, needs_etcd: bool, check: impl Fn(f64, f64) -> bool) {
        let (roster, etcd) = self.find(id).map(|r| (r.roster, r.etcd)).unwrap_or((None, None));
        let pass = match (roster, etcd) {
            (Some(r), Some(e)) => Some(check(r, e)),
            (Some(r), None) if !needs_etcd => Some(check(r, f64::NAN)),
            _ => None,
        };
        self.goals.push(Goal { name: name.into(), target: target.into(), roster, etcd, pass });
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        // The unit goes in brackets unless the label already ends with it ("...: ops/s", "...: p99 ms").
        let label = |r: &Row| {
            if r.label.ends_with(&r.unit) {
                r.label.clone()
            } else {
                format!("{} ({})", r.label, r.unit)
            }
        };
        let w = self.sections.iter().flat_map(|s| &s.rows).map(|r| label(r).len()).max().unwrap_or(0).max(40);
        for s in &self.sections {
            let _ = writeln!(out, "\n== {} ==", s.title);
            let _ = writeln!(out, "  {:<w$} {:>12} {:>12} {:>12}", "", "Roster", "etcd", "Roster/etcd");
            for r in &s.rows {
                let _ = writeln!(
                    out,
                    "  {:<w$} {:>12} {:>12} {:>12}",
                    label(r),
                    num(r.roster),
                    num(r.etcd),
                    ratio(r.ratio)
                );
            }
            for n in &s.notes {
                let _ = writeln!(out, "  note: {n}");
            }
        }
        let _ = writeln!(out, "\n== Goals ({}) ==", self.mode);
        for g in &self.goals {
            let verdict = match g.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "n/a ",
            };
            let _ = writeln!(
                out,
                "  {verdict}  {:<48} {}  (Roster {}, etcd {})",
                g.name,
                g.target,
                num(g.roster),
                num(g.etcd)
            );
        }
        out
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("results.json"), json).context("writing results.json")?;
        chart(self, &dir.join("chart.svg")).context("writing chart.svg")?;
        Ok(())
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.is_nan() => "-".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into())
}

/// Grouped bars (Roster, etcd) per throughput row on a log axis: rows differ by orders of magnitude.
fn chart(report: &Report, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    const ROSTER: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
    const ETCD: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
    let rows: Vec<&Row> = report
        .sections
        .iter()
        .flat_map(|s| &s.rows)
        .filter(|r| r.chart.is_some() && r.roster.is_some_and(|v| v > 0.0))
        .collect();
    let values = rows.iter().flat_map(|r| [r.roster, r.etcd]).flatten().filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if rows.is_empty() { (1.0, 10.0) } else { (lo / 3.0, hi * 3.0) };
    let n = rows.len().max(1);
    let width = (160 + 130 * n) as u32;
    let root = SVGBackend::new(path, (width.max(640), 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let caption = format!("Roster vs etcd, throughput (ops/s, log scale), {}", report.mode);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(70)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("ops/s")
        .y_label_formatter(&|v| num(Some(*v)))
        .draw()
        .map_err(draw_err)?;
    let value_style = TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (system, color, offset) in [("Roster", ROSTER, 0.1), ("etcd", ETCD, 0.5)] {
        let bars: Vec<(f64, f64)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| if system == "Roster" { r.roster } else { r.etcd }.map(|v| (i as f64 + offset, v)))
            .collect();
        chart
            .draw_series(bars.iter().map(|(x, v)| Rectangle::new([(*x, lo), (x + 0.38, *v)], color.filled())))
            .map_err(draw_err)?
            .label(system)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled()));
        chart
            .draw_series(bars.iter().map(|(x, v)| Text::new(num(Some(*v)), (x + 0.19, *v), value_style.clone())))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    // Row labels under each group, one line per '\n', drawn on the root area below the axis.
    let label_style = TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, r) in rows.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, lo));
        let label = r.chart.as_deref().unwrap_or("");
        for (k, line) in label.lines().enumerate() {
            root.draw(&Text::new(line.to_string(), (x, y + 8 + 16 * k as i32), label_style.clone()))
                .map_err(draw_err)?;
        }
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

/// UTC date and time as ISO 8601, without a date crate (days-to-civil from Howard Hinnant's algorithm).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
