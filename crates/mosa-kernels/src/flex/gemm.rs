//! Our f32 GEMM for x86 CPUs with AVX2 + FMA or AVX-512, used by the linears
//! (`kernels::flex::linear`) where it is faster than the `gemm` crate (`docs/timings.md`); everywhere
//! else, and for small products, `matmul` calls the `gemm` crate.
//!
//! The structure is the usual one for a packed GEMM (Goto and van de Geijn, "Anatomy of
//! high-performance matrix multiplication", ACM TOMS 2008; the BLIS loop order): for each block
//! of `KC` rows of `B` (and `NC` columns), `B` is packed into panels of `NR` columns, on all
//! threads; the rows of `A` are cut into as many blocks of about `MC` rows as a multiple of the
//! thread count, and each task packs its block of `A` into panels of `MR` rows and runs the
//! `MR × NR` register tile over every pair of panels, the `B` panel staying in L1 while the `A`
//! panels stream from L2. Two tiles ([`Tile`]): 6 × 16 with AVX2 (12 of the 16 `ymm` registers
//! as accumulators) and 12 × 32 with AVX-512 (24 of the 32 `zmm`). Each tile's inner loop is
//! unrolled four times (one loop iteration per four rank-1 updates reaches the FMA peak, one per
//! update reached 80% of it on a Zen 3), and it prefetches the `C` rows it will read and write
//! before it starts (without that, the tile's first touch of `C` stalled it by about a fifth).
//! Both operands are read through strides, so `Aᵀ` and `Bᵀ` cost nothing but a strided packing
//! pass.

use gemm::Parallelism;
use rayon::prelude::*;

/// Block sizes of one register tile: `KC × NR` floats of `B` fit L1, `MC × KC` of `A` fit L2.
#[derive(Clone, Copy, Debug)]
struct Blocking {
    kc: usize,
    mc: usize,
    nc: usize,
}

/// The register tile (and instruction set) of our packed GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// A 6 × 16 tile (two `ymm` per row, 12 accumulators of 16 registers).
    Avx2,
    /// A 12 × 32 tile (two `zmm` per row, 24 accumulators of 32 registers).
    Avx512,
}

impl Tile {
    /// Every tile, whether or not this CPU can run it ([`available`]).
    pub const ALL: [Tile; 2] = [Tile::Avx2, Tile::Avx512];

    /// The tile's blocking, `A` blocks of 144 KiB in L2 for both: AVX2 `B` panels of 16 KiB
    /// (`KC` 256 × 16) in L1; AVX-512 `B` panels of 48 KiB (`KC` 384 × 32), beyond a 32 KiB L1
    /// but measured on a Zen 4 up to 5% faster than `KC` 192 (24 KiB, `docs/timings.md`).
    fn blocking(self) -> Blocking {
        match self {
            Tile::Avx2 => Blocking { kc: 256, mc: 144, nc: 4080 },
            Tile::Avx512 => Blocking { kc: 384, mc: 96, nc: 4064 },
        }
    }
}

impl std::fmt::Display for Tile {
    /// The instruction set and shape, e.g. `AVX2 6×16`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (isa, mr, nr) = match self {
            Tile::Avx2 => ("AVX2", avx2::MR, avx2::NR),
            Tile::Avx512 => ("AVX-512", avx512::MR, avx512::NR),
        };
        write!(f, "{isa} {mr}×{nr}")
    }
}

/// What CPUs with AVX-512 run large products with: the `gemm` crate's AVX-512 kernels. On a
/// Zen 4 (`docs/timings.md`) the crate reaches 80–94% of the FMA peak on a ViT-S step's
/// products, our 12 × 32 tile 0.93–1.02× the crate's speed and the adapter step 1–7% slower with
/// it; CPUs with full-width AVX-512 (Zen 5, Sapphire Rapids) have not been measured with it
/// (`MOSA_GEMM=avx512 mosa bench step …` and `mosa bench gemm` measure it there).
const DEFAULT_AVX512: Option<Tile> = None;

