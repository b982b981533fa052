//! Fine-tune a preset with LoRA or MoSA on an image folder (`<folder>/{train,test}/<class>/*.png`).
//!
//! ```sh
//! cargo run --release -p mosa --example finetune -- [folder] [lora|mosa] [weights.safetensors]
//! ```
//!
//! Without weights the preset starts from a random initialisation: enough to try the API, not to
//! reach an accuracy (`mosa weights fetch dinov2-vits14` gets real ones for `--model dinov2-vits14`).
use burn::backend::{Autodiff, Flex};
use mosa::prelude::*;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let folder = args.first().cloned().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/data/shapes").into());
    let kind = if args.get(1).map(String::as_str) == Some("mosa") { MethodKind::Mosa } else { MethodKind::Lora };
    let spec = RunSpec {
        model_name: "vit-ti16".into(),
        model: preset("vit-ti16").expect("a preset"),
        weights: args.get(2).map(Into::into),
        method: Method::new(kind),
        dataset: format!("folder:{folder}"),
        train: TrainConfig { epochs: 3, warmup_epochs: 1, batch_size: 8, resolution: 32, ..Default::default() },
        skip_unreadable: false,
    };
    let out = std::env::temp_dir().join(format!("mosa-example-finetune-{}", spec.method.name()));
    let _ = std::fs::remove_dir_all(&out); // a fresh run each time (a run folder refuses to be trained twice)
    let outcome = mosa::train::run::<Autodiff<Flex>>(&spec, &out, false, Control::default(), &Default::default(), &mut Console::new("finetune"))?;
    let Outcome::Finished(summary) = outcome else { anyhow::bail!("the run stopped early") };
    let acc = summary.last_test.map(|a| format!("{:.1} %", 100.0 * a)).unwrap_or("-".into());
    println!("{} on {folder}: test accuracy {acc} after {} epochs; run files in {}", spec.method.name(), summary.epochs, out.display());
    Ok(())
}
