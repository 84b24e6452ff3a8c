//! `cohort simulate` as a user runs it: a log file with its machines file
//! beside it, several policies side by side, JSON for scripts, a picture.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::cohort;

/// Alea's machines format: id, name, nodes, cores per node, speed, memory per node in KB.
const MACHINES: &str = "0\tbig\t2\t16\t1\t67108864\n1\tsmall\t4\t4\t1\t16777216\n";

/// A small SWF log in wagap's dialect: a wide gang that must wait for the
/// whole `small` cluster, short jobs that EASY backfills around it, and a
/// row with a negative runtime that is skipped.
const SWF: &str = "\
; a sample written by the test
1 0 0 3600 16 1 1024 16 7200 1073741824 1 1 1 1 -1 1 1 1 {1} q_1d 1:ppn=16:cl_big
2 10 0 7200 4 1 1024 4 7200 1073741824 1 2 1 1 -1 1 1 1 {1} q_1d 1:ppn=4:cl_small
3 20 0 3600 16 1 1024 16 7200 1073741824 1 3 1 1 -1 1 1 1 {1} q_1d 4:ppn=4:cl_small
4 30 0 600 4 1 1024 4 900 1073741824 1 4 1 1 -1 1 1 1 {1} q_2h 1:ppn=4:cl_small
5 40 0 -1 1 1 1024 1 900 1073741824 1 4 1 1 -1 1 1 1 {1} q_2h 1:ppn=1
6 50 0 300 8 1 1024 8 600 1073741824 1 5 1 1 -1 1 1 1 {1} q_2h 1:ppn=8:cl_big
";

fn simulate(dir: &Path, args: &[&str]) -> Output {
    Command::new(cohort()).arg("simulate").args(args).current_dir(dir).output().expect("run cohort simulate")
}

fn sample() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("log.swf"), SWF).unwrap();
    std::fs::write(dir.path().join("log.swf.machines"), MACHINES).unwrap();
    dir
}

#[test]
fn a_log_is_replayed_under_three_policies_with_json_and_pictures() {
    let dir = sample();
    let out = simulate(
        dir.path(),
        &["--trace", "log.swf", "--compare", "fcfs,easy,cohort", "--output", "json", "--plot", "run.png"],
    );
    assert!(out.status.success(), "simulate failed: {}", String::from_utf8_lossy(&out.stderr));
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).expect("a JSON array of reports");
    let policies: Vec<&str> = reports.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(policies, ["fcfs", "easy", "cohort"], "one report per policy, in the order named");
    for r in &reports {
        assert_eq!(r["jobs"], 5, "{}: five usable rows", r["policy"]);
        assert_eq!(r["completed"], 5, "{}: every job completes", r["policy"]);
        assert_eq!(r["skipped"]["negative runtime"], 1, "{}: the skipped row is counted by reason", r["policy"]);
        for field in ["utilization_cpu", "utilization_memory", "bounded_slowdown_mean", "makespan_s", "wall_ms"] {
            assert!(r[field].is_number(), "{}: `{field}` missing", r["policy"]);
        }
        for field in ["mean", "p50", "p99", "max"] {
            assert!(r["wait_s"][field].is_number(), "{}: wait `{field}` missing", r["policy"]);
        }
    }
    // Job 4 (10 min, walltime 15 min) fits beside job 2 on `small`; job 3
    // needs all four `small` nodes. FCFS holds job 4 behind job 3; EASY
    // backfills it, since it ends before job 2 frees the nodes job 3 needs.
    let mean_wait = |i: usize| reports[i]["wait_s"]["mean"].as_f64().unwrap();
    assert!(mean_wait(1) < mean_wait(0), "EASY backfills what FCFS holds back: {} vs {}", mean_wait(1), mean_wait(0));

    let png = std::fs::read(dir.path().join("run.png")).expect("the PNG was written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");

    // The trace may also be named as `cohort simulate FILE`.
    let out = simulate(dir.path(), &["log.swf", "--plot", "run.svg"]);
    assert!(out.status.success(), "simulate failed: {}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(dir.path().join("run.svg")).expect("the SVG was written");
    assert!(svg.contains("<svg") && svg.contains("wait-time distribution"), "an SVG with its charts");
}

