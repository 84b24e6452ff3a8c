//! `cohort top`: the cluster in the terminal, refreshed every second: nodes
//! with their allocation, running gangs and where they run, pending gangs
//! and why they wait. `q` (or Esc, or Ctrl-C) quits. `--once` prints one
//! frame as plain text and exits (for scripts and terminals without a TTY).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cohort_proto as pb;
use ratatui::Frame;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Row, Table};

use super::client::channel;
use crate::json::{JobDoc, NodeDoc};

const REFRESH: Duration = Duration::from_secs(1);

/// What one frame shows.
struct Cluster {
    coordinator: String,
    nodes: Vec<NodeDoc>,
    jobs: Vec<JobDoc>,
}

async fn fetch(coordinator: &str) -> Result<Cluster> {
    let ch = channel(coordinator).await?;
    let nodes = pb::nodes_client::NodesClient::new(ch.clone()).list(pb::ListNodesRequest {}).await?.into_inner().nodes;
    let jobs = pb::jobs_client::JobsClient::new(ch).list(pb::ListJobsRequest {}).await?.into_inner().jobs;
    Ok(Cluster {
        coordinator: coordinator.to_string(),
        nodes: nodes.iter().map(NodeDoc::from).collect(),
        jobs: jobs.iter().map(JobDoc::from).collect(),
    })
}

pub async fn run(coordinator: &str, once: bool) -> Result<()> {
    if once {
        let cluster = fetch(coordinator).await?;
        let mut terminal = Terminal::new(TestBackend::new(120, 40))?;
        terminal.draw(|f| draw(f, &cluster, None))?;
        print!("{}", plain(terminal.backend().buffer()));
        return Ok(());
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!("cohort top needs a terminal; use `cohort top --once`, `cohort nodes` or `cohort jobs`");
    }
    let mut terminal = ratatui::try_init().context("cannot take over the terminal")?;
    let result = interact(&mut terminal, coordinator).await;
    ratatui::restore();
    result
}

async fn interact(terminal: &mut ratatui::DefaultTerminal, coordinator: &str) -> Result<()> {
    loop {
        let (cluster, error) = match fetch(coordinator).await {
            Ok(c) => (c, None),
            Err(e) => {
                (Cluster { coordinator: coordinator.into(), nodes: vec![], jobs: vec![] }, Some(format!("{e:#}")))
            }
        };
        terminal.draw(|f| draw(f, &cluster, error.as_deref()))?;
        let next = Instant::now() + REFRESH;
        while let Some(left) = next.checked_duration_since(Instant::now()) {
            if !event::poll(left)? {
                break;
            }
            if let Event::Key(key) = event::read()? {
                let ctrl_c = key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if key.kind == KeyEventKind::Press && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
                {
                    return Ok(());
                }
            }
        }
    }
}

fn cores(millis: u64) -> String {
    format!("{:.1}", millis as f64 / 1000.0)
}

/// `[#####.....] 50%`
fn gauge(used: u64, total: u64, width: usize) -> String {
    let f = if total == 0 { 0.0 } else { (used as f64 / total as f64).min(1.0) };
    let filled = (f * width as f64).round() as usize;
    format!("[{}{}] {:>3.0}%", "#".repeat(filled), ".".repeat(width - filled), f * 100.0)
}

fn live(state: &str) -> bool {
    matches!(state, "starting" | "running" | "stopping")
}

fn draw(f: &mut Frame, c: &Cluster, error: Option<&str>) {
    let [head, nodes, running, pending] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(c.nodes.len() as u16 + 3),
        Constraint::Min(5),
        Constraint::Min(5),
    ])
    .areas(f.area());
    let up = c.nodes.iter().filter(|n| n.state != "lost").count();
    let title = match error {
        Some(e) => format!("cohort top · {} · cannot reach it: {e}", c.coordinator),
        None => format!("cohort top · {} · {up}/{} nodes up · q quits", c.coordinator, c.nodes.len()),
    };
    f.render_widget(Line::from(title).style(Style::new().add_modifier(Modifier::BOLD)), head);
    draw_nodes(f, nodes, c);
    draw_running(f, running, c);
    draw_pending(f, pending, c);
}

fn header(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.iter().copied()).style(Style::new().fg(Color::DarkGray).add_modifier(Modifier::BOLD))
}

fn draw_nodes(f: &mut Frame, area: Rect, c: &Cluster) {
    let rows = c.nodes.iter().map(|n| {
        let slots = c.jobs.iter().flat_map(|j| j.slots.iter()).filter(|s| live(&s.state) && s.node == n.name).count();
        Row::new(vec![
            Cell::from(n.name.clone()),
            Cell::from(n.state.clone()).style(state_style(&n.state)),
            Cell::from(format!(
                "{} {}/{}",
                gauge(n.allocated_cpu_millis, n.cpu_millis, 12),
                cores(n.allocated_cpu_millis),
                cores(n.cpu_millis)
            )),
            Cell::from(gauge(n.allocated_memory_bytes, n.memory_bytes, 12)),
            Cell::from(slots.to_string()),
        ])
    });
    let widths = [
        Constraint::Length(16),
        Constraint::Length(9),
        Constraint::Length(30),
        Constraint::Length(20),
        Constraint::Length(6),
    ];
    let table = Table::new(rows, widths)
        .header(header(&["node", "state", "cpu", "memory", "slots"]))
        .block(Block::bordered().title(" nodes "));
    f.render_widget(table, area);
}

fn draw_running(f: &mut Frame, area: Rect, c: &Cluster) {
    let rows = c.jobs.iter().filter(|j| j.state == "running").map(|j| {
        let mut nodes: Vec<&str> = j.slots.iter().filter(|s| live(&s.state)).map(|s| s.node.as_str()).collect();
        nodes.dedup();
        let slots = j.slots.iter().filter(|s| live(&s.state)).count();
        Row::new(vec![
            j.id.to_string(),
            j.name.clone(),
            j.kind.clone(),
            j.priority.clone(),
            j.queue.clone(),
            slots.to_string(),
            nodes.join(","),
        ])
    });
    let widths = [
        Constraint::Length(5),
        Constraint::Length(22),
        Constraint::Length(9),
        Constraint::Length(12),
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Min(10),
    ];
    let table = Table::new(rows, widths)
        .header(header(&["id", "gang", "kind", "priority", "queue", "slots", "nodes"]))
        .block(Block::bordered().title(" running "));
    f.render_widget(table, area);
}

fn draw_pending(f: &mut Frame, area: Rect, c: &Cluster) {
    let rows = c.jobs.iter().filter(|j| j.state == "pending").map(|j| {
        Row::new(vec![j.id.to_string(), j.name.clone(), j.priority.clone(), j.queue.clone(), j.reason.clone()])
    });
    let widths = [
        Constraint::Length(5),
        Constraint::Length(22),
        Constraint::Length(12),
        Constraint::Length(10),
        Constraint::Min(20),
    ];
    let table = Table::new(rows, widths)
        .header(header(&["id", "gang", "priority", "queue", "why it waits"]))
        .block(Block::bordered().title(" pending "));
    f.render_widget(table, area);
}

fn state_style(state: &str) -> Style {
    match state {
        "ready" | "running" => Style::new().fg(Color::Green),
        "lost" | "failed" => Style::new().fg(Color::Red),
        _ => Style::new().fg(Color::Yellow),
    }
}

/// A buffer's text, trailing blanks trimmed.
fn plain(buffer: &ratatui::buffer::Buffer) -> String {
    let area = buffer.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let line: String = (area.left()..area.right()).map(|x| buffer[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
