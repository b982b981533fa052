//! `mosa serve` end to end: the real server on a free loopback port, talked to over HTTP by a
//! real client (ureq). Its logits for every kind of task (sparse, LoRA and full experts, heads of
//! a merged file) are compared with an independent path: `mosa merge` of the one expert onto the
//! base, then `mosa forward --task` on the same tensor.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use mosa_core::Rng;
use mosa_core::expert::{BackboneIdentity, Delta, Expert, ExpertKind, ExpertMeta, ExpertTensor, Head};
use mosa_core::host::HostTensor;
use mosa_models::load::safetensors;
use mosa_testkit::fixtures;
use serde_json::{Value, json};

const TOKEN: &str = "test-token-0123456789abcdef";

fn mosa(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mosa")).args(args).output().expect("run mosa")
}

/// A running `mosa serve`, stopped when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mosa"))
            .arg("serve")
            .args(args)
            .args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosa serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        let Some(rest) = first.strip_prefix("listening on ") else {
            let out = child.wait_with_output().unwrap();
            panic!("mosa serve did not start: {first} {}", String::from_utf8_lossy(&out.stderr));
        };
        let url = rest.split_whitespace().next().unwrap().to_string();
        // keep draining stdout so that the server never blocks on a full pipe
        std::thread::spawn(move || for _ in lines {});
        Server { child, url }
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let st = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(st.success());
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60))).build().into()
}

/// (status, body as JSON, or as text under "text")
fn call(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut r = r.expect("HTTP exchange");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text })))
}

fn get(url: &str) -> (u16, Value) {
    call(agent().get(url).call())
}

fn post_json(url: &str, body: &Value) -> (u16, Value) {
    call(agent().post(url).header("Content-Type", "application/json").send(serde_json::to_vec(body).unwrap().as_slice()))
}

