//! A bounds check of a PyTorch checkpoint before burn-store's reader sees it (issue #29 item 4):
//! that reader allocates whatever a pickle claims (a 13-byte pickle with a 0xfffffff0-long string
//! asked for 4 GB and aborted). Here every length-prefixed pickle argument is checked against the
//! bytes that are actually there, and a zip checkpoint must hold its entries uncompressed (as
//! `torch.save` writes them), so no entry can expand beyond the file. The tensors' claimed sizes
//! are checked against the file's size in [`super::pth`], before their data is read.
//!
//! The opcodes and their arguments are those of Python's `pickletools` (protocols 0–5).

use std::io::Read;

/// What makes a checkpoint unsafe to hand to the pickle reader (a claim past the bytes, a
/// compressed entry, an opcode that cannot be bounded).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PickleError(pub String);

/// Walks the pickles at the start of `bytes` (at most `max_pickles`, each ending with STOP) and
/// checks every length-prefixed argument against the bytes left of `total` (`bytes` may be a
/// prefix of the data: the walk ends where it ends). Stops quietly at an opcode it does not know
/// or at the end of the pickles: what is not a pickle is the reader's to refuse.
pub fn check_pickles(bytes: &[u8], total: usize, max_pickles: usize) -> Result<(), PickleError> {
    let mut at = 0usize;
    let mut stops = 0;
    while at < bytes.len() && stops < max_pickles {
        let op = bytes[at];
        let start = at;
        at += 1;
        let left = |at: usize| total.saturating_sub(at);
        let le = |at: usize, n: usize| -> Option<u64> { bytes.get(at..at + n).map(|b| b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64)) };
        // (bytes of the fixed argument, whether it is a length of data that follows)
        let (fixed, length): (usize, bool) = match op {
            b'(' | b'.' | b'0' | b'1' | b'2' | b'N' | 0x88 | 0x89 | b'a' | b'e' | b'b' | b'd' | b'}' | b']' | b')' | b'l' | b'R' | b's' | b'u' | b't'
            | 0x85 | 0x86 | 0x87 | 0x81 | 0x92 | 0x93 | 0x94 | 0x8f | 0x90 | 0x91 | b'o' | b'Q' | 0x97 | 0x98 => (0, false),
            b'K' | b'h' | b'q' | 0x80 | 0x82 => (1, false),
            b'U' | 0x8c | b'C' | 0x8a => (1, true),
            b'M' | 0x83 => (2, false),
            b'J' | b'j' | b'r' | 0x84 => (4, false),
            b'T' | b'X' | b'B' | 0x8b => (4, true),
            b'G' | 0x95 => (8, false),
            0x8d | 0x8e | 0x96 => (8, true),
            b'I' | b'L' | b'F' | b'S' | b'V' | b'g' | b'p' | b'P' | b'c' | b'i' => {
                // newline-terminated arguments (two lines for GLOBAL and INST)
                let lines = if op == b'c' || op == b'i' { 2 } else { 1 };
                for _ in 0..lines {
                    match bytes[at.min(bytes.len())..].iter().position(|&b| b == b'\n') {
                        Some(n) => at += n + 1,
                        None if bytes.len() < total => return Ok(()),
                        None => return Err(PickleError(format!("a pickle text argument at byte {start} runs past the end of the data"))),
                    }
                }
                continue;
            }
            _ => return Ok(()),
        };
        let Some(v) = le(at, fixed) else {
            return if bytes.len() < total {
                Ok(())
            } else {
                Err(PickleError(format!("pickle opcode 0x{op:02x} at byte {start}: its argument runs past the end of the data")))
            };
        };
        at += fixed;
        if length {
            if v > left(at) as u64 {
                return Err(PickleError(format!("pickle opcode 0x{op:02x} at byte {start} claims {v} bytes, but only {} follow", left(at))));
            }
            at += v as usize;
        }
        if op == b'.' {
            stops += 1;
        }
    }
    Ok(())
}

