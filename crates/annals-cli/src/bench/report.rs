//! Showing the results: the text table, the JSON document (`--json`) and the SVG chart
//! (`--plot`).

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use annals_bench::pg::PgSettings;

use super::host::{cpu_model, cpus, filesystem, kernel};
use super::measure::{Limits, Measure, Row};
use super::plan::{Plan, READ_STREAMS, SystemKind, thousands};

/// Everything one run measured.
#[derive(Debug)]
pub(super) struct Report {
    /// The parameters.
    pub(super) plan: Plan,
    /// The folder the temporary folder was created in.
    pub(super) base: PathBuf,
    /// Its file system, when known.
    pub(super) filesystem: Option<&'static str>,
    /// The PostgreSQL server's settings, when postgres was measured.
    pub(super) postgres: Option<PgSettings>,
    /// The disk's limits.
    pub(super) limits: Limits,
    /// One row per workload.
    pub(super) rows: Vec<Row>,
    /// Wall time of the whole run.
    pub(super) took: Duration,
}

impl Report {
    /// The peers annals is compared with (none when annals was not measured).
    fn peers(&self) -> Vec<SystemKind> {
        if !self.plan.systems.contains(&SystemKind::Annals) {
            return Vec::new();
        }
        self.plan
            .systems
            .iter()
            .copied()
            .filter(|k| *k != SystemKind::Annals)
            .collect()
    }
}

