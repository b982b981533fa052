//! Experts ⇄ HF PEFT adapter folders (`mosa expert export --format peft | convert | import`),
//! against fixtures written once by `scripts/check_peft.py` with PyTorch + timm + PEFT 0.21.2
//! (`tests/data/peft/`, no Python here):
//!
//! - `mosa_lora.safetensors`, `mosa_sparse.safetensors`: experts mosa trained on the tiny ViT
//!   fixture; `mosa_*_peft/`: PEFT's own re-save (`save_pretrained`) of their export, after
//!   `PeftModel.from_pretrained` loaded it;
//! - `torch_lora/` (rank / alpha patterns), `torch_shira/`: adapters PEFT trained 5 steps;
//! - `logits.safetensors`: the input and PEFT's logits of all four.
//!
//! Logits are compared through `mosa merge` (the one expert, λ 1) + `mosa forward --task`;
//! deltas against a dense re-implementation in this file from the raw PEFT tensors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mosa_core::expert::{Delta, Expert};
use mosa_models::load::safetensors as st;
use mosa_testkit::fixtures;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};

fn mosa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mosa")).args(args).output().expect("run mosa")
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A refusal: exit ≠ 0, one line on stderr, no panic, naming each of `words`.
fn refused(o: Output, words: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "succeeded: {}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: ") && !err.contains("internal error"), "{err}");
    for w in words {
        assert!(err.contains(w), "`{w}` not in: {err}");
    }
    err
}

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/peft")
}

fn base() -> (PathBuf, PathBuf) {
    family("vit")
}

/// A tiny timm fixture model: its config and weights.
fn family(name: &str) -> (PathBuf, PathBuf) {
    let f = fixtures();
    (f.join(format!("{name}.json")), f.join(format!("{name}.safetensors")))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `mosa merge` of one expert (task arithmetic, λ 1: the base plus its change) and `mosa forward
/// --task` on the fixture input: the logits.
fn logits(dir: &Path, expert: &Path, task: &str) -> Vec<f32> {
    family_logits(dir, "vit", expert, task)
}

fn family_logits(dir: &Path, fam: &str, expert: &Path, task: &str) -> Vec<f32> {
    let (cfg, w) = family(fam);
    let merged = dir.join(format!("merged-{task}.safetensors"));
    ok(mosa(&["merge", s(expert), "--method", "task-arithmetic", "--lambda", "1", "--base", s(&w), "--out", s(&merged)]));
    forward(dir, &cfg, &merged, task)
}

/// `mosa forward --task` on the fixture input of the model `cfg` describes.
fn forward(dir: &Path, cfg: &Path, merged: &Path, task: &str) -> Vec<f32> {
    let key = match cfg.file_stem().and_then(|s| s.to_str()) {
        Some("vit") => "input".to_string(),
        Some(f) => format!("input_{f}"),
        None => unreachable!(),
    };
    let inp = dir.join(format!("{key}.safetensors"));
    let io = st::read(&data().join("logits.safetensors")).unwrap();
    std::fs::write(&inp, st::serialize(&[("input".to_string(), &io.tensors[&key])], None).unwrap()).unwrap();
    let out = dir.join(format!("out-{task}.safetensors"));
    ok(mosa(&["forward", "--model", s(cfg), "--weights", s(merged), "--task", task, "--input", s(&inp), "--out", s(&out)]));
    st::read(&out).unwrap().tensors["logits"].data.clone()
}

fn reference(name: &str) -> Vec<f32> {
    st::read(&data().join("logits.safetensors")).unwrap().tensors[name].data.clone()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    mosa_testkit::max_abs_diff(a, b)
}

/// Every tensor of a safetensors file: (dtype, shape, bytes).
fn raw(path: &Path) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let t = SafeTensors::deserialize(&bytes).unwrap();
    t.tensors().into_iter().map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn exports_are_what_peft_saves_and_give_peft_s_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for (kind, ty) in [("lora", "LORA"), ("sparse", "SHIRA")] {
        let expert = data().join(format!("mosa_{kind}.safetensors"));
        let out = tmp.path().join(format!("peft-{kind}"));
        let msg = ok(mosa(&["expert", "convert", s(&expert), "--to", "peft", "--out", s(&out)]));
        assert!(msg.contains(ty), "{msg}");
        let peft_dir = data().join(format!("mosa_{kind}_peft"));
        // the tensors: the very keys, dtypes, shapes and bytes PEFT saved after loading ours
        let (ours, theirs) = (raw(&out.join("adapter_model.safetensors")), raw(&peft_dir.join("adapter_model.safetensors")));
        assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "{kind}: tensor names");
        for (k, v) in &ours {
            assert_eq!(v, &theirs[k], "{kind}: tensor {k}");
        }
        // the config: every key we write has PEFT's value (target_modules as a set)
        let (c, p) = (read_json(&out.join("adapter_config.json")), read_json(&peft_dir.join("adapter_config.json")));
        for (k, v) in c.as_object().unwrap() {
            let (mut a, mut b) = (v.clone(), p[k].clone());
            if k == "target_modules" {
                let sorted = |x: &Value| {
                    let mut l: Vec<String> = x.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
                    l.sort();
                    json!(l)
                };
                (a, b) = (sorted(&a), sorted(&b));
            }
            assert_eq!(a, b, "{kind}: config `{k}`");
        }
        assert_eq!(c["peft_type"], ty);
        // PEFT's logits on the exported adapter = mosa's logits of the expert
        let d = max_diff(&logits(tmp.path(), &expert, "digits8x8"), &reference(&format!("mosa_{kind}")));
        assert!(d <= 1e-5, "{kind}: logits differ from PEFT's by {d}");
        // the folder's README says how to load it, and a second export replaces the first
        assert!(std::fs::read_to_string(out.join("README.md")).unwrap().contains("PeftModel.from_pretrained"));
        ok(mosa(&["expert", "convert", s(&expert), "--to", "peft", "--out", s(&out)]));
    }
}