#[test]
fn bad_input_names_what_is_wrong_and_where() {
    let dir = sample();
    let out = simulate(dir.path(), &["--trace", "log.swf", "--plot", "run.pdf"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--plot draws SVG or PNG") && err.contains("run.pdf"), "{err}");
    assert!(out.stdout.is_empty(), "a bad plot name fails before any replay");

    let out = simulate(dir.path(), &["--trace", "log.swf", "--compare", "fcfs,lifo"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown policy `lifo`"), "{err}");

    std::fs::write(
        dir.path().join("bad.swf"),
        format!("{SWF}7 60 0 soon 1 1 1024 1 600 1 1 5 1 1 -1 1 1 1 {{1}} q_2h 1:ppn=1\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("bad.swf.machines"), MACHINES).unwrap();
    let out = simulate(dir.path(), &["--trace", "bad.swf"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.swf:8: field 4 (run time) is `soon`"), "{err}");
}

#[test]
fn a_gzipped_log_is_read_as_archives_publish_it_and_other_packings_are_named() {
    use std::io::Write as _;
    // Given the sample gzipped beside its plain copy (the machines file
    // is found for `log.swf.gz` as for `log.swf`)
    let dir = sample();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(SWF.as_bytes()).unwrap();
    std::fs::write(dir.path().join("log.swf.gz"), gz.finish().unwrap()).unwrap();
    // When both are replayed, then the decisions are the same
    let report = |file: &str| -> Value {
        let out = simulate(dir.path(), &[file, "--output", "json"]);
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("a JSON report")
    };
    let (plain, gzipped) = (report("log.swf"), report("log.swf.gz"));
    for field in ["jobs", "completed", "skipped", "wait_s", "makespan_s", "utilization_cpu"] {
        assert_eq!(plain[field], gzipped[field], "`{field}` differs");
    }
    // Packings it cannot read, and bytes that are no text, are named
    let refused = |file: &str, bytes: &[u8]| -> String {
        std::fs::write(dir.path().join(file), bytes).unwrap();
        let out = simulate(dir.path(), &[file]);
        assert!(!out.status.success(), "{file} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused("empty.swf", b"\n");
    assert!(err.contains("empty.swf is empty"), "{err}");
    let err = refused("log.swf.xz", b"\xfd7zXZ\0\0\x04");
    assert!(err.contains("log.swf.xz is xz-compressed: unxz it first"), "{err}");
    let mut tar = vec![0u8; 512];
    tar[257..262].copy_from_slice(b"ustar");
    let err = refused("logs.tar", &tar);
    assert!(err.contains("logs.tar is a tar archive"), "{err}");
    // A Latin-1 byte in a header comment is no reason to refuse a log; in a field it is that field's error
    let row = b"1 0 0 10 1 -1 -1 1 10 -1 1 1 1 1 1 1 -1 -1\n";
    std::fs::write(dir.path().join("latin1.swf"), [b"; MaxNodes: 4\n; Note: caf\xe9\n".as_slice(), row].concat())
        .unwrap();
    let out = simulate(dir.path(), &["latin1.swf"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = refused(
        "latin1-field.swf",
        &[b"; MaxNodes: 4\n".as_slice(), row, b"2 5 0 1\xe9 1 -1 -1 1 10 -1 1 1 1 1 1 1 -1 -1\n"].concat(),
    );
    assert!(err.contains("latin1-field.swf:3: field 4 (run time)"), "{err}");
    // A byte-order mark before the header is no field
    std::fs::write(dir.path().join("bom.swf"), [b"\xef\xbb\xbf; MaxNodes: 4\n".as_slice(), row].concat()).unwrap();
    let out = simulate(dir.path(), &["bom.swf"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Two node lines naming one node are the trace's error, not a crash
    let node = r#"{"node": {"name": "n0", "cpu": "4", "memory": "8GiB"}}"#;
    let job = r#"{"job": {"id": 1, "submit": 0, "runtime": 5, "priority": "batch", "min": 1, "max": 1, "cpu": "1", "memory": "1GiB"}}"#;
    let err = refused("twice.jsonl", format!("{node}\n{node}\n{job}\n").as_bytes());
    assert!(err.contains("twice.jsonl:2: node `n0` is named twice (first on line 1)"), "{err}");
}

/// Issue scenario: 600 gangs no node can hold, then 100 small ones behind them.
#[test]
fn hopeless_gangs_at_the_head_block_nothing_under_any_policy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut trace = String::new();
    for i in 0..2 {
        trace += &format!("{{\"node\": {{\"name\": \"n{i}\", \"cpu\": \"4\", \"memory\": \"8GiB\"}}}}\n");
    }
    for i in 0..600 {
        trace += &format!(
            "{{\"job\": {{\"id\": {i}, \"submit\": 0, \"runtime\": 60, \"estimate\": 60, \"priority\": \"batch\", \"queue\": \"a\", \"min\": 1, \"max\": 1, \"cpu\": \"8\", \"memory\": \"1GiB\"}}}}\n"
        );
    }
    for i in 0..100 {
        trace += &format!(
            "{{\"job\": {{\"id\": {}, \"submit\": {}, \"runtime\": 5, \"estimate\": 5, \"priority\": \"batch\", \"queue\": \"a\", \"min\": 1, \"max\": 1, \"cpu\": \"1\", \"memory\": \"1GiB\"}}}}\n",
            600 + i,
            1 + i
        );
    }
    std::fs::write(dir.path().join("hol.jsonl"), trace).unwrap();
    let out = simulate(dir.path(), &["--trace", "hol.jsonl", "--compare", "fcfs,easy,cohort", "--output", "json"]);
    assert!(out.status.success(), "simulate failed: {}", String::from_utf8_lossy(&out.stderr));
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).expect("a JSON array of reports");
    for r in &reports {
        assert_eq!(r["completed"], 100, "{}: every small gang completes", r["policy"]);
        assert_eq!(r["unschedulable"], 600, "{}: every hopeless gang is counted", r["policy"]);
        assert_eq!(r["stuck"], 0, "{}", r["policy"]);
        assert_eq!(r["wait_s"]["max"], 0.0, "{}: no small gang waits", r["policy"]);
    }
}

/// A plain 18-field SWF log with only its header to describe the machine.
const PLAIN: &str = "\
; Version: 2.2
; MaxNodes: 4
; MaxProcs: 8
1 0 -1 3600 8 -1 -1 8 -1 -1 1 1 -1 -1 1 -1 -1 -1
2 10 -1 600 2 -1 -1 2 -1 -1 1 2 -1 -1 1 -1 -1 -1
3 20 -1 7200 6 -1 -1 6 -1 -1 0 1 -1 -1 1 -1 -1 -1
4 30 -1 300 1 -1 -1 1 -1 -1 5 3 -1 -1 1 -1 -1 -1
5 40 -1 100 16 -1 -1 16 -1 -1 1 3 -1 -1 1 -1 -1 -1
";

#[test]
fn a_plain_swf_log_replays_on_the_machine_its_header_describes() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("plain.swf"), PLAIN).unwrap();
    let out = simulate(dir.path(), &["--trace", "plain.swf", "--compare", "fcfs,easy,cohort", "--output", "json"]);
    assert!(out.status.success(), "simulate failed: {}", String::from_utf8_lossy(&out.stderr));
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).expect("a JSON array of reports");
    for r in &reports {
        // Job 5 asks for 16 processors of a machine of 8: it can never run.
        assert_eq!((r["completed"].as_u64(), r["unschedulable"].as_u64()), (Some(4), Some(1)), "{}", r["policy"]);
        let notes = r["notes"].to_string();
        assert!(notes.contains("machine from the log header: 4 node(s) of 2 core(s)"), "{notes}");
        assert!(notes.contains("their estimate is their real run time"), "{notes}");
    }
    // Without a header, the error names both ways to describe the machine.
    let body: String = PLAIN.lines().filter(|l| !l.starts_with(';')).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join("bare.swf"), &body).unwrap();
    let out = simulate(dir.path(), &["--trace", "bare.swf"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("MaxNodes") && err.contains("--cluster"), "{err}");
    // A header that says 0 is not mistaken for no header
    std::fs::write(dir.path().join("zero.swf"), format!("; MaxNodes: 0\n{body}")).unwrap();
    let err = String::from_utf8_lossy(&simulate(dir.path(), &["--trace", "zero.swf"]).stderr).to_string();
    assert!(err.contains("the header's `MaxNodes: 0` is no count of nodes"), "{err}");
}

#[test]
fn a_cli_piped_into_head_ends_quietly() {
    // Far more output than a pipe holds, so the writer meets the closed pipe.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{} simulate --generate --nodes 10 --jobs 20000 | head -1", cohort()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.is_empty(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("{\"node\""));
}

#[test]
fn a_cli_whose_reader_went_away_ends_quietly_with_the_sigpipe_status() {
    // `set -o pipefail` reports the writer's status, as for any Unix tool.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail; {} simulate --generate --nodes 10 --jobs 20000 | head -1", cohort()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(err.is_empty(), "{err}");
}
