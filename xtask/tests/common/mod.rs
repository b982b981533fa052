//! What the xtask integration tests share: the test build's `mosa`, xtask run with it, tiny
//! generated tasks and a tiny random ViT.
#![allow(dead_code)] // each test file uses its part

use std::path::{Path, PathBuf};
use std::process::Command;

use mosa_data::synth::{ShapesTask, shapes_image, write_vtab_task};

/// The `mosa` binary of this test build: `target/<profile>/mosa`, which `cargo test --workspace`
/// builds before any test runs (mosa-cli's own tests need it). Run alone (`cargo test -p xtask`),
/// build it first (`cargo build -p mosa-cli`): a missing binary, or one older than a source file
/// of the workspace's crates, fails here rather than testing stale code.
pub fn mosa_bin() -> PathBuf {
    // target/<profile>/deps/bench_smoke-… -> target/<profile>/mosa
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("mosa");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}; build it with `cargo build -p mosa-cli` (cargo test --workspace does)", bin.display()));
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    if let Some(newer) = newest_source(&crates).filter(|(t, _)| *t > built) {
        panic!("{} is older than {}: rebuild it with `cargo build -p mosa-cli`", bin.display(), newer.1.display());
    }
    bin
}

/// The most recently modified `.rs` or `Cargo.toml` file below `dir`.
fn newest_source(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let found = if path.is_dir() {
            newest_source(&path)
        } else if path.extension().is_some_and(|e| e == "rs") || path.file_name().is_some_and(|n| n == "Cargo.toml") {
            entry.metadata().and_then(|m| m.modified()).ok().map(|t| (t, path))
        } else {
            None
        };
        if let Some(f) = found
            && newest.as_ref().is_none_or(|n| f.0 > n.0)
        {
            newest = Some(f);
        }
    }
    newest
}

/// `cargo xtask <args> --mosa-bin <the test build's mosa>` in `dir`.
pub fn xtask(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask")).current_dir(dir).args(args).arg("--mosa-bin").arg(mosa_bin()).output().unwrap()
}

pub fn task(root: &Path, name: &str, kind: ShapesTask) {
    let imgs: Vec<_> = (0..40).map(|i| shapes_image(kind, 16, 9, i)).collect();
    write_vtab_task(&root.join(name), &imgs, 16, 8, false).unwrap();
}

/// Two tiny generated tasks (`svhn`, `clevr_count`) under `<dir>/tasks` and a tiny random ViT's
/// config: the folder and the config file.
pub fn two_tasks_and_a_tiny_vit(dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("tasks");
    task(&root, "svhn", ShapesTask::Position);
    task(&root, "clevr_count", ShapesTask::Count);
    let model = dir.join("tiny.json");
    std::fs::write(&model, r#"{"kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}}"#).unwrap();
    (root, model)
}
