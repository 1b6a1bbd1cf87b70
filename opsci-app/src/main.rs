//! `opsci-app`: for now, folds the embedded sample stock movements in process
//! (stream-core's test driver, no broker) and prints the stock per product.

use std::process::ExitCode;

use opsci_app::stock::{self, Direction, Movement};
use stream_core::serdes::{Json, Utf8, I64};
use stream_core::TestDriver;

/// Sample movements in the course's CSV format: `id,amount,type`.
const SAMPLE: &str = include_str!("../data/stock.csv");

fn parse(line: &str) -> Result<Movement, String> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [id, amount, kind] = fields[..] else {
        return Err(format!("expected id,amount,type, got {line:?}"));
    };
    let direction = match kind {
        "IN" => Direction::In,
        "OUT" => Direction::Out,
        other => return Err(format!("unknown movement type {other:?}")),
    };
    Ok(Movement {
        id: id.parse().map_err(|e| format!("bad id {id:?}: {e}"))?,
        amount: amount
            .parse()
            .map_err(|e| format!("bad amount {amount:?}: {e}"))?,
        direction,
    })
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let driver = TestDriver::builder(stock::stock_levels("stock", "stock-levels")?)
        .partitions(3)
        .build()?;
    let input = driver.input_topic("stock", Utf8, Json::<Movement>::new());
    let mut skipped = 0;
    for (n, line) in SAMPLE
        .lines()
        .enumerate()
        .skip(1)
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match parse(line) {
            Ok(movement) => input.pipe(movement.id.to_string(), movement)?,
            Err(reason) => {
                skipped += 1;
                eprintln!("stock.csv line {}: {reason}", n + 1);
            }
        }
    }
    let mut table = driver.store(stock::STOCK_STORE, Utf8, I64).all()?;
    table.sort_by_key(|(id, _)| id.parse::<u64>().unwrap_or(u64::MAX));
    println!("{:>8}  {:>6}", "product", "stock");
    for (id, stock) in table {
        println!("{id:>8}  {stock:>6}");
    }
    println!(
        "{} movements folded in process, {skipped} rows rejected",
        driver.metrics().records_in
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("opsci-app: {error}");
            ExitCode::FAILURE
        }
    }
}