/// The largest tile (`MR × NR` floats), for the stack copy of a partial one.
const MAX_TILE: usize = {
    let (a, b) = (avx2::MR * avx2::NR, avx512::MR * avx512::NR);
    if a > b { a } else { b }
};

/// Below this many multiply-adds (or with a side under [`MIN_SIDE`]) the `gemm` crate's
/// unpacked paths are faster than packing.
const OURS_MIN_MACS: usize = 64 * 64 * 64;
const MIN_SIDE: usize = 32;

/// A read-only strided matrix: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
pub(super) struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: a `View` is only read, and only while the buffer it points into is borrowed by the caller.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// Rows `rs` apart, each contiguous.
    pub fn rows(ptr: *const f32, rs: usize) -> Self {
        View { ptr, rs: rs as isize, cs: 1 }
    }

    /// A row-major `[_, cols]` buffer.
    pub fn row_major(v: &[f32], cols: usize) -> Self {
        View::rows(v.as_ptr(), cols)
    }

    /// The transpose.
    pub fn t(self) -> Self {
        View { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

/// A packing buffer aligned to a cache line (so the tile's vector loads never split one).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

thread_local! {
    /// Each thread's buffer for packed `A` blocks, and the calling thread's for packed `B`, kept
    /// between calls: a fresh one of this size is an `mmap` whose pages fault in on every call.
    static PACKED_A: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
    static PACKED_B: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's buffer in `slot` (a fresh buffer if that one is in use).
fn with_buffer<R>(slot: &'static std::thread::LocalKey<std::cell::RefCell<Vec<Line>>>, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let lines = len.div_ceil(16);
    let floats = |buffer: &mut [Line]| {
        // SAFETY: `Line` is 16 `f32`s with no padding (repr(C), size 64).
        unsafe { std::slice::from_raw_parts_mut(buffer.as_mut_ptr().cast::<f32>(), len) }
    };
    slot.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < lines {
                buffer.resize(lines, Line([0.0; 16]));
            }
            f(floats(&mut buffer[..lines]))
        }
        Err(_) => f(floats(&mut vec![Line([0.0; 16]); lines])),
    })
}

/// The tile our kernel runs with for large products on this CPU, or `None` where the `gemm`
/// crate is used: AVX2 + FMA CPUs without AVX-512 take the AVX2 tile; CPUs with AVX-512 take
/// [`DEFAULT_AVX512`].
/// `MOSA_GEMM` in the environment overrides it for before/after benchmarks on one machine:
/// `crate` forces the `gemm` crate, `avx2` and `avx512` our tile with that instruction set
/// (where the CPU has it).
fn preferred() -> Option<Tile> {
    static PREFERRED: std::sync::OnceLock<Option<Tile>> = std::sync::OnceLock::new();
    *PREFERRED.get_or_init(|| match std::env::var("MOSA_GEMM").as_deref() {
        Ok("crate") => None,
        Ok("avx2") => available(Tile::Avx2).then_some(Tile::Avx2),
        Ok("avx512") => available(Tile::Avx512).then_some(Tile::Avx512),
        _ => default_tile(),
    })
}

/// [`preferred`] without the environment.
fn default_tile() -> Option<Tile> {
    if available(Tile::Avx512) { DEFAULT_AVX512 } else { available(Tile::Avx2).then_some(Tile::Avx2) }
}

/// Whether the CPU can run our kernel with `tile`.
pub fn available(tile: Tile) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        match tile {
            Tile::Avx2 => has!("avx2") && has!("fma"),
            Tile::Avx512 => has!("avx512f"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = tile;
        false
    }
}

