//! Where a command may write its one output file (`--out` of `merge`, `expert export`, `forward`):
//! the one check every such command runs before it reads anything large (issue #29 items 1–3).
//!
//! An output path is refused when
//! - something that is not a regular file is there (a device, a FIFO, a directory, a socket): the
//!   atomic write would rename over it, and `/dev/null` replaced by a file breaks the system;
//! - it is a symbolic link: the rename would replace the link, not the file it points to; the
//!   message names the target so the user can pass it;
//! - it is the same file (device and inode) as one of the command's inputs, however it is spelled
//!   (`w/../w/b.safetensors`, absolute against relative, a hard link);
//! - it is one of a run directory's own files (`config.json`, `checkpoint.safetensors`,
//!   `model.safetensors`, …, [`RunDir::own_files`]) and not the file this command itself owns
//!   there (`expert export`'s default `<run>/expert.safetensors`): another command writing it
//!   would break `--resume` or `mosa eval --run`.

use std::path::Path;

use crate::rundir::RunDir;
use crate::{Error, Result};

/// Checks `out` against what is there and the command's `inputs` (see the module doc). `owned`:
/// the run file this command may (re)write, if any.
pub fn check_output(out: &Path, inputs: &[&Path], owned: Option<&Path>) -> Result<()> {
    let refuse = |why: String| Err(Error::Input(format!("--out {}: {why}", out.display())));
    if let Ok(md) = std::fs::symlink_metadata(out) {
        let ft = md.file_type();
        if ft.is_symlink() {
            let to = std::fs::read_link(out).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
            return refuse(format!("a symbolic link (to {to}); writing would replace the link, not its target: give the target's path, or another"));
        }
        if !ft.is_file() {
            return refuse(format!("a {} is there, and only a regular file is ever replaced; write elsewhere", mosa_core::fsio::kind_name(ft)));
        }
    }
    if let (Some(dir), Some(name)) = (out.parent(), out.file_name()) {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let run = RunDir::new(dir);
        let is_owned = owned.is_some_and(|o| o.file_name() == Some(name) && same_dir(o.parent().unwrap_or(Path::new(".")), dir));
        if run.config().exists() && !is_owned && run.own_files().iter().any(|f| f.file_name() == Some(name)) {
            return refuse(format!("that is one of the run directory {}'s own files ({}); write elsewhere", dir.display(), name.to_string_lossy()));
        }
    }
    for input in inputs {
        if same_file(out, input) {
            return refuse(format!("that is the same file as the input {}; write elsewhere", input.display()));
        }
    }
    Ok(())
}

/// Whether two paths name the same existing file (device and inode; on other systems, the
/// canonical paths).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let a = if a.as_os_str().is_empty() { Path::new(".") } else { a };
    same_file(a, b)
}
