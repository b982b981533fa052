//! Shared by the engine's integration tests.
#![allow(dead_code)]

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use mosa_core::{Method, MethodKind};
use mosa_data::image::Rgb8;
use mosa_data::synth::write_vtab_task;
use mosa_models::VitConfig;
use mosa_train::{Outcome, RunSpec, TrainConfig};

pub type AB = Autodiff<Flex>;

/// A 3-class task a tiny ViT learns in a few steps: the class is the colour of a square
/// (red, green, blue) at a random place on a grey background.
pub fn dataset(root: &Path) -> String {
    let mut rng = mosa_core::Rng::new(11);
    let imgs: Vec<(Rgb8, usize)> = (0..60)
        .map(|i| {
            let label = i % 3;
            let mut data: Vec<u8> = (0..16 * 16)
                .flat_map(|_| {
                    let g = 100 + rng.below(40) as u8;
                    [g, g, g]
                })
                .collect();
            let (x0, y0) = (rng.below(10), rng.below(10));
            for y in y0..y0 + 6 {
                for x in x0..x0 + 6 {
                    let mut c = [30u8; 3];
                    c[label] = 230;
                    data[(y * 16 + x) * 3..(y * 16 + x) * 3 + 3].copy_from_slice(&c);
                }
            }
            (Rgb8::new(16, 16, data), label)
        })
        .collect();
    // kitti (4 classes in the registry; label 3 is simply unused)
    write_vtab_task(&root.join("kitti"), &imgs, 36, 12, false).unwrap();
    format!("vtab:{}/kitti", root.display())
}

pub fn spec(dataset: &str, method: MethodKind, epochs: usize) -> RunSpec {
    let model = VitConfig::new().with_embed_dim(32).with_depth(2).with_num_heads(2).with_img_size(16).with_patch_size(4);
    RunSpec {
        model_name: "tiny".into(),
        model: model.into(),
        weights: None,
        method: method_of(method),
        dataset: dataset.to_string(),
        train: TrainConfig { epochs, warmup_epochs: 0, lr: 0.01, batch_size: 12, resolution: 16, ..TrainConfig::default() },
        skip_unreadable: false,
    }
}

/// The method with the tests' sizes: r 8, 2 prompt tokens, targets qkv + fc1, sparse warm-up
/// 3 steps (with the zero head, ΔW first moves in step 2) and re-selection every step.
pub fn method_of(kind: MethodKind) -> Method {
    let mut m = Method::new(kind);
    if let Some(a) = m.adapter_options_mut() {
        a.r = 8;
    }
    let targets = vec!["qkv".to_string(), "fc1".to_string()];
    match &mut m {
        Method::VptShallow(p) | Method::VptDeep(p) => p.tokens = 2,
        Method::Lora(l) => l.targets = targets,
        Method::MosaLora(l) => l.lora.targets = targets,
        Method::Sparse(s) => {
            s.targets = targets;
            s.warmup_steps = 3;
            s.reselect_every = 1;
        }
        Method::Linear
        | Method::Full
        | Method::Bitfit
        | Method::Adapter(_)
        | Method::Pfeiffer(_)
        | Method::Houlsby(_)
        | Method::Mosa(_)
        | Method::PrunedAdapter(_) => {}
    }
    m
}

pub fn finish(o: Outcome) -> mosa_train::Summary {
    match o {
        Outcome::Finished(s) => *s,
        Outcome::Interrupted { .. } => panic!("interrupted"),
    }
}

pub fn metrics(dir: &Path) -> Vec<mosa_train::EpochMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}