/// How much of a legacy (non-zip) checkpoint is walked: its pickles come first, the storages after.
const LEGACY_PREFIX: u64 = 64 << 20;

/// Checks a `.pth` file: a zip (every entry stored uncompressed, every `.pkl` entry's pickle
/// bounded) or a legacy pickle stream (its first five pickles: magic, protocol, system info, the
/// objects, the storage keys).
pub fn check_checkpoint(path: &std::path::Path) -> Result<(), PickleError> {
    let total = mosa_core::fsio::check_regular(path, mosa_core::fsio::caps::TENSORS).map_err(|e| PickleError(e.to_string()))?;
    let file = std::fs::File::open(path).map_err(|e| PickleError(e.to_string()))?;
    let mut head = Vec::new();
    (&file).take(LEGACY_PREFIX).read_to_end(&mut head).map_err(|e| PickleError(e.to_string()))?;
    if !head.starts_with(b"PK") {
        return check_pickles(&head, total as usize, 5);
    }
    let mut zip = zip::ZipArchive::new(file).map_err(|e| PickleError(format!("not a readable zip: {e}")))?;
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| PickleError(format!("zip entry {i}: {e}")))?;
        let name = f.name().to_string();
        if f.compression() != zip::CompressionMethod::Stored {
            return Err(PickleError(format!(
                "zip entry `{name}` is compressed ({:?}); PyTorch stores checkpoints uncompressed, and a compressed entry could expand without bound",
                f.compression()
            )));
        }
        if f.size() > total {
            return Err(PickleError(format!("zip entry `{name}` claims {} bytes, more than the whole file ({total})", f.size())));
        }
        if name.ends_with(".pkl") {
            let mut pkl = Vec::new();
            (&mut f).take(total + 1).read_to_end(&mut pkl).map_err(|e| PickleError(format!("zip entry `{name}`: {e}")))?;
            check_pickles(&pkl, pkl.len(), 1).map_err(|e| PickleError(format!("`{name}`: {e}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_beyond_the_data_are_refused() {
        // PROTO 2, BINUNICODE of 0xfffffff0 bytes with 3 present
        let bad = [0x80, 0x02, b'X', 0xf0, 0xff, 0xff, 0xff, b'a', b'b', b'c'];
        assert!(check_pickles(&bad, bad.len(), 1).unwrap_err().0.contains("claims 4294967280 bytes, but only 3 follow"));
        // the same with the 3 bytes it claims, then STOP: fine
        let good = [0x80, 0x02, b'X', 3, 0, 0, 0, b'a', b'b', b'c', b'.'];
        assert!(check_pickles(&good, good.len(), 1).is_ok());
        // BINUNICODE8 and SHORT_BINBYTES, and an argument cut short
        assert!(check_pickles(&[0x8d, 0, 0, 0, 0, 0, 0, 0, 0x10, b'x'], 10, 1).is_err());
        assert!(check_pickles(&[b'C', 5, 1, 2], 4, 1).is_err());
        assert!(check_pickles(&[b'J', 1, 2], 3, 1).is_err());
        // a prefix of a longer file: a claim within the file passes, the walk ends at the prefix
        assert!(check_pickles(&[b'X', 100, 0, 0, 0, b'a'], 200, 1).is_ok());
        assert!(check_pickles(&[b'X', 100, 0, 0, 0, b'a'], 50, 1).is_err());
        // text arguments: GLOBAL's two lines, then STOP; one without its newline is refused
        assert!(check_pickles(b"ctorch\nFloatStorage\n.", 21, 1).is_ok());
        assert!(check_pickles(b"ctorch\nFloatStor", 16, 1).is_err());
        // after the pickles (raw storage bytes) nothing is read
        assert!(check_pickles(&[b'N', b'.', b'X', 0xff, 0xff, 0xff, 0xff], 7, 1).is_ok());
    }
}
