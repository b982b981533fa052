//! Loaders on tiny datasets written by the tests themselves, in every supported layout.

use std::path::Path;

use mosa_data::image::{Rgb8, decode_file, encode_png, on_white};
use mosa_data::synth::{ShapesTask, shapes_image, write_vtab_task};
use mosa_data::transform::{IMAGENET_MEAN, IMAGENET_STD};
use mosa_data::{Dataset, DatasetSpec, LoadOptions, LoadedSplit, Style, Transform};

fn spec(s: &str) -> DatasetSpec {
    s.parse().unwrap()
}

fn vtab_fixture(root: &Path, task: &str, kind: ShapesTask, n: (usize, usize, usize)) {
    let imgs: Vec<(Rgb8, usize)> = (0..(n.0 + n.1 + n.2) as u64).map(|i| shapes_image(kind, 20, 5, i)).collect();
    write_vtab_task(&root.join(task), &imgs, n.0, n.1, false).unwrap();
}

#[test]
fn vtab_layout_counts_labels_and_aliases() {
    let dir = tempfile::tempdir().unwrap();
    vtab_fixture(dir.path(), "clevr_count_all", ShapesTask::Count, (12, 4, 7));
    let ds = Dataset::open(&spec(&format!("vtab:{}/clevr_count_all", dir.path().display()))).unwrap();
    assert_eq!(ds.name, "clevr_count"); // alias resolved
    assert_eq!(ds.num_classes, 8);
    assert_eq!(ds.style, Style::Vtab);
    assert_eq!((ds.train.len(), ds.val.as_ref().unwrap().len(), ds.test.as_ref().unwrap().len()), (16, 4, 7));
    assert_eq!(ds.split("train800").unwrap().len(), 12);
    // labels are the generator's
    for (i, e) in ds.train.entries.iter().enumerate() {
        assert_eq!(e.label, shapes_image(ShapesTask::Count, 20, 5, i as u64).1);
    }
    // val200 is a subset of train800val200
    assert!(ds.val.as_ref().unwrap().entries.iter().all(|v| ds.train.entries.iter().any(|t| t.path == v.path)));
    // images decode back to exactly what was written (PNG is lossless)
    let img = decode_file(&ds.test.as_ref().unwrap().entries[3].path).unwrap();
    assert_eq!(img, shapes_image(ShapesTask::Count, 20, 5, 19).0);
}

/// Any folder in the VTAB-1k layout opens: an unregistered task takes its classes from
/// `classes.txt`, or from its largest label; it has no VTAB group.
#[test]
fn an_unregistered_task_in_the_vtab_layout_opens() {
    let dir = tempfile::tempdir().unwrap();
    vtab_fixture(dir.path(), "my_task", ShapesTask::Count, (12, 4, 7));
    let largest = (0..23u64).map(|i| shapes_image(ShapesTask::Count, 20, 5, i).1).max().unwrap();
    let open = || Dataset::open(&spec(&format!("vtab:{}/my_task", dir.path().display())));
    let ds = open().unwrap();
    assert_eq!((ds.name.as_str(), ds.group, ds.num_classes), ("my_task", None, largest + 1));
    assert_eq!(ds.test.as_ref().unwrap().len(), 7);
    // classes.txt decides the count (and names the classes)
    let names: Vec<String> = (0..9).map(|c| format!("c{c}")).collect();
    std::fs::write(dir.path().join("my_task/classes.txt"), names.join("\n")).unwrap();
    let ds = open().unwrap();
    assert_eq!(ds.num_classes, 9);
    assert_eq!(ds.class_names.as_deref(), Some(&names[..]));
    // a label beyond classes.txt is an error naming the file and line
    std::fs::write(dir.path().join("my_task/classes.txt"), "a\nb\n").unwrap();
    let e = open().unwrap_err().to_string();
    assert!(e.contains("train800val200.txt:") && e.contains("out of range"), "{e}");
}

