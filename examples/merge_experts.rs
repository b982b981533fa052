//! Train two sparse experts (`shapes`, `colors`) on one base, merge them with TIES, and score each
//! task with its own head on the one merged backbone.
//!
//! ```sh
//! cargo run --release -p mosa --example merge_experts -- [base weights.safetensors of vit-ti16]
//! ```
use burn::backend::{Autodiff, Flex};
use mosa::prelude::*;

fn main() -> anyhow::Result<()> {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/data");
    let work = std::env::temp_dir().join("mosa-example-merge");
    let _ = std::fs::remove_dir_all(&work); // a fresh start each time
    std::fs::create_dir_all(&work)?;
    let device = Default::default();
    // a merge adds the experts to their base file: the weights given, or a random initialisation saved once
    let base = match std::env::args().nth(1) {
        Some(w) => w.into(),
        None => {
            let path = work.join("base.safetensors");
            <Flex as burn::tensor::backend::Backend>::seed(&device, 3407);
            let model = preset("vit-ti16").expect("a preset").with_num_classes(0).init::<Flex>(&device);
            mosa::models::load::safetensors::write(&model.state_dict(), &path, None)?;
            path
        }
    };
    let mut experts = Vec::new();
    for task in ["shapes", "colors"] {
        let train = TrainConfig { epochs: 3, warmup_epochs: 1, batch_size: 8, resolution: 32, head_lr: Some(0.05), ..Default::default() };
        let method = Method::new(MethodKind::Sparse);
        let spec = RunSpec {
            model_name: "vit-ti16".into(),
            model: preset("vit-ti16").expect("a preset"),
            weights: Some(base.clone()),
            method,
            dataset: format!("folder:{data}/{task}"),
            train,
            skip_unreadable: false,
        };
        mosa::train::run::<Autodiff<Flex>>(&spec, &work.join(task), false, Control::default(), &device, &mut Console::new(task))?;
        experts.push(work.join(task).join("expert.safetensors")); // a sparse run writes its expert
    }
    let merged = work.join("merged.safetensors");
    merge_files(&experts, Some(&base), &MergeConfig::new(MergeMethod::Ties), &merged)?;
    let m = read_merged(&merged)?;
    for task in ["shapes", "colors"] {
        let (model, info, resolution) = m.task_model::<Flex>(task, &device)?;
        let (acc, n) = accuracy_on(&model, &info.dataset, "test", resolution, &device)?;
        println!("task {task}: {:.1} % of {n} test images on the TIES-merged backbone ({})", 100.0 * acc, merged.display());
    }
    Ok(())
}