fn post_bytes(url: &str, content_type: &str, body: &[u8], auth: Option<&str>) -> (u16, Value) {
    let mut req = agent().post(url).header("Content-Type", content_type);
    if let Some(t) = auth {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    call(req.send(body))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    mosa_testkit::max_abs_diff(a, b)
}

fn normal(rng: &mut Rng, scale: f32) -> f32 {
    // a sum of uniforms: roughly normal, enough for test values
    scale * ((0..4).map(|_| rng.uniform() as f32).sum::<f32>() - 2.0)
}

fn randn(rng: &mut Rng, shape: &[usize], scale: f32) -> HostTensor {
    let n: usize = shape.iter().product();
    HostTensor::new(shape.to_vec(), (0..n).map(|_| normal(rng, scale)).collect())
}

/// The tiny ViT fixture (d 48, 2 blocks, 32 px) as a base: its config file, weights, SHA-256 and
/// timm-layout tensors.
struct Base {
    config: PathBuf,
    weights: PathBuf,
    sha: String,
    sd: mosa_models::StateDict,
    cfg_json: Value,
}

fn base() -> Base {
    let f = fixtures();
    let (config, weights) = (f.join("vit.json"), f.join("vit.safetensors"));
    let sha = mosa_train::rundir::file_sha256(&weights).unwrap();
    let sd = safetensors::read(&weights).unwrap();
    let cfg = mosa_models::resolve_model(config.to_str().unwrap()).unwrap();
    Base { config, weights, sha, sd, cfg_json: serde_json::to_value(cfg).unwrap() }
}

/// An expert of `kind` for `task` with `classes` classes, random but seeded, changing qkv and
/// fc1 of both blocks (sparse: 10% of the entries; LoRA: rank 4), and for `full` also a
/// LayerNorm and the patch embedding's convolution (layouts other than a linear's).
fn expert(b: &Base, kind: ExpertKind, task: &str, classes: usize, seed: u64) -> Expert {
    let mut rng = Rng::new(seed);
    let mut names = vec!["blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "blocks.1.mlp.fc1.weight"];
    if kind == ExpertKind::Full {
        names.extend(["blocks.0.norm1.weight", "patch_embed.proj.weight", "blocks.1.mlp.fc2.bias"]);
    }
    let tensors = names
        .iter()
        .map(|&name| {
            let shape = b.sd.tensors[name].shape.clone();
            let n: usize = shape.iter().product();
            let delta = match kind {
                ExpertKind::Sparse => {
                    let mut idx: Vec<u32> = rng.permutation(n).into_iter().take(n / 10).map(|i| i as u32).collect();
                    idx.sort();
                    let values = idx.iter().map(|_| normal(&mut rng, 0.05)).collect();
                    Delta::Sparse { indices: idx, values }
                }
                ExpertKind::Lora => Delta::LowRank { a: randn(&mut rng, &[4, shape[1]], 0.1), b: randn(&mut rng, &[shape[0], 4], 0.1), scale: 2.0 },
                ExpertKind::Full => Delta::Dense((0..n).map(|_| normal(&mut rng, 0.02)).collect()),
            };
            ExpertTensor { name: name.to_string(), shape, delta }
        })
        .collect();
    Expert {
        meta: ExpertMeta {
            format: mosa_core::expert::EXPERT_FORMAT,
            kind,
            backbone: BackboneIdentity {
                model: "vit.json".into(),
                config: b.cfg_json.clone(),
                weights: Some(b.weights.display().to_string()),
                sha256: Some(b.sha.clone()),
            },
            method: json!({ "method": format!("{kind:?}").to_lowercase() }),
            task: task.into(),
            dataset: format!("vtab:/nowhere/{task}"),
            keep_ratio: None,
            criterion: None,
            summary: json!({}),
            classes: (0..classes).map(|i| format!("{task}-c{i}")).collect(),
            values: Default::default(),
            resolution: Some(32),
            tensors: Default::default(),
        },
        tensors,
        head: Some(Head { weight: randn(&mut rng, &[classes, 48], 0.3), bias: Some(randn(&mut rng, &[classes], 0.1)) }),
    }
}

/// A batch of images as the model takes them, seeded.
fn input(n: usize, seed: u64) -> HostTensor {
    randn(&mut Rng::new(seed), &[n, 3, 32, 32], 1.0)
}

/// The reference: `mosa forward --task` on a merged file (`merged`), or on the one expert
/// merged alone onto the base with overlap-mean (the base plus its change, exactly).
fn reference(b: &Base, dir: &Path, expert_or_merged: &Path, task: &str, x: &HostTensor, merge_first: bool) -> Vec<f32> {
    let merged = if merge_first {
        let m = dir.join(format!("ref-{task}.safetensors"));
        let o = mosa(&["merge", expert_or_merged.to_str().unwrap(), "--method", "overlap-mean", "--out", m.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        m
    } else {
        expert_or_merged.to_path_buf()
    };
    let inp = dir.join(format!("in-{task}.safetensors"));
    safetensors::write_atomic(&inp, &safetensors::serialize(&[("input".to_string(), x)], None).unwrap()).unwrap();
    let out = dir.join(format!("out-{task}.safetensors"));
    let o = mosa(&[
        "forward",
        "--model",
        b.config.to_str().unwrap(),
        "--weights",
        merged.to_str().unwrap(),
        "--task",
        task,
        "--input",
        inp.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    safetensors::read(&out).unwrap().tensors["logits"].data.clone()
}

/// The expert with every change zero (the same head on the base as it is).
fn zeroed(mut e: Expert) -> Expert {
    for t in &mut e.tensors {
        match &mut t.delta {
            Delta::Sparse { values, .. } => values.iter_mut().for_each(|v| *v = 0.0),
            Delta::LowRank { b, .. } => b.data.iter_mut().for_each(|v| *v = 0.0),
            Delta::Dense(d) => d.iter_mut().for_each(|v| *v = 0.0),
        }
    }
    e
}

fn infer_body(x: &HostTensor) -> Value {
    json!({ "id": "r1", "inputs": [{ "name": "input", "shape": x.shape, "datatype": "FP32", "data": x.data }] })
}

fn logits_of(v: &Value) -> Vec<f32> {
    assert_eq!(v["outputs"][0]["name"], "logits", "{v}");
    v["outputs"][0]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn png(seed: u64, w: u32, h: u32) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let data: Vec<u8> = (0..w * h * 3).map(|_| rng.below(256) as u8).collect();
    mosa_data::image::encode_png(&mosa_data::image::Rgb8::new(w as usize, h as usize, data), false)
}

/// Writes the experts of the main test: one per kind, plus a merged file of two sparse ones.
fn setup(dir: &Path) -> (Base, Vec<(String, PathBuf, bool)>) {
    let b = base();
    let experts_dir = dir.join("experts");
    std::fs::create_dir_all(&experts_dir).unwrap();
    let mut tasks = Vec::new();
    for (kind, task, classes, seed) in [(ExpertKind::Sparse, "sparse-a", 4, 1), (ExpertKind::Lora, "lora-a", 3, 2), (ExpertKind::Full, "full-a", 6, 3)] {
        let p = experts_dir.join(format!("{task}.safetensors"));
        expert(&b, kind, task, classes, seed).write(&p).unwrap();
        tasks.push((task.to_string(), p, true));
    }
    // two sparse experts merged with TIES: their heads are tasks on the merged backbone
    let (m1, m2) = (dir.join("m1.safetensors"), dir.join("m2.safetensors"));
    expert(&b, ExpertKind::Sparse, "merged-x", 5, 4).write(&m1).unwrap();
    expert(&b, ExpertKind::Sparse, "merged-y", 2, 5).write(&m2).unwrap();
    let merged = experts_dir.join("merged.safetensors");
    let o = mosa(&["merge", m1.to_str().unwrap(), m2.to_str().unwrap(), "--method", "ties", "--out", merged.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tasks.push(("merged-x".into(), merged.clone(), false));
    tasks.push(("merged-y".into(), merged, false));
    (b, tasks)
}

#[test]
fn served_logits_equal_merge_then_forward_for_every_kind_of_task() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, tasks) = setup(tmp.path());
    let s = Server::start(&["--base", b.weights.to_str().unwrap(), "--experts", tmp.path().join("experts").to_str().unwrap()]);

    assert_eq!(get(&format!("{}/v2/health/live", s.url)), (200, json!({ "live": true })));
    assert_eq!(get(&format!("{}/v2/health/ready", s.url)), (200, json!({ "ready": true })));
    let (st, models) = get(&format!("{}/v2/models", s.url));
    assert_eq!(st, 200);
    let names: Vec<&str> = models["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["full-a", "lora-a", "merged-x", "merged-y", "sparse-a"]);
    let (st, meta) = get(&format!("{}/v2/models/lora-a", s.url));
    assert_eq!(st, 200);
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 3, 32, 32]));
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 3]));
    assert_eq!(meta["parameters"]["classes"], json!(["lora-a-c0", "lora-a-c1", "lora-a-c2"]));

    // every kind, in an order that switches the weights in place at every request, twice
    for round in 0..2 {
        for (i, (task, file, merge_first)) in tasks.iter().enumerate() {
            let x = input(3, 100 + i as u64);
            let want = reference(&b, tmp.path(), file, task, &x, *merge_first);
            let (st, v) = post_json(&format!("{}/v2/models/{task}/infer", s.url), &infer_body(&x));
            assert_eq!(st, 200, "{task}: {v}");
            assert_eq!(v["model_name"], task.as_str());
            assert_eq!(v["id"], "r1");
            let got = logits_of(&v);
            let d = max_diff(&got, &want);
            assert!(d <= 1e-5, "{task} (round {round}): served logits differ from merge + forward by {d}");
            assert_eq!(v["outputs"][0]["shape"], json!([3, want.len() / 3]));
            if round == 0 && *merge_first {
                // the change matters: the same head on the base alone answers otherwise
                let zero = tmp.path().join(format!("zero-{task}.safetensors"));
                zeroed(Expert::read(file).unwrap()).write(&zero).unwrap();
                let base_only = reference(&b, tmp.path(), &zero, task, &x, true);
                assert!(max_diff(&base_only, &want) > 1e-3, "{task}: the expert hardly changes the logits");
            }
        }
    }

    // the binary tensor data extension gives the same logits; the classification extension the top k
    let x = input(2, 7);
    let want = reference(&b, tmp.path(), &tasks[0].1, "sparse-a", &x, true);
    let header = serde_json::to_vec(&json!({
        "inputs": [{ "name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "parameters": { "binary_data_size": x.data.len() * 4 } }],
        "outputs": [{ "name": "logits", "parameters": { "classification": 2 } }]
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend(x.data.iter().flat_map(|v| v.to_le_bytes()));
    let (st, v) = call(
        agent()
            .post(&format!("{}/v2/models/sparse-a/infer", s.url))
            .header("Inference-Header-Content-Length", &header.len().to_string())
            .header("Content-Type", "application/octet-stream")
            .send(body.as_slice()),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["outputs"][0]["datatype"], "BYTES");
    assert_eq!(v["outputs"][0]["shape"], json!([2, 2]));
    for (img, row) in want.chunks(4).enumerate() {
        let mut order: Vec<usize> = (0..4).collect();
        order.sort_by(|&a, &c| row[c].total_cmp(&row[a]));
        for k in 0..2 {
            let s = v["outputs"][0]["data"][img * 2 + k].as_str().unwrap();
            let parts: Vec<&str> = s.split(':').collect();
            assert_eq!(parts[1].parse::<usize>().unwrap(), order[k], "{s}");
            assert_eq!(parts[2], format!("sparse-a-c{}", order[k]));
            assert!((parts[0].parse::<f32>().unwrap() - row[order[k]]).abs() <= 1e-5, "{s} vs {}", row[order[k]]);
        }
    }

    // encoded images: BYTES (base64) and /predictions (raw body, multipart) answer what the FP32
    // path answers for the image preprocessed as `mosa eval` preprocesses it
    let images = [png(1, 40, 30), png(2, 32, 32)];
    let t = mosa_data::Transform::new(mosa_data::Style::Vtab, 32, false);
    let mut pre = vec![0f32; 2 * 3 * 32 * 32];
    for (img, out) in images.iter().zip(pre.chunks_mut(3 * 32 * 32)) {
        let decoded = mosa_data::image::decode_bytes(img, Path::new("x.png")).unwrap();
        t.finish(&t.prepare(&decoded), &mut Rng::new(0), out);
    }
    let pre = HostTensor::new(vec![2, 3, 32, 32], pre);
    let (_, v) = post_json(&format!("{}/v2/models/lora-a/infer", s.url), &infer_body(&pre));
    let want = logits_of(&v);
    let b64: Vec<String> = images.iter().map(|i| base64::engine::general_purpose::STANDARD.encode(i)).collect();
    let (st, v) =
        post_json(&format!("{}/v2/models/lora-a/infer", s.url), &json!({ "inputs": [{ "name": "input", "shape": [2], "datatype": "BYTES", "data": b64 }] }));
    assert_eq!(st, 200, "{v}");
    assert!(max_diff(&logits_of(&v), &want) <= 1e-6);
    let (st, v) = post_bytes(&format!("{}/predictions/lora-a", s.url), "image/png", &images[0], None);
    assert_eq!(st, 200, "{v}");
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 3, "top-5 of a 3-class task is its 3 classes");
    let row0 = &want[..3];
    let best = (0..3).max_by(|&a, &c| row0[a].total_cmp(&row0[c])).unwrap();
    assert_eq!(top[0]["index"], best);
    assert!((top[0]["logit"].as_f64().unwrap() as f32 - row0[best]).abs() <= 1e-5);
    let psum: f64 = top.iter().map(|t| t["probability"].as_f64().unwrap()).sum();
    assert!((psum - 1.0).abs() < 1e-5, "{psum}");
    let boundary = "XyZ123boundary";
    let mut mp = Vec::new();
    for (i, img) in images.iter().enumerate() {
        mp.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"img{i}.png\"\r\nContent-Type: image/png\r\n\r\n").bytes());
        mp.extend(img);
        mp.extend(b"\r\n");
    }
    mp.extend(format!("--{boundary}--\r\n").bytes());
    let (st, v) = post_bytes(&format!("{}/predictions/lora-a", s.url), &format!("multipart/form-data; boundary={boundary}"), &mp, None);
    assert_eq!(st, 200, "{v}");
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2);
    for (i, p) in preds.iter().enumerate() {
        assert_eq!(p["image"], format!("file \"img{i}.png\""));
        let row = &want[i * 3..i * 3 + 3];
        let best = (0..3).max_by(|&a, &c| row[a].total_cmp(&row[c])).unwrap();
        assert_eq!(p["top"][0]["index"], best);
    }

    // the page and the metrics
    let (st, page) = get(&s.url);
    assert_eq!(st, 200);
    assert!(page["text"].as_str().unwrap().contains("/predictions/"));
    let (st, m) = get(&format!("{}/metrics", s.url));
    assert_eq!(st, 200);
    let m = m["text"].as_str().unwrap();
    for needle in [
        "mosa_requests_total{task=\"lora-a\",code=\"200\"}",
        "mosa_request_duration_seconds_bucket{le=\"+Inf\",task=\"lora-a\"} 6",
        "mosa_batch_size_count",
        "mosa_expert_switches_total",
        "mosa_queue_depth",
        "mosa_tasks_loaded 5",
        "mosa_resident_memory_bytes",
    ] {
        assert!(m.contains(needle), "`{needle}` not in the metrics:\n{m}");
    }
    let switches: f64 = m.lines().find_map(|l| l.strip_prefix("mosa_expert_switches_total ")).unwrap().parse().unwrap();
    assert!(switches >= 10.0, "the loop above switched experts at each request: {switches}");
}

#[test]
fn concurrent_clients_alternating_tasks_with_loads_and_unloads_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, tasks) = setup(tmp.path());
    let token = tmp.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    // an expert outside the served folder, loaded at run time
    let late = tmp.path().join("late.safetensors");
    expert(&b, ExpertKind::Sparse, "late", 3, 9).write(&late).unwrap();
    let s = Server::start(&[
        "--base",
        b.weights.to_str().unwrap(),
        "--experts",
        tmp.path().join("experts").to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "--max-batch",
        "4",
    ]);
    // single-task references for a few inputs per task
    let all: Vec<(String, PathBuf, bool)> = tasks.into_iter().chain([("late".to_string(), late.clone(), true)]).collect();
    let inputs: Vec<HostTensor> = (0..3).map(|k| input(1 + k, 50 + k as u64)).collect();
    let refs: Vec<Vec<Vec<f32>>> = all.iter().map(|(t, f, m)| inputs.iter().map(|x| reference(&b, tmp.path(), f, t, x, *m)).collect()).collect();

    let late_url = format!("{}/v2/repository/models/late/load", s.url);
    let body = serde_json::to_vec(&json!({ "parameters": { "path": late } })).unwrap();
    // the repository API wants the token
    assert_eq!(post_bytes(&late_url, "application/json", &body, None).0, 401);
    assert_eq!(post_bytes(&late_url, "application/json", &body, Some("wrong-token-0123456789")).0, 401);
    assert_eq!(post_json(&format!("{}/v2/models/late/infer", s.url), &infer_body(&inputs[0])).0, 404);

    let stop = std::sync::atomic::AtomicBool::new(false);
    let answered = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for c in 0..4u64 {
            let (all, refs, inputs, s, stop, answered) = (&all, &refs, &inputs, &s, &stop, &answered);
            scope.spawn(move || {
                let mut rng = Rng::new(1000 + c);
                let mut k = 0;
                while k < 40 || !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    k += 1;
                    let (t, i) = (rng.below(all.len()), rng.below(inputs.len()));
                    let task = &all[t].0;
                    let (st, v) = post_json(&format!("{}/v2/models/{task}/infer", s.url), &infer_body(&inputs[i]));
                    match st {
                        200 => {
                            let d = max_diff(&logits_of(&v), &refs[t][i]);
                            assert!(d <= 1e-5, "client {c}: {task} answered {d} away from its single-task reference");
                            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        // only the task being loaded and unloaded may be missing
                        404 => assert_eq!(task, "late", "{v}"),
                        other => panic!("client {c}: {task}: {other} {v}"),
                    }
                    if k > 400 {
                        break;
                    }
                }
            });
        }
        // loads and unloads while the clients run
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(150));
            let (st, v) = post_bytes(&late_url, "application/json", &body, Some(TOKEN));
            assert_eq!(st, 200, "{v}");
            std::thread::sleep(Duration::from_millis(150));
            let (st, v) = post_bytes(&format!("{}/v2/repository/models/late/unload", s.url), "application/json", b"", Some(TOKEN));
            assert_eq!(st, 200, "{v}");
        }
        // and once more, staying: the clients' next `late` requests succeed
        assert_eq!(post_bytes(&late_url, "application/json", &body, Some(TOKEN)).0, 200);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    assert!(answered.load(std::sync::atomic::Ordering::SeqCst) >= 160);
    // loaded without a path: found under --experts by its task name (a merged file's head)
    let (st, v) = post_bytes(&format!("{}/v2/repository/models/merged-y/unload", s.url), "application/json", b"", Some(TOKEN));
    assert_eq!(st, 200, "{v}");
    assert_eq!(post_json(&format!("{}/v2/models/merged-y/infer", s.url), &infer_body(&inputs[0])).0, 404);
    let (st, v) = post_bytes(&format!("{}/v2/repository/models/merged-y/load", s.url), "application/json", b"", Some(TOKEN));
    assert_eq!(st, 200, "{v}");
    let (st, v) = post_json(&format!("{}/v2/models/merged-y/infer", s.url), &infer_body(&inputs[0]));
    assert_eq!(st, 200);
    let i = all.iter().position(|t| t.0 == "merged-y").unwrap();
    assert!(max_diff(&logits_of(&v), &refs[i][0]) <= 1e-5);
}

