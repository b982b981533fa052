//! Claims on a grid's cells in a results folder that several machines write at once (NFS: no
//! file locks relied on). A cell is claimed by creating `<cell dir>.claim` with `O_CREAT|O_EXCL`
//! (one creator wins, also over NFS v3+), holding who claimed it; the claim is removed when the
//! cell's run ends. A claim whose holder shows no progress for longer than the lease (neither
//! the claim nor any file of the cell directory modified), or whose holder is a process of this
//! host that has ended (a killed job), is stale: it is taken over with a warning, by renaming it
//! away first (a rename is atomic, so of several takers one wins).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Who holds a claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// The scheduler's job (`SLURM_JOB_ID[_SLURM_ARRAY_TASK_ID]`, the Kubernetes pod), if any.
    pub job: Option<String>,
    /// Seconds since the Unix epoch.
    pub started: u64,
}

impl Holder {
    /// This process.
    pub fn me() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let job = match (env("SLURM_JOB_ID"), env("SLURM_ARRAY_TASK_ID")) {
            (Some(j), Some(t)) => Some(format!("{}_{t}", env("SLURM_ARRAY_JOB_ID").unwrap_or(j))),
            (Some(j), None) => Some(j),
            (None, _) => env("HOSTNAME").filter(|_| env("JOB_COMPLETION_INDEX").is_some()),
        };
        let started = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Holder { host: hostname(), pid: std::process::id(), job, started }
    }
}

impl Holder {
    /// Whether the holder is known to be gone: a process of this host that no longer runs (a
    /// killed or pre-empted job on this node). A holder on another host is judged by the lease.
    fn gone(&self) -> bool {
        self.host == hostname() && self.pid != std::process::id() && !Path::new(&format!("/proc/{}", self.pid)).exists() && Path::new("/proc/self").exists()
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pid {}", self.host, self.pid)?;
        if let Some(j) = &self.job {
            write!(f, " job {j}")?;
        }
        write!(f, " since {}", self.started)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "unknown-host".into())
}

/// A held claim; dropping it releases the cell.
#[derive(Debug)]
pub struct Claim {
    path: PathBuf,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What trying to claim a cell gave.
#[derive(Debug)]
pub enum Outcome {
    /// This process holds the cell now.
    Claimed(Claim),
    /// This process holds it, taken over from a stale claim.
    TookOver(Claim, Option<Holder>),
    /// Another holder works on it.
    Held(Option<Holder>),
}

/// The claim file of the cell directory `dir`.
pub fn claim_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".claim");
    dir.with_file_name(name)
}

/// Claims the cell at `dir` for `me`, taking over a claim with no progress for `lease`.
pub fn claim(dir: &Path, me: &Holder, lease: Duration) -> anyhow::Result<Outcome> {
    let path = claim_path(dir);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create the folder", parent.display()))?;
    }
    if let Some(c) = create(&path, me)? {
        return Ok(Outcome::Claimed(c));
    }
    let holder = read_holder(&path);
    if !stale(&path, dir, lease) && !holder.as_ref().is_some_and(|h| h.gone()) {
        return Ok(Outcome::Held(holder));
    }
    // rename the stale claim away: of several takers, one rename succeeds
    let aside = path.with_extension(format!("claim.stale.{}.{}", me.host, me.pid));
    if std::fs::rename(&path, &aside).is_err() {
        return Ok(Outcome::Held(read_holder(&path)));
    }
    let _ = std::fs::remove_file(&aside);
    match create(&path, me)? {
        Some(c) => Ok(Outcome::TookOver(c, holder)),
        None => Ok(Outcome::Held(read_holder(&path))),
    }
}

/// Creates the claim file exclusively; `None` if it exists.
fn create(path: &Path, me: &Holder) -> anyhow::Result<Option<Claim>> {
    match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(mut f) => {
            let claim = Claim { path: path.to_path_buf() };
            f.write_all(serde_json::to_string(me)?.as_bytes())
                .and_then(|_| f.sync_all())
                .with_context(|| format!("{}: cannot write the claim", path.display()))?;
            Ok(Some(claim))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}: cannot create the claim", path.display())),
    }
}

fn read_holder(path: &Path) -> Option<Holder> {
    std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok())
}

