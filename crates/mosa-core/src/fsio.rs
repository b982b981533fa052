//! The one atomic-write helper: every checkpoint, model, expert, config and result file goes
//! through [`write_atomic`], so a crash leaves either the previous file or the new one.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file in the same folder (removed if anything
/// fails), fsync, then a rename. Errors name the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let err = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    std::fs::create_dir_all(dir).map_err(|e| err(dir, &e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| err(dir, &e))?;
    tmp.write_all(bytes).map_err(|e| err(path, &e))?;
    #[cfg(unix)]
    {
        // tempfile creates 0600; a result or cache file should be as readable as any other file.
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(|e| err(path, &e))?;
    }
    tmp.as_file().sync_all().map_err(|e| err(path, &e))?;
    tmp.persist(path).map_err(|e| err(path, &e.error))?;
    Ok(())
}
