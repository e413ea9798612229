//! LoRA adapters (Hu et al. 2021) in the PEFT convention: for a target linear `W` (out × in),
//! `y = x Wᵀ + (α/r) · dropout(x) Aᵀ Bᵀ` with A (r × in) drawn like PEFT's kaiming-uniform and
//! B (out × r) zero, so training starts from the base model. Base weights stay frozen, and their
//! matmuls skip the weight gradient entirely (see `ops::frozen_linear`): that is where LoRA's
//! speed comes from.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{ModelContext, Result};
use crate::rng::Rng;
use crate::usage;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names as in PEFT: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { r: 8, alpha: 16.0, dropout: 0.05, targets: vec!["q_proj".into(), "v_proj".into()] }
    }
}

pub struct Lora {
    pub config: LoraConfig,
    /// Module path (e.g. `model.layers.0.self_attn.q_proj`) → (A, B).
    pub adapters: BTreeMap<String, (Var, Var)>,
    /// Seeds the dropout masks: set by the trainer for each micro-batch so a resumed run draws
    /// the same masks. `u64::MAX` turns dropout off (evaluation).
    pub dropout_key: AtomicU64,
}

impl Lora {
    /// The same adapters (shared `Var`s) with the current dropout key.
    pub fn share(&self) -> Lora {
        Lora {
            config: self.config.clone(),
            adapters: self.adapters.clone(),
            dropout_key: AtomicU64::new(self.dropout_key.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }

    pub fn scale(&self) -> f64 {
        self.config.alpha / self.config.r as f64
    }

    /// Fresh adapters for every target module of `weights` (module path → base weight).
    /// `modules` are the family's adaptable module names (its `lora_modules()`).
    pub fn init(config: LoraConfig, modules: &[&str], weights: &BTreeMap<String, Var>, seed: u64, device: &Device) -> Result<Lora> {
        if config.r == 0 {
            return Err(usage!("lora: r must be at least 1"));
        }
        if let Some(t) = config.targets.iter().find(|t| !modules.contains(&t.as_str())) {
            return Err(usage!("lora: unknown target module '{t}' for this model (expected one of {})", modules.join(", ")));
        }
        if config.targets.is_empty() {
            return Err(usage!("lora: targets is empty"));
        }
        let mut rng = Rng::new(seed);
        let mut adapters = BTreeMap::new();
        for (name, w) in weights {
            let Some(module) = name.strip_suffix(".weight") else { continue };
            let leaf = module.rsplit('.').next().unwrap_or("");
            if !config.targets.iter().any(|t| t == leaf) {
                continue;
            }
            let (out, inp) = w.dims2().model_ctx(format!("lora: adapting {module}"))?;
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f32> = (0..config.r * inp).map(|_| ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * bound as f32).collect();
            let a = Tensor::from_vec(a, (config.r, inp), device).and_then(|a| Var::from_tensor(&a)).model_ctx("lora: initialising A")?;
            let b = Var::zeros((out, config.r), candle_core::DType::F32, device).model_ctx("lora: initialising B")?;
            adapters.insert(module.to_string(), (a, b));
        }
        Ok(Lora { config, adapters, dropout_key: AtomicU64::new(u64::MAX) })
    }

    pub fn set_dropout_key(&self, key: u64) {
        self.dropout_key.store(key, Ordering::Relaxed);
    }

    /// The adapter path's contribution for module `module` on input x (N, in).
    pub fn delta(&self, module: &str, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let Some((a, b)) = self.adapters.get(module) else { return Ok(None) };
        let key = self.dropout_key.load(Ordering::Relaxed);
        let x = if self.config.dropout > 0.0 && key != u64::MAX {
            let mut rng = Rng::new(crate::rng::fnv1a(key, module.bytes()));
            let keep = 1.0 - self.config.dropout;
            let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.chance(keep) { (1.0 / keep) as f32 } else { 0.0 }).collect();
            (x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?)?
        } else {
            x.clone()
        };
        // The adapters are f32 (master weights); cast to the input's compute dtype.
        let (a, b) = (a.as_tensor().to_dtype(x.dtype())?, b.as_tensor().to_dtype(x.dtype())?);
        // Through `ops::linear`: its backward gives gᵀ·x straight into the adapters' gradient
        // sums (candle's matmul returned them transposed, through a copy).
        // f32 GEMMs whatever the compute dtype: rank-r products are a small share of a step.
        let f32 = crate::kernels::ops::Gemm::F32;
        let y = crate::kernels::ops::linear(&crate::kernels::ops::linear(&x, &a, f32)?, &b, f32)?;
        Ok(Some((y * self.scale())?))
    }

    /// Named trainable tensors in PEFT's adapter_model.safetensors naming.
    pub fn peft_tensors(&self) -> Vec<(String, Tensor)> {
        self.adapters
            .iter()
            .flat_map(|(m, (a, b))| {
                [(format!("base_model.model.{m}.lora_A.weight"), a.as_tensor().clone()), (format!("base_model.model.{m}.lora_B.weight"), b.as_tensor().clone())]
            })
            .collect()
    }
}
