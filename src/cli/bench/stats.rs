//! Latency summaries and the markdown table benchmarks print.

use serde::Serialize;
use std::time::Duration;

/// p50/p99 of latency samples and a throughput figure.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub name: String,
    pub samples: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub per_second: f64,
}

impl Summary {
    pub fn new(name: &str, mut samples: Vec<Duration>, per_second: f64) -> Self {
        samples.sort();
        let pick = |q: f64| -> f64 {
            if samples.is_empty() {
                return f64::NAN;
            }
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[i].as_secs_f64() * 1e6
        };
        Summary {
            name: name.to_owned(),
            samples: samples.len(),
            p50_us: pick(0.50),
            p99_us: pick(0.99),
            per_second,
        }
    }
}

/// Prints summaries as a markdown table, with each row's p50 and rate as
/// a ratio to the first row (the baseline).
pub fn print_table(title: &str, rows: &[Summary]) {
    println!("\n### {title}\n");
    println!("| path | samples | p50 | p99 | per second | p50 vs baseline | rate vs baseline |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let base = rows.first();
    for r in rows {
        let (lat, rate) = match base {
            Some(b) => (r.p50_us / b.p50_us, r.per_second / b.per_second),
            None => (1.0, 1.0),
        };
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.2}x | {:.2}x |",
            r.name,
            r.samples,
            human_us(r.p50_us),
            human_us(r.p99_us),
            r.per_second,
            lat,
            rate
        );
    }
}

fn human_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}