/// A rate for the table: whole with separators from 100 up, else three significant digits.
fn rate(v: f64) -> String {
    if !v.is_finite() || v < 0.0 {
        "n/a".into()
    } else if v >= 100.0 {
        thousands(v.round() as u64)
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A ratio for the table.
fn ratio(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v >= 10.0 {
        format!("{v:.1}×")
    } else {
        format!("{v:.2}×")
    }
}

/// Width of the label column.
const LABEL_WIDTH: usize = 38;
/// Width of the unit column.
const UNIT_WIDTH: usize = 9;
/// Width of a system's column.
const VALUE_WIDTH: usize = 12;
/// Width of a ratio column.
const RATIO_WIDTH: usize = 15;

/// Prints the results as a text table.
pub(super) fn print_table(out: &mut impl Write, report: &Report) -> io::Result<()> {
    print_header(out, report)?;
    let peers = report.peers();
    if !report.rows.is_empty() {
        write!(out, "{:<LABEL_WIDTH$} {:<UNIT_WIDTH$}", "workload", "unit")?;
        for kind in &report.plan.systems {
            write!(out, " {:>VALUE_WIDTH$}", kind.name())?;
        }
        for peer in &peers {
            write!(out, " {:>RATIO_WIDTH$}", format!("annals/{}", peer.name()))?;
        }
        writeln!(out)?;
        for row in &report.rows {
            print_row(out, row, &report.plan.systems, &peers)?;
        }
    }
    print_limits(out, report)?;
    print_disk(out, report)?;
    let ratios = if peers.is_empty() {
        ""
    } else {
        " ratios above 1× mean annals is faster."
    };
    writeln!(
        out,
        "\nHigher is better;{ratios} Took {:.1} s.",
        report.took.as_secs_f64()
    )
}

/// Prints what was run, where.
fn print_header(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let plan = &report.plan;
    writeln!(
        out,
        "annals bench, size {}: {} single appends, {} events per batch workload and read store, \
         {}-byte payloads",
        plan.size.name(),
        thousands(plan.appends),
        thousands(plan.events),
        plan.payload
    )?;
    let fs = report.filesystem.unwrap_or("unknown file system");
    writeln!(
        out,
        "in {} ({fs}), {} CPUs; every append is durable before it returns",
        report.base.display(),
        cpus()
    )?;
    if matches!(report.filesystem, Some("tmpfs" | "ramfs")) {
        writeln!(
            out,
            "note: {fs} is memory, where fdatasync does nothing; use --dir on a real disk"
        )?;
    }
    if let Some(pg) = &report.postgres {
        writeln!(out, "{}", postgres_line(pg))?;
    }
    writeln!(out)
}

/// One line on the PostgreSQL server: version, durability settings, where its data is.
pub(super) fn postgres_line(pg: &PgSettings) -> String {
    let data = match &pg.data_directory {
        Some(dir) => {
            let fs = filesystem(std::path::Path::new(dir)).unwrap_or("unknown file system");
            format!("data in {dir} ({fs})")
        }
        None => "data directory not readable by this user".into(),
    };
    format!(
        "postgres: server {}, synchronous_commit={}, fsync={}, wal_sync_method={}, {data}",
        pg.server_version, pg.synchronous_commit, pg.fsync, pg.wal_sync_method
    )
}

/// The PostgreSQL server's settings as JSON.
pub(super) fn postgres_json(pg: &PgSettings) -> serde_json::Value {
    serde_json::json!({
        "server_version": pg.server_version,
        "synchronous_commit": pg.synchronous_commit,
        "fsync": pg.fsync,
        "wal_sync_method": pg.wal_sync_method,
        "data_directory": pg.data_directory,
        "data_filesystem": pg
            .data_directory
            .as_deref()
            .and_then(|d| filesystem(std::path::Path::new(d))),
    })
}

/// Prints one workload row.
fn print_row(
    out: &mut impl Write,
    row: &Row,
    systems: &[SystemKind],
    peers: &[SystemKind],
) -> io::Result<()> {
    write!(
        out,
        "{:<LABEL_WIDTH$} {:<UNIT_WIDTH$}",
        row.label,
        row.unit()
    )?;
    for kind in systems {
        let v = row.get(*kind).map_or_else(|| "-".into(), rate);
        write!(out, " {v:>VALUE_WIDTH$}")?;
    }
    for peer in peers {
        let r = row.ratio(*peer).map_or_else(|| "-".into(), ratio);
        write!(out, " {r:>RATIO_WIDTH$}")?;
    }
    writeln!(out)
}

/// Prints the disk's limits, as rows of their own.
fn print_limits(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let limits = &report.limits;
    if limits.fdatasync.is_none() && limits.seq_write.is_none() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<LABEL_WIDTH$} {:<UNIT_WIDTH$} {:>VALUE_WIDTH$}",
        "disk limit", "unit", "disk"
    )?;
    if let Some((v, _)) = limits.fdatasync {
        let what = format!("write {} B + fdatasync", report.plan.payload);
        writeln!(
            out,
            "{what:<LABEL_WIDTH$} {:<UNIT_WIDTH$} {:>VALUE_WIDTH$}",
            "syncs/s",
            rate(v)
        )?;
    }
    if let Some((v, bytes)) = limits.seq_write {
        let what = format!("sequential write, {} MiB", bytes >> 20);
        writeln!(
            out,
            "{what:<LABEL_WIDTH$} {:<UNIT_WIDTH$} {:>VALUE_WIDTH$}",
            "MB/s",
            rate(v / 1e6)
        )?;
        let caller = report.plan.caller_bytes();
        let limit = v / caller as f64;
        writeln!(
            out,
            "{:<LABEL_WIDTH$} {:<UNIT_WIDTH$} {:>VALUE_WIDTH$}",
            format!("  ÷ {caller} B supplied per event"),
            "events/s",
            rate(limit)
        )?;
        let batch = report
            .rows
            .iter()
            .find(|r| r.workload == annals_bench::Workload::Batch1000)
            .and_then(|r| r.get(SystemKind::Annals));
        if let Some(annals) = batch {
            writeln!(
                out,
                "annals batches of 1,000 reach {:.0} % of that limit",
                100.0 * annals / limit
            )?;
        }
        if let Some((syncs, _)) = limits.batch_sync {
            writeln!(
                out,
                "{:<LABEL_WIDTH$} {:<UNIT_WIDTH$} {:>VALUE_WIDTH$}",
                format!("write {caller} KB + fdatasync"),
                "events/s",
                rate(syncs * 1000.0)
            )?;
            if let Some(annals) = batch {
                writeln!(
                    out,
                    "(one durable sync per batch of 1,000 events' caller bytes: annals batches of \
                     1,000 reach {:.0} % of it)",
                    100.0 * annals / (syncs * 1000.0)
                )?;
            }
        }
    }
    Ok(())
}

/// Prints the disk taken per stored event by each system's filled read store.
fn print_disk(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let disk = &report.limits.disk_per_event;
    if disk.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    write!(out, "{:<LABEL_WIDTH$} {:<UNIT_WIDTH$}", "disk use", "unit")?;
    for (kind, _) in disk {
        write!(out, " {:>VALUE_WIDTH$}", kind.name())?;
    }
    writeln!(out)?;
    write!(
        out,
        "{:<LABEL_WIDTH$} {:<UNIT_WIDTH$}",
        "per event of the read store", "bytes"
    )?;
    for (_, v) in disk {
        write!(out, " {:>VALUE_WIDTH$}", rate(*v))?;
    }
    writeln!(
        out,
        "\n(allocated blocks of every file over {} events; {} B supplied per event; lower is better)",
        thousands(report.plan.stored_events()),
        report.plan.caller_bytes()
    )
}

