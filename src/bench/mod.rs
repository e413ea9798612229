//! The benchmarks behind `cotlab bench`: training steps ([`train`]), the real SFT job
//! ([`job`]), greedy decoding ([`generate`]) and the CPU kernels against their baselines
//! ([`kernels`]: `bench matmul`, `bench gemm`), with the timing harness they share (CPU
//! seconds, peak RSS, device memory).
//!
//! Invariants: a bench checks its sizes (`in_range`, a usage error naming the flag) before it
//! loads a model where it can, so a bad flag costs nothing; every bench runs one untimed
//! warm-up (allocators, weight caches, the decoding copy of the weights) before what it
//! reports; each returns a `Serialize` report that is exactly its `--json` output, with a
//! `summary()` that is its human line; a bench writes no file but the one asked for
//! (`--save-*`) and leaves no scratch dir behind.

pub mod generate;
pub mod job;
pub mod kernels;
pub mod train;

use std::path::Path;

use crate::error::{Error, Result};
use crate::lab::{StudentOptions, Workspace};
use crate::model::Student;

/// A bench's report: serialised, its `--json` output; [`Report::summary`], its human line.
pub trait Report: serde::Serialize {
    /// The line a person reads (stderr).
    fn summary(&self) -> String;
}

/// The student a bench times: `model`'s weights, or random weights of architecture `random`
/// with `tokenizer`'s tokenizer; on `device` in compute dtype `dtype`.
#[derive(Clone, Debug)]
pub struct StudentSpec {
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub random: Option<String>,
    pub tokenizer: String,
}

/// Loads `spec`'s student. Also the device memory in use before it was loaded (CUDA), so a
/// bench can report what the model and its step take.
pub fn student(spec: &StudentSpec) -> Result<(Student, Option<f64>)> {
    let dev = crate::model::device(&spec.device)?;
    let base = device_memory_used_mb(&dev);
    let s = match &spec.random {
        Some(arch) => {
            let mut s = crate::model::random::random_student(arch, &spec.tokenizer, &dev, 1)?;
            s.model.set_compute_dtype(crate::model::compute_dtype(&spec.dtype, &dev)?)?;
            s
        }
        None => {
            let opts = StudentOptions { device: Some(spec.device.clone()), dtype: Some(spec.dtype.clone()), ..Default::default() };
            Workspace::local().student(&spec.model, &opts)?
        }
    };
    Ok((s, base))
}

/// Device memory in use on a CUDA device (total − free, MB); None on the CPU.
pub fn device_memory_used_mb(dev: &candle_core::Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = dev {
        return d.cuda_stream().context().mem_get_info().ok().map(|(free, total)| (total - free) as f64 / (1u64 << 20) as f64);
    }
    let _ = dev;
    None
}

/// "cpu", "cuda:N" or "metal:N".
pub fn device_name(dev: &candle_core::Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

// The two readers below read /proc with std::fs: its files report a size of 0, which
// `paths::read_text` (never more than the size at open) would take for their length.

/// Peak resident set size of this process (VmHWM), in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// User + system CPU seconds of this process.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/pid/stat (utime, stime); `after` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

/// What this device's GEMM achieves in `dtype` (GFLOP/s): a 1024³ product timed for about 0.3
/// s after a warm-up, through `probe` — the peak a bench's achieved rate is a fraction of.
/// `bf16_kernel`: probe cotlab's bf16 decoding kernel (192 rows at once) instead of candle's
/// matmul (what bf16 decoding on the CPU runs). bf16 on the CPU otherwise: the bf16 training
/// GEMM (`kernels::bf16_gemm`, what `dtype: bf16` training runs), on candle's threads.
pub fn gemm_peak_gflops(dev: &candle_core::Device, dtype: candle_core::DType, bf16_kernel: bool) -> Result<f64> {
    use std::time::Instant;
    let n = 1024;
    let values = |seed: u64| -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..n * n).map(|_| (r.next_u64() % 2001) as f32 / 1000.0 - 1.0).collect()
    };
    let (a, b) = (values(1), values(2));
    let mut run: Box<dyn FnMut() -> Result<f64>> = if bf16_kernel {
        let rows = 192;
        let w = crate::kernels::bf16::Bf16Matrix::quantize(&a, n, n).map_err(Error::usage)?;
        Box::new(move || {
            std::hint::black_box(w.matmul(&b[..rows * n], rows));
            Ok(2.0 * (rows * n * n) as f64)
        })
    } else if dev.is_cpu() && dtype == candle_core::DType::BF16 {
        use crate::kernels::sgemm::Operand;
        let threads = candle_core::utils::get_num_threads();
        let mut c = vec![0f32; n * n];
        Box::new(move || {
            crate::kernels::bf16_gemm::bf16_gemm(n, n, n, &mut c, n, false, Operand::new(&a, n, 1), Operand::new(&b, n, 1), threads);
            std::hint::black_box(&c);
            Ok(2.0 * (n * n * n) as f64)
        })
    } else {
        use crate::error::ModelContext;
        let t = |v: &[f32]| candle_core::Tensor::from_slice(v, (n, n), dev).and_then(|t| t.to_dtype(dtype)).model_ctx("the GEMM probe");
        let (a, b) = (t(&a)?, t(&b)?);
        Box::new(move || {
            a.matmul(&b).and_then(|c| c.sum_all()?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()).model_ctx("the GEMM probe")?;
            Ok(2.0 * (n * n * n) as f64)
        })
    };
    run()?;
    let (t0, mut flops) = (Instant::now(), 0.0);
    while t0.elapsed().as_secs_f64() < 0.3 {
        flops += run()?;
    }
    Ok(flops / t0.elapsed().as_secs_f64() / 1e9)
}

/// The compute dtype's name as the reports give it ("f32", "bf16").
fn dtype_name(s: &Student) -> String {
    format!("{:?}", s.model.compute_dtype()).to_lowercase()
}

/// Writes `value` as JSON to `path` (a `--save-*` file for the PyTorch baselines).
fn save_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string(value).map_err(|e| Error::data(path, format!("cannot write as JSON: {e}")))?;
    crate::paths::write(path, text.as_bytes())
}
