//! Dataset specifications (`vtab:<root>/<task>`, `fgvc:<root>/<name>`, `folder:<path>`,
//! `list:<file>`) and what opening one gives: the splits, class count and preprocessing style.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::list::{Entry, Origin, Split, read_json_split, read_list, read_text};
use crate::registry::{Group, lookup_fgvc, lookup_task};

const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Which preprocessing a dataset uses (data.md): VTAB-style plain resize, or FGVC-style
/// resize-shorter + crop (+ flip when training).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Style {
    Vtab,
    Fgvc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSpec {
    Vtab { root: PathBuf, task: String },
    Fgvc { root: PathBuf, name: String },
    Folder { path: PathBuf },
    List { file: PathBuf },
}

impl DatasetSpec {
    /// The preprocessing its images get (without opening it): FGVC's crop, or VTAB's resize
    /// (VTAB-1k, folders and lists).
    pub fn style(&self) -> Style {
        match self {
            DatasetSpec::Fgvc { .. } => Style::Fgvc,
            DatasetSpec::Vtab { .. } | DatasetSpec::Folder { .. } | DatasetSpec::List { .. } => Style::Vtab,
        }
    }
}

impl std::str::FromStr for DatasetSpec {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| DataError::Spec(format!("dataset `{s}`: expected vtab:<root>/<task>, fgvc:<root>/<name>, folder:<path> or list:<file>")))?;
        let p = PathBuf::from(rest.trim_end_matches('/'));
        let split_last = |p: &Path| -> Result<(PathBuf, String)> {
            let name = p.file_name().and_then(|n| n.to_str()).ok_or_else(|| DataError::Spec(format!("dataset `{s}`: no task name at the end of the path")))?;
            Ok((p.parent().map(Path::to_path_buf).unwrap_or_default(), name.to_string()))
        };
        match kind {
            "vtab" => split_last(&p).map(|(root, task)| DatasetSpec::Vtab { root, task }),
            "fgvc" => split_last(&p).map(|(root, name)| DatasetSpec::Fgvc { root, name }),
            "folder" => Ok(DatasetSpec::Folder { path: p }),
            "list" => Ok(DatasetSpec::List { file: p }),
            other => Err(DataError::Spec(format!("dataset `{s}`: unknown kind `{other}` (vtab, fgvc, folder, list)"))),
        }
    }
}

impl std::fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatasetSpec::Vtab { root, task } => write!(f, "vtab:{}", root.join(task).display()),
            DatasetSpec::Fgvc { root, name } => write!(f, "fgvc:{}", root.join(name).display()),
            DatasetSpec::Folder { path } => write!(f, "folder:{}", path.display()),
            DatasetSpec::List { file } => write!(f, "list:{}", file.display()),
        }
    }
}

/// An opened dataset: what training needs (`train`, `val`, `test`) and every list it has.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub spec: DatasetSpec,
    pub style: Style,
    pub group: Option<Group>,
    pub num_classes: usize,
    pub class_names: Option<Vec<String>>,
    /// The split to train on (VTAB: train800val200; FGVC: train).
    pub train: Split,
    pub val: Option<Split>,
    pub test: Option<Split>,
    /// Further lists that `data check` reads (VTAB: train800).
    pub extra: Vec<Split>,
}

impl Dataset {
    pub fn open(spec: &DatasetSpec) -> Result<Dataset> {
        match spec {
            DatasetSpec::Vtab { root, task } => open_vtab(spec, root, task),
            DatasetSpec::Fgvc { root, name } => open_fgvc(spec, root, name),
            DatasetSpec::Folder { path } => open_folder(spec, path),
            DatasetSpec::List { file } => open_list(spec, file),
        }
    }

    /// All splits with their names, training split first.
    pub fn splits(&self) -> Vec<&Split> {
        let mut v = vec![&self.train];
        v.extend(self.extra.iter());
        v.extend(self.val.iter());
        v.extend(self.test.iter());
        v
    }

