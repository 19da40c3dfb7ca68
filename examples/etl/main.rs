//! Parallel ETL: one command, no set-up.
//!
//! `cargo run --release --example etl -- [--rows N] [--malformed N] [--dir DIR]`
//!
//! Generates a CSV of 1 M orders (a few hundred of them malformed), parses and validates
//! them in parallel (malformed rows go to `dead_letters.csv` with their line numbers and
//! reasons), enriches them, aggregates revenue per customer per day, and loads the totals
//! into SQLite (`orders.db`) in batched transactions. Prints a summary.

mod orders;

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn Error>> {
    let mut rows = 1_000_000u64;
    let mut malformed = 300u64;
    let mut dir = std::env::temp_dir().join("flowstage-etl");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--rows" => rows = value()?.parse()?,
            "--malformed" => malformed = value()?.parse()?,
            "--dir" => dir = PathBuf::from(value()?),
            other => return Err(format!("unknown argument {other}; see the file's docs").into()),
        }
    }
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

    let summary = orders::run(&csv, &dead_letters, &db, flowstage::default_parallelism())?;
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
    if summary.dead_letters != generated.malformed_lines.len() as u64 || summary.rows_in != rows {
        return Err("rows were lost: the counts do not add up".into());
    }
    Ok(())
}
