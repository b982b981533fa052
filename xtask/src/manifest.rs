//! A results folder's grid manifest (`manifest.json`): the command that defined the grid, a
//! hash of its settings, the number of shards and every cell. The first shard to arrive writes
//! it (no-replace: a complete file linked into place, so a reader never sees half of one); every
//! other shard checks it and is refused if its grid differs, naming the difference (another shard
//! count, other cells, other settings); a run with the same settings and more cells (`--seeds`
//! raised, tasks or methods added) grows it. `cargo xtask report` rebuilds the grid from it.

use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file's name in a results folder.
pub const FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The xtask command and its arguments, without those that do not define the grid
    /// (`--shard`, `--shards`, `--mosa-bin`, `--claim-lease`).
    pub command: Vec<String>,
    pub settings_sha256: String,
    pub shards: usize,
    /// Every cell of the grid, all shards (`task/method[@seed]`).
    pub cells: Vec<String>,
}

/// Flags that choose a share of the grid or how to run it, not the grid.
const NOT_THE_GRID: [&str; 4] = ["--shard", "--shards", "--mosa-bin", "--claim-lease"];

impl Manifest {
    /// This process's grid: `key` is every setting that defines it, as text.
    pub fn new(shards: usize, key: &str, cells: Vec<String>) -> Self {
        let command = command_of(std::env::args().skip(1));
        Manifest { format: 1, command, settings_sha256: hex::encode(Sha256::digest(key.as_bytes())), shards, cells }
    }
}

/// The arguments without the flags of [`NOT_THE_GRID`] (and their values).
fn command_of(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        match NOT_THE_GRID.iter().find(|f| a == **f || a.starts_with(&format!("{f}="))) {
            Some(f) => skip_value = a == *f,
            None => out.push(a),
        }
    }
    out
}

/// Writes `m` into `out` if the folder has no manifest; otherwise checks that it is the same grid.
pub fn check_or_write(out: &Path, m: &Manifest) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create the results folder", out.display()))?;
    let path = out.join(FILE);
    if !path.exists() {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = out.join(format!(".{FILE}.{}.{n}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_string_pretty(m)? + "\n").with_context(|| format!("{}: cannot write", tmp.display()))?;
        // a hard link never replaces: of several first shards, one manifest wins
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("{}: cannot write the manifest", path.display())),
        }
    }
    let theirs = read(out)?;
    // the same grid grown by cells (`--seeds`, more tasks or methods) with the same settings
    if theirs.shards == m.shards
        && theirs.settings_sha256 == m.settings_sha256
        && m.cells.len() > theirs.cells.len()
        && theirs.cells.iter().all(|c| m.cells.contains(c))
    {
        mosa_core::fsio::write_atomic(&path, (serde_json::to_string_pretty(m)? + "\n").as_bytes()).map_err(anyhow::Error::msg)?;
        eprintln!("{}: the grid grows from {} to {} cells", path.display(), theirs.cells.len(), m.cells.len());
        return Ok(());
    }
    same_grid(&path, &theirs, m)
}

/// The manifest of a results folder.
pub fn read(out: &Path) -> anyhow::Result<Manifest> {
    let path = out.join(FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read the grid manifest", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a grid manifest", path.display()))
}

fn same_grid(path: &Path, theirs: &Manifest, mine: &Manifest) -> anyhow::Result<()> {
    let p = path.display();
    if theirs.shards != mine.shards {
        bail!(
            "{p}: this grid is split into {} shards, this process into {} (another --shard n or array size); run it with {} shards, or remove the manifest to re-split a grid no shard is running",
            theirs.shards,
            mine.shards,
            theirs.shards
        );
    }
    if let Some(c) = theirs.cells.iter().find(|c| !mine.cells.contains(c)) {
        bail!("{p}: the folder's grid has cell {c}, this process's has not (other --tasks, --methods or --seeds: use another --name)");
    }
    if let Some(c) = mine.cells.iter().find(|c| !theirs.cells.contains(c)) {
        bail!("{p}: this process's grid has cell {c}, the folder's has not (other --tasks, --methods or --seeds: use another --name)");
    }
    if theirs.settings_sha256 != mine.settings_sha256 {
        bail!(
            "{p}: the same cells with other settings: the folder's grid was made by `{}`, this process's by `{}` (use another --name)",
            theirs.command.join(" "),
            mine.command.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(shards: usize, key: &str, cells: &[&str], command: &[&str]) -> Manifest {
        Manifest {
            format: 1,
            command: command.iter().map(|s| s.to_string()).collect(),
            settings_sha256: hex::encode(Sha256::digest(key.as_bytes())),
            shards,
            cells: cells.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_first_shard_writes_it_and_a_different_grid_is_refused_naming_the_difference() {
        let d = tempfile::tempdir().unwrap();
        let base = m(3, "lr 0.005", &["a/linear", "a/mosa"], &["bench-vtab", "--lr", "0.005"]);
        check_or_write(d.path(), &base).unwrap();
        assert_eq!(read(d.path()).unwrap(), base);
        check_or_write(d.path(), &base).unwrap(); // another shard of the same grid
        let e = check_or_write(d.path(), &m(4, "lr 0.005", &["a/linear", "a/mosa"], &[])).unwrap_err().to_string();
        assert!(e.contains("3 shards, this process into 4"), "{e}");
        let e = check_or_write(d.path(), &m(3, "lr 0.005", &["a/linear"], &[])).unwrap_err().to_string();
        assert!(e.contains("cell a/mosa"), "{e}");
        let e = check_or_write(d.path(), &m(3, "lr 0.001", &["a/linear", "a/mosa"], &["bench-vtab", "--lr", "0.001"])).unwrap_err().to_string();
        assert!(e.contains("--lr 0.005") && e.contains("--lr 0.001"), "{e}");
        assert_eq!(read(d.path()).unwrap(), base, "a refused shard leaves the manifest alone");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temporary file left");
        // more cells with the same settings grow the grid; then the smaller one is refused
        let grown = m(3, "lr 0.005", &["a/linear", "a/mosa", "a/linear@seed3408"], &["bench-vtab", "--seeds", "2"]);
        check_or_write(d.path(), &grown).unwrap();
        assert_eq!(read(d.path()).unwrap(), grown);
        assert!(check_or_write(d.path(), &base).unwrap_err().to_string().contains("cell a/linear@seed3408"));
    }

    #[test]
    fn racing_first_shards_agree_on_one_manifest() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|i| s.spawn(move || check_or_write(dir, &m(2, if i == 7 { "other" } else { "k" }, &["a/b"], &[])))).collect();
            hs.into_iter().map(|h| h.join().unwrap().is_ok()).collect()
        });
        let key_ok = read(d.path()).unwrap().settings_sha256 == hex::encode(Sha256::digest(b"k"));
        // whichever won, the others with the same grid agree and the odd one is refused (or it won, and all others are)
        let ok = results.iter().filter(|r| **r).count();
        assert!(if key_ok { ok == 7 && !results[7] } else { ok == 1 && results[7] }, "{results:?}");
    }

    #[test]
    fn the_command_leaves_out_what_does_not_define_the_grid() {
        let args = ["bench-vtab", "--shard", "1/3", "--tasks", "a,b", "--mosa-bin=/x/mosa", "--claim-lease", "5", "--shards", "4", "--lr", "0.1"];
        assert_eq!(command_of(args.iter().map(|s| s.to_string())), ["bench-vtab", "--tasks", "a,b", "--lr", "0.1"]);
    }
}