#[test]
fn sparse_experts_go_to_shira_and_back_without_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, w) = base();
    let src = data().join("mosa_sparse.safetensors");
    let orig = Expert::read(&src).unwrap();
    let out = tmp.path().join("shira");
    ok(mosa(&["expert", "convert", s(&src), "--to", "peft", "--out", s(&out)]));
    // SHiRA's entry count r·(in + out), padded with zeros at unused positions
    let r = read_json(&out.join("adapter_config.json"))["r"].as_u64().unwrap() as usize;
    let t = raw(&out.join("adapter_model.safetensors"));
    for e in &orig.tensors {
        let m = e.name.trim_end_matches(".weight");
        let (dt, shape, bytes) = &t[&format!("base_model.model.{m}.shira_weight")];
        assert_eq!((*dt, shape.clone()), (Dtype::F32, vec![r * (e.shape[0] + e.shape[1])]));
        let Delta::Sparse { indices, .. } = &e.delta else { panic!() };
        assert!(f32s(bytes)[indices.len()..].iter().all(|&v| v == 0.0), "padding is zero");
        let (dt, shape, _) = &t[&format!("base_model.model.{m}.shira_indices")];
        assert_eq!((*dt, shape.clone()), (Dtype::I32, vec![2, r * (e.shape[0] + e.shape[1])]));
    }
    // back: exactly the expert's entries (the padding recorded in the metadata is dropped)
    let back = tmp.path().join("back.safetensors");
    ok(mosa(&["expert", "import", s(&out), "--base", s(&w), "--task", "digits8x8", "--out", s(&back)]));
    let b = Expert::read(&back).unwrap();
    assert_eq!(b.tensors, orig.tensors);
    assert_eq!(b.head, orig.head);
    assert_eq!(
        (b.meta.classes.clone(), b.meta.resolution, b.meta.backbone.sha256.clone()),
        (orig.meta.classes.clone(), orig.meta.resolution, orig.meta.backbone.sha256.clone())
    );
    // PEFT's re-save lost our metadata: the padding comes back as explicit zeros, the change is the same
    let resaved = tmp.path().join("resaved.safetensors");
    ok(mosa(&["expert", "import", s(&data().join("mosa_sparse_peft")), "--base", s(&w), "--model", s(&cfg), "--task", "digits8x8", "--out", s(&resaved)]));
    let r2 = Expert::read(&resaved).unwrap();
    for (a, b) in orig.tensors.iter().zip(&r2.tensors) {
        assert_eq!(a.delta.to_dense(a.numel()), b.delta.to_dense(b.numel()), "{}", a.name);
        assert_eq!(b.delta.nnz(b.numel()), r * (a.shape[0] + a.shape[1]));
    }
    // the LoRA expert round-trips too
    let lsrc = data().join("mosa_lora.safetensors");
    let lout = tmp.path().join("lora");
    ok(mosa(&["expert", "convert", s(&lsrc), "--to", "peft", "--out", s(&lout)]));
    let lback = tmp.path().join("lback.safetensors");
    ok(mosa(&["expert", "import", s(&lout), "--base", s(&w), "--task", "digits8x8", "--out", s(&lback)]));
    let (a, b) = (Expert::read(&lsrc).unwrap(), Expert::read(&lback).unwrap());
    assert_eq!((a.tensors, a.head), (b.tensors, b.head));
}