    /// SHA-256 of what a run reads from the lists: each split it uses (train, val, test) by
    /// name with its entries' paths and labels, in order. A resume compares it with the run's.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for s in [Some(&self.train), self.val.as_ref(), self.test.as_ref()].into_iter().flatten() {
            h.update(format!("split {} {}\n", s.name, s.entries.len()).as_bytes());
            for e in &s.entries {
                h.update(e.path.as_os_str().as_encoded_bytes());
                h.update(format!("\t{}\n", e.label).as_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    pub fn split(&self, name: &str) -> Option<&Split> {
        self.splits().into_iter().find(|s| s.name == name)
    }
}

/// The most classes a dataset may have: a bound checked before anything is sized by it (the
/// same number as `mosa_models::limits::MAX_CLASSES`, which this crate does not depend on).
pub const MAX_CLASSES: usize = 100_000;

/// The lists of a task in the VTAB-1k layout.
const VTAB_LISTS: [&str; 4] = ["train800val200", "train800", "val200", "test"];

fn open_vtab(spec: &DatasetSpec, root: &Path, task: &str) -> Result<Dataset> {
    let dir = root.join(task);
    if !dir.is_dir() {
        // a typo of a registered name is the likelier mistake: name the known tasks
        lookup_task(task)?;
        return Err(DataError::file(&dir, "task folder not found"));
    }
    // a registered task has its name, group and class count; any other folder in the VTAB-1k
    // layout takes its classes from `classes.txt`, or from the largest label (with a warning)
    let (name, group, num_classes) = match lookup_task(task) {
        Ok(info) => (info.name.to_string(), Some(info.group), info.num_classes),
        Err(_) => (task.trim_end_matches('/').to_string(), None, unregistered_classes(&dir, task)?),
    };
    let read = |name: &str| read_list(&dir.join(format!("{name}.txt")), &dir, num_classes, name);
    let train = read("train800val200")?;
    // train800 is read only by `data check` (training uses train800val200 and val200)
    let extra = if dir.join("train800.txt").exists() { vec![read("train800")?] } else { vec![] };
    let val = read("val200")?;
    let test = read("test")?;
    Ok(Dataset {
        name,
        spec: spec.clone(),
        style: Style::Vtab,
        group,
        num_classes,
        class_names: read_class_names(&dir, num_classes)?,
        train,
        val: Some(val),
        test: Some(test),
        extra,
    })
}

/// The class count of a task that is not registered: the lines of `classes.txt`, or the largest
/// label of its lists + 1.
fn unregistered_classes(dir: &Path, task: &str) -> Result<usize> {
    let names = dir.join("classes.txt");
    if names.exists() {
        let text = read_text(&names)?;
        let n = text.lines().filter(|l| !l.trim().is_empty()).count();
        if n == 0 || n > MAX_CLASSES {
            return Err(DataError::file(&names, format!("{n} class names: 1 to {MAX_CLASSES} are supported")));
        }
        return Ok(n);
    }
    let mut largest = 0;
    for list in VTAB_LISTS {
        if list == "train800" && !dir.join("train800.txt").exists() {
            continue;
        }
        let split = read_list(&dir.join(format!("{list}.txt")), dir, MAX_CLASSES, list)?;
        largest = largest.max(split.entries.iter().map(|e| e.label).max().unwrap_or(0));
    }
    eprintln!("warning: {}: `{task}` is not a registered VTAB task and has no classes.txt; {} classes, from the largest label", dir.display(), largest + 1);
    Ok(largest + 1)
}

/// Optional `classes.txt` (one name per line, in label order) next to the lists.
fn read_class_names(dir: &Path, num_classes: usize) -> Result<Option<Vec<String>>> {
    let p = dir.join("classes.txt");
    if !p.exists() {
        return Ok(None);
    }
    let text = read_text(&p)?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() != num_classes {
        return Err(DataError::file(&p, format!("{} class names for {} classes", names.len(), num_classes)));
    }
    Ok(Some(names))
}

fn open_fgvc(spec: &DatasetSpec, root: &Path, name: &str) -> Result<Dataset> {
    let dir = root.join(name);
    if !dir.is_dir() {
        return Err(DataError::file(&dir, "dataset folder not found"));
    }
    let info = lookup_fgvc(name);
    let prefix = info.map(|i| i.prefix).unwrap_or("");
    let raw: Vec<(String, Vec<crate::list::JsonEntry>)> =
        ["train", "val", "test"].iter().map(|s| Ok((s.to_string(), read_json_split(&dir.join(format!("{s}.json")))?))).collect::<Result<_>>()?;
    // Class ids map to 0..C-1 by sorting the distinct ids (of all splits).
    let mut ids: Vec<i64> = raw.iter().flat_map(|(_, v)| v.iter().map(|(_, id, _)| *id)).collect();
    ids.sort_unstable();
    ids.dedup();
    if let Some(i) = info
        && ids.len() != i.num_classes
    {
        return Err(DataError::file(&dir, format!("{} distinct class ids in train/val/test, {} expects {}", ids.len(), i.name, i.num_classes)));
    }
    let train_ids: std::collections::BTreeSet<i64> = raw[0].1.iter().map(|(_, id, _)| *id).collect();
    let mut splits = raw.into_iter().map(|(s, v)| {
        let file = dir.join(format!("{s}.json"));
        let entries = v
            .into_iter()
            .map(|(k, id, line)| {
                let key = format!("{prefix}{k}");
                let rel = crate::list::relative(&key).map_err(|m| DataError::line(&file, line, m.to_string()))?;
                Ok(Entry { path: dir.join(rel), label: ids.binary_search(&id).expect("id collected above"), origin: Some(Origin { file: file.clone(), line }) })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Split { name: s, entries })
    });
    let (train, val, test) = (splits.next().unwrap()?, splits.next().unwrap()?, splits.next().unwrap()?);
    if let Some(missing) = ids.iter().find(|id| !train_ids.contains(id)) {
        return Err(DataError::file(dir.join("train.json"), format!("class id {missing} appears in val/test but never in train")));
    }
    Ok(Dataset {
        name: info.map(|i| i.name).unwrap_or(name).to_string(),
        spec: spec.clone(),
        style: Style::Fgvc,
        group: None,
        num_classes: ids.len(),
        class_names: None,
        train,
        val: Some(val),
        test: Some(test),
        extra: vec![],
    })
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?.map(|e| e.map(|e| e.path()).map_err(|e| DataError::io(dir, e))).collect::<Result<_>>()?;
    v.sort();
    Ok(v)
}

/// `<path>/<class>/*.{jpg,png}`; or, when `<path>/train` exists, `train`/`val`/`test` subfolders
/// each in that layout with the class names of `train`. Labels follow the sorted class names.
fn open_folder(spec: &DatasetSpec, path: &Path) -> Result<Dataset> {
    if !path.is_dir() {
        return Err(DataError::file(path, "folder not found"));
    }
    let split_root = path.join("train").is_dir();
    let train_dir = if split_root { path.join("train") } else { path.to_path_buf() };
    let classes: Vec<String> =
        sorted_dir(&train_dir)?.into_iter().filter(|p| p.is_dir()).filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from)).collect();
    if classes.is_empty() {
        return Err(DataError::file(&train_dir, "no class folders (expected <path>/<class>/*.jpg|png)"));
    }
    let read_split = |dir: &Path, name: &str| -> Result<Split> {
        let mut entries = Vec::new();
        for sub in sorted_dir(dir)?.into_iter().filter(|p| p.is_dir()) {
            let cname = sub.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let label = classes
                .iter()
                .position(|c| c == cname)
                .ok_or_else(|| DataError::file(&sub, format!("class folder `{cname}` does not exist in {}", train_dir.display())))?;
            let before = entries.len();
            for f in sorted_dir(&sub)?.into_iter().filter(|p| p.is_file() && is_image(p)) {
                entries.push(Entry { path: f, label, origin: None });
            }
            if entries.len() == before && name == "train" {
                // still a class (labels follow the sorted names), but one the model cannot learn
                eprintln!(
                    "warning: {}: class folder `{cname}` has no .jpg/.jpeg/.png images; it is counted as class {label} with no training images",
                    sub.display()
                );
            }
        }
        if entries.is_empty() {
            return Err(DataError::file(dir, "empty split: no .jpg/.jpeg/.png images in the class folders"));
        }
        Ok(Split { name: name.to_string(), entries })
    };
    let train = read_split(&train_dir, "train")?;
    let opt = |n: &str| -> Result<Option<Split>> {
        let d = path.join(n);
        if split_root && d.is_dir() { read_split(&d, n).map(Some) } else { Ok(None) }
    };
    let (val, test) = (opt("val")?, opt("test")?);
    Ok(Dataset {
        name: path.file_name().and_then(|n| n.to_str()).unwrap_or("folder").to_string(),
        spec: spec.clone(),
        style: Style::Vtab,
        group: None,
        num_classes: classes.len(),
        class_names: Some(classes),
        val,
        test,
        train,
        extra: vec![],
    })
}

/// An explicit list file; paths relative to its folder; class count = max label + 1.
fn open_list(spec: &DatasetSpec, file: &Path) -> Result<Dataset> {
    let base = file.parent().unwrap_or(Path::new("."));
    let split = read_list(file, base, MAX_CLASSES, "list")?;
    let num_classes = split.entries.iter().map(|e| e.label).max().unwrap_or(0) + 1;
    Ok(Dataset {
        name: file.file_stem().and_then(|n| n.to_str()).unwrap_or("list").to_string(),
        spec: spec.clone(),
        style: Style::Vtab,
        group: None,
        num_classes,
        class_names: None,
        train: split,
        val: None,
        test: None,
        extra: vec![],
    })
}
