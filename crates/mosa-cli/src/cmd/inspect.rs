//! `mosa inspect`: what a method trains on a backbone, by group, before and after merging.

use std::collections::BTreeMap;

use mosa_core::{method, params};
use mosa_models::presets;

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

fn by_group(cfg: &mosa_core::MethodConfig, infos: &[params::ParamInfo]) -> BTreeMap<&'static str, (usize, usize)> {
    let mut g: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    for p in infos {
        let e = g.entry(method::group(cfg, &p.path)).or_default();
        e.1 += p.numel;
        if p.trainable {
            e.0 += p.numel;
        }
    }
    g
}

fn m(n: usize) -> String {
    format!("{:.3} M", n as f64 / 1e6)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let vit = presets::resolve_model(&args.model)?.with_num_classes(args.num_classes);
    let mc = args.method.config()?;
    // Parameters are counted on the autodiff backend, where trainability is real.
    let device = backend::device();
    let model = vit.init::<burn::backend::Autodiff<Backend>>(&device);
    let tuned = method::apply(model, &mc, &device).map_err(anyhow::Error::msg)?;
    let infos = params::list(&tuned);
    let total: usize = infos.iter().map(|p| p.numel).sum();
    let trainable = params::count_trainable(&infos);

    println!("model:  {} (d {}, {} blocks, {} heads, patch {}, {} classes)", args.model, vit.embed_dim, vit.depth, vit.num_heads, vit.patch_size, args.num_classes);
    println!("method: {}", serde_json::to_string(&mc)?);
    println!();
    println!("| group | trainable | total |");
    println!("|---|---:|---:|");
    for (g, (t, n)) in by_group(&mc, &infos) {
        println!("| {g} | {} | {} |", m(t), m(n));
    }
    println!("| all | {} ({:.2}%) | {} |", m(trainable), 100.0 * trainable as f64 / total as f64, m(total));

    let merged = tuned.merged();
    let minfos = params::list(&merged);
    let added: usize = minfos.iter().filter(|p| method::group(&mc, &p.path) != "backbone" && method::group(&mc, &p.path) != "head").map(|p| p.numel).sum();
    let head: usize = minfos.iter().filter(|p| method::group(&mc, &p.path) == "head").map(|p| p.numel).sum();
    println!();
    let folded = matches!(mc.method, mosa_core::MethodKind::Lora | mosa_core::MethodKind::MosaLora | mosa_core::MethodKind::Sparse);
    println!(
        "after merging (inference): {} added to the backbone (head excluded), head {}{}",
        m(added),
        m(head),
        if folded { "; the deltas fold into the base weights, so inference costs the plain backbone" } else { "" }
    );
    Ok(())
}