/// `c[m × n] = a[m × k]·b[k × n]`, or `c += a·b` when `accumulate`; `c` row-major with row
/// stride `ldc`, read only when `accumulate` (every element of its `m × n` written either way).
/// Products of at least `parallel_macs` multiply-adds run on rayon's threads.
///
/// # Safety
/// `a` and `b` must address `m × k` and `k × n` readable elements, `c` `m` rows of `ldc ≥ n`
/// writable ones, initialised when `accumulate`, that nothing else reads or writes during the call.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul(m: usize, n: usize, k: usize, a: View, b: View, c: *mut f32, ldc: usize, accumulate: bool, parallel_macs: usize) {
    let parallel = m * n * k >= parallel_macs;
    if let Some(tile) = takes_ours(m, n, k) {
        // SAFETY: the caller's contract, and the CPU has the tile's instructions.
        unsafe { packed(tile, m, n, k, a, b, c, ldc, accumulate, parallel, tile.blocking()) };
    } else {
        let parallelism = if parallel { Parallelism::Rayon(0) } else { Parallelism::None };
        if !accumulate && k == 0 {
            // SAFETY: the caller's contract.
            return unsafe { zero_rows(c, m, n, ldc) };
        }
        // SAFETY: the caller's contract; `gemm` takes column strides first.
        unsafe { gemm::gemm(m, n, k, c, 1, ldc as isize, accumulate, a.ptr, a.cs, a.rs, b.ptr, b.cs, b.rs, 1.0, 1.0, false, false, false, parallelism) };
    }
}

/// The tile [`matmul`] runs our kernel with for this size, if it does.
fn takes_ours(m: usize, n: usize, k: usize) -> Option<Tile> {
    preferred().filter(|_| m * n * k >= OURS_MIN_MACS && m.min(n).min(k) >= MIN_SIDE)
}

/// `a[m × k]·b[k × n]` as a new row-major buffer, on rayon's threads from `parallel_macs`
/// multiply-adds. The buffer is not zeroed first: without accumulation every path writes each
/// element and reads none (our kernel; the `gemm` crate with `read_dst` false, whose every path
/// stores `beta·a·b` without reading the destination; `zero_rows` for `k = 0`).
///
/// # Safety
/// `a` and `b` must address `m × k` and `k × n` readable elements.
pub(super) unsafe fn product(m: usize, n: usize, k: usize, a: View, b: View, parallel_macs: usize) -> Vec<f32> {
    // SAFETY: the caller's contract; `out` is m rows of n, written whole by `matmul` (above).
    unsafe { super::filled(m * n, |out| matmul(m, n, k, a, b, out.as_mut_ptr().cast(), n, false, parallel_macs)) }
}

/// The GEMM [`multiply`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gemm {
    /// Our packed kernel with this tile (CPUs that have its instructions).
    Ours(Tile),
    /// The `gemm` crate (what burn-flex's matmul uses).
    Crate,
}

/// Why [`multiply`] refused.
#[derive(Debug, thiserror::Error)]
pub enum GemmError {
    /// The buffers' lengths are not the operands' sizes.
    #[error("multiply: {m}×{k} · {k}×{n} → {m}×{n} needs {}, {} and {} floats, got {a}, {b} and {c}", m * k, k * n, m * n)]
    Sizes { m: usize, k: usize, n: usize, a: usize, b: usize, c: usize },
    /// Our tile's instructions are not on this CPU.
    #[error("our GEMM's {0:?} tile needs a CPU with its instructions")]
    Unavailable(Tile),
}

/// `c = a·b` on rayon's threads with the GEMM `which`, each operand row-major or (`*_transposed`)
/// read as the transpose of a row-major buffer: `a` `[m × k]` (or `[k × m]` transposed), `b`
/// `[k × n]` (or `[n × k]`), `c` `[m × n]`; the entry point of `mosa bench gemm`.
#[allow(clippy::too_many_arguments)]
pub fn multiply(
    which: Gemm,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_transposed: bool,
    b: &[f32],
    b_transposed: bool,
    c: &mut [f32],
) -> Result<(), GemmError> {
    if a.len() != m * k || b.len() != k * n || c.len() != m * n {
        return Err(GemmError::Sizes { m, k, n, a: a.len(), b: b.len(), c: c.len() });
    }
    if let Gemm::Ours(tile) = which
        && !available(tile)
    {
        return Err(GemmError::Unavailable(tile));
    }
    let view = |v: &[f32], cols: usize, rows: usize, transposed: bool| if transposed { View::row_major(v, rows).t() } else { View::row_major(v, cols) };
    let (av, bv) = (view(a, k, m, a_transposed), view(b, n, k, b_transposed));
    // SAFETY: the lengths are checked above; the views address exactly those buffers.
    unsafe {
        match which {
            Gemm::Ours(tile) => packed(tile, m, n, k, av, bv, c.as_mut_ptr(), n, false, true, tile.blocking()),
            Gemm::Crate => gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                av.ptr,
                av.cs,
                av.rs,
                bv.ptr,
                bv.cs,
                bv.rs,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::Rayon(0),
            ),
        }
    }
    Ok(())
}

