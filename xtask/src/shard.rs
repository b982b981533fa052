//! Which share of a benchmark grid this process runs: `--shard i/n` as given, or read from the
//! scheduler that started it (`--shard auto`, and the default when the environment names one):
//!
//! | scheduler | i | n |
//! |---|---|---|
//! | SLURM array job | (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN`) / `SLURM_ARRAY_TASK_STEP` | `SLURM_ARRAY_TASK_COUNT` |
//! | Kubernetes Indexed Job | `JOB_COMPLETION_INDEX` | `--shards N` (Kubernetes gives no count) |
//!
//! An explicit `--shard i/n` wins over the environment; without either, the whole grid (0/1).
//! Shard `i` of `n` owns items `i, i + n, i + 2n, …` of each phase ([`crate::bench_vtab::shard_of`]).

use anyhow::{Context, bail};

/// This process's share of the grid and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
    pub source: Source,
}

/// Where a [`Shard`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--shard i/n`.
    Flag,
    /// A SLURM array task's environment.
    Slurm,
    /// A Kubernetes Indexed Job's completion index (and `--shards`).
    Kubernetes,
    /// Nothing said: the whole grid.
    Whole,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from = match self.source {
            Source::Flag => "--shard",
            Source::Slurm => "SLURM array",
            Source::Kubernetes => "Kubernetes indexed job",
            Source::Whole => "the whole grid",
        };
        write!(f, "shard {}/{} ({from})", self.index, self.count)
    }
}

/// The shard from `--shard` (`i/n`, `auto` or absent), `--shards` and the environment (`env`:
/// a variable's value, `std::env::var` in the binary).
pub fn resolve(flag: Option<&str>, shards: Option<usize>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Shard> {
    match flag {
        Some("auto") => from_env(shards, env)?
            .context("--shard auto: no scheduler in the environment (neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set); give --shard i/n"),
        Some(s) => {
            let (index, count) = s
                .split_once('/')
                .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
                .filter(|(i, n)| *n > 0 && i < n)
                .with_context(|| format!("--shard `{s}`: expected i/n with 0 <= i < n, or auto"))?;
            Ok(Shard { index, count, source: Source::Flag })
        }
        None => Ok(from_env(shards, env)?.unwrap_or(Shard { index: 0, count: 1, source: Source::Whole })),
    }
}

/// The shard the environment names, if any.
fn from_env(shards: Option<usize>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Option<Shard>> {
    let number = |name: &str| -> anyhow::Result<Option<i64>> {
        env(name).map(|v| v.trim().parse::<i64>().with_context(|| format!("{name}=`{v}` is not an integer"))).transpose()
    };
    if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1);
        let count = number("SLURM_ARRAY_TASK_COUNT")?.context("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")?;
        if step < 1 || count < 1 || id < min || (id - min) % step != 0 {
            bail!("SLURM array task {id} is not on the array's range (min {min}, step {step}, count {count})");
        }
        let index = (id - min) / step;
        if index >= count {
            bail!("SLURM array task {id} is task {index} of an array of {count} (min {min}, step {step}): past its end");
        }
        return Ok(Some(Shard { index: index as usize, count: count as usize, source: Source::Slurm }));
    }
    if let Some(index) = number("JOB_COMPLETION_INDEX")? {
        let count = shards.context("a Kubernetes Indexed Job (JOB_COMPLETION_INDEX is set) gives no shard count: pass --shards N (the job's completions)")?;
        if index < 0 || index as usize >= count || count == 0 {
            bail!("JOB_COMPLETION_INDEX={index} is not below --shards {count}");
        }
        return Ok(Some(Shard { index: index as usize, count, source: Source::Kubernetes }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    fn slurm(id: &str, min: &str, step: &str, count: &str) -> Vec<(&'static str, String)> {
        vec![
            ("SLURM_ARRAY_TASK_ID", id.into()),
            ("SLURM_ARRAY_TASK_MIN", min.into()),
            ("SLURM_ARRAY_TASK_STEP", step.into()),
            ("SLURM_ARRAY_TASK_COUNT", count.into()),
        ]
    }

    fn resolve_with(flag: Option<&str>, shards: Option<usize>, vars: &[(&str, String)]) -> anyhow::Result<Shard> {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        resolve(flag, shards, &env(&vars))
    }

    #[test]
    fn slurm_ranges_with_an_offset_and_a_step_map_onto_0_to_n() {
        // --array=0-2: ids 0, 1, 2
        for id in 0..3 {
            let s = resolve_with(None, None, &slurm(&id.to_string(), "0", "1", "3")).unwrap();
            assert_eq!((s.index, s.count, s.source), (id, 3, Source::Slurm));
        }
        // --array=5-17:4: ids 5, 9, 13, 17 -> 0..4
        for (k, id) in [5, 9, 13, 17].into_iter().enumerate() {
            let s = resolve_with(Some("auto"), None, &slurm(&id.to_string(), "5", "4", "4")).unwrap();
            assert_eq!((s.index, s.count), (k, 4));
        }
        // off the range: below the minimum, between steps, past the end
        for id in ["4", "6", "21"] {
            assert!(resolve_with(None, None, &slurm(id, "5", "4", "4")).is_err(), "{id}");
        }
        // MIN and STEP default to 0 and 1 (older Slurm); COUNT is required
        let s = resolve_with(None, None, &[("SLURM_ARRAY_TASK_ID", "2".into()), ("SLURM_ARRAY_TASK_COUNT", "4".into())]).unwrap();
        assert_eq!((s.index, s.count), (2, 4));
        assert!(resolve_with(None, None, &[("SLURM_ARRAY_TASK_ID", "2".into())]).unwrap_err().to_string().contains("SLURM_ARRAY_TASK_COUNT"));
        assert!(resolve_with(None, None, &slurm("x", "0", "1", "3")).is_err());
    }

    #[test]
    fn kubernetes_needs_the_count_from_the_flag() {
        let k8s = [("JOB_COMPLETION_INDEX", "3".to_string())];
        let s = resolve_with(None, Some(5), &k8s).unwrap();
        assert_eq!((s.index, s.count, s.source), (3, 5, Source::Kubernetes));
        assert!(resolve_with(None, None, &k8s).unwrap_err().to_string().contains("--shards"));
        assert!(resolve_with(None, Some(3), &k8s).is_err(), "index 3 of 3");
    }

    #[test]
    fn an_explicit_shard_wins_and_nothing_means_the_whole_grid() {
        let s = resolve_with(Some("1/4"), None, &slurm("0", "0", "1", "3")).unwrap();
        assert_eq!((s.index, s.count, s.source), (1, 4, Source::Flag));
        assert_eq!(resolve_with(None, None, &[]).unwrap(), Shard { index: 0, count: 1, source: Source::Whole });
        assert!(resolve_with(Some("auto"), None, &[]).unwrap_err().to_string().contains("no scheduler"));
        for bad in ["4/4", "1/0", "a/b", "3"] {
            assert!(resolve_with(Some(bad), None, &[]).is_err(), "{bad}");
        }
    }
}
