//! The one atomic-write helper and the one bounded-read helper. Every checkpoint, model, expert,
//! config and result file goes through [`write_atomic`], so a crash leaves either the previous
//! file or the new one (and the next write to that name removes the crashed writer's temporary
//! file); every input file (image, list, weights, model JSON) is read with [`read_bounded`], so a
//! FIFO, a device or a huge file is refused before anything is allocated for it.

use std::io::Write;
use std::path::Path;

use crate::Error;

/// Writes `bytes` to `path` atomically: a temporary file in the same folder (removed if anything
/// fails), fsync, then a rename. Errors name the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> crate::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let err = |p: &Path, source: std::io::Error| Error::Io { path: p.to_path_buf(), source };
    // the rename would replace whatever is there: never a device, a FIFO, a socket or a folder
    if let Ok(md) = std::fs::symlink_metadata(path) {
        let ft = md.file_type();
        if !ft.is_file() && !ft.is_symlink() {
            return Err(Error::NotAFile { path: path.to_path_buf(), kind: kind_name(ft) });
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let prefix = format!(".{name}.{}.", std::process::id());
    remove_orphans(dir, name);
    let mut tmp = tempfile::Builder::new().prefix(&prefix).suffix(TMP_SUFFIX).tempfile_in(dir).map_err(|e| err(dir, e))?;
    tmp.write_all(bytes).map_err(|e| err(path, e))?;
    #[cfg(unix)]
    {
        // tempfile creates 0600; a result or cache file should be as readable as any other file.
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(|e| err(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| err(path, e))?;
    tmp.persist(path).map_err(|e| err(path, e.error))?;
    Ok(())
}

/// The suffix of [`write_atomic`]'s temporary files (`.<name>.<pid>.<random>.mosa-tmp`).
pub const TMP_SUFFIX: &str = ".mosa-tmp";

/// Removes the temporary files that a killed writer of `name` left in `dir`: those whose
/// writer's process no longer exists (on Linux, no `/proc/<pid>`; elsewhere none are removed).
fn remove_orphans(dir: &Path, name: &str) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let start = format!(".{name}.");
    for e in rd.flatten() {
        let f = e.file_name();
        let Some(f) = f.to_str() else { continue };
        let Some(rest) = f.strip_prefix(&start).and_then(|r| r.strip_suffix(TMP_SUFFIX)) else { continue };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes a folder of files atomically: the files go into a temporary folder beside `path`
/// (fsynced), which is then renamed to `path`. A folder already at `path` is replaced only when
/// `replaceable` says it holds nothing but what this kind of write made (it is renamed aside
/// first and removed after the new one is in place); anything else there is refused, naming it.
pub fn write_folder_atomic(path: &Path, files: &[(&str, &[u8])], replaceable: impl Fn(&Path) -> bool) -> crate::Result<()> {
    let err = |p: &Path, source: std::io::Error| Error::Io { path: p.to_path_buf(), source };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let old = match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_dir() => {
            if !replaceable(path) {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::other("a folder with other files is there; only a folder this command wrote is ever replaced: write elsewhere"),
                });
            }
            true
        }
        Ok(md) => {
            let ft = md.file_type();
            let what = if ft.is_file() {
                "file"
            } else if ft.is_symlink() {
                "symbolic link"
            } else {
                kind(ft)
            };
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!(
                    "a {what} is there, and a folder is written only where there is none or one this command wrote: write elsewhere"
                )),
            });
        }
        Err(_) => false,
    };
    std::fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = tempfile::Builder::new().prefix(&format!(".{name}.{}.", std::process::id())).suffix(TMP_SUFFIX).tempdir_in(parent).map_err(|e| err(parent, e))?;
    for (file, bytes) in files {
        let p = tmp.path().join(file);
        let mut f = std::fs::File::create(&p).map_err(|e| err(&p, e))?;
        f.write_all(bytes).map_err(|e| err(&p, e))?;
        f.sync_all().map_err(|e| err(&p, e))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).map_err(|e| err(tmp.path(), e))?;
    }
    let aside = parent.join(format!(".{name}.{}.old{TMP_SUFFIX}", std::process::id()));
    if old {
        std::fs::rename(path, &aside).map_err(|e| err(path, e))?;
    }
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, path) {
        // put the previous folder back: a failed write leaves what was there
        if old {
            let _ = std::fs::rename(&aside, path);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(err(path, e));
    }
    if old {
        std::fs::remove_dir_all(&aside).map_err(|e| err(&aside, e))?;
    }
    Ok(())
}

/// Why [`read_bounded`] refused a file.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// Not a regular file (a FIFO, a device, a directory, a socket).
    NotRegular(&'static str),
    /// Larger than the cap (bytes, cap).
    TooLarge(u64, u64),
    /// Not UTF-8 text (the first invalid byte's offset).
    NotText(usize),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(k) => write!(f, "not a regular file (a {k}); only regular files are read"),
            ReadError::TooLarge(n, cap) => write!(f, "{n} bytes, larger than the {cap}-byte limit for this kind of file"),
            ReadError::NotText(at) => write!(f, "not UTF-8 text (byte {at})"),
        }
    }
}

impl std::error::Error for ReadError {}

