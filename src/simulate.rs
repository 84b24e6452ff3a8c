//! `cohort simulate`: replay a trace (or several policies on it) and report.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use cohort_scheduler::Policy;
use cohort_scheduler::model::NodeSpec;
use cohort_scheduler::sim::{Report, Summary, simulate};
use cohort_scheduler::trace::{self, Format, GenerateOptions, Trace};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

#[derive(clap::Args)]
pub struct Args {
    /// Trace to replay: SWF, Alibaba CSV or Cohort JSONL, gzipped (`.gz`) or not.
    #[arg(long, required_unless_present_any = ["generate", "trace_file"])]
    trace: Option<PathBuf>,
    /// The trace, as `cohort simulate FILE`: the same as `--trace FILE`.
    #[arg(value_name = "TRACE", conflicts_with_all = ["trace", "generate"])]
    trace_file: Option<PathBuf>,
    /// Trace format; guessed from the file when omitted.
    #[arg(long, value_parser = ["swf", "alibaba-batch", "alibaba-openb", "jsonl"])]
    format: Option<String>,
    /// Machines to replay on: an Alea `.machines` file, the openb node CSV, or a
    /// JSONL file with node lines. Defaults: FILE.machines beside an SWF log,
    /// the node list beside an openb pod list, 1,300 × (64 cores, 128 GiB) for Alibaba 2017.
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// Policy to replay with.
    #[arg(long, default_value = "cohort", value_parser = ["cohort", "easy", "fcfs"])]
    policy: String,
    /// Replay several policies side by side, e.g. `fcfs,easy,cohort`.
    #[arg(long, value_delimiter = ',')]
    compare: Vec<String>,
    /// Cohort policy: a fixed number of seconds a gang waits before it gets a
    /// reservation (default: 3.5 mean run times of the slots finished so far).
    #[arg(long)]
    reserve_after: Option<u64>,
    /// Cohort policy: how many gangs hold reservations at once.
    #[arg(long)]
    reservations: Option<usize>,
    /// Draw utilization, queue length and waits over time per policy (FILE.svg or FILE.png).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write a synthetic trace (JSON lines) to stdout instead of replaying one.
    #[arg(long)]
    generate: bool,
    #[arg(long, default_value_t = 100)]
    nodes: u32,
    #[arg(long, default_value_t = 1000)]
    jobs: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Offered cpu load of the generated trace, as a fraction of capacity.
    #[arg(long, default_value_t = 0.75)]
    load: f64,
}

/// Replays the trace under each policy, one policy per core at a time; the
/// reports come back in the order the policies were named.
fn replay_in_parallel(trace: &Trace, runs: Vec<(&str, Policy)>) -> Vec<Report> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(runs.len()).max(1);
    let next = AtomicUsize::new(0);
    let mut reports: Vec<(usize, Report)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((name, policy)) = runs.get(i) else { break };
                        mine.push((i, simulate(trace, name, policy.clone())));
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a replay panicked")).collect()
    });
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

pub fn run(args: Args, output: crate::cli::Output) -> Result<()> {
    if args.generate {
        if args.nodes == 0 || args.jobs == 0 {
            bail!("--nodes and --jobs must be at least 1");
        }
        if !(args.load > 0.0 && args.load <= 4.0) {
            bail!("--load must be in (0, 4], got {}", args.load);
        }
        let trace =
            trace::generate(&GenerateOptions { nodes: args.nodes, jobs: args.jobs, seed: args.seed, load: args.load });
        let mut out = String::new();
        trace::write_jsonl(&trace, &mut out);
        print!("{out}");
        return Ok(());
    }
    let path = args.trace.as_deref().or(args.trace_file.as_deref()).expect("clap requires a trace without --generate");
    if let Some(plot) = &args.plot {
        crate::plot::Format::of(plot)?;
    }
    let trace = load_trace(path, args.format.as_deref(), args.cluster.as_deref())?;
    let policies = if args.compare.is_empty() { vec![args.policy.clone()] } else { args.compare.clone() };
    let mut runs = Vec::new();
    for name in &policies {
        let mut policy = Policy::by_name(name)
            .with_context(|| format!("unknown policy `{name}` in --compare (known: fcfs, easy, cohort)"))?;
        if name == "cohort" {
            if let Some(s) = args.reserve_after {
                policy.reserve_after = s * 1000;
                policy.reserve_after_runtimes = None;
            }
            if let Some(n) = args.reservations {
                policy.max_reservations = n;
            }
        }
        runs.push((name.as_str(), policy));
    }
    let reports = replay_in_parallel(&trace, runs);
    if let Some(plot) = &args.plot {
        crate::plot::draw(plot, &path.display().to_string(), &reports)?;
    }
    match output {
        crate::cli::Output::Json => {
            // The shape follows the flag, not the count: `--compare` always lists.
            let json = if args.compare.is_empty() {
                serde_json::to_string_pretty(&reports[0])?
            } else {
                serde_json::to_string_pretty(&reports)?
            };
            println!("{json}");
        }
        crate::cli::Output::Table | crate::cli::Output::Csv => print!("{}", render(&trace, path, &reports)),
    }
    Ok(())
}

