//! `mosa info`: backend, device, presets, weights.

use mosa_models::{PRESETS, weights};

use crate::backend;

pub fn run() -> anyhow::Result<()> {
    println!("mosa {}", env!("CARGO_PKG_VERSION"));
    println!("backend: {}", backend::NAME);
    println!("device:  {:?}", backend::device());
    println!();
    println!("model presets (--model NAME, or a config JSON):");
    println!("  {:<15} {:>12}  description", "name", "params");
    for p in PRESETS {
        let cfg = (p.config)();
        println!("  {:<15} {:>11.1}M  {}", p.name, cfg.num_params() as f64 / 1e6, p.description);
    }
    println!();
    println!("weights cache: {}", weights::cache_dir().display());
    println!("  {:<15} {:<8} path / how to get it", "name", "status");
    for w in weights::KNOWN {
        match weights::present(w) {
            Some(path) => println!("  {:<15} {:<8} {}", w.name, "present", path.display()),
            None => println!("  {:<15} {:<8} mosa weights fetch {}", w.name, "missing", w.name),
        }
    }
    println!();
    println!("checkpoint formats: timm .safetensors, original ViT .npz, transformers DINOv2 .safetensors, DINOv2 .onnx");
    Ok(())
}