/// What kind of file a file type is, in words ("FIFO", "device", "socket", "directory").
pub fn kind_name(ft: std::fs::FileType) -> &'static str {
    kind(ft)
}

fn kind(ft: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "FIFO";
        }
        if ft.is_char_device() || ft.is_block_device() {
            return "device";
        }
        if ft.is_socket() {
            return "socket";
        }
    }
    if ft.is_dir() { "directory" } else { "special file" }
}

/// Checks that `path` (symlinks followed) is a regular file of at most `cap` bytes, without
/// opening it; returns its size.
pub fn check_regular(path: &Path, cap: u64) -> Result<u64, ReadError> {
    let md = std::fs::metadata(path).map_err(ReadError::Io)?;
    if !md.file_type().is_file() {
        return Err(ReadError::NotRegular(kind(md.file_type())));
    }
    if md.len() > cap {
        return Err(ReadError::TooLarge(md.len(), cap));
    }
    Ok(md.len())
}

/// Reads a regular file of at most `cap` bytes (a file that grows past the cap while being read
/// is refused too).
pub fn read_bounded(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let len = check_regular(path, cap)?;
    let f = std::fs::File::open(path).map_err(ReadError::Io)?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(cap + 1).read_to_end(&mut buf).map_err(ReadError::Io)?;
    if buf.len() as u64 > cap {
        return Err(ReadError::TooLarge(buf.len() as u64, cap));
    }
    Ok(buf)
}

/// [`read_bounded`] for UTF-8 text.
pub fn read_text(path: &Path, cap: u64) -> Result<String, ReadError> {
    String::from_utf8(read_bounded(path, cap)?).map_err(|e| ReadError::NotText(e.utf8_error().valid_up_to()))
}

/// The size caps of [`read_bounded`] by kind of file.
pub mod caps {
    /// An encoded image (VTAB-1k's largest is < 1 MB; a 100-megapixel PNG ≈ 300 MB).
    pub const IMAGE: u64 = 512 << 20;
    /// A dataset list or split file (ImageNet-21k's list ≈ 1 GB).
    pub const LIST: u64 = 2 << 30;
    /// A model config or recipe (JSON, TOML).
    pub const CONFIG: u64 = 16 << 20;
    /// Weights, checkpoints, experts, merged models (ViT-G/14 in f32 ≈ 4 GB).
    pub const TENSORS: u64 = 64 << 30;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reads_refuse_special_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read_bounded(&f, 10).unwrap(), b"0123456789");
        assert!(matches!(read_bounded(&f, 9), Err(ReadError::TooLarge(10, 9))));
        assert!(matches!(read_bounded(dir.path(), 100), Err(ReadError::NotRegular("directory"))));
        #[cfg(unix)]
        {
            assert!(matches!(read_bounded(Path::new("/dev/zero"), 1 << 20), Err(ReadError::NotRegular("device"))));
            let fifo = dir.path().join("fifo");
            assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
            // returns at once: a FIFO is never opened
            assert!(matches!(read_bounded(&fifo, 100), Err(ReadError::NotRegular("FIFO"))));
        }
        assert!(matches!(read_bounded(&dir.path().join("none"), 100), Err(ReadError::Io(_))));
    }

    #[test]
    fn a_folder_is_written_whole_and_replaces_only_its_own_kind() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("adapter");
        let ours = |p: &Path| std::fs::read_dir(p).unwrap().flatten().all(|e| e.file_name() == "a.json" || e.file_name() == "b.bin");
        write_folder_atomic(&out, &[("a.json", b"{}"), ("b.bin", b"12")], ours).unwrap();
        assert_eq!(std::fs::read(out.join("b.bin")).unwrap(), b"12");
        write_folder_atomic(&out, &[("a.json", b"{\"x\": 1}")], ours).unwrap();
        assert_eq!(std::fs::read(out.join("a.json")).unwrap(), b"{\"x\": 1}");
        assert!(!out.join("b.bin").exists(), "the old folder's file stays");
        std::fs::write(out.join("notes.txt"), b"mine").unwrap();
        let e = write_folder_atomic(&out, &[("a.json", b"{}")], ours).unwrap_err().to_string();
        assert!(e.contains("only a folder this command wrote"), "{e}");
        assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(write_folder_atomic(&file, &[("a.json", b"{}")], ours).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        // nothing temporary is left beside them
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn a_killed_writers_temporary_file_is_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        // pid 4194304 is above Linux's pid_max limit: no such process
        let orphan = dir.path().join(format!(".m.json.4194304.abc{TMP_SUFFIX}"));
        let other = dir.path().join(format!(".n.json.4194304.abc{TMP_SUFFIX}"));
        std::fs::write(&orphan, b"half").unwrap();
        std::fs::write(&other, b"half").unwrap();
        write_atomic(&dir.path().join("m.json"), b"{}").unwrap();
        assert_eq!(std::fs::read(dir.path().join("m.json")).unwrap(), b"{}");
        if Path::new("/proc/self").exists() {
            assert!(!orphan.exists(), "the orphan of m.json stays");
        }
        assert!(other.exists(), "another file's temporary was removed");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), if Path::new("/proc/self").exists() { 2 } else { 3 }, "{left:?}");
    }
}
