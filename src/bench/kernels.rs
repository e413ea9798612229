//! `cotlab bench gemm` and `cotlab bench matmul`: the CPU kernels timed against their
//! baselines on the same operands, each side alternating with the other so a busy host slows
//! both. The training GEMM (`kernels::sgemm`) against the `gemm` crate as candle's CPU matmul
//! runs it; the quantized decoding matmul (`kernels::quant`) against candle's f32 matmul. Each
//! timing also reports how far the two sides' results differ, a check that both compute the
//! product. Both benches print their table a row at a time (through the caller's `line`) as
//! the timings come in, and return the rows as their `--json` output.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use candle_core::Tensor;
use serde::Serialize;

use super::StudentSpec;
use crate::error::{in_range, Error, ModelContext, Result};
use crate::kernels::quant::{QFormat, QWeight, BLOCK};
use crate::kernels::sgemm::{own_kernel, sgemm_gemm_crate, sgemm_on, Operand};
use crate::kernels::simd::avx2_fma;
use crate::model::DecodeWeights;

/// `cotlab bench matmul`: every 2-D weight shape of `spec`'s student (one weight of each: the
/// layers repeat theirs, the head or embedding adds one) at each of `ms` input rows, the
/// `decode_weights` kernel (q8_0 or q4_1) against f32, at least `seconds` a side. The table
/// goes to `line` row by row.
pub fn matmul(spec: &StudentSpec, decode_weights: &str, ms: &[usize], seconds: f64, line: &mut dyn FnMut(String)) -> Result<Vec<MatmulTiming>> {
    for &m in ms {
        in_range("bench matmul", "m", m, 1..=4096)?;
    }
    let format = DecodeWeights::parse(decode_weights)
        .map_err(Error::usage)?
        .quant_format()
        .ok_or_else(|| Error::usage(format!("bench matmul times a quantized kernel: --decode-weights q8_0 or q4_1, got {decode_weights}")))?;
    let (s, _) = super::student(spec)?;
    if !s.model.device.is_cpu() {
        return Err(Error::usage("bench matmul times the CPU kernels: use --device cpu"));
    }
    let mut seen = BTreeSet::new();
    let weights: Vec<(&String, &candle_core::Var)> = s.model.params.iter().filter(|(_, v)| v.rank() == 2 && seen.insert(v.dims().to_vec())).collect();
    line(format!(
        "{:<44} {:>13} {:>5} {:>14} {:>14} {:>7} {:>9}",
        "weight (one of each shape)",
        "rows x cols",
        "m",
        format!("{} GFLOP/s", format.name()),
        "f32 GFLOP/s",
        "ratio",
        "rel. err"
    ));
    let mut rows = Vec::new();
    for (name, w) in weights {
        for &m in ms {
            let t = time_matmul(name, w.as_tensor(), format, m, seconds).model_ctx(format!("timing {name}"))?;
            line(format!(
                "{:<44} {:>13} {:>5} {:>14.1} {:>14.1} {:>6.2}x {:>9.1e}",
                name,
                format!("{}x{}", t.rows, t.cols),
                m,
                t.gflops(t.quant_s),
                t.gflops(t.f32_s),
                t.f32_s / t.quant_s,
                t.rel_err
            ));
            rows.push(t);
        }
    }
    Ok(rows)
}

