//! `cargo xtask bench-merge`: `mosa bench merge` over experts × density, one process per row (so
//! that each row's peak memory is its own), then a Markdown table and JSON lines under
//! `results/bench-merge/`.

use std::path::Path;
use std::process::Command;

use crate::table::Markdown;

use anyhow::{Context, bail};
use serde_json::Value;

pub const EXPERTS: [usize; 5] = [2, 5, 10, 20, 50];
pub const DENSITIES: [f64; 3] = [0.002, 0.01, 0.05];

/// Runs the rows and returns them (one JSON object each, as `mosa bench merge --json` prints).
pub fn run(mosa: &Path, rows: &[(usize, f64)], iters: usize, dense: bool) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for (k, &(n, d)) in rows.iter().enumerate() {
        eprintln!("[{}/{}] {n} experts at density {d}", k + 1, rows.len());
        let mut cmd = Command::new(mosa);
        cmd.args(["bench", "merge", "--json", "--experts", &n.to_string(), "--density", &d.to_string(), "--iters", &iters.to_string()]);
        if !dense {
            cmd.arg("--no-dense");
        }
        let o = cmd.output().with_context(|| format!("running {}", mosa.display()))?;
        if !o.status.success() {
            bail!("mosa bench merge failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let line = String::from_utf8_lossy(&o.stdout);
        out.push(serde_json::from_str::<Value>(line.trim()).with_context(|| format!("parsing {line}"))?);
    }
    Ok(out)
}

/// The Markdown table of the rows.
pub fn table(rows: &[Value]) -> String {
    let f = |v: &Value, k: &str, p: usize| v[k].as_f64().map(|x| format!("{x:.p$}")).unwrap_or_default();
    let mut table = Markdown::new(
        &[
            "experts",
            "density",
            "median s",
            "GB/s",
            "memcpy GB/s",
            "of memcpy",
            "dense-expansion s",
            "× faster than dense",
            "peak RSS MiB",
            "base + experts MiB",
        ],
        0,
    );
    for v in rows {
        table.row(&[
            v["experts"].to_string(),
            format!("{}%", 100.0 * v["density"].as_f64().unwrap_or(0.0)),
            f(v, "seconds", 3),
            f(v, "gbps", 1),
            f(v, "memcpy_gbps", 1),
            format!("{:.0}%", 100.0 * v["fraction_of_memcpy"].as_f64().unwrap_or(0.0)),
            f(v, "dense_seconds", 3),
            f(v, "speedup_vs_dense", 1),
            f(v, "peak_rss_mb", 0),
            v["base_mb"].as_f64().zip(v["experts_mb"].as_f64()).map(|(a, b)| format!("{:.0}", a + b)).unwrap_or_default(),
        ]);
    }
    table.finish()
}