/// ΔW of a PEFT module, straight from the file: LoRA `scale · B · A`, SHiRA the entries summed in.
fn dense_delta(t: &BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>, module: &str, out: usize, inp: usize, scale: f32) -> Vec<f32> {
    let mut d = vec![0f32; out * inp];
    let key = |s: &str| format!("base_model.model.{module}.{s}");
    if let Some((_, sa, a)) = t.get(&key("lora_A.weight")) {
        let (a, b) = (f32s(a), f32s(&t[&key("lora_B.weight")].2));
        let r = sa[0];
        for o in 0..out {
            for i in 0..inp {
                d[o * inp + i] = scale * (0..r).map(|k| b[o * r + k] * a[k * inp + i]).sum::<f32>();
            }
        }
    } else {
        let v = f32s(&t[&key("shira_weight")].2);
        let idx: Vec<i32> = t[&key("shira_indices")].2.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
        let n = v.len();
        for k in 0..n {
            d[idx[k] as usize * inp + idx[n + k] as usize] += v[k];
        }
    }
    d
}

#[test]
fn peft_trained_adapters_import_to_peft_s_logits_and_merge_with_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, w) = base();
    let base_sd = st::read(&w).unwrap();
    for name in ["lora", "shira"] {
        let dir = data().join(format!("torch_{name}"));
        let out = tmp.path().join(format!("{name}.safetensors"));
        ok(mosa(&["expert", "import", s(&dir), "--base", s(&w), "--model", s(&cfg), "--task", name, "--out", s(&out)]));
        let e = Expert::read(&out).unwrap();
        // every module's change against the dense re-implementation: the LoRA file's rank
        // pattern (fc2: r 2) and alpha pattern (blocks.1.attn.proj: 3) with lora_alpha 8
        let t = raw(&dir.join("adapter_model.safetensors"));
        assert_eq!(e.tensors.len(), 8, "qkv, attn.proj, fc1, fc2 of both blocks");
        for x in &e.tensors {
            let m = x.name.trim_end_matches(".weight");
            let scale = match (name, m) {
                ("shira", _) => 1.0,
                (_, m) if m.ends_with("fc2") => 8.0 / 2.0,
                (_, "blocks.1.attn.proj") => 3.0 / 4.0,
                _ => 8.0 / 4.0,
            };
            let want = dense_delta(&t, m, x.shape[0], x.shape[1], scale);
            assert!(want.iter().any(|&v| v != 0.0), "{m}: the fixture changes it");
            let d = max_diff(&x.delta.to_dense(x.numel()), &want);
            assert!(d <= 1e-6, "{name} {m}: ΔW differs by {d}");
        }
        assert_eq!(e.head.as_ref().unwrap().weight.shape, vec![5, 48]);
        let d = max_diff(&logits(tmp.path(), &out, name), &reference(&format!("torch_{name}")));
        assert!(d <= 1e-5, "{name}: logits differ from PEFT's by {d}");
    }
    // the hierarchical families (head `head.fc`): an rsLoRA (scale α/√r) on the Swin, a SHiRA
    // (r 1) on the ConvNeXt
    for (fam, name, modules) in [("swin", "swin_lora", 12), ("convnext", "convnext_shira", 8)] {
        let (cfg, w) = family(fam);
        let dir = data().join(format!("torch_{name}"));
        let out = tmp.path().join(format!("{name}.safetensors"));
        ok(mosa(&["expert", "import", s(&dir), "--base", s(&w), "--model", s(&cfg), "--task", name, "--out", s(&out)]));
        let e = Expert::read(&out).unwrap();
        assert_eq!(e.tensors.len(), modules, "{name}");
        let t = raw(&dir.join("adapter_model.safetensors"));
        for x in &e.tensors {
            let scale = if fam == "swin" { 4.0 / 2f32.sqrt() } else { 1.0 };
            let d = max_diff(&x.delta.to_dense(x.numel()), &dense_delta(&t, x.name.trim_end_matches(".weight"), x.shape[0], x.shape[1], scale));
            assert!(d <= 1e-6, "{name} {}: ΔW differs by {d}", x.name);
        }
        let d = max_diff(&family_logits(tmp.path(), fam, &out, name), &reference(&format!("torch_{name}")));
        assert!(d <= 1e-5, "{name}: logits differ from PEFT's by {d}");
    }
    // merged with our own expert of the same kind: W0 + ΔW_ours + ΔW_theirs, both heads kept
    for (mine, theirs) in [("sparse", "shira"), ("lora", "lora")] {
        let merged = tmp.path().join(format!("m-{mine}.safetensors"));
        let ours = data().join(format!("mosa_{mine}.safetensors"));
        let imported = tmp.path().join(format!("{theirs}.safetensors"));
        ok(mosa(&["merge", s(&ours), s(&imported), "--method", "task-arithmetic", "--lambda", "1", "--out", s(&merged)]));
        let m = st::read(&merged).unwrap();
        let (a, b) = (Expert::read(&ours).unwrap(), Expert::read(&imported).unwrap());
        let mut want = base_sd.tensors.clone();
        for x in a.tensors.iter().chain(&b.tensors) {
            for (v, d) in want.get_mut(&x.name).unwrap().data.iter_mut().zip(x.delta.to_dense(x.numel())) {
                *v += d;
            }
        }
        for x in b.tensors.iter() {
            let d = max_diff(&m.tensors[&x.name].data, &want[&x.name].data);
            assert!(d <= 1e-6, "{mine}+{theirs}: merged {} differs by {d}", x.name);
        }
        // each task's own head beside the merged backbone
        for (task, e) in [("digits8x8", &a), (theirs, &b)] {
            let h = e.head.as_ref().unwrap();
            assert_eq!(m.tensors[&format!("heads.{task}.weight")], h.weight, "{task}");
            assert_eq!(Some(&m.tensors[&format!("heads.{task}.bias")]), h.bias.as_ref(), "{task}");
        }
    }
}

