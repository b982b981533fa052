//! `mosa forward`: a backbone in evaluation mode on a tensor from a safetensors file.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::prelude::*;
use burn::tensor::TensorData;
use mosa_core::HostTensor;
use mosa_models::load::{self, HeadPolicy};
use mosa_models::{presets, weights};

use crate::backend::{self, Backend};

#[derive(clap::Args)]
pub struct Args {
    /// A preset name (see `mosa info`) or a config JSON (ours, timm kwargs, or a DINOv2 `config` block).
    #[arg(long)]
    model: String,
    /// Checkpoint: .safetensors (timm or transformers DINOv2), .npz (original ViT) or .onnx (DINOv2).
    /// Defaults to the cached weights of the preset, if any.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// safetensors file holding `input`, N×3×H×W float.
    #[arg(long)]
    input: PathBuf,
    /// Where to write `tokens`, `pre_logits` and `logits`.
    #[arg(long)]
    out: PathBuf,
    /// Also write every block's output as `hidden.N` (before the final norm).
    #[arg(long)]
    hidden: bool,
    /// With a merged model (`mosa merge`): use this task's head.
    #[arg(long)]
    task: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = presets::resolve_model(&args.model)?;
    let weights_path = match args.weights {
        Some(p) => p,
        None => {
            let known =
                weights::known(&args.model).with_context(|| format!("no --weights given, and `{}` has no known weights to take from the cache", args.model))?;
            match weights::cached(known) {
                weights::Cached::Present(p) => p,
                weights::Cached::Missing => bail!("no --weights given and no cached weights for `{}`; run `mosa weights fetch {}`", args.model, known.name),
                weights::Cached::Damaged(p, why) => bail!(
                    "no --weights given, and the cached weights of `{}` are damaged ({}: {why}); run `mosa weights fetch {}` to convert them again",
                    args.model,
                    p.display(),
                    known.name
                ),
            }
        }
    };
    // the output may replace neither an input (however spelled) nor a device, a link or a run's
    // file (issues #11 case 9, #29)
    mosa_train::output::check_output(&args.out, &[weights_path.as_path(), args.input.as_path()], None)?;
    // a merged model (`mosa merge`) has one head per task: a model that wants a head is told which
    // tasks there are, instead of "missing tensor head.weight" (a preset or a config without
    // classes reads the merged backbone alone)
    let wants_head = config.num_classes() > 0 && presets::preset(&args.model).is_none();
    if args.task.is_none()
        && wants_head
        && mosa_core::fsio::check_regular(&weights_path, mosa_core::fsio::caps::TENSORS).is_ok()
        && let Ok(meta) = load::safetensors::read_metadata(&weights_path)
        && let Some(m) = meta.get("mosa.merged").and_then(|t| serde_json::from_str::<mosa_train::merged::MergedMeta>(t).ok())
    {
        bail!(
            "{} is a merged model with one head per task ({}); pick one with --task",
            weights_path.display(),
            m.tasks.iter().map(|t| t.task.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let sd = match &args.task {
        None => load::read_checkpoint(&weights_path)?,
        Some(task) => {
            // a merged model keeps each task's head beside the backbone
            let (_, sd) = mosa_train::merged::read_merged(&weights_path)?.task_state(task)?;
            config = config.with_num_classes(sd.head_classes().unwrap_or(0));
            sd
        }
    };
    if presets::preset(&args.model).is_some() && args.task.is_none() {
        // A preset takes its class count from the checkpoint's head (none for a backbone).
        config = config.with_num_classes(sd.head_classes().unwrap_or(0));
    }

    let inputs = load::safetensors::read(&args.input)?;
    let x = inputs.get("input").with_context(|| format!("{}: no tensor named `input`", args.input.display()))?;
    if x.shape.len() != 4 || x.shape[1] != config.in_chans() {
        bail!("{}: `input` has shape {:?}; N×{}×H×W is needed", args.input.display(), x.shape, config.in_chans());
    }
    if x.shape[2] < config.min_input() || x.shape[3] < config.min_input() {
        bail!("{}: `input` is {}×{}, smaller than one {}-pixel patch", args.input.display(), x.shape[2], x.shape[3], config.min_input());
    }
    if let Some(i) = x.data.iter().position(|v| !v.is_finite()) {
        bail!("{}: `input` holds a non-finite value at flat index {i}", args.input.display());
    }

    let device = backend::device();
    let model = config.load_state::<Backend>(sd, HeadPolicy::Load, &device)?;
    let input = Tensor::<Backend, 4>::from_data(TensorData::new(x.data.clone(), x.shape.clone()), &device);
    let out = model.forward_with(input, args.hidden);

    // the reference's name and layout: a ViT's `tokens`, Swin's NHWC / ConvNeXt's NCHW `features`
    let features = if config.family() == "vit" { "tokens" } else { "features" };
    let mut outputs = vec![
        (features.to_string(), out.features_as_reference()),
        ("pre_logits".to_string(), HostTensor::from_tensor(out.pre_logits)),
        ("logits".to_string(), HostTensor::from_tensor(out.logits)),
    ];
    for (i, h) in out.hidden.into_iter().enumerate() {
        outputs.push((format!("hidden.{i}"), HostTensor::from_tensor(h)));
    }
    let tensors: Vec<(String, &HostTensor)> = outputs.iter().map(|(n, t)| (n.clone(), t)).collect();
    let meta = HashMap::from([
        ("mosa.model".to_string(), args.model.clone()),
        ("mosa.weights".to_string(), weights_path.display().to_string()),
        ("mosa.backend".to_string(), backend::NAME.to_string()),
    ]);
    load::safetensors::write_atomic(&args.out, &load::safetensors::serialize(&tensors, Some(meta))?)?;
    println!(
        "wrote {} ({features} {:?}, pre_logits {:?}, logits {:?}) on {}",
        args.out.display(),
        outputs[0].1.shape,
        outputs[1].1.shape,
        outputs[2].1.shape,
        backend::NAME
    );
    Ok(())
}
