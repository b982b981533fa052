//! `mosa inspect`: what a method trains on a backbone, by group, before and after merging.

use mosa_core::inject;
use mosa_models::presets;
use mosa_train::TrainConfig;

use crate::backend::{self, Backend};
use crate::method_args::MethodArgs;

#[derive(clap::Args)]
pub struct Args {
    /// A preset name or a config JSON (as for `mosa forward`).
    #[arg(long)]
    model: String,
    /// Classes of the task head.
    #[arg(long, default_value_t = 100)]
    num_classes: usize,
    #[command(flatten)]
    method: MethodArgs,
}

fn m(n: usize) -> String {
    format!("{:.3} M", n as f64 / 1e6)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = presets::resolve_model(&args.model)?.with_num_classes(args.num_classes);
    let method = args.method.method()?;
    // inspect builds the model (and its merged copy) to count what a method trains: bounded first
    let params = cfg.estimated_params();
    mosa_models::limits::fits_memory(
        &format!("inspecting `{}` (about {params:.3e} parameters)", args.model),
        &[("the model and its merged copy", params * 8.0)],
        "the model's size",
    )
    .map_err(anyhow::Error::msg)?;
    // Parameters are counted on the autodiff backend, where trainability is real.
    let device = backend::device();
    let model = cfg.init::<burn::backend::Autodiff<Backend>>(&device);
    let tuned = inject::apply(model, &method, TrainConfig::default().seed, &device).map_err(anyhow::Error::msg)?;
    let g = inject::groups(&tuned);
    let all = g.all();

    println!("model:  {} ({} {}, {} classes)", args.model, cfg.family(), cfg.describe(), args.num_classes);
    println!("method: {}", serde_json::to_string(&method)?);
    println!();
    // rounded millions, and the exact counts beside them (as PEFT's print_trainable_parameters)
    println!("| group | trainable | total | trainable params | total params |");
    println!("|---|---:|---:|---:|---:|");
    for (name, t) in g.rows() {
        println!("| {name} | {} | {} | {} | {} |", m(t.trainable), m(t.total), t.trainable, t.total);
    }
    println!("| all | {} ({:.2}%) | {} | {} | {} |", m(all.trainable), 100.0 * all.trainable as f64 / all.total as f64, m(all.total), all.trainable, all.total);
    println!("trainable params: {} || all params: {} || trainable%: {:.4}", all.trainable, all.total, 100.0 * all.trainable as f64 / all.total as f64);

    let mg = inject::groups(&inject::merged(&tuned));
    println!();
    let folded = method.targets().is_some();
    println!(
        "after merging (inference): {} added to the backbone ({} params, head excluded), head {} ({} params){}",
        m(mg.adapter.total + mg.experts.total),
        mg.adapter.total + mg.experts.total,
        m(mg.head.total),
        mg.head.total,
        if folded { "; the deltas fold into the base weights, so inference costs the plain backbone" } else { "" }
    );
    Ok(())
}