/// `c = 0` (an empty product).
///
/// # Safety
/// `c` must have `m` rows of `ldc ≥ n` writable elements.
unsafe fn zero_rows(c: *mut f32, m: usize, n: usize, ldc: usize) {
    // SAFETY: the caller's contract.
    (0..m).for_each(|i| unsafe { std::ptr::write_bytes(c.add(i * ldc), 0, n) });
}

/// Splits `len` into a multiple of `parts` blocks of about `target` each, every block a multiple of `unit`.
fn block(len: usize, target: usize, unit: usize, parts: usize) -> usize {
    let parts = parts.max(1);
    let blocks = len.div_ceil(target).div_ceil(parts) * parts;
    len.div_ceil(blocks).div_ceil(unit) * unit
}

/// A register tile's kernel: `c (+)= Σ_p a[p]ᵀ·b[p]` over `kb` packed groups ([`avx2::kernel`]).
type Kernel = unsafe fn(usize, *const f32, *const f32, *mut f32, usize, bool);

/// The packed GEMM (module docs) with `tile`, with [`matmul`]'s contract and a CPU that has the
/// tile's instructions.
#[allow(clippy::too_many_arguments)]
unsafe fn packed(tile: Tile, m: usize, n: usize, k: usize, a: View, b: View, c: *mut f32, ldc: usize, accumulate: bool, parallel: bool, blocking: Blocking) {
    // SAFETY (both): the caller's contract.
    match tile {
        Tile::Avx2 => unsafe { packed_with::<{ avx2::MR }, { avx2::NR }>(avx2::kernel, m, n, k, a, b, c, ldc, accumulate, parallel, blocking) },
        Tile::Avx512 => unsafe { packed_with::<{ avx512::MR }, { avx512::NR }>(avx512::kernel, m, n, k, a, b, c, ldc, accumulate, parallel, blocking) },
    }
}

/// [`packed`] with an `MR × NR` tile and its kernel.
#[allow(clippy::too_many_arguments)]
unsafe fn packed_with<const MR: usize, const NR: usize>(
    kernel: Kernel,
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    parallel: bool,
    blocking: Blocking,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            // SAFETY: the caller's contract.
            unsafe { zero_rows(c, m, n, ldc) };
        }
        return;
    }
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let kc = block(k, blocking.kc, 1, 1);
    let mc = block(m, blocking.mc, MR, threads);
    let nc = block(n, blocking.nc, NR, 1);
    let c = super::Shared(c);
    with_buffer(&PACKED_B, kc * nc.div_ceil(NR) * NR, |b_packed| {
        for jc in (0..n).step_by(nc) {
            let nb = nc.min(n - jc);
            let panels = nb.div_ceil(NR);
            for pc in (0..k).step_by(kc) {
                let kb = kc.min(k - pc);
                let b_panels = &mut b_packed[..panels * kb * NR];
                let pack = |(jp, dst): (usize, &mut [f32])| {
                    // SAFETY: columns jc + jp·NR … of rows pc … pc + kb lie inside `b`.
                    unsafe { pack_b::<NR>(dst, b, pc, kb, jc + jp * NR, (nb - jp * NR).min(NR)) }
                };
                if parallel {
                    b_panels.par_chunks_mut(kb * NR).enumerate().for_each(pack);
                } else {
                    b_panels.chunks_mut(kb * NR).enumerate().for_each(pack);
                }
                let b_panels = &*b_panels;
                let accumulate = accumulate || pc > 0;
                let rows = |ic: usize| {
                    let mb = mc.min(m - ic);
                    with_buffer(&PACKED_A, kb * mb.div_ceil(MR) * MR, |a_packed| {
                        for (ip, dst) in a_packed.chunks_mut(kb * MR).enumerate() {
                            // SAFETY: rows ic + ip·MR … of columns pc … pc + kb lie inside `a`.
                            unsafe { pack_a::<MR>(dst, a, ic + ip * MR, (mb - ip * MR).min(MR), pc, kb) };
                        }
                        for (jp, b_panel) in b_panels.chunks(kb * NR).enumerate() {
                            let j0 = jc + jp * NR;
                            for (ip, a_panel) in a_packed.chunks(kb * MR).enumerate() {
                                let i0 = ic + ip * MR;
                                let out = c;
                                // SAFETY: the tile (i0.., j0..) lies inside `c`, in this task's rows.
                                unsafe {
                                    tile::<MR, NR>(
                                        kernel,
                                        kb,
                                        a_panel.as_ptr(),
                                        b_panel.as_ptr(),
                                        out.0.add(i0 * ldc + j0),
                                        ldc,
                                        (m - i0).min(MR),
                                        (n - j0).min(NR),
                                        accumulate,
                                    )
                                };
                            }
                        }
                    })
                };
                if parallel {
                    (0..m).into_par_iter().step_by(mc).for_each(rows);
                } else {
                    (0..m).step_by(mc).for_each(rows);
                }
            }
        }
    });
}