/// Reads a trace file and the cluster it replays on.
pub fn load_trace(path: &Path, format: Option<&str>, cluster: Option<&Path>) -> Result<Trace> {
    let text = read_log(path)?;
    let name = path.display().to_string();
    if text.trim().is_empty() {
        bail!("{name} is empty: there is nothing to replay");
    }
    // Archives publish their logs gzipped: `x.swf.gz` is read as `x.swf`.
    let unpacked_name = name.strip_suffix(".gz").unwrap_or(&name);
    let format = match format {
        Some(f) => Format::parse(f).expect("clap checked the format"),
        None => Format::guess(unpacked_name, text.lines().next().unwrap_or("")).with_context(|| {
            format!("cannot tell the format of {name}: pass --format swf|alibaba-batch|alibaba-openb|jsonl")
        })?,
    };
    let nodes = match cluster {
        Some(c) => Some(load_cluster(c)?),
        None => None,
    };
    let trace = match format {
        Format::Swf => {
            // The machines: --cluster, else FILE.machines beside it, else the log's header.
            let beside = PathBuf::from(format!("{unpacked_name}.machines"));
            let (nodes, from) = match nodes {
                Some(n) => (Some(n), cluster.map(|c| c.display().to_string())),
                None if beside.exists() => (Some(load_cluster(&beside)?), Some(beside.display().to_string())),
                None => (None, None),
            };
            let mut trace = trace::parse_swf(&name, &text, nodes)?;
            if let Some(from) = from {
                trace.notes.insert(0, format!("machine from {from}"));
            }
            trace
        }
        Format::AlibabaBatch => trace::parse_alibaba_batch(&name, &text, nodes)?,
        Format::AlibabaOpenb => {
            let nodes = match nodes {
                Some(n) => n,
                None => {
                    let beside = path.with_file_name("openb_node_list_all_node.csv");
                    load_cluster(&beside).with_context(|| {
                        format!(
                            "an openb pod list needs its node list: pass --cluster or put {} beside it",
                            beside.display()
                        )
                    })?
                }
            };
            trace::parse_alibaba_openb(&name, &text, nodes)?
        }
        Format::Jsonl => {
            let mut t = trace::parse_jsonl(&name, &text)?;
            if let Some(n) = nodes {
                t.nodes = n;
            }
            t
        }
    };
    if trace.nodes.is_empty() {
        bail!("{name}: the trace names no nodes; pass --cluster");
    }
    Ok(trace)
}

/// A log's text, gunzipped if it is gzip (as the Parallel Workloads Archive
/// and Google publish theirs); other packings are named, not misread.
fn read_log(path: &Path) -> Result<String> {
    let name = path.display();
    let mut bytes = std::fs::read(path).with_context(|| format!("cannot read {name}"))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut unpacked = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes.as_slice())
            .read_to_end(&mut unpacked)
            .with_context(|| format!("cannot gunzip {name}"))?;
        bytes = unpacked;
    }
    const PACKINGS: [(&[u8], &str); 4] = [
        (b"\xfd7zXZ\0", "xz-compressed: unxz it first"),
        (b"\x28\xb5\x2f\xfd", "zstd-compressed: unzstd it first"),
        (b"BZh", "bzip2-compressed: bunzip2 it first"),
        (b"PK\x03\x04", "a zip archive: unzip it first"),
    ];
    if let Some((_, what)) = PACKINGS.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        bail!("{name} is {what}");
    }
    if bytes.get(257..262) == Some(b"ustar") {
        bail!("{name} is a tar archive: extract the log from it first (tar xf)");
    }
    // A byte-order mark (an editor on Windows) is no part of the first line.
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).map(<[u8]>::to_vec).unwrap_or(bytes);
    // Not UTF-8 (a Latin-1 comment in a header): kept as U+FFFD, so a
    // comment reads on and a field fails by its line as any bad value does.
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

