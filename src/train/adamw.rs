//! AdamW that updates parameters in place. candle_nn's AdamW runs ~10 allocating tensor ops per
//! parameter per step (many times PyTorch's optimizer time); on CPU this one makes a single
//! pass over each parameter's memory. Other devices use tensor ops.

use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Storage, Tensor, Var};

#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// First and second moments of one parameter: plain vectors on CPU (updated in place), tensors
/// elsewhere.
pub enum Moments {
    Cpu { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

impl Moments {
    /// As tensors shaped like the parameter (for checkpoints).
    pub fn tensors(&self, like: &Var) -> Result<(Tensor, Tensor)> {
        match self {
            Moments::Cpu { m, v } => {
                Ok((Tensor::from_slice(m, like.shape(), &candle_core::Device::Cpu)?, Tensor::from_slice(v, like.shape(), &candle_core::Device::Cpu)?))
            }
            Moments::Device { m, v } => Ok((m.clone(), v.clone())),
        }
    }

    pub fn from_tensors(m: Tensor, v: Tensor, like: &Var) -> Result<Moments> {
        if matches!(like.device(), candle_core::Device::Cpu) {
            Ok(Moments::Cpu { m: m.flatten_all()?.to_vec1()?, v: v.flatten_all()?.to_vec1()? })
        } else {
            Ok(Moments::Device { m: m.to_device(like.device())?, v: v.to_device(like.device())? })
        }
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken (for bias correction); saved in checkpoints.
    pub t: u64,
    pub moments: Vec<Moments>,
}

struct CpuUpdate<'a> {
    grad: &'a [f32],
    m: Mutex<&'a mut [f32]>,
    v: Mutex<&'a mut [f32]>,
    lr: f32,
    scale: f32,
    c: AdamWConfig,
    bc1: f32,
    bc2: f32,
}

impl InplaceOp1 for CpuUpdate<'_> {
    fn name(&self) -> &'static str {
        "cotlab-adamw"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let CpuStorage::F32(p) = s else { candle_core::bail!("AdamW: parameters must be f32") };
        let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("AdamW: parameter not contiguous") };
        use rayon::prelude::*;
        let p = &mut p[start..end];
        let mut m = self.m.lock().unwrap();
        let mut v = self.v.lock().unwrap();
        let (b1, b2) = (self.c.beta1 as f32, self.c.beta2 as f32);
        let (eps, wd) = (self.c.eps as f32, self.c.weight_decay as f32);
        let (lr, scale, bc1, bc2) = (self.lr, self.scale, self.bc1, self.bc2);
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).zip(self.grad.par_chunks(CHUNK)).for_each(|(((p, m), v), g)| {
            for i in 0..p.len() {
                let g = g[i] * scale;
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                p[i] -= lr * ((m[i] / bc1) / ((v[i] / bc2).sqrt() + eps) + wd * p[i]);
            }
        });
        Ok(())
    }
}

/// Run `f` on the contiguous f32 slice of a CPU tensor, or return None for other devices.
fn with_cpu_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (s, l) = t.storage_and_layout();
    match (&*s, l.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Some(f(&v[a..b])),
        _ => None,
    }
}

impl AdamW {
    pub fn new(params: &[&Var], config: AdamWConfig) -> Result<AdamW> {
        let moments = params
            .iter()
            .map(|p| {
                Ok(if matches!(p.device(), candle_core::Device::Cpu) {
                    Moments::Cpu { m: vec![0.0; p.elem_count()], v: vec![0.0; p.elem_count()] }
                } else {
                    Moments::Device { m: p.zeros_like()?, v: p.zeros_like()? }
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW { config, t: 0, moments })
    }

    /// One update. `grads[i]` belongs to `params[i]`; `scale` multiplies every gradient (clipping).
    pub fn step(&mut self, params: &[&Var], grads: &[Tensor], lr: f64, scale: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.config.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.config.beta2.powi(self.t as i32);
        for ((p, g), mo) in params.iter().zip(grads).zip(&mut self.moments) {
            let g = g.contiguous()?;
            match mo {
                Moments::Cpu { m, v } => {
                    let done = with_cpu_slice(&g, |gs| {
                        let op = CpuUpdate {
                            grad: gs,
                            m: Mutex::new(m.as_mut_slice()),
                            v: Mutex::new(v.as_mut_slice()),
                            lr: lr as f32,
                            scale: scale as f32,
                            c: self.config,
                            bc1: bc1 as f32,
                            bc2: bc2 as f32,
                        };
                        p.as_tensor().inplace_op1(&op)
                    });
                    done.unwrap_or_else(|| candle_core::bail!("AdamW: CPU parameter with a non-CPU gradient"))?;
                }
                Moments::Device { m, v } => {
                    // The same arithmetic with tensor ops (CUDA).
                    let c = self.config;
                    let g = (g * scale)?;
                    *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let upd = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + c.eps)?)?;
                    let upd = (upd + (p.as_tensor() * c.weight_decay)?)?;
                    p.set(&(p.as_tensor() - (upd * lr)?)?)?;
                }
            }
        }
        Ok(())
    }
}