/// A copy of a fixture adapter folder with its config and tensors edited.
fn edited(
    tmp: &Path,
    from: &str,
    name: &str,
    cfg: impl FnOnce(&mut Value),
    tensors: impl FnOnce(&mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = read_json(&data().join(from).join("adapter_config.json"));
    cfg(&mut c);
    std::fs::write(dir.join("adapter_config.json"), serde_json::to_string_pretty(&c).unwrap()).unwrap();
    let mut t = raw(&data().join(from).join("adapter_model.safetensors"));
    tensors(&mut t);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        t.iter().map(|(k, (dt, sh, b))| (k.clone(), safetensors::tensor::TensorView::new(*dt, sh.clone(), b).unwrap())).collect();
    std::fs::write(dir.join("adapter_model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    dir
}

#[test]
fn what_an_expert_cannot_represent_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (cfg, w) = base();
    let import = |dir: &Path, extra: &[&str]| {
        let out = t.join("x.safetensors");
        let mut a = vec!["expert", "import", s(dir), "--base", s(&w), "--task", "x", "--out", s(&out)];
        a.extend_from_slice(extra);
        let o = mosa(&a);
        assert!(!out.exists() || o.status.success(), "a refused import left {}", out.display());
        o
    };
    let m = ["--model", s(&cfg)];
    let keep = |_: &mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>| {};
    let lora = |n: &str, c: fn(&mut Value)| edited(t, "torch_lora", n, c, keep);

    refused(import(&lora("ia3", |c| c["peft_type"] = json!("IA3")), &m), &["`peft_type` is IA3", "LORA", "SHIRA"]);
    refused(import(&lora("dora", |c| c["use_dora"] = json!(true)), &m), &["use_dora", "DoRA"]);
    refused(import(&lora("bias", |c| c["bias"] = json!("all")), &m), &["`bias` is \"all\""]);
    refused(import(&lora("lora-bias", |c| c["lora_bias"] = json!(true)), &m), &["lora_bias"]);
    refused(import(&lora("replicated", |c| c["layer_replication"] = json!([[0, 2], [1, 2]])), &m), &["layer_replication"]);
    refused(import(&lora("rank", |c| c["rank_pattern"] = json!({"fc2": 3})), &m), &["blocks.0.mlp.fc2", "rank 3", "rank 2"]);
    refused(
        import(&lora("ambiguous", |c| c["alpha_pattern"] = json!({"proj": 3, "blocks.1.attn.proj": 5})), &m),
        &["alpha_pattern", "both match", "blocks.1.attn.proj"],
    );
    refused(import(&lora("regex", |c| c["alpha_pattern"] = json!({"blocks.(1": 3})), &m), &["alpha_pattern", "blocks.(1"]);
    // no timm name of a preset and no --model: which model is it?
    refused(import(&data().join("torch_lora"), &[]), &["give --model"]);
    // targets the base does not have, or not as a linear weight
    let renamed = edited(
        t,
        "torch_lora",
        "absent",
        |_| {},
        |x| {
            for s in ["lora_A", "lora_B"] {
                let v = x.remove(&format!("base_model.model.blocks.1.mlp.fc1.{s}.weight")).unwrap();
                x.insert(format!("base_model.model.blocks.7.mlp.fc1.{s}.weight"), v);
            }
        },
    );
    refused(import(&renamed, &m), &["blocks.7.mlp.fc1", "the base has no weight"]);
    let conv = edited(
        t,
        "torch_lora",
        "conv",
        |_| {},
        |x| {
            x.insert("base_model.model.patch_embed.proj.lora_A.weight".into(), (Dtype::F32, vec![4, 3, 8, 8], vec![0; 4 * 3 * 64 * 4]));
            x.insert("base_model.model.patch_embed.proj.lora_B.weight".into(), (Dtype::F32, vec![48, 4, 1, 1], vec![0; 48 * 4 * 4]));
        },
    );
    refused(import(&conv, &m), &["patch_embed.proj", "not a linear weight"]);
    let half = edited(
        t,
        "torch_lora",
        "half",
        |_| {},
        |x| {
            x.remove("base_model.model.blocks.0.attn.qkv.lora_B.weight");
        },
    );
    refused(import(&half, &m), &["blocks.0.attn.qkv.lora_B.weight", "missing"]);
    let saved = edited(
        t,
        "torch_lora",
        "norm",
        |c| c["modules_to_save"] = json!(["head", "norm"]),
        |x| {
            x.insert("base_model.model.norm.weight".into(), (Dtype::F32, vec![48], vec![0; 48 * 4]));
        },
    );
    refused(import(&saved, &m), &["base_model.model.norm.weight", "modules_to_save", "head"]);
    let out_of_range = edited(
        t,
        "torch_shira",
        "range",
        |_| {},
        |x| {
            let (_, _, b) = x.get_mut("base_model.model.blocks.0.attn.qkv.shira_indices").unwrap();
            b[..4].copy_from_slice(&999i32.to_le_bytes());
        },
    );
    refused(import(&out_of_range, &m), &["shira_indices", "(999,", "[144, 48]"]);
    // files: malformed JSON (with its line), a pickled adapter, a file for a folder
    let bad = t.join("badjson");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("adapter_config.json"), "{\n  \"peft_type\": \"LORA\",\n  \"r\": \n}").unwrap();
    refused(import(&bad, &m), &["adapter_config.json", "line 4"]);
    let bin = t.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(data().join("torch_lora/adapter_config.json"), bin.join("adapter_config.json")).unwrap();
    std::fs::write(bin.join("adapter_model.bin"), b"PK").unwrap();
    refused(import(&bin, &m), &["adapter_model.bin", "safe_serialization"]);
    refused(import(&w, &m), &["vit.safetensors", "not a folder"]);
    // the output may not replace the adapter it reads
    let copy = t.join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(data().join("torch_lora").join(f), copy.join(f)).unwrap();
    }
    let target = copy.join("adapter_model.safetensors");
    refused(mosa(&["expert", "import", s(&copy), "--base", s(&w), "--model", s(&cfg), "--task", "x", "--out", s(&target)]), &["same file as the input"]);
    assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(data().join("torch_lora/adapter_model.safetensors")).unwrap());
    // an adapter exported from an expert on other weights
    let ours = t.join("ours");
    ok(mosa(&["expert", "convert", s(&data().join("mosa_sparse.safetensors")), "--to", "peft", "--out", s(&ours)]));
    let other = t.join("other.safetensors");
    let mut sd = st::read(&w).unwrap();
    sd.tensors.get_mut("norm.weight").unwrap().data[0] += 1.0;
    st::write(&sd, &other, None).unwrap();
    refused(mosa(&["expert", "import", s(&ours), "--base", s(&other), "--task", "x", "--out", s(&t.join("y.safetensors"))]), &["SHA-256", "other.safetensors"]);
}