fn load_cluster(path: &Path) -> Result<Vec<NodeSpec>> {
    let text = read_log(path)?;
    let name = path.display().to_string();
    if text.trim().is_empty() {
        bail!("{name} is empty: it lists no machines");
    }
    let first = text.lines().next().unwrap_or("");
    if first.starts_with("sn,") {
        Ok(trace::parse_openb_nodes(&name, &text)?)
    } else if first.trim_start().starts_with('{') {
        Ok(trace::parse_jsonl(&name, &text)?.nodes)
    } else {
        Ok(trace::parse_swf_machines(&name, &text)?)
    }
}

/// `1 job`, `2 jobs`.
fn counted(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

fn render(trace: &Trace, path: &Path, reports: &[Report]) -> String {
    let mut out = String::new();
    let cores: u64 = trace.nodes.iter().map(|n| n.capacity.cpu_millis).sum::<u64>() / 1000;
    let _ = writeln!(
        out,
        "{}: {} on {} ({} cores), format {}",
        path.display(),
        counted(trace.jobs.len(), "job"),
        counted(trace.nodes.len(), "node"),
        cores,
        trace.format
    );
    if !trace.skipped.is_empty() {
        let skipped: Vec<String> = trace.skipped.iter().map(|(r, n)| format!("{n} {r}")).collect();
        let _ = writeln!(out, "skipped rows: {}", skipped.join(", "));
    }
    for note in &trace.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let mut t = table(&[
        "policy",
        "done",
        "unsched",
        "util cpu",
        "util mem",
        "wait mean",
        "wait p50",
        "wait p99",
        "wait max",
        "bsld",
        "makespan",
        "preempted",
        "lost slot·s",
        "wall",
    ]);
    for r in reports {
        t.add_row(vec![
            r.policy.clone(),
            r.completed.to_string(),
            r.unschedulable.to_string(),
            pct(r.utilization_cpu),
            pct(r.utilization_memory),
            dur(r.wait_s.mean),
            dur(r.wait_s.p50),
            dur(r.wait_s.p99),
            dur(r.wait_s.max),
            format!("{:.2}", r.bounded_slowdown_mean),
            dur(r.makespan_s),
            r.preempted_slots.to_string(),
            format!("{:.0}", r.lost_slot_seconds),
            format!("{:.2} s", r.wall_ms / 1000.0),
        ]);
    }
    let _ = writeln!(out, "{t}");
    let mut classes: Vec<&String> = reports.iter().flat_map(|r| r.wait_by_class_s.keys()).collect();
    classes.sort();
    classes.dedup();
    let mut t = table(&["class", "policy", "jobs", "wait p50", "wait p99", "wait max"]);
    for class in classes {
        for r in reports {
            if let Some(s) = r.wait_by_class_s.get(class) {
                t.add_row(vec![
                    class.clone(),
                    r.policy.clone(),
                    s.count.to_string(),
                    dur(s.p50),
                    dur(s.p99),
                    dur(s.max),
                ]);
            }
        }
    }
    let _ = writeln!(out, "wait by priority class\n{t}");
    let mut t = table(&["policy", "placements", "placements/s", "pass p50", "pass p99", "pass max", "longest wait"]);
    for r in reports {
        let lat = |s: &Summary| format!("{:.1} µs", s.p50);
        t.add_row(vec![
            r.policy.clone(),
            r.placements.to_string(),
            format!("{:.0}", r.placements_per_sec),
            lat(&r.decision_latency_us),
            format!("{:.1} µs", r.decision_latency_us.p99),
            format!("{:.1} µs", r.decision_latency_us.max),
            r.longest_wait.map_or("-".into(), |(id, w)| format!("job {id}: {}", dur(w))),
        ]);
    }
    let _ = writeln!(out, "scheduler speed (wall clock, this machine)\n{t}");
    if reports.iter().any(|r| r.stuck > 0) {
        let _ = writeln!(
            out,
            "warning: some jobs never started although they fit the cluster: {:?}",
            reports.iter().map(|r| (&r.policy, r.stuck)).collect::<Vec<_>>()
        );
    }
    out
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(header.to_vec());
    t
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Seconds as a short human duration: `42 s`, `3.5 min`, `2.1 h`, `4.0 d`.
fn dur(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.0} s")
    } else if s < 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else if s < 86400.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} d", s / 86400.0)
    }
}