/// Packs rows `i0 … i0 + mr` × columns `p0 … p0 + kb` of `a` as `kb` groups of `MR` values,
/// zero past `mr`; each row is read along its contiguous axis when it has one.
///
/// # Safety
/// Those elements must lie inside `a`.
unsafe fn pack_a<const MR: usize>(dst: &mut [f32], a: View, i0: usize, mr: usize, p0: usize, kb: usize) {
    let dst = &mut dst[..kb * MR];
    // SAFETY (all reads): the caller's contract.
    let at = |i: usize, p: usize| unsafe { a.ptr.offset((i0 + i) as isize * a.rs + (p0 + p) as isize * a.cs) };
    if a.cs == 1 && mr == MR {
        // rows contiguous (x in the forward, g in ∂x): the MR rows read side by side
        // SAFETY: kb contiguous elements of each row.
        let rows: [&[f32]; MR] = std::array::from_fn(|i| unsafe { std::slice::from_raw_parts(at(i, 0), kb) });
        for (p, group) in dst.chunks_exact_mut(MR).enumerate() {
            for (v, row) in group.iter_mut().zip(&rows) {
                *v = row[p];
            }
        }
    } else if a.rs == 1 && mr == MR {
        // columns contiguous (xᵀ in ∂W): MR values per column
        for (p, group) in dst.chunks_exact_mut(MR).enumerate() {
            // SAFETY: MR contiguous elements of column p.
            group.copy_from_slice(unsafe { std::slice::from_raw_parts(at(0, p), MR) });
        }
    } else {
        for (p, group) in dst.chunks_exact_mut(MR).enumerate() {
            for (i, v) in group.iter_mut().enumerate() {
                *v = if i < mr { unsafe { *at(i, p) } } else { 0.0 };
            }
        }
    }
}