/// The results as one JSON document.
pub(super) fn json(report: &Report) -> serde_json::Value {
    use serde_json::json;
    let plan = &report.plan;
    let peers = report.peers();
    let results: Vec<_> = report
        .rows
        .iter()
        .map(|row| {
            let systems: serde_json::Map<String, serde_json::Value> = row
                .results
                .iter()
                .map(|(kind, m)| (kind.name().to_string(), measure_json(m)))
                .collect();
            let ratios: serde_json::Map<String, serde_json::Value> = peers
                .iter()
                .filter_map(|p| Some((format!("annals/{}", p.name()), json!(row.ratio(*p)?))))
                .collect();
            json!({
                "workload": row.workload.name(),
                "description": row.workload.description(),
                "label": row.label,
                "unit": row.unit(),
                "systems": systems,
                "ratios": ratios,
            })
        })
        .collect();
    json!({
        "annals_version": env!("CARGO_PKG_VERSION"),
        "machine": {
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "cpus": cpus(),
            "cpu_model": cpu_model(),
            "kernel": kernel(),
            "dir": report.base.display().to_string(),
            "filesystem": report.filesystem,
        },
        "postgres": report.postgres.as_ref().map(postgres_json),
        "parameters": {
            "size": plan.size.name(),
            "appends": plan.appends,
            "events": plan.events,
            "payload_bytes": plan.payload,
            "read_streams": READ_STREAMS,
            "read_stream_events": plan.per_stream(),
            "sequential_write_bytes": plan.seq_bytes,
            "min_time_secs": plan.min_time.as_secs_f64(),
            "systems": plan.systems.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "workloads": plan.items.iter().map(|i| i.name()).collect::<Vec<_>>(),
        },
        "limits": {
            "fdatasync": report.limits.fdatasync.map(|(rate, ops)| json!({
                "ops_per_sec": rate,
                "ops": ops,
                "bytes_per_op": plan.payload,
            })),
            "sequential_write": report.limits.seq_write.map(|(rate, bytes)| json!({
                "bytes_per_sec": rate,
                "bytes": bytes,
                "events_per_sec_at_caller_bytes": rate / plan.caller_bytes() as f64,
            })),
            "batch_fdatasync": report.limits.batch_sync.map(|(rate, ops)| json!({
                "ops_per_sec": rate,
                "ops": ops,
                "bytes_per_op": 1000 * plan.caller_bytes(),
                "events_per_sec": rate * 1000.0,
            })),
            "caller_bytes_per_event": plan.caller_bytes(),
        },
        "disk_bytes_per_event": report
            .limits
            .disk_per_event
            .iter()
            .map(|(k, v)| (k.name().to_string(), json!(v)))
            .collect::<serde_json::Map<_, _>>(),
        "results": results,
        "elapsed_secs": report.took.as_secs_f64(),
    })
}

/// One measure as JSON.
fn measure_json(m: &Measure) -> serde_json::Value {
    serde_json::json!({
        "events_per_sec": m.per_sec(m.events),
        "ops_per_sec": m.per_sec(m.ops),
        "events": m.events,
        "ops": m.ops,
        "elapsed_secs": m.elapsed.as_secs_f64(),
    })
}

/// The SVG chart of `--plot`.
pub(super) mod plot {
    use std::path::Path;

    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    use super::Report;
    use crate::bench::measure::Row;
    use crate::bench::plan::SystemKind;
    use crate::exit::{CliError, CliResult, ERROR};

    /// Height of the chart, in pixels.
    const HEIGHT: u32 = 520;
    /// Width given to each workload's group of bars, in pixels.
    const GROUP_WIDTH: u32 = 150;
    /// Width of everything else (axis labels, margins), in pixels.
    const FRAME_WIDTH: u32 = 160;