#[test]
fn exports_refuse_to_destroy_a_folder_and_full_experts_become_state_dicts() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (_, w) = base();
    // a folder an export did not write is never replaced
    let mine = t.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("model.safetensors"), b"my model").unwrap();
    std::fs::write(mine.join("README.md"), b"my notes").unwrap();
    refused(mosa(&["expert", "convert", s(&data().join("mosa_lora.safetensors")), "--to", "peft", "--out", s(&mine)]), &["mine", "did not write"]);
    assert_eq!(std::fs::read(mine.join("model.safetensors")).unwrap(), b"my model");
    let file = t.join("file");
    std::fs::write(&file, b"x").unwrap();
    refused(mosa(&["expert", "convert", s(&data().join("mosa_lora.safetensors")), "--to", "peft", "--out", s(&file)]), &["file", "a file is there"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"x");

    // one SHiRA r for every module: a dense qkv and a small proj cannot share one
    let mut e = Expert::read(&data().join("mosa_sparse.safetensors")).unwrap();
    let n = 144 * 48;
    e.tensors[0].delta = Delta::Sparse { indices: (0..n as u32 - 10).collect(), values: vec![0.01; n - 10] };
    e.tensors.truncate(1);
    e.tensors.push(mosa_core::expert::ExpertTensor {
        name: "blocks.0.attn.proj.weight".into(),
        shape: vec![48, 48],
        delta: Delta::Sparse { indices: vec![3, 9], values: vec![0.5, -0.5] },
    });
    let dense = t.join("dense.safetensors");
    e.write(&dense).unwrap();
    refused(mosa(&["expert", "convert", s(&dense), "--to", "peft", "--out", s(&t.join("d"))]), &["SHiRA", "blocks.0.attn.proj.weight", "r = 36", "2304"]);
    assert!(!t.join("d").exists());

    // a full expert: the fine-tuned model's state dict (base + change, its head)
    let mut full = Expert::read(&data().join("mosa_lora.safetensors")).unwrap();
    full.meta.kind = mosa_core::expert::ExpertKind::Full;
    let sd = st::read(&w).unwrap();
    let names = ["blocks.0.norm1.weight", "patch_embed.proj.weight", "blocks.1.attn.qkv.weight"];
    full.tensors = names
        .iter()
        .enumerate()
        .map(|(k, n)| {
            let shape = sd.tensors[*n].shape.clone();
            let numel = shape.iter().product::<usize>();
            mosa_core::expert::ExpertTensor { name: n.to_string(), shape, delta: Delta::Dense((0..numel).map(|i| (i + k) as f32 * 1e-3).collect()) }
        })
        .collect();
    let fpath = t.join("full.safetensors");
    full.write(&fpath).unwrap();
    let out = t.join("full");
    let msg = ok(mosa(&["expert", "convert", s(&fpath), "--to", "peft", "--out", s(&out), "--base", s(&w)]));
    assert!(msg.contains("state dict"), "{msg}");
    let got = st::read(&out.join("model.safetensors")).unwrap();
    assert_eq!(got.tensors.keys().collect::<Vec<_>>(), sd.tensors.keys().collect::<Vec<_>>(), "every timm key, no more");
    for (k, v) in &sd.tensors {
        let want: Vec<f32> = match full.tensors.iter().find(|x| &x.name == k) {
            Some(x) => v.data.iter().zip(x.delta.to_dense(x.numel())).map(|(a, b)| a + b).collect(),
            None if k.starts_with("head.") => {
                (if k == "head.weight" { &full.head.as_ref().unwrap().weight } else { full.head.as_ref().unwrap().bias.as_ref().unwrap() }).data.clone()
            }
            None => v.data.clone(),
        };
        assert_eq!(got.tensors[k].data, want, "{k}");
    }
    // its base must be the expert's own
    refused(
        mosa(&["expert", "convert", s(&fpath), "--to", "peft", "--out", s(&t.join("f2")), "--base", s(&fixtures().join("swin.safetensors"))]),
        &["SHA-256", "swin.safetensors"],
    );
}