/// Packs rows `p0 … p0 + kb` × columns `j0 … j0 + nr` of `b` as `kb` groups of `NR` values,
/// zero past `nr`; read along `b`'s contiguous axis when it has one.
///
/// # Safety
/// Those elements must lie inside `b`.
unsafe fn pack_b<const NR: usize>(dst: &mut [f32], b: View, p0: usize, kb: usize, j0: usize, nr: usize) {
    let dst = &mut dst[..kb * NR];
    // SAFETY (all reads): the caller's contract.
    let at = |p: usize, j: usize| unsafe { b.ptr.offset((p0 + p) as isize * b.rs + (j0 + j) as isize * b.cs) };
    if b.cs == 1 {
        // rows contiguous (W in the forward, g in ∂W)
        for (p, group) in dst.chunks_exact_mut(NR).enumerate() {
            // SAFETY: nr contiguous elements of row p.
            let row = unsafe { std::slice::from_raw_parts(at(p, 0), nr) };
            group[..nr].copy_from_slice(row);
            group[nr..].iter_mut().for_each(|v| *v = 0.0);
        }
    } else if b.rs == 1 && nr == NR {
        // columns contiguous (Wᵀ in ∂x): the NR columns read side by side
        // SAFETY: kb contiguous elements of each column.
        let columns: [&[f32]; NR] = std::array::from_fn(|j| unsafe { std::slice::from_raw_parts(at(0, j), kb) });
        for (p, group) in dst.chunks_exact_mut(NR).enumerate() {
            for (v, column) in group.iter_mut().zip(&columns) {
                *v = column[p];
            }
        }
    } else {
        for (p, group) in dst.chunks_exact_mut(NR).enumerate() {
            for (j, v) in group.iter_mut().enumerate() {
                *v = if j < nr { unsafe { *at(p, j) } } else { 0.0 };
            }
        }
    }
}

/// One `mr × nr` tile of `c` (`mr ≤ MR`, `nr ≤ NR`) from a packed `A` and `B` panel; a partial
/// tile goes through a full one on the stack.
///
/// # Safety
/// The panels hold `kb` groups; the tile lies inside `c`; the CPU has the kernel's instructions.
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const MR: usize, const NR: usize>(
    kernel: Kernel,
    kb: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
) {
    if mr == MR && nr == NR {
        // SAFETY: the caller's contract.
        return unsafe { kernel(kb, a, b, c, ldc, accumulate) };
    }
    debug_assert!(MR * NR <= MAX_TILE);
    let mut full = [0f32; MAX_TILE];
    for i in 0..mr {
        for j in 0..nr {
            // SAFETY: (i, j) lies inside the tile.
            full[i * NR + j] = if accumulate { unsafe { *c.add(i * ldc + j) } } else { 0.0 };
        }
    }
    // SAFETY: `full` is a whole tile with row stride NR.
    unsafe { kernel(kb, a, b, full.as_mut_ptr(), NR, accumulate) };
    for i in 0..mr {
        for j in 0..nr {
            // SAFETY: as above.
            unsafe { *c.add(i * ldc + j) = full[i * NR + j] };
        }
    }
}

/// Defines a register tile as a module `$name`: its shape `MR × NR` (`NR` = two vectors of
/// `lanes`) and its `kernel(kb, a, b, c, ldc, accumulate)`, `c (+)= Σ_p a[p]ᵀ·b[p]` over `kb`
/// packed groups, with the given intrinsics (set zero, unaligned load and store, broadcast,
/// fused multiply-add, add).
///
/// The kernel's safety contract is [`tile`]'s for a whole tile: `a` has `kb·MR` floats, `b`
/// `kb·NR`, `c` `MR` rows of `NR`, and the CPU has `$feature`.
macro_rules! register_tile {
    ($(#[$doc:meta])* $name:ident, $feature:literal, $mr:literal, $lanes:literal, $zero:ident, $load:ident, $store:ident, $set1:ident, $fmadd:ident, $add:ident) => {
        $(#[$doc])*
        mod $name {
            /// Rows of the tile.
            pub const MR: usize = $mr;
            /// Columns of the tile (two vectors).
            pub const NR: usize = 2 * $lanes;

            /// The tile's kernel (the macro's docs).
            ///
            /// # Safety
            /// [`super::tile`]'s contract for a whole tile, on a CPU with the tile's instructions.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = $feature)]
            pub unsafe fn kernel(kb: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
                use std::arch::x86_64::*;
                // SAFETY: the caller's contract (the macro's docs).
                unsafe {
                    let mut r = [[$zero(); 2]; MR];
                    for i in 0..MR {
                        _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc).cast());
                        _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + NR - 1).cast());
                    }
                    let (mut a, mut b) = (a, b);
                    macro_rules! update {
                        ($p:expr) => {{
                            let b0 = $load(b.add($p * NR));
                            let b1 = $load(b.add($p * NR + $lanes));
                            for (i, row) in r.iter_mut().enumerate() {
                                let ai = $set1(*a.add($p * MR + i));
                                row[0] = $fmadd(ai, b0, row[0]);
                                row[1] = $fmadd(ai, b1, row[1]);
                            }
                        }};
                    }
                    for _ in 0..kb / 4 {
                        _mm_prefetch::<_MM_HINT_T0>(a.add(8 * 4 * MR).cast());
                        update!(0);
                        update!(1);
                        update!(2);
                        update!(3);
                        a = a.add(4 * MR);
                        b = b.add(4 * NR);
                    }
                    for _ in 0..kb % 4 {
                        update!(0);
                        a = a.add(MR);
                        b = b.add(NR);
                    }
                    for (i, row) in r.iter().enumerate() {
                        let out = c.add(i * ldc);
                        if accumulate {
                            $store(out, $add($load(out), row[0]));
                            $store(out.add($lanes), $add($load(out.add($lanes)), row[1]));
                        } else {
                            $store(out, row[0]);
                            $store(out.add($lanes), row[1]);
                        }
                    }
                }
            }

            /// Never called: the packed GEMM runs only where `available()`.
            ///
            /// # Safety
            /// None needed; it panics.
            #[cfg(not(target_arch = "x86_64"))]
            pub unsafe fn kernel(_: usize, _: *const f32, _: *const f32, _: *mut f32, _: usize, _: bool) {
                unreachable!("the packed GEMM runs only where `available()`")
            }
        }
    };
}

