//! Parallel ETL: one command, no set-up.
//!
//! `cargo run --release --example etl -- [--rows N] [--malformed N] [--dir DIR]`
//!
//! Generates a CSV of 1 M orders (a few hundred of them malformed), parses and validates
//! them in parallel (malformed rows go to `dead_letters.csv` with their line numbers and
//! reasons, written by a blocking sink that owns the CSV writer), enriches them,
//! aggregates revenue per customer per day, and loads the totals into SQLite
//! (`orders.db`) in batched transactions, from a blocking sink that owns the connection.
//! A progress bar shows on stderr while the CSV is read; prints a summary and the run's
//! per-stage report. Arguments are parsed with clap (`--help`).

mod orders;

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;

/// Parallel ETL over generated orders: CSV → validate → dead letters → aggregate → SQLite.
#[derive(Parser)]
struct Args {
    /// Orders to generate.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Malformed rows among them.
    #[arg(long, default_value_t = 300)]
    malformed: u64,
    /// Where the CSV, the dead letters and the database go (default: a temp directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let Args {
        rows,
        malformed,
        dir,
    } = Args::parse();
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join("flowstage-etl"));
    std::fs::create_dir_all(&dir)?;
    let (csv, dead_letters, db) = (
        dir.join("orders.csv"),
        dir.join("dead_letters.csv"),
        dir.join("orders.db"),
    );

    let generating = Instant::now();
    let generated = orders::generate(&csv, rows, malformed)?;
    println!(
        "generated {} rows ({} malformed) in {:.2?}: {}",
        generated.rows,
        generated.malformed_lines.len(),
        generating.elapsed(),
        csv.display()
    );

    let summary = orders::run(
        &csv,
        &dead_letters,
        &db,
        flowstage::default_parallelism(),
        true,
    )?;
    let seconds = summary.elapsed.as_secs_f64();
    println!("rows in:       {}", summary.rows_in);
    println!("orders:        {}", summary.orders);
    println!(
        "rows loaded:   {} daily totals into {}",
        summary.rows_loaded,
        db.display()
    );
    println!(
        "dead letters:  {} in {}",
        summary.dead_letters,
        dead_letters.display()
    );
    println!("elapsed:       {seconds:.2} s");
    println!("rows/s:        {:.0}", summary.rows_in as f64 / seconds);
    println!("\n{}", summary.report);
    if summary.dead_letters != generated.malformed_lines.len() as u64 || summary.rows_in != rows {
        return Err("rows were lost: the counts do not add up".into());
    }
    Ok(())
}