    /// Draws the workload rows of `report` into the SVG file `path`: one group of bars per
    /// workload, one bar per system, on a log scale so that every workload fits.
    pub fn draw(path: &Path, report: &Report) -> CliResult<()> {
        if report.rows.is_empty() {
            return Err(CliError::new(
                ERROR,
                "no workload to draw: --plot needs at least one workload besides the disk limits",
            ));
        }
        render(path, report)
            .map_err(|e| CliError::new(ERROR, format!("cannot draw {}: {e}", path.display())))?;
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            return Err(CliError::new(
                ERROR,
                format!("the chart {} came out empty", path.display()),
            ));
        }
        Ok(())
    }

    /// The colour of `kind`'s bars.
    fn colour(kind: SystemKind) -> RGBColor {
        match kind {
            SystemKind::Annals => RGBColor(221, 104, 17),
            SystemKind::Postgres => RGBColor(130, 80, 160),
            SystemKind::Sqlite => RGBColor(46, 110, 170),
            SystemKind::Redb => RGBColor(90, 160, 80),
        }
    }

    /// A rate in few characters: 950, 7.84k, 12.2M, 1M.
    pub(super) fn compact(v: f64) -> String {
        let (scaled, suffix) = match v {
            v if v >= 1e9 => (v / 1e9, "G"),
            v if v >= 1e6 => (v / 1e6, "M"),
            v if v >= 1e3 => (v / 1e3, "k"),
            v => (v, ""),
        };
        let digits = if scaled >= 100.0 {
            0
        } else if scaled >= 10.0 {
            1
        } else {
            2
        };
        let text = format!("{scaled:.digits$}");
        let text = if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.')
        } else {
            &text
        };
        format!("{text}{suffix}")
    }

    /// The one or two lines labelling a workload under its bars.
    fn axis_label(row: &Row) -> Vec<String> {
        let label = &row.label;
        if let Some((a, b)) = label.split_once(", ") {
            return vec![a.to_string(), b.to_string()];
        }
        if label.len() <= 18 {
            return vec![label.clone()];
        }
        let middle = label.len() / 2;
        let split = label
            .match_indices(' ')
            .map(|(i, _)| i)
            .min_by_key(|i| i.abs_diff(middle));
        match split {
            Some(i) => vec![label[..i].to_string(), label[i + 1..].to_string()],
            None => vec![label.clone()],
        }
    }

    /// The log-scale range covering every value, in whole decades.
    fn y_range(report: &Report) -> (f64, f64) {
        let values = report
            .rows
            .iter()
            .flat_map(|r| r.results.iter().map(|(_, m)| r.value(m)))
            .filter(|v| v.is_finite() && *v > 0.0);
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo > hi {
            return (1.0, 10.0);
        }
        let lo = 10f64.powf(lo.log10().floor());
        let hi = 10f64.powf((hi.log10() + 0.15).ceil());
        (lo, hi.max(lo * 10.0))
    }

    /// Draws the chart; errors are plotters' own.
    fn render(path: &Path, report: &Report) -> Result<(), Box<dyn std::error::Error>> {
        let n = report.rows.len();
        let width = FRAME_WIDTH + GROUP_WIDTH * n as u32;
        let root = SVGBackend::new(path, (width, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (lo, hi) = y_range(report);
        let plan = &report.plan;
        let caption = format!(
            "annals bench ({}, {}-byte payloads): rate, log scale",
            plan.size.name(),
            plan.payload
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_label_formatter(&|_| String::new())
            .y_desc("events/s (reopen: opens/s)")
            .y_label_formatter(&|v| compact(*v))
            .draw()?;
        let systems = &plan.systems;
        let bar = 0.8 / systems.len() as f64;
        let value_style = TextStyle::from(("sans-serif", 11).into_font())
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        for (j, &kind) in systems.iter().enumerate() {
            let fill = colour(kind).filled();
            let bars: Vec<(f64, f64)> = report
                .rows
                .iter()
                .enumerate()
                .filter_map(|(i, row)| {
                    let v = row.get(kind).filter(|v| v.is_finite() && *v > 0.0)?;
                    Some((i as f64 - 0.4 + bar * j as f64, v))
                })
                .collect();
            chart
                .draw_series(
                    bars.iter()
                        .map(|&(x, v)| Rectangle::new([(x, lo), (x + bar * 0.92, v)], fill)),
                )?
                .label(kind.name())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], fill));
            chart
                .draw_series(bars.iter().map(|&(x, v)| {
                    Text::new(compact(v), (x + bar * 0.46, v), value_style.clone())
                }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        let label_style =
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        for (i, row) in report.rows.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64, lo));
            for (k, line) in axis_label(row).into_iter().enumerate() {
                root.draw(&Text::new(
                    line,
                    (x, y + 8 + 16 * k as i32),
                    label_style.clone(),
                ))?;
            }
        }
        root.present()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn rates_and_ratios_read_well() {
        assert_eq!(rate(1234.4), "1,234");
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(rate(1.234), "1.23");
        assert_eq!(rate(f64::NAN), "n/a");
        assert_eq!(ratio(1.284), "1.28×");
        assert_eq!(ratio(11.14), "11.1×");
        assert_eq!(plot::compact(7838.0), "7.84k");
        assert_eq!(plot::compact(12_220_000.0), "12.2M");
        assert_eq!(plot::compact(950.0), "950");
        assert_eq!(plot::compact(1_000_000.0), "1M");
        assert_eq!(plot::compact(7_800.0), "7.8k");
    }
}
