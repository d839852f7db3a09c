//! `annals bench` with PostgreSQL, run as a real process: the side-by-side workloads and
//! `--pg-scaling` against the server `ANNALS_PG_URL` names (without it, those tests say they
//! were skipped and pass), and the clear failures when no server or a wrong one is given.

use std::process::{Command, Output};
use std::sync::Mutex;

mod common;
use common::{URL, server};

/// The runs against the server one at a time, so that each can check it left no database.
static SERVER: Mutex<()> = Mutex::new(());

/// Runs `annals bench` with `args`, with `ANNALS_PG_URL` set to `url` (unset for `None`).
fn bench(url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_annals"));
    cmd.arg("bench").args(args);
    match url {
        Some(url) => cmd.env(URL, url),
        None => cmd.env_remove(URL),
    };
    cmd.output().expect("run annals")
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

/// The databases the bench creates (`annals_bench_…`) that exist on the server.
fn bench_databases(url: &str) -> Vec<String> {
    let mut c = annals_bench::pg::client(url).expect("connect");
    c.query(
        "SELECT datname FROM pg_database WHERE datname LIKE 'annals\\_bench\\_%'",
        &[],
    )
    .expect("list databases")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A whole number of the table (`12,345`).
fn number(s: &str) -> u64 {
    s.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("`{s}` is not a number"))
}

#[test]
fn postgres_runs_beside_the_others_by_default_and_its_databases_are_dropped() {
    let Some(url) = server("bench with postgres") else {
        return;
    };
    let _one = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // No --systems: with a server, postgres is among the defaults.
    let out = bench(
        Some(&url),
        &[
            "--size",
            "small",
            "--events",
            "2000",
            "--appends",
            "40",
            "--workloads",
            "append-1,batch-100,read-all,aggregate",
            "--json",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_success(&out);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(
        doc["parameters"]["systems"],
        serde_json::json!(["annals", "postgres", "sqlite", "redb"])
    );
    assert_eq!(doc["postgres"]["synchronous_commit"], "on", "{doc}");
    let results = doc["results"].as_array().expect("results");
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["append-1", "batch-100", "read-all", "aggregate"]);
    for result in results {
        let m = &result["systems"]["postgres"];
        assert!(
            m["events_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
            "{}: {m}",
            result["workload"]
        );
        assert!(result["ratios"]["annals/postgres"].as_f64().unwrap_or(0.0) > 0.0);
    }
    // 2,000 events + the two 10,000-event aggregates: the database takes some bytes for each.
    let per_event = doc["disk_bytes_per_event"]["postgres"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(per_event > 50.0, "{per_event} disk bytes per event");
    assert_eq!(bench_databases(&url), Vec::<String>::new());

    // The table has the ratio column and the server's settings.
    let out = bench(
        Some(&url),
        &[
            "--systems",
            "annals,postgres",
            "--events",
            "2000",
            "--appends",
            "40",
            "--workloads",
            "read-stream",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_success(&out);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("annals/postgres"), "{table}");
    assert!(table.contains("synchronous_commit=on"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("read 1 stream of 200"))
        .unwrap_or_else(|| panic!("no read-stream row in:\n{table}"));
    let figures: Vec<&str> = row.split_whitespace().rev().take(3).collect();
    // ratio, postgres, annals (from the right)
    assert!(number(figures[1]) > 0 && number(figures[2]) > 0, "{row}");
    assert_eq!(bench_databases(&url), Vec::<String>::new());
}

#[test]
fn pg_scaling_prints_a_row_per_writer_count_and_checks_the_log() {
    let Some(url) = server("bench --pg-scaling") else {
        return;
    };
    let _one = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        Some(&url),
        &[
            "--pg-scaling",
            "1,2",
            "--seconds",
            "1",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_success(&out);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("synchronous_commit=on"), "{table}");
    let mut seen = Vec::new();
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // system, N, process(es)/thread(s), appends, appends/s, per writer, p50, p99, speed-up,
        // in log
        if f.len() != 10 || !["postgres", "annals"].contains(&f[0]) {
            continue;
        }
        let appends = number(f[3]);
        assert!(appends > 0, "{line}");
        assert!(number(f[4]) > 0 && number(f[5]) > 0, "{line}");
        let p50: f64 = f[6].parse().unwrap();
        let p99: f64 = f[7].parse().unwrap();
        assert!(p50 > 0.0 && p99 >= p50, "{line}");
        assert!(f[8].ends_with('×'), "{line}");
        assert_eq!(
            number(f[9]),
            appends,
            "the log holds what was reported: {line}"
        );
        seen.push(format!("{} {} {}", f[0], f[1], f[2]));
    }
    assert_eq!(
        seen,
        [
            "postgres 1 process",
            "postgres 2 processes",
            "annals 1 thread",
            "annals 2 threads"
        ],
        "{table}"
    );
    assert!(table.contains("no gap"), "{table}");
    assert_eq!(bench_databases(&url), Vec::<String>::new());
}

#[test]
fn postgres_without_a_server_or_with_a_wrong_one_fails_clearly() {
    for args in [
        &["--systems", "annals,postgres", "--workloads", "append-1"][..],
        &["--pg-scaling", "1,2"][..],
    ] {
        let out = bench(None, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("needs a PostgreSQL server")
                && stderr.contains("--pg-url")
                && stderr.contains(URL),
            "{args:?}: {stderr}"
        );
    }
    // The help says how PostgreSQL is measured.
    let out = bench(None, &["--help"]);
    assert_success(&out);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("synchronous_commit") && help.contains("--pg-scaling"),
        "{help}"
    );

    let dir = tempfile::tempdir().unwrap();
    for (url, needle) in [
        (
            "host=/nonexistent/annals-pg user=nobody dbname=x",
            "cannot connect to PostgreSQL",
        ),
        ("host='unterminated", "not a PostgreSQL connection string"),
    ] {
        for args in [
            &["--systems", "postgres", "--workloads", "append-1"][..],
            &["--pg-scaling", "1", "--seconds", "1"][..],
        ] {
            let out = bench(
                None,
                &[
                    args,
                    &["--pg-url", url, "--dir", dir.path().to_str().unwrap()],
                ]
                .concat(),
            );
            assert_eq!(out.status.code(), Some(1), "{url} {args:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(needle) && !stderr.contains("panicked"),
                "{url} {args:?}: {stderr}"
            );
        }
    }
}