#[test]
fn a_finished_run_exports_as_a_peft_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format2");
    let (model, ds) = (data.join("tiny.json"), format!("vtab:{}", data.join("data/digits8x8").display()));
    let run = tmp.path().join("run");
    let train = |method: &str, out: &Path| {
        mosa(&[
            "train",
            "--method",
            method,
            "--model",
            s(&model),
            "--weights",
            "none",
            "--dataset",
            &ds,
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--batch-size",
            "8",
            "--resolution",
            "16",
            "--keep-ratio",
            "0.2",
            "--out",
            s(out),
        ])
    };
    ok(train("sparse", &run));
    let msg = ok(mosa(&["expert", "export", "--run", s(&run), "--format", "peft"]));
    assert!(msg.contains("SHIRA"), "{msg}");
    // the default folder <run>/peft holds what converting the run's own expert file writes
    let conv = tmp.path().join("conv");
    ok(mosa(&["expert", "convert", s(&run.join("expert.safetensors")), "--to", "peft", "--out", s(&conv)]));
    assert_eq!(raw(&run.join("peft/adapter_model.safetensors")), raw(&conv.join("adapter_model.safetensors")));
    assert_eq!(read_json(&run.join("peft/adapter_config.json")), read_json(&conv.join("adapter_config.json")));
    // without weights the config names the model it was built from
    assert_eq!(read_json(&conv.join("adapter_config.json"))["base_model_name_or_path"], json!(s(&model)));
    // a method that makes no expert says so
    let lin = tmp.path().join("linear");
    ok(train("linear", &lin));
    refused(mosa(&["expert", "export", "--run", s(&lin), "--format", "peft"]), &["linear", "makes no expert"]);
}