/// `cotlab bench gemm`: the training step's three products on every 2-D weight shape of
/// `spec`'s student at each of `tokens` input rows, cotlab's GEMM against the `gemm` crate, at
/// least `seconds` a side; after each row count, the step's mix (each shape weighted by how
/// many weights have it). The table goes to `line` row by row.
pub fn gemm(spec: &StudentSpec, tokens: &[usize], seconds: f64, line: &mut dyn FnMut(String)) -> Result<Vec<GemmTiming>> {
    for &t in tokens {
        in_range("bench gemm", "tokens", t, 1..=65_536)?;
    }
    in_range("bench gemm", "seconds", seconds, 0.0..=600.0)?;
    let (s, _) = super::student(spec)?;
    let mut shapes = BTreeMap::<(usize, usize), usize>::new();
    for v in s.model.params.values().filter(|v| v.rank() == 2) {
        *shapes.entry(v.dims2().model_ctx("a weight's shape")?).or_default() += 1;
    }
    let threads = candle_core::utils::get_num_threads();
    line(
        match (avx2_fma(), own_kernel()) {
            (false, _) => "this CPU lacks AVX2 + FMA: cotlab's kernel cannot run, both columns time the gemm crate",
            (true, true) => "the training step runs on cotlab's kernel on this CPU",
            (true, false) => {
                "the training step runs on the gemm crate's AVX-512 kernels on this CPU (docs/performance.md); cotlab's column times its own kernel"
            }
        }
        .to_string(),
    );
    line(format!("{:>13} {:>6} {:>7} {:>15} {:>15} {:>7} {:>9}", "weight shape", "count", "tokens", "cotlab GFLOP/s", "gemm GFLOP/s", "ratio", "rel. diff"));
    let mut rows = Vec::new();
    for &t in tokens {
        let (mut ours, mut theirs) = (0f64, 0f64);
        for (&(r, c), &count) in &shapes {
            let g = time_training_products(r, c, t, threads, seconds);
            line(format!(
                "{:>13} {:>6} {:>7} {:>15.1} {:>15.1} {:>6.2}x {:>9.1e}",
                format!("{r}x{c}"),
                count,
                t,
                g.gflops(g.cotlab_s),
                g.gflops(g.gemm_s),
                g.gemm_s / g.cotlab_s,
                g.rel_diff
            ));
            ours += g.cotlab_s * count as f64;
            theirs += g.gemm_s * count as f64;
            rows.push(g);
        }
        line(format!("step mix at {t} tokens, {threads} threads: cotlab {:.3} s, gemm crate {:.3} s: {:.2}x", ours, theirs, theirs / ours));
    }
    Ok(rows)
}

/// A training step's three products for one weight shape, timed through cotlab's GEMM and
/// through the `gemm` crate as candle's CPU matmul runs it (`cotlab bench gemm`).
#[derive(Clone, Debug, Serialize)]
pub struct GemmTiming {
    /// The weight's shape (out, in).
    pub rows: usize,
    pub cols: usize,
    /// Input rows (a micro-batch's tokens).
    pub tokens: usize,
    pub threads: usize,
    /// Seconds for the three products, best round, each side.
    pub cotlab_s: f64,
    pub gemm_s: f64,
    /// Largest difference between the two sides' results, relative to the largest value.
    pub rel_diff: f64,
}

impl GemmTiming {
    /// Multiply-adds × 2 of the three products.
    pub fn flop(&self) -> f64 {
        6.0 * (self.rows * self.cols * self.tokens) as f64
    }
    pub fn gflops(&self, seconds: f64) -> f64 {
        self.flop() / seconds / 1e9
    }
}