#[test]
fn vtab_preprocessing_numerics_by_hand() {
    // A 2x2 RGB image enlarged to 4x4 (TensorFlow's bilinear, float output), then normalised.
    let dir = tempfile::tempdir().unwrap();
    let img = Rgb8::new(2, 2, vec![0, 0, 0, 200, 100, 40, 40, 80, 120, 255, 255, 255]);
    let task = dir.path().join("dtd");
    std::fs::create_dir_all(task.join("images")).unwrap();
    std::fs::write(task.join("images/a.png"), encode_png(&img, false)).unwrap();
    for l in ["train800", "val200", "train800val200", "test"] {
        std::fs::write(task.join(format!("{l}.txt")), "images/a.png 46\n").unwrap();
    }
    let ds = Dataset::open(&spec(&format!("vtab:{}", task.display()))).unwrap();
    let (loaded, report) = LoadedSplit::load(&ds.train, ds.num_classes, Transform::new(Style::Vtab, 4, true), &LoadOptions::default()).unwrap();
    assert_eq!(report.images, 1);
    let (x, y) = loaded.batch(&[0], 0);
    assert_eq!(y, vec![46]);
    // 2 -> 4 per axis: half-pixel centres at -.25, .25, .75, 1.25 give weights (1), (.75,.25),
    // (.25,.75), (1) on inputs (0), (0,1), (0,1), (1); no rounding between or after the passes.
    let w = [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]];
    for c in 0..3 {
        let p = |x: usize, y: usize| img.pixel(x, y)[c] as f64;
        for oy in 0..4 {
            for ox in 0..4 {
                let row = |y: usize| w[ox][0] * p(0, y) + w[ox][1] * p(1, y);
                let v = w[oy][0] * row(0) + w[oy][1] * row(1);
                let want = ((v / 255.0) as f32 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                let got = x[c * 16 + oy * 4 + ox];
                assert!((got - want).abs() < 1e-5, "c{c} ({ox},{oy}): {got} vs {want}");
            }
        }
    }
}

#[test]
fn grey_and_rgba_become_rgb_and_jpeg_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let grey = image::GrayImage::from_raw(2, 1, vec![10, 250]).unwrap();
    grey.save(dir.path().join("g.png")).unwrap();
    let rgba = image::RgbaImage::from_raw(2, 1, vec![100, 50, 0, 255, 100, 50, 0, 64]).unwrap();
    rgba.save(dir.path().join("a.png")).unwrap();
    let g = decode_file(&dir.path().join("g.png")).unwrap();
    assert_eq!(g.data, vec![10, 10, 10, 250, 250, 250]);
    let a = decode_file(&dir.path().join("a.png")).unwrap();
    assert_eq!(&a.data[..3], &[100, 50, 0]);
    // alpha 64 on white: c*64/255 + 255*(191/255)
    assert_eq!(&a.data[3..], &[on_white(100, 64), on_white(50, 64), on_white(0, 64)]);
    assert_eq!(on_white(100, 64), ((100.0 * 64.0 + 255.0 * 191.0) / 255.0f64).round() as u8);
    let rgb = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([(x * 16) as u8, (y * 16) as u8, 128]));
    rgb.save(dir.path().join("c.jpg")).unwrap();
    let j = decode_file(&dir.path().join("c.jpg")).unwrap();
    assert_eq!((j.width, j.height), (16, 16));
    assert!((j.pixel(8, 4)[0] as i32 - 128).abs() < 12, "JPEG roughly preserves values");
}

fn fgvc_fixture(root: &Path) -> std::path::PathBuf {
    // CUB layout: keys under `images/`, class ids 1-based and sparse (3, 10, 42) -> 0, 1, 2.
    let d = root.join("CUB_200_2011");
    let mk = |rel: &str, v: u8| {
        let p = d.join("images").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(30, 20, image::Rgb([v, v, v])).save(p).unwrap();
    };
    let train = [("001.A/a1.jpg", 42), ("002.B/b1.jpg", 3), ("003.C/c1.jpg", 10), ("001.A/a2.jpg", 42)];
    for (i, (k, _)) in train.iter().enumerate() {
        mk(k, 40 * i as u8);
    }
    mk("002.B/b2.jpg", 7);
    mk("003.C/c2.jpg", 9);
    let json = |v: &[(&str, i64)]| format!("{{\n{}\n}}\n", v.iter().map(|(k, c)| format!("  \"{k}\": {c}")).collect::<Vec<_>>().join(",\n"));
    std::fs::write(d.join("train.json"), json(&train)).unwrap();
    std::fs::write(d.join("val.json"), json(&[("002.B/b2.jpg", 3)])).unwrap();
    std::fs::write(d.join("test.json"), json(&[("003.C/c2.jpg", 10), ("002.B/b2.jpg", 3)])).unwrap();
    d
}