register_tile!(
    /// The 6 × 16 AVX2 register tile (12 `ymm` accumulators).
    avx2, "avx2,fma", 6, 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps
);

register_tile!(
    /// The 12 × 32 AVX-512 register tile (24 `zmm` accumulators).
    avx512, "avx512f", 12, 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps
);

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        // splitmix64: test values only, any well-mixed stream will do
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// A `rows × cols` matrix stored row-major (layout 0), column-major (1, a transposed view) or
    /// with neither axis contiguous (2: every other element of a wider row-major buffer).
    fn stored(rows: usize, cols: usize, layout: usize, seed: u64) -> (Vec<f32>, isize, isize) {
        match layout {
            0 => (values(rows * cols, seed), cols as isize, 1),
            1 => (values(rows * cols, seed), 1, rows as isize),
            _ => (values(rows * cols * 2, seed), 2 * cols as isize, 2),
        }
    }

    /// Our packed GEMM against f64 loops, on odd sizes that leave partial tiles, several `KC`,
    /// `MC` and `NC` blocks (small blockings), each operand in each layout, with and without
    /// accumulation, on one thread and on rayon's.
    #[test]
    fn packed_gemm_matches_f64_loops() {
        for tile in Tile::ALL {
            if available(tile) {
                packed_gemm_matches_f64_loops_with(tile);
            } else {
                eprintln!("skipped {tile:?}: not on this CPU");
            }
        }
    }

    fn packed_gemm_matches_f64_loops_with(tile: Tile) {
        let blockings = [tile.blocking(), Blocking { kc: 7, mc: 12, nc: 32 }, Blocking { kc: 64, mc: 6, nc: 16 }, Blocking { kc: 5, mc: 24, nc: 64 }];
        let mut seed = 1;
        for (m, n, k) in [(1, 1, 1), (5, 3, 2), (6, 16, 4), (7, 17, 9), (12, 32, 8), (13, 40, 31), (25, 65, 19), (45, 71, 130), (100, 33, 300)] {
            for (ta, tb) in (0..3).flat_map(|ta| (0..3).map(move |tb| (ta, tb))) {
                seed += 1;
                let (a, ars, acs) = stored(m, k, ta, seed);
                let (b, brs, bcs) = stored(k, n, tb, seed + 100);
                let at = |i: usize, p: usize| a[(i as isize * ars + p as isize * acs) as usize] as f64;
                let bt = |p: usize, j: usize| b[(p as isize * brs + j as isize * bcs) as usize] as f64;
                let ldc = n + 3;
                let start = values(m * ldc, seed + 200);
                for blocking in blockings {
                    for accumulate in [false, true] {
                        for parallel in [false, true] {
                            let mut c = start.clone();
                            let (av, bv) = (View { ptr: a.as_ptr(), rs: ars, cs: acs }, View { ptr: b.as_ptr(), rs: brs, cs: bcs });
                            // SAFETY: the buffers have the sizes the views and ldc describe.
                            unsafe { packed(tile, m, n, k, av, bv, c.as_mut_ptr(), ldc, accumulate, parallel, blocking) };
                            for i in 0..m {
                                for j in 0..ldc {
                                    let got = c[i * ldc + j] as f64;
                                    let want = if j >= n {
                                        start[i * ldc + j] as f64
                                    } else {
                                        (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>() + if accumulate { start[i * ldc + j] as f64 } else { 0.0 }
                                    };
                                    assert!(
                                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt(),
                                        "{tile:?} {m}×{n}×{k} layouts {ta} {tb} {blocking:?} acc {accumulate} par {parallel}: ({i}, {j}) {got} vs {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The benchmark entry: both GEMMs give the f64 product for each operand layout, and wrong
    /// buffer lengths are an error, not a read out of bounds.
    #[test]
    fn multiply_runs_both_gemms_on_each_layout() {
        let (m, n, k) = (70, 45, 66);
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        for (at, bt) in [(false, false), (true, false), (false, true), (true, true)] {
            let a_at = |i: usize, p: usize| if at { a[p * m + i] } else { a[i * k + p] } as f64;
            let b_at = |p: usize, j: usize| if bt { b[j * k + p] } else { b[p * n + j] } as f64;
            for which in Tile::ALL.map(Gemm::Ours).into_iter().chain([Gemm::Crate]) {
                if let Gemm::Ours(tile) = which
                    && !available(tile)
                {
                    assert!(multiply(which, m, n, k, &a, at, &b, bt, &mut vec![0.0; m * n]).unwrap_err().to_string().contains("needs a CPU"));
                    continue;
                }
                let mut c = vec![f32::NAN; m * n];
                multiply(which, m, n, k, &a, at, &b, bt, &mut c).unwrap();
                for (idx, &got) in c.iter().enumerate() {
                    let (i, j) = (idx / n, idx % n);
                    let want: f64 = (0..k).map(|p| a_at(i, p) * b_at(p, j)).sum();
                    assert!((got as f64 - want).abs() < 1e-5, "{which:?} at {at} bt {bt} ({i}, {j}): {got} vs {want}");
                }
            }
        }
        let mut c = vec![0f32; m * n];
        assert!(multiply(Gemm::Crate, m, n, k, &a[1..], false, &b, false, &mut c).unwrap_err().to_string().contains("needs"));
    }

    /// `k = 0` writes zeros (or leaves `c`) and empty outputs touch nothing.
    #[test]
    fn packed_gemm_edge_sizes() {
        assert_eq!(block(1576, 144, 6, 2), 132);
        assert_eq!(block(384, 144, 6, 2), 96);
        assert_eq!(block(1576, 144, 12, 2), 132);
        for tile in Tile::ALL.into_iter().filter(|&t| available(t)) {
            let mut c = vec![3f32; 12];
            let none = View { ptr: std::ptr::null(), rs: 0, cs: 0 };
            // SAFETY: k = 0 reads nothing; c has 3 rows of 4.
            unsafe { packed(tile, 3, 4, 0, none, none, c.as_mut_ptr(), 4, true, false, tile.blocking()) };
            assert!(c.iter().all(|&v| v == 3.0));
            unsafe { packed(tile, 3, 4, 0, none, none, c.as_mut_ptr(), 4, false, false, tile.blocking()) };
            assert!(c.iter().all(|&v| v == 0.0));
            unsafe { packed(tile, 0, 4, 5, none, none, c.as_mut_ptr(), 4, false, true, tile.blocking()) };
        }
    }
}