/// Whether neither the claim nor any file under the cell directory changed within `lease`.
fn stale(claim: &Path, dir: &Path, lease: Duration) -> bool {
    let newest = newest_mtime(dir).into_iter().chain(std::fs::metadata(claim).and_then(|m| m.modified()).ok()).max();
    match newest {
        Some(t) => SystemTime::now().duration_since(t).is_ok_and(|age| age > lease),
        None => false,
    }
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = std::fs::metadata(dir).and_then(|m| m.modified()).ok();
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let t = if e.path().is_dir() { newest_mtime(&e.path()) } else { e.metadata().and_then(|m| m.modified()).ok() };
        newest = newest.max(t);
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, Mutex};

    fn holder(pid: u32) -> Holder {
        Holder { host: "h".into(), pid, job: Some(format!("j{pid}")), started: 1 }
    }

    /// Eight racers over twelve cells, each trying every cell: every cell is won exactly once
    /// while the claims are held, and all are free again after.
    #[test]
    fn racing_claimers_win_each_cell_exactly_once() {
        let d = tempfile::tempdir().unwrap();
        let cells: Vec<PathBuf> = (0..12).map(|i| d.path().join("runs").join(format!("t{i}")).join("m")).collect();
        let won = Arc::new(Mutex::new(Vec::new()));
        let start = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8u32)
            .map(|p| {
                let (cells, won, start) = (cells.clone(), won.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut held = Vec::new();
                    for c in &cells {
                        match claim(c, &holder(p), Duration::from_secs(3600)).unwrap() {
                            Outcome::Claimed(cl) => {
                                won.lock().unwrap().push(c.clone());
                                held.push(cl);
                            }
                            Outcome::Held(h) => assert!(h.is_none() || h.unwrap().pid != p),
                            Outcome::TookOver(..) => panic!("nothing is stale within an hour"),
                        }
                    }
                    start.wait(); // everyone has tried every cell before anyone releases
                    drop(held);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let mut won = won.lock().unwrap().clone();
        won.sort();
        assert_eq!(won, {
            let mut c = cells.clone();
            c.sort();
            c
        });
        assert!(cells.iter().all(|c| !claim_path(c).exists()), "released on drop");
    }

    #[test]
    fn a_claim_names_its_holder_and_a_stale_one_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let cell = d.path().join("runs/t/m");
        let first = match claim(&cell, &holder(1), Duration::from_secs(3600)).unwrap() {
            Outcome::Claimed(c) => c,
            other => panic!("{other:?}"),
        };
        match claim(&cell, &holder(2), Duration::from_secs(3600)).unwrap() {
            Outcome::Held(Some(h)) => assert_eq!(h, holder(1)),
            other => panic!("{other:?}"),
        }
        // no progress for longer than the lease: taken over, and the holder named
        std::mem::forget(first); // the holder died without releasing
        std::thread::sleep(Duration::from_millis(50));
        match claim(&cell, &holder(3), Duration::from_millis(10)).unwrap() {
            Outcome::TookOver(c, Some(h)) => {
                assert_eq!(h, holder(1));
                assert_eq!(read_holder(&claim_path(&cell)), Some(holder(3)));
                drop(c);
            }
            other => panic!("{other:?}"),
        }
        assert!(!claim_path(&cell).exists());
        // a holder of this host whose process has ended is gone at once, whatever the lease
        let mut dead = Holder::me();
        dead.pid = u32::MAX - 1; // no such process
        std::mem::forget(match claim(&cell, &dead, Duration::from_secs(3600)).unwrap() {
            Outcome::Claimed(c) => c,
            other => panic!("{other:?}"),
        });
        assert!(matches!(claim(&cell, &Holder::me(), Duration::from_secs(3600)).unwrap(), Outcome::TookOver(_, Some(h)) if h == dead));
        assert!(!claim_path(&cell).exists());
        // progress inside the cell directory keeps a claim alive
        let _c = match claim(&cell, &holder(4), Duration::from_secs(3600)).unwrap() {
            Outcome::Claimed(c) => c,
            other => panic!("{other:?}"),
        };
        std::fs::create_dir_all(&cell).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(cell.join("metrics.jsonl"), "{}").unwrap();
        assert!(matches!(claim(&cell, &holder(5), Duration::from_millis(200)).unwrap(), Outcome::Held(_)));
    }
}
