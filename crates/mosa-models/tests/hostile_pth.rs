//! Issue #29 item 4: tiny hostile `.pth` files are refused with one error naming what they claim,
//! before anything is allocated for the claim (today's reader asked for 4 GB or 4.4 TB and aborted
//! the process, which would abort this test binary too).

use std::io::Write;

fn len4(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((s.len() as u32).to_le_bytes());
    v.extend(s.as_bytes());
    v
}

/// A zip checkpoint as `torch.save` writes it, holding one float tensor `w` of `shape` whose
/// storage has `bytes` bytes; `compress` deflates the entries (PyTorch never does).
fn torch_zip(path: &std::path::Path, shape: [u32; 2], bytes: usize, compress: bool) {
    let mut p: Vec<u8> = vec![0x80, 0x02, b'}', b'('];
    p.extend(len4("w"));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.extend(b"(");
    p.extend(len4("storage"));
    p.extend(b"ctorch\nFloatStorage\n");
    p.extend(len4("0"));
    p.extend(len4("cpu"));
    p.extend([b'J']);
    p.extend(((bytes / 4) as u32).to_le_bytes());
    p.extend(b"tQK\x00(");
    for d in shape {
        p.push(b'J');
        p.extend(d.to_le_bytes());
    }
    p.extend(b"t(J");
    p.extend(shape[1].to_le_bytes());
    p.extend(b"K\x01t\x89ccollections\nOrderedDict\n)RtRu.");
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let method = if compress { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(&p).unwrap();
    z.start_file("archive/data/0", opts).unwrap();
    z.write_all(&vec![0u8; bytes]).unwrap();
    z.start_file("archive/version", opts).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap();
}

fn refused(path: &std::path::Path, needles: &[&str]) {
    let e = match mosa_models::read_checkpoint(path) {
        Ok(sd) => panic!("{} was read ({} tensors)", path.display(), sd.tensors.len()),
        Err(e) => e.to_string(),
    };
    assert!(!e.contains('\n'), "{e}");
    for n in needles {
        assert!(e.contains(n), "`{n}` not in: {e}");
    }
}

#[test]
fn hostile_pth_files_are_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    // the honest file first: a 2x3 tensor is read
    let ok = tmp.path().join("ok.pth");
    torch_zip(&ok, [2, 3], 24, false);
    let sd = mosa_models::read_checkpoint(&ok).unwrap();
    assert_eq!(sd.tensors["w"].shape, vec![2, 3]);
    // a tensor claiming [2^20, 2^20] (4.4 TB) over 16 bytes of storage
    let huge = tmp.path().join("huge.pth");
    torch_zip(&huge, [1 << 20, 1 << 20], 16, false);
    refused(&huge, &["huge.pth", "tensor `w`", "[1048576, 1048576]", "more than the file's"]);
    // a 13-byte pickle with a 0xfffffff0-long string
    let s = tmp.path().join("string.pth");
    std::fs::write(&s, [0x80, 0x02, b'X', 0xf0, 0xff, 0xff, 0xff, b'a', b'b', b'c', b'.', b'.', b'.']).unwrap();
    refused(&s, &["string.pth", "claims 4294967280 bytes"]);
    // a zip bomb: deflated entries (1 MB of zeros expands from about a kilobyte)
    let bomb = tmp.path().join("bomb.pth");
    torch_zip(&bomb, [512, 512], 1 << 20, true);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 8192);
    refused(&bomb, &["bomb.pth", "compressed"]);
}
