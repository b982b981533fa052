//! Learning curves of a benchmark grid: every run's per-epoch training loss (from its
//! `metrics.jsonl`) as `curves.csv`, one panel per task in `loss.svg`, and a plateau measure per
//! cell: the share of the run's loss decrease made in its last quarter of epochs.

use std::collections::BTreeMap;

use mosa_train::{EpochMetrics, RunDir};

use crate::bench_vtab::Grid;
use crate::plot::{Panels, esc};
use crate::table::Markdown;

/// One cell's curve: the training loss after each epoch (1-based epochs in order).
pub type Curve = Vec<f64>;

/// Every run's per-epoch metrics, keyed by (task, method, seed index), each file read once.
pub type Runs = BTreeMap<(String, String, usize), Vec<EpochMetrics>>;

/// The per-epoch metrics of every run of the grid that has any.
pub fn read(g: &Grid) -> anyhow::Result<Runs> {
    let mut out = Runs::new();
    for t in &g.tasks {
        for m in &g.methods {
            for k in 0..g.seeds.max(1) {
                let metrics = RunDir::new(g.run_dir(t, m, k)).metrics()?;
                if !metrics.is_empty() {
                    out.insert((t.clone(), m.clone(), k), metrics);
                }
            }
        }
    }
    Ok(out)
}

/// The share of the loss decrease from the first to the last epoch that happened after the
/// epoch three quarters of the way through (`round(0.75·E)`): 0 is flat at the end, 0.25 is a
/// straight line. `None` for runs under 4 epochs or without a decrease.
pub fn late_share(c: &[f64]) -> Option<f64> {
    let e = c.len();
    if e < 4 {
        return None;
    }
    let q = (0.75 * e as f64).round() as usize;
    let total = c[0] - c[e - 1];
    (total > 0.0).then(|| (c[q - 1] - c[e - 1]) / total)
}

/// Every finished cell's curve (the first seed's), keyed by (task, method).
pub fn curves(g: &Grid, runs: &Runs) -> BTreeMap<(String, String), Curve> {
    runs.iter()
        .filter(|((t, m, k), _)| *k == 0 && RunDir::new(g.run_dir(t, m, 0)).finished())
        .map(|((t, m, _), e)| ((t.clone(), m.clone()), e.iter().map(|e| e.train_loss).collect()))
        .collect()
}

/// `curves.csv`: one row per task, method, seed and epoch (grid order).
pub fn csv(g: &Grid, runs: &Runs) -> anyhow::Result<String> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        task: &'a str,
        method: &'a str,
        seed: u64,
        epoch: usize,
        lr: f64,
        train_loss: f64,
        train_acc: f64,
        val_acc: Option<f64>,
        test_acc: Option<f64>,
    }
    let mut rows = Vec::new();
    for t in &g.tasks {
        for m in &g.methods {
            for k in 0..g.seeds.max(1) {
                for e in runs.get(&(t.clone(), m.clone(), k)).into_iter().flatten() {
                    let seed = crate::bench_vtab::seed_of(k);
                    rows.push(Row {
                        task: t,
                        method: m,
                        seed,
                        epoch: e.epoch,
                        lr: e.lr,
                        train_loss: e.train_loss,
                        train_acc: e.train_acc,
                        val_acc: e.val_acc,
                        test_acc: e.test_acc,
                    });
                }
            }
        }
    }
    crate::table::csv_text(&rows)
}

/// The Markdown paragraph and table of the plateau measure (task columns, method rows).
pub fn plateau_table(g: &Grid, c: &BTreeMap<(String, String), Curve>) -> String {
    let md = String::from(
        "Learning curves (`loss.svg`, `curves.csv`): the share of each run's training-loss decrease (epoch 1 → last) made in its last quarter of epochs; 0 is flat at the end, 0.25 a straight line (the cosine schedule's small late learning rates push it down by themselves).\n\n",
    );
    let mut table = Markdown::new(&std::iter::once("method").chain(g.tasks.iter().map(String::as_str)).collect::<Vec<_>>(), 1);
    for m in &g.methods {
        let cells: Vec<String> = g
            .tasks
            .iter()
            .map(|t| c.get(&(t.clone(), m.clone())).and_then(|v| late_share(v)).map(|x| format!("{x:.3}")).unwrap_or_else(|| "—".into()))
            .collect();
        table.row(&std::iter::once(m.clone()).chain(cells).collect::<Vec<_>>());
    }
    md + &table.finish()
}

/// Small multiples: one panel per task, one line per method, training loss against epoch.
pub fn svg(tasks: &[String], methods: &[String], c: &BTreeMap<(String, String), Curve>) -> String {
    let p = Panels::new(tasks.len(), 4, (230.0, 160.0), 42.0);
    let (pw, ph) = (p.pw, p.ph);
    let mut s = p.open("Training loss per epoch (first seed), one panel per task");
    for (i, t) in tasks.iter().enumerate() {
        let (x0, y0) = p.origin(i);
        let lines: Vec<(usize, &Curve)> = methods.iter().enumerate().filter_map(|(j, m)| c.get(&(t.clone(), m.clone())).map(|v| (j, v))).collect();
        let epochs = lines.iter().map(|(_, v)| v.len()).max().unwrap_or(1).max(2);
        let top = lines.iter().flat_map(|(_, v)| v.iter().copied()).filter(|x| x.is_finite()).fold(0.0f64, f64::max).max(1e-6) * 1.05;
        let (sx, sy) = (|e: usize| x0 + pw * (e - 1) as f64 / (epochs - 1) as f64, |l: f64| y0 + ph - ph * (l / top).clamp(0.0, 1.0));
        s += &p.frame(i, t);
        for f in [0.0, 0.5, 1.0] {
            s += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.2}</text>\n", x0 - 3.0, sy(top * f) + 3.0, top * f);
        }
        s += &format!(
            "<text x=\"{x0}\" y=\"{}\">1</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">epoch {epochs}</text>\n",
            y0 + ph + 12.0,
            x0 + pw,
            y0 + ph + 12.0
        );
        for (j, v) in lines {
            let pts: Vec<String> = v.iter().enumerate().map(|(e, l)| format!("{:.1},{:.1}", sx(e + 1), sy(*l))).collect();
            s += &format!(
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\" points=\"{}\"><title>{} {}</title></polyline>\n",
                crate::plot::colour(j),
                pts.join(" "),
                esc(t),
                esc(&methods[j])
            );
        }
    }
    let series: Vec<(&str, &str)> = methods.iter().enumerate().map(|(j, m)| (m.as_str(), crate::plot::colour(j))).collect();
    s + &p.legend_and_close(&series)
}

#[cfg(test)]
mod tests {
    use super::late_share;

    #[test]
    fn late_share_of_known_curves() {
        // a straight line from 4 to 0 over 8 epochs: epoch 6 is at 8/7, 2/7 of the decrease left
        let line: Vec<f64> = (0..8).map(|e| 4.0 - 4.0 * e as f64 / 7.0).collect();
        assert!((late_share(&line).unwrap() - 2.0 / 7.0).abs() < 1e-12);
        // flat after epoch 3
        assert_eq!(late_share(&[3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]), Some(0.0));
        // still falling fast at the end: three quarters of the decrease after epoch 6
        assert_eq!(late_share(&[2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.0, 0.0]), Some(0.75));
        // too short, or no decrease
        assert_eq!(late_share(&[3.0, 2.0, 1.0]), None);
        assert_eq!(late_share(&[1.0, 1.0, 1.0, 1.0]), None);
    }
}