#[test]
fn fgvc_json_prefix_sorted_ids_and_crops() {
    let dir = tempfile::tempdir().unwrap();
    let d = fgvc_fixture(dir.path());
    // CUB expects 200 classes: the fixture has 3, which the registry check reports
    let e = Dataset::open(&spec(&format!("fgvc:{}", d.display()))).unwrap_err().to_string();
    assert!(e.contains("3 distinct class ids") && e.contains("200"), "{e}");
    // the same files under an unregistered name: generic JSON splits, prefix none
    let g = dir.path().join("mybirds");
    std::fs::rename(&d, &g).unwrap();
    for s in ["train", "val", "test"] {
        let p = g.join(format!("{s}.json"));
        let t = std::fs::read_to_string(&p).unwrap().replace("\"0", "\"images/0");
        std::fs::write(p, t).unwrap();
    }
    let ds = Dataset::open(&spec(&format!("fgvc:{}", g.display()))).unwrap();
    assert_eq!(ds.style, Style::Fgvc);
    assert_eq!(ds.num_classes, 3);
    let labels: Vec<usize> = ds.train.entries.iter().map(|e| e.label).collect();
    assert_eq!(labels, vec![2, 0, 1, 2]); // ids 42, 3, 10, 42 sorted -> 3:0, 10:1, 42:2
    assert_eq!(ds.train.entries[1].origin.as_ref().unwrap().line, 3);
    assert!(ds.train.entries[0].path.ends_with("images/001.A/a1.jpg"));
    // eval: 30x20 -> shorter side 256*16/224 = 18 -> 27x18, centre crop 16 at (round(5.5)=6, 1)
    let t = Transform::new(Style::Fgvc, 16, false);
    let (l, _) = LoadedSplit::load(ds.test.as_ref().unwrap(), 3, t, &LoadOptions::default()).unwrap();
    assert_eq!((l.images[0].pixels.width, l.images[0].pixels.height), (27, 18));
    let (x, y) = l.batch(&[0, 1], 0);
    assert_eq!(y, vec![1, 0]);
    assert_eq!(x.len(), 2 * 3 * 16 * 16);
    // training draws are reproducible per (seed, index)
    let tt = Transform::new(Style::Fgvc, 16, true);
    let (lt, _) = LoadedSplit::load(&ds.train, 3, tt, &LoadOptions::default()).unwrap();
    assert_eq!(lt.batch(&[0, 3], 9), lt.batch(&[0, 3], 9));
    assert_eq!(lt.batch(&[3], 9).0, lt.batch(&[0, 3], 9).0[3 * 256..].to_vec());
}

#[test]
fn folder_layouts() {
    let dir = tempfile::tempdir().unwrap();
    for (split, class, n) in [("train", "cat", 2), ("train", "dog", 3), ("test", "dog", 1)] {
        let d = dir.path().join("pets").join(split).join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            image::RgbImage::from_pixel(5, 5, image::Rgb([i as u8, 0, 0])).save(d.join(format!("{i}.png"))).unwrap();
        }
        std::fs::write(d.join("notes.txt"), "ignored").unwrap();
    }
    let ds = Dataset::open(&spec(&format!("folder:{}/pets", dir.path().display()))).unwrap();
    assert_eq!(ds.class_names.as_deref(), Some(&["cat".to_string(), "dog".to_string()][..]));
    assert_eq!(ds.train.class_counts(2), vec![2, 3]);
    assert_eq!(ds.test.as_ref().unwrap().class_counts(2), vec![0, 1]);
    assert!(ds.val.is_none());
    // flat folder: one split
    let flat = Dataset::open(&spec(&format!("folder:{}/pets/train", dir.path().display()))).unwrap();
    assert_eq!(flat.train.len(), 5);
    assert!(flat.test.is_none());
    // explicit list file
    std::fs::write(dir.path().join("my.txt"), "pets/train/cat/0.png 4\npets/test/dog/0.png 1\n").unwrap();
    let l = Dataset::open(&spec(&format!("list:{}/my.txt", dir.path().display()))).unwrap();
    assert_eq!(l.num_classes, 5);
    assert!(l.train.entries[0].path.exists());
}

