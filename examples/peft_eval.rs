//! Load an HF PEFT adapter (LoRA or SHiRA, trained with PyTorch on a timm ViT / Swin / ConvNeXt)
//! and evaluate it on an image folder.
//!
//! ```sh
//! cargo run --release -p mosa --example peft_eval -- <adapter dir> <base weights> <preset or config JSON> <folder> [resolution]
//! ```
use std::path::Path;

use burn::backend::Flex;
use mosa::prelude::*;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [adapter, base, model, folder] = &a[..4.min(a.len())] else {
        anyhow::bail!("usage: peft_eval <adapter dir> <base weights> <preset or config JSON> <image folder> [resolution]");
    };
    let resolution = a.get(4).map(|r| r.parse()).transpose()?.unwrap_or(224);
    let spec = ImportSpec { base: Path::new(base), model: Some(model), task: "peft", classes: None, resolution: Some(resolution) };
    let expert = mosa::train::peft::import(Path::new(adapter), &spec)?;
    println!("{adapter}: a {:?} expert of {} tensors, {} entries", expert.meta.kind, expert.tensors.len(), expert.nnz());
    // onto its base (an expert alone: task arithmetic at λ 1 is the base plus its change)
    let work = std::env::temp_dir().join("mosa-example-peft");
    std::fs::create_dir_all(&work)?;
    let file = work.join("expert.safetensors");
    expert.write(&file)?;
    let merged = work.join("merged.safetensors");
    let mut cfg = MergeConfig::new(MergeMethod::TaskArithmetic);
    cfg.lambda = Some(1.0);
    merge_files(&[file], Some(Path::new(base)), &cfg, &merged)?;
    let device = Default::default();
    let (model, ..) = read_merged(&merged)?.task_model::<Flex>("peft", &device)?;
    let (acc, n) = accuracy_on(&model, &format!("folder:{folder}"), "test", resolution, &device)?;
    println!("test accuracy {:.1} % on {n} images of {folder}", 100.0 * acc);
    Ok(())
}
