//! The committed mini-VTAB (`datasets/mini-vtab`) agrees with its MANIFEST and the registry,
//! and every image decodes.

use std::collections::HashSet;
use std::path::PathBuf;

use mosa_data::manifest::Manifest;
use mosa_data::registry::{MINI_VTAB_TASKS, lookup_task};
use mosa_data::{Dataset, LoadOptions, LoadedSplit, Style, Transform};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mini-vtab")
}

#[test]
fn every_task_matches_the_manifest() {
    let m = Manifest::read(&root().join("MANIFEST")).unwrap();
    let names: Vec<&str> = m.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, MINI_VTAB_TASKS.iter().map(|t| t.name).collect::<Vec<_>>());
    for t in &m.tasks {
        let info = lookup_task(&t.name).unwrap();
        assert_eq!(t.num_classes, info.num_classes, "{}", t.name);
        assert_eq!(t.group, info.group.name(), "{}", t.name);
        assert!(t.source.files.iter().all(|f| f.sha256.len() == 64), "{}", t.name);
        let ds = Dataset::open(&format!("vtab:{}/{}", root().display(), t.name).parse().unwrap()).unwrap();
        for s in ds.splits() {
            assert_eq!(Some(&s.len()), t.counts.get(&s.name), "{} {}", t.name, s.name);
        }
        assert_eq!(ds.class_names.as_ref(), Some(&t.classes));
        // every class is present in training, val200 within train800val200, and no image of the
        // test list is, by content, an image of the training list
        let counts = ds.train.class_counts(ds.num_classes);
        assert!(counts.iter().all(|&c| c > 0), "{}: {counts:?}", t.name);
        let train: HashSet<&PathBuf> = ds.train.entries.iter().map(|e| &e.path).collect();
        assert!(ds.val.as_ref().unwrap().entries.iter().all(|e| train.contains(&e.path)));
        let opts = LoadOptions::default();
        let tr = LoadedSplit::load(&ds.train, ds.num_classes, Transform::new(Style::Vtab, 8, false), &opts).unwrap().0;
        let te = LoadedSplit::load(ds.test.as_ref().unwrap(), ds.num_classes, Transform::new(Style::Vtab, 8, false), &opts).unwrap().0;
        assert_eq!(te.len(), t.counts["test"]);
        let native = |p: &PathBuf| mosa_data::image::decode_file(p).unwrap().data;
        let train_px: HashSet<Vec<u8>> = ds.train.entries.iter().map(|e| native(&e.path)).collect();
        let dup = ds.test.as_ref().unwrap().entries.iter().filter(|e| train_px.contains(&native(&e.path))).count();
        assert_eq!(dup, 0, "{}: {dup} test images equal a training image", t.name);
        assert_eq!(tr.len(), 1000);
    }
}