#[test]
fn bad_input_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    vtab_fixture(root, "eurosat", ShapesTask::Count, (3, 2, 3));
    let t = root.join("eurosat");
    let open = || Dataset::open(&spec(&format!("vtab:{}/eurosat", root.display())));
    let load = |ds: &Dataset, skip| {
        LoadedSplit::load(
            ds.test.as_ref().unwrap(),
            ds.num_classes,
            Transform::new(Style::Vtab, 8, false),
            &LoadOptions { skip_unreadable: skip, disk_cache: None },
        )
    };

    // corrupt image (line 2 of test.txt) and a missing one (line 3)
    std::fs::write(t.join("images/test/000001.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::remove_file(t.join("images/test/000002.png")).unwrap();
    let ds = open().unwrap();
    let e = load(&ds, false).unwrap_err().to_string();
    assert!(e.contains("test.txt:2") && e.contains("000001.png"), "{e}");
    let (l, report) = load(&ds, true).unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(report.skipped.len(), 2);
    assert!(report.skipped[1].0.ends_with("test.txt:3"), "{:?}", report.skipped);

    let check = mosa_data::check::check(&ds, true);
    assert_eq!(check.problems.len(), 2, "{:?}", check.problems);
    assert!(check.problems[0].contains("test.txt:2"));
    assert_eq!(mosa_data::check::check(&ds, false).problems.len(), 1);

    // label >= class count (eurosat has 10)
    std::fs::write(t.join("val200.txt"), "images/train/000003.png 1\nimages/train/000004.png 10\n").unwrap();
    let e = open().unwrap_err().to_string();
    assert!(e.contains("val200.txt:2") && e.contains("label 10 out of range"), "{e}");
    // malformed line
    std::fs::write(t.join("val200.txt"), "images/train/000003.png1\n").unwrap();
    assert!(open().unwrap_err().to_string().contains("val200.txt:1"));
    // empty split
    std::fs::write(t.join("val200.txt"), "").unwrap();
    assert!(open().unwrap_err().to_string().contains("val200.txt: empty split"));
    // missing list file
    std::fs::remove_file(t.join("val200.txt")).unwrap();
    assert!(open().unwrap_err().to_string().contains("val200.txt"));
    // unknown task, bad spec
    let e = Dataset::open(&spec(&format!("vtab:{}/imagenet", root.display()))).unwrap_err().to_string();
    assert!(e.contains("unknown task `imagenet`") && e.contains("clevr_count"), "{e}");
    assert!("cifar".parse::<DatasetSpec>().is_err());
    assert!("zip:/x".parse::<DatasetSpec>().unwrap_err().to_string().contains("unknown kind"));
}

#[test]
fn disk_cache_round_trip_and_invalidation() {
    let dir = tempfile::tempdir().unwrap();
    vtab_fixture(dir.path(), "dsprites_loc", ShapesTask::Position, (4, 2, 5));
    let ds = Dataset::open(&spec(&format!("vtab:{}/dsprites_loc", dir.path().display()))).unwrap();
    let cache = dir.path().join("cache");
    let opts = LoadOptions { skip_unreadable: false, disk_cache: Some(cache.clone()) };
    let t = Transform::new(Style::Vtab, 12, false);
    let (a, ra) = LoadedSplit::load(ds.test.as_ref().unwrap(), 16, t, &opts).unwrap();
    assert!(!ra.from_disk_cache);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    let (b, rb) = LoadedSplit::load(ds.test.as_ref().unwrap(), 16, t, &opts).unwrap();
    assert!(rb.from_disk_cache);
    assert_eq!(a.images, b.images);
    assert_eq!(a.batch(&[0, 4], 0), b.batch(&[0, 4], 0));
    // another size is another cache entry
    let (_, rc) = LoadedSplit::load(ds.test.as_ref().unwrap(), 16, Transform::new(Style::Vtab, 10, false), &opts).unwrap();
    assert!(!rc.from_disk_cache);
    // an edited image invalidates the entry (size/mtime are in the key)
    let p = &ds.test.as_ref().unwrap().entries[0].path;
    std::fs::write(p, encode_png(&shapes_image(ShapesTask::Position, 24, 99, 0).0, false)).unwrap();
    let (d, rd) = LoadedSplit::load(ds.test.as_ref().unwrap(), 16, t, &opts).unwrap();
    assert!(!rd.from_disk_cache);
    assert_ne!(d.images[0], a.images[0]);
}
