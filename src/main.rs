//! `cohort`: the command-line entry point of Cohort.

mod plot;
mod simulate;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cohort", version, about = "A gang-aware scheduler for batch, streaming and in-memory stores on one cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a workload trace through the scheduler in virtual time, or generate one.
    Simulate(simulate::Args),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("COHORT_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate(args) => simulate::run(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