#[test]
fn bad_requests_get_their_status_and_a_one_line_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, tasks) = setup(tmp.path());
    let token = tmp.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let s = Server::start(&[
        "--base",
        b.weights.to_str().unwrap(),
        "--experts",
        tasks[0].1.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "--max-body-mib",
        "1",
        "--max-pixels",
        "10000",
    ]);
    let infer = format!("{}/v2/models/sparse-a/infer", s.url);
    let one_line = |v: &Value| {
        let e = v["error"].as_str().unwrap_or_else(|| panic!("no error field: {v}"));
        assert!(!e.contains('\n') && !e.is_empty(), "{e}");
        e.to_string()
    };
    // unknown task
    let (st, v) = post_json(&format!("{}/v2/models/nope/infer", s.url), &infer_body(&input(1, 1)));
    assert_eq!(st, 404);
    assert!(one_line(&v).contains("no task `nope`"), "{v}");
    assert_eq!(get(&format!("{}/v2/models/nope", s.url)).0, 404);
    // malformed tensors
    for (body, needle) in [
        (json!({ "inputs": [{ "name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": vec![0.0; 768] }] }), "takes [N, 3, 32, 32]"),
        (json!({ "inputs": [{ "name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": vec![0.0; 10] }] }), "10 values for shape"),
        (json!({ "inputs": [{ "name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [["a"]] }] }), "1 values for shape"),
        (json!({ "inputs": [{ "name": "input", "shape": [1, 3, 32, 32], "datatype": "INT8", "data": [1] }] }), "INT8"),
        (json!({ "inputs": [{ "name": "pixels", "shape": [1], "datatype": "BYTES", "data": ["AA=="] }] }), "unknown input `pixels`"),
        (json!({ "inputs": [{ "name": "input", "shape": [1], "datatype": "BYTES", "data": ["%%%"] }] }), "not base64"),
        (json!({ "inputs": [{ "name": "input", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="] }] }), "image 0"),
        (json!({ "inputs": [{ "name": "input", "shape": [-1, 3, 32, 32], "datatype": "FP32", "data": [] }] }), "negative"),
        (json!({ "inputs": [] }), "no input named `input`"),
        (
            json!({ "inputs": [{ "name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": vec![0.0; 3072] }], "outputs": [{ "name": "logits", "parameters": { "classification": 0 } }] }),
            "classification",
        ),
    ] {
        let (st, v) = post_json(&infer, &body);
        assert_eq!(st, 400, "{body}: {v}");
        assert!(one_line(&v).contains(needle), "`{needle}` not in {v}");
    }
    let (st, v) = post_bytes(&infer, "application/json", b"{not json", None);
    assert_eq!(st, 400);
    assert!(one_line(&v).contains("request JSON"), "{v}");
    // non-finite values arrive through the binary extension (JSON has no NaN)
    let header = br#"{"inputs":[{"name":"input","shape":[1,3,32,32],"datatype":"FP32","parameters":{"binary_data_size":12288}}]}"#;
    let mut body = header.to_vec();
    body.extend((0..3072).flat_map(|i| if i == 5 { f32::NAN } else { 0.0 }.to_le_bytes()));
    let (st, v) = call(agent().post(&infer).header("Inference-Header-Content-Length", &header.len().to_string()).send(body.as_slice()));
    assert_eq!(st, 400);
    assert!(one_line(&v).contains("value 5 is not finite"), "{v}");
    // images: undecodable, too many pixels, empty
    let pred = format!("{}/predictions/sparse-a", s.url);
    let (st, v) = post_bytes(&pred, "image/png", b"\x89PNG\r\n\x1a\nbroken", None);
    assert_eq!(st, 400, "{v}");
    assert!(one_line(&v).contains("the body"), "{v}");
    let (st, v) = post_bytes(&pred, "image/png", &png(3, 200, 100), None);
    assert_eq!(st, 400);
    assert!(one_line(&v).contains("200×100 pixels is over the limit of 10000"), "{v}");
    assert_eq!(post_bytes(&pred, "image/png", b"", None).0, 400);
    // a body over the limit is refused on its Content-Length, before it is read (a raw
    // exchange: the client sends the headers only)
    {
        use std::io::{Read, Write};
        let addr = s.url.trim_start_matches("http://");
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        write!(c, "POST /predictions/sparse-a HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n", 2 << 20).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&head));
    }
    // an expert made on another backbone is refused at load, with the reason
    let other = tmp.path().join("other.safetensors");
    let mut e = expert(&b, ExpertKind::Sparse, "other", 2, 11);
    e.meta.backbone.sha256 = Some("ab".repeat(32));
    e.write(&other).unwrap();
    let body = serde_json::to_vec(&json!({ "parameters": { "path": other } })).unwrap();
    let (st, v) = post_bytes(&format!("{}/v2/repository/models/other/load", s.url), "application/json", &body, Some(TOKEN));
    assert_eq!(st, 400, "{v}");
    assert!(one_line(&v).contains("SHA-256 abab") && one_line(&v).contains("other.safetensors"), "{v}");
    // a head on features the base does not have
    let mut e = expert(&b, ExpertKind::Sparse, "wide", 2, 12);
    e.head = Some(Head { weight: HostTensor::new(vec![2, 64], vec![0.0; 128]), bias: None });
    let wide = tmp.path().join("wide.safetensors");
    e.write(&wide).unwrap();
    let body = serde_json::to_vec(&json!({ "parameters": { "path": wide } })).unwrap();
    let (st, v) = post_bytes(&format!("{}/v2/repository/models/wide/load", s.url), "application/json", &body, Some(TOKEN));
    assert_eq!(st, 400);
    assert!(one_line(&v).contains("reads 64 features, the base backbone gives 48"), "{v}");
    assert_eq!(post_bytes(&format!("{}/v2/repository/models/nope/unload", s.url), "application/json", b"", Some(TOKEN)).0, 404);
    drop(s);

    // at start: the same refusal is one line on stderr and exit ≠ 0
    let o = Command::new(env!("CARGO_BIN_EXE_mosa"))
        .args(["serve", "--base", b.weights.to_str().unwrap(), "--experts", other.to_str().unwrap(), "--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("other.safetensors") && err.contains("SHA-256"), "{err}");

    // a full queue answers 429, a request past its timeout 504: the first request of a batch
    // waits (a long wait cap) for others that do not come
    let s = Server::start(&[
        "--base",
        b.weights.to_str().unwrap(),
        "--experts",
        tasks[0].1.to_str().unwrap(),
        "--max-queue",
        "1",
        "--max-wait-ms",
        "1500",
        "--timeout-s",
        "0.5",
    ]);
    let infer = format!("{}/v2/models/sparse-a/infer", s.url);
    let first = {
        let infer = infer.clone();
        std::thread::spawn(move || post_json(&infer, &infer_body(&input(1, 1))))
    };
    std::thread::sleep(Duration::from_millis(200));
    let (st, v) = post_json(&infer, &infer_body(&input(1, 2)));
    assert_eq!(st, 429, "{v}");
    assert!(one_line(&v).contains("queue is full"));
    let (st, v) = first.join().unwrap();
    assert_eq!(st, 504, "{v}");
    assert!(one_line(&v).contains("no answer within 0.5 s"));

    drop(s);

    // graceful shutdown: a request still queued when SIGTERM comes (it waits 800 ms for its
    // batch to fill) is answered, new connections are refused, the process exits 0
    let s = Server::start(&["--base", b.weights.to_str().unwrap(), "--experts", tasks[0].1.to_str().unwrap(), "--max-wait-ms", "800"]);
    let url = s.url.clone();
    let x = input(2, 77);
    let want = reference(&b, tmp.path(), &tasks[0].1, "sparse-a", &x, true);
    let inflight = std::thread::spawn(move || post_json(&format!("{url}/v2/models/sparse-a/infer"), &infer_body(&x)));
    std::thread::sleep(Duration::from_millis(200));
    let url = s.url.clone();
    let t0 = std::time::Instant::now();
    assert!(s.terminate().success());
    assert!(t0.elapsed() >= Duration::from_millis(400), "the server stopped before answering the queued request");
    let (st, v) = inflight.join().unwrap();
    assert_eq!(st, 200, "{v}");
    assert!(max_diff(&logits_of(&v), &want) <= 1e-5);
    assert!(agent().get(&format!("{url}/v2/health/live")).call().is_err(), "still accepting after shutdown");
}
