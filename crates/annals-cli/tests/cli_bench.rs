//! `annals bench`, run as a real process: JSON and table output, the SVG chart, bad options.
//! Sizes are tiny (`--events 2000 --appends 40`) so that each run takes a few seconds; the
//! figures are only checked to be positive, never compared. PostgreSQL is left out (these runs
//! do not see `ANNALS_PG_URL`); `cli_bench_pg.rs` measures it.

use std::process::{Command, Output};

/// Every workload `annals bench` runs on every system, by JSON name.
const WORKLOADS: [&str; 11] = [
    "append-1",
    "append-8",
    "batch-100",
    "batch-1000",
    "typed-json",
    "typed-bincode",
    "read-stream",
    "read-all",
    "aggregate",
    "aggregate-bincode",
    "reopen",
];

/// The systems compared.
const SYSTEMS: [&str; 3] = ["annals", "sqlite", "redb"];

/// Runs `annals bench` with tiny sizes, in a fresh temporary folder, plus `extra` options.
fn bench(dir: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_annals"))
        .env_remove("ANNALS_PG_URL")
        .args([
            "bench",
            "--size",
            "small",
            "--events",
            "2000",
            "--appends",
            "40",
        ])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run annals")
}

/// Runs `annals bench` with `args` only (for the option checks, which fail before any work).
fn bench_args(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_annals"))
        .env_remove("ANNALS_PG_URL")
        .arg("bench")
        .args(args)
        .output()
        .expect("run annals")
}

/// Asserts the run succeeded, showing its stderr otherwise.
fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}, stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn json_has_every_workload_and_system_and_the_plot_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("bench.svg");
    let out = bench(
        dir.path(),
        &[
            "--systems",
            "annals,sqlite,redb",
            "--json",
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    assert_success(&out);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");

    let results = doc["results"].as_array().expect("results");
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(names, WORKLOADS);
    for result in results {
        for system in SYSTEMS {
            let m = &result["systems"][system];
            let rate = m["events_per_sec"].as_f64().unwrap_or(0.0);
            assert!(rate > 0.0, "{system} on {}: {m}", result["workload"]);
            assert!(m["elapsed_secs"].as_f64().unwrap_or(0.0) > 0.0);
        }
        assert!(result["ratios"]["annals/sqlite"].as_f64().unwrap() > 0.0);
        assert!(result["ratios"]["annals/redb"].as_f64().unwrap() > 0.0);
    }
    assert!(doc["limits"]["fdatasync"]["ops_per_sec"].as_f64().unwrap() > 0.0);
    assert!(
        doc["limits"]["sequential_write"]["bytes_per_sec"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    for system in SYSTEMS {
        // The read store holds 2,000 + 2 × 10,000 events of about 100 bytes: each takes some.
        let per_event = doc["disk_bytes_per_event"][system].as_f64().unwrap_or(0.0);
        assert!(
            per_event > 50.0,
            "{system}: {per_event} disk bytes per event"
        );
    }
    assert_eq!(doc["limits"]["caller_bytes_per_event"], 139);
    assert_eq!(doc["parameters"]["events"], 2000);
    assert_eq!(doc["parameters"]["payload_bytes"], 100);
    assert!(doc["machine"]["cpus"].as_u64().unwrap() >= 1);

    let chart = std::fs::read_to_string(&svg).expect("chart written");
    assert!(chart.starts_with("<svg") || chart.starts_with("<?xml"));
    assert!(chart.contains("annals") && chart.contains("sqlite") && chart.contains("redb"));

    // Only the chart is left behind: the temporary folder is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn table_has_every_workload_row_and_the_disk_limits() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path(), &[]);
    assert_success(&out);
    let table = String::from_utf8(out.stdout).unwrap();
    for row in [
        "append 1 event, 1 thread",
        "append 1 event, 8 threads",
        "batches of 100 ",
        "batches of 1,000",
        "read 1 stream of 200",
        "typed batches of 1,000, JSON",
        "typed batches of 1,000, bincode",
        "read all 22,000 events",
        "load a 10,000-event aggregate, JSON",
        "load a 10,000-event aggregate, bincode",
        "reopen, 22,000 events",
        "per event of the read store",
        "B supplied per event",
        "fdatasync",
        "sequential write",
        "annals/sqlite",
        "annals/redb",
    ] {
        assert!(table.contains(row), "no `{row}` in:\n{table}");
    }
}

#[test]
fn without_annals_there_are_no_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        dir.path(),
        &[
            "--systems",
            "sqlite",
            "--workloads",
            "batch-100,read-stream",
        ],
    );
    assert_success(&out);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("batches of 100") && table.contains("read 1 stream"));
    assert!(!table.contains("annals/"), "{table}");
    assert!(!table.contains("append 1 event"), "{table}");
}

#[test]
fn bad_options_fail_with_a_message() {
    for (args, needle) in [
        (&["--payload", "0"][..], "payload"),
        (&["--payload", "2000000"][..], "payload"),
        (&["--size", "huge"][..], "huge"),
        (&["--systems", "postgres"][..], "postgres"),
        (&["--workloads", "nope"][..], "nope"),
        (&["--events", "5"][..], "5"),
        (
            &["--payload", "500000", "--workloads", "batch-1000"][..],
            "batch-1000",
        ),
    ] {
        let out = bench_args(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let out = bench_args(&["--dir", "/nonexistent/annals-bench"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/annals-bench"));
}

#[test]
fn help_has_examples() {
    let out = bench_args(&["--help"]);
    assert_success(&out);
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("Examples:") && help.contains("--plot"),
        "{help}"
    );
    for w in WORKLOADS {
        assert!(help.contains(w), "no {w} in:\n{help}");
    }
}