/// Times y = x·wᵀ, dx = g·w and dW += gᵀ·x (the layouts `ops::linear` runs them in) for a
/// (rows × cols) weight and `tokens` input rows on `threads` threads, cotlab's GEMM and the
/// `gemm` crate alternating, each side's best round of at least 3 and `min_s` seconds.
pub fn time_training_products(rows: usize, cols: usize, tokens: usize, threads: usize, min_s: f64) -> GemmTiming {
    let fill = |n: usize, seed: u32| {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5).collect::<Vec<f32>>()
    };
    let (x, w, g) = (fill(tokens * cols, 1), fill(rows * cols, 2), fill(tokens * rows, 3));
    let (mut y, mut dx, mut dw) = (vec![0f32; tokens * rows], vec![0f32; tokens * cols], vec![0f32; rows * cols]);
    let (xo, wt, wo, gt, go) =
        (Operand::new(&x, cols, 1), Operand::new(&w, 1, cols), Operand::new(&w, cols, 1), Operand::new(&g, 1, rows), Operand::new(&g, rows, 1));
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // Our kernel wherever it can run (also where `sgemm` leaves the work to the gemm crate).
    let own = avx2_fma();
    let ours = |y: &mut [f32], dx: &mut [f32], dw: &mut [f32]| {
        sgemm_on(own, tokens, rows, cols, y, rows, false, xo, wt, 1.0, threads);
        sgemm_on(own, tokens, cols, rows, dx, cols, false, go, wo, 1.0, threads);
        sgemm_on(own, rows, cols, tokens, dw, cols, true, gt, xo, 1.0, threads);
    };
    let theirs = |y: &mut [f32], dx: &mut [f32], dw: &mut [f32]| {
        sgemm_gemm_crate(tokens, rows, cols, y, rows, false, xo, wt, 1.0, par);
        sgemm_gemm_crate(tokens, cols, rows, dx, cols, false, go, wo, 1.0, par);
        sgemm_gemm_crate(rows, cols, tokens, dw, cols, true, gt, xo, 1.0, par);
    };
    let mut y2 = vec![0f32; tokens * rows];
    ours(&mut y, &mut dx, &mut dw);
    theirs(&mut y2, &mut dx, &mut dw);
    let scale = y2.iter().fold(0f32, |a, v| a.max(v.abs())).max(f32::MIN_POSITIVE);
    let rel_diff = (y.iter().zip(&y2).fold(0f32, |a, (p, q)| a.max((p - q).abs())) / scale) as f64;
    let (mut best, mut spent, mut rounds) = ([f64::MAX; 2], [0f64; 2], 0);
    while spent[0].min(spent[1]) < min_s || rounds < 3 {
        for side in 0..2 {
            let t = Instant::now();
            if side == 0 {
                ours(&mut y, &mut dx, &mut dw)
            } else {
                theirs(&mut y, &mut dx, &mut dw)
            }
            let s = t.elapsed().as_secs_f64();
            best[side] = best[side].min(s);
            spent[side] += s;
        }
        rounds += 1;
    }
    GemmTiming { rows, cols, tokens, threads, cotlab_s: best[0], gemm_s: best[1], rel_diff }
}

/// One row of `cotlab bench matmul`: seconds per `x · Wᵀ` (m input rows, a rows × cols
/// weight) with the Q8_0 kernel and with candle's f32 matmul (the `f32` decoding path), on the
/// same weights and inputs, timed alternately.
#[derive(Clone, Debug, Serialize)]
pub struct MatmulTiming {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub m: usize,
    /// "q8_0" or "q4_1".
    pub format: &'static str,
    pub quant_s: f64,
    pub f32_s: f64,
    /// max |quantized − f32| over the outputs, relative to max |f32|: the quantization error, and a
    /// check that the timed kernel computes the product.
    pub rel_err: f64,
}

impl MatmulTiming {
    pub fn gflops(&self, secs: f64) -> f64 {
        (2 * self.rows * self.cols * self.m) as f64 / secs / 1e9
    }
}

/// Times `w` (2-D f32, on the CPU) as `format` blocks at `m` rows against f32, for at least
/// `min_s` seconds a side. Weights this small stay in cache between repetitions: for batch 1,
/// where real decoding streams every weight from memory, the LM head's row is the telling one.
pub fn time_matmul(name: &str, w: &Tensor, format: QFormat, m: usize, min_s: f64) -> candle_core::Result<MatmulTiming> {
    let (rows, cols) = w.dims2()?;
    let Some(q) = QWeight::new(&w.to_device(&candle_core::Device::Cpu)?, format)? else {
        candle_core::bail!("{name}: rows of {cols} are not whole blocks of {BLOCK}")
    };
    let x = Tensor::randn(0f32, 1.0, (m, cols), w.device())?;
    let wt = w.t()?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let reference = x.matmul(&wt)?.flatten_all()?.to_vec1::<f32>()?;
    let got = q.matmul(&xs, m).expect("a CPU weight");
    let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs())).max(f32::MIN_POSITIVE);
    let rel_err = (got.iter().zip(&reference).fold(0f32, |a, (g, r)| a.max((g - r).abs())) / scale) as f64;
    let (mut qs, mut f32s, mut reps) = (0f64, 0f64, 0usize);
    while qs.min(f32s) < min_s || reps < 3 {
        let t = Instant::now();
        std::hint::black_box(q.matmul(&xs, m));
        qs += t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(x.matmul(&wt)?);
        f32s += t.elapsed().as_secs_f64();
        reps += 1;
    }
    Ok(MatmulTiming { name: name.to_string(), rows, cols, m, format: format.name(), quant_s: qs / reps as f64, f32_s: f32s / reps as f64, rel_err })
}
