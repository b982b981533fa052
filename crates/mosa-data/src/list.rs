//! Entries of a split and the two list formats: VTAB list files (`<path> <label>` per line) and
//! FGVC JSON objects (`{"<path>": <class id>, ...}`).

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// Where an entry was declared: the list file and its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

/// One image of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub label: usize,
    pub origin: Option<Origin>,
}

impl Entry {
    pub fn describe(&self) -> String {
        match &self.origin {
            Some(o) => format!("{}:{}", o.file.display(), o.line),
            None => self.path.display().to_string(),
        }
    }
}

/// A named split.
#[derive(Debug, Clone)]
pub struct Split {
    pub name: String,
    pub entries: Vec<Entry>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Images per class (index = label).
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut c = vec![0; num_classes];
        for e in &self.entries {
            if e.label < num_classes {
                c[e.label] += 1;
            }
        }
        c
    }
}

/// Reads a dataset text file (list, split, class names, manifest) under the list size cap.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    mosa_core::fsio::read_text(path, mosa_core::fsio::caps::LIST).map_err(|e| DataError::read(path, e))
}

/// Why a list entry's path was refused ([`relative`]).
#[derive(Debug, thiserror::Error)]
pub enum EntryPathError {
    #[error("empty image path")]
    Empty,
    #[error("image path `{0}` leaves the dataset folder (`..`); list paths are relative to it (a symlink inside the folder may point elsewhere)")]
    Leaves(String),
    #[error("image path `{0}` is absolute; list paths are relative to the dataset folder (a symlink inside it may point elsewhere)")]
    Absolute(String),
}

/// A list entry's path as a path inside the dataset's folder: relative, without `..` (an entry
/// cannot name a file outside the dataset; a symlink inside it can, deliberately).
pub fn relative(p: &str) -> std::result::Result<&Path, EntryPathError> {
    use std::path::Component;
    let path = Path::new(p);
    match path.components().find(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        None if !p.is_empty() => Ok(path),
        None => Err(EntryPathError::Empty),
        Some(Component::ParentDir) => Err(EntryPathError::Leaves(p.to_string())),
        Some(_) => Err(EntryPathError::Absolute(p.to_string())),
    }
}

/// Reads a VTAB list file. Paths are relative to `base`. Labels must be `< num_classes`;
/// blank lines are ignored; an empty list is an error.
pub fn read_list(path: &Path, base: &Path, num_classes: usize, name: &str) -> Result<Split> {
    let text = read_text(path)?;
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() {
            continue;
        }
        let (p, lab) =
            l.rsplit_once(char::is_whitespace).ok_or_else(|| DataError::line(path, line, format!("expected `<image path> <label>`, found `{l}`")))?;
        let p = p.trim_end();
        let label: i64 = lab.parse().map_err(|_| DataError::line(path, line, format!("label `{lab}` is not an integer")))?;
        if label < 0 || label as usize >= num_classes {
            let max = crate::source::MAX_CLASSES;
            let msg = if num_classes >= max {
                format!("label {label} out of range: at most {max} classes are supported (0..{})", max - 1)
            } else {
                format!("label {label} out of range: the task has {num_classes} classes (0..{})", num_classes - 1)
            };
            return Err(DataError::line(path, line, msg));
        }
        let rel = relative(p).map_err(|m| DataError::line(path, line, m.to_string()))?;
        entries.push(Entry { path: base.join(rel), label: label as usize, origin: Some(Origin { file: path.to_path_buf(), line }) });
    }
    if entries.is_empty() {
        return Err(DataError::file(path, "empty split: no entries"));
    }
    Ok(Split { name: name.to_string(), entries })
}

/// One entry of an FGVC split file: (image path, raw class id, the 1-based line of its key).
pub type JsonEntry = (String, i64, usize);

/// Reads an FGVC JSON split: raw class ids, with the 1-based line on which each key appears.
pub fn read_json_split(path: &Path) -> Result<Vec<JsonEntry>> {
    let text = read_text(path)?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| DataError::line(path, e.line(), format!("not a JSON object of `\"path\": class id`: {e}")))?;
    // Line of each key: scan the text once, in order (serde_json keeps insertion order only with
    // `preserve_order`; we look each key up by its quoted form instead).
    let line_starts: Vec<usize> = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let line_of = |key: &str| -> usize {
        let quoted = serde_json::to_string(key).unwrap_or_default();
        text.find(&quoted).map(|pos| line_starts.partition_point(|&s| s <= pos)).unwrap_or(0)
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let line = line_of(&k);
        let id = v.as_i64().ok_or_else(|| DataError::line(path, line, format!("class id of `{k}` is not an integer: {v}")))?;
        out.push((k, id, line));
    }
    if out.is_empty() {
        return Err(DataError::file(path, "empty split: no entries"));
    }
    out.sort_by_key(|(_, _, line)| *line);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines_labels_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("l.txt");
        std::fs::write(&f, "images/a b.jpg 2\n\nimages/c.jpg 0\n").unwrap();
        let s = read_list(&f, dir.path(), 3, "x").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.entries[0].path, dir.path().join("images/a b.jpg"));
        assert_eq!(s.entries[0].label, 2);
        assert_eq!(s.entries[1].origin.as_ref().unwrap().line, 3);
        assert_eq!(s.class_counts(3), vec![1, 0, 1]);

        for (text, want) in [
            ("a.jpg 1\nb.jpg 3\n", ":2: label 3 out of range"),
            ("a.jpg 1\nb.jpg\n", ":2: expected"),
            ("a.jpg x\n", ":1: label `x` is not an integer"),
            ("a.jpg -1\n", ":1: label -1 out of range"),
            ("\n\n", "empty split"),
            ("a.jpg 1\n../../etc/b.jpg 0\n", ":2: image path `../../etc/b.jpg` leaves the dataset folder"),
            ("x/../../b.jpg 0\n", ":1: image path `x/../../b.jpg` leaves"),
            ("/etc/b.jpg 0\n", ":1: image path `/etc/b.jpg` is absolute"),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = read_list(&f, dir.path(), 3, "x").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("l.txt"), "{text:?}: {e}");
        }
        let e = read_list(&dir.path().join("missing.txt"), dir.path(), 3, "x").unwrap_err().to_string();
        assert!(e.contains("missing.txt"), "{e}");
    }

    #[test]
    fn json_split_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("train.json");
        std::fs::write(&f, "{\n  \"b/1.jpg\": 7,\n  \"a/2.jpg\": 3\n}\n").unwrap();
        let v = read_json_split(&f).unwrap();
        assert_eq!(v, vec![("b/1.jpg".into(), 7, 2), ("a/2.jpg".into(), 3, 3)]);
        std::fs::write(&f, "{\n  \"b/1.jpg\": 7,\n  \"a/2.jpg\": \"x\"\n}\n").unwrap();
        let e = read_json_split(&f).unwrap_err().to_string();
        assert!(e.contains("train.json:3:"), "{e}");
        std::fs::write(&f, "{\n  \"b/1.jpg\": 7,\n").unwrap();
        assert!(read_json_split(&f).unwrap_err().to_string().contains("train.json:"));
        std::fs::write(&f, "{}").unwrap();
        assert!(read_json_split(&f).unwrap_err().to_string().contains("empty split"));
    }
}
