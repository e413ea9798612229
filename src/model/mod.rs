//! Stage 4 — students: decoder LMs in candle that can be trained. Weights come from a GGUF file
//! (dequantised to f32, tokenizer built from its metadata) or a Hugging Face model dir
//! (config.json, *.safetensors, tokenizer.json). Parameters are kept under Hugging Face names so
//! checkpoints and exports are plain HF files.
//!
//! Layout: `family/` holds one file per architecture (tensor names, HF config in/out, the
//! decoder block); `transformer.rs` the weights, LoRA and the kernels blocks are written with;
//! `generate.rs` batched cached decoding. The CPU kernels themselves (fused ops with a
//! backward, attention, quantized weights, the GEMM) are the layer below, [`crate::kernels`].

pub mod chat;
pub mod config;
pub mod family;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod lora;
pub mod random;
pub mod transformer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Var};

pub use chat::ChatTemplate;
pub use config::ModelConfig;
pub use family::Family;
pub use transformer::{DecodeWeights, Transformer};

use crate::error::{Error, Result};
use crate::usage;

/// The default student's file name inside the cotlab cache (see scripts/setup.sh).
pub const DEFAULT_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$COTLAB_HOME` or `~/.cache/cotlab`.
pub fn cotlab_home() -> PathBuf {
    match std::env::var_os("COTLAB_HOME") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache/cotlab"),
    }
}

/// Where the default student lives once `scripts/setup.sh` has run.
pub fn default_model_path() -> PathBuf {
    cotlab_home().join("models").join(DEFAULT_GGUF)
}

/// Resolve a model spec: "default", a .gguf file, a Hugging Face model dir, or `hf:ORG/NAME`
/// (downloaded once into the Hugging Face cache, `$HF_HUB_CACHE` or `$HF_HOME/hub`, from
/// `$HF_ENDPOINT`, with `$HF_TOKEN` or `$HF_HOME/token` for gated models; needs internet).
pub fn resolve(spec: &str) -> Result<PathBuf> {
    if let Some(repo) = spec.strip_prefix("hf:") {
        return hub::download(repo);
    }
    let p = if spec == "default" { default_model_path() } else { PathBuf::from(spec) };
    if !p.exists() {
        let hint = if spec == "default" { " (run scripts/setup.sh to fetch the default student)" } else { "" };
        return Err(Error::data(&p, format!("model not found{hint}")));
    }
    Ok(p)
}

mod hub {
    use std::path::PathBuf;

    use crate::error::Result;
    use crate::usage;

    /// Fetch config.json, tokenizer files and the safetensors weights (single file or shards)
    /// of `ORG/NAME[@revision]`; returns the snapshot dir.
    #[cfg(feature = "hub")]
    pub fn download(repo: &str) -> Result<PathBuf> {
        use hf_hub::api::sync::ApiBuilder;
        use hf_hub::{Repo, RepoType};
        let (name, rev) = repo.split_once('@').unwrap_or((repo, "main"));
        let fail = |what: &str, e: String| {
            let hint = if e.contains("status code 401") || e.contains("status code 403") {
                "a gated or private model: set HF_TOKEN to a token with access"
            } else {
                "no internet? pass a local model dir instead"
            };
            usage!("hf:{repo}: could not fetch {what}: {e} ({hint})")
        };
        // As huggingface_hub configures itself: HF_HOME (the cache and its token file), HF_HUB_CACHE
        // (the cache alone), HF_ENDPOINT (a mirror), and HF_TOKEN, which wins over the token file.
        let set = |k: &str| std::env::var(k).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let mut builder = ApiBuilder::from_env().with_progress(true);
        if let Some(cache) = set("HF_HUB_CACHE") {
            builder = builder.with_cache_dir(cache.into());
        }
        if let Some(token) = set("HF_TOKEN") {
            builder = builder.with_token(Some(token));
        }
        let api = builder.build().map_err(|e| fail("the hub client", e.to_string()))?;
        let r = api.repo(Repo::with_revision(name.to_string(), RepoType::Model, rev.to_string()));
        let config = r.get("config.json").map_err(|e| fail("config.json", e.to_string()))?;
        r.get("tokenizer.json").map_err(|e| fail("tokenizer.json", e.to_string()))?;
        let _ = r.get("tokenizer_config.json");
        match r.get("model.safetensors.index.json") {
            Ok(index) => {
                let text = std::fs::read_to_string(&index).map_err(|e| fail("the weight index", e.to_string()))?;
                let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail("the weight index", e.to_string()))?;
                let mut shards: Vec<String> = v["weight_map"].as_object().into_iter().flatten().filter_map(|(_, f)| f.as_str().map(str::to_string)).collect();
                shards.sort();
                shards.dedup();
                for s in shards {
                    r.get(&s).map_err(|e| fail(&s, e.to_string()))?;
                }
            }
            Err(_) => {
                r.get("model.safetensors").map_err(|e| fail("model.safetensors", e.to_string()))?;
            }
        }
        Ok(config.parent().expect("a downloaded file has a dir").to_path_buf())
    }

    #[cfg(not(feature = "hub"))]
    pub fn download(repo: &str) -> Result<PathBuf> {
        Err(usage!("hf:{repo}: this cotlab was built without the `hub` feature; download the model dir and pass its path"))
    }
}

/// A student: config, trainable weights, tokenizer and chat template.
pub struct Student {
    pub name: String,
    pub source: PathBuf,
    /// The model file or dir whose chat template this student's own is ([`Student::own_template`]):
    /// what it was loaded from, which stays its base model's when `source` names a run dir.
    pub declared_by: PathBuf,
    pub config: ModelConfig,
    pub model: Transformer,
    pub tokenizer: tokenizers::Tokenizer,
    pub template: ChatTemplate,
}

impl Student {
    /// SHA-256 (hex) of what a student answers with: its compute dtype, chat template, and every
    /// base weight and LoRA adapter (name, shape, f32 values); the same whatever file it came from,
    /// and another one once training has changed any weight. Reads every weight, so [`Teacher::ask`]
    /// takes it once per call, and an evaluation once.
    pub fn weights_fingerprint(&self) -> Result<String> {
        use crate::error::ModelContext;
        use sha2::Digest;
        let (s, m) = (self, &self.model);
        let mut h = sha2::Sha256::new();
        h.update(format!("{:?}\0{}\0", m.compute_dtype(), serde_json::to_string(&s.template).unwrap_or_default()).as_bytes());
        let mut named: Vec<(String, candle_core::Tensor)> = m.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        if let Some(l) = &m.lora {
            h.update(serde_json::to_string(&l.config).unwrap_or_default().as_bytes());
            named.extend(m.trainable_named().into_iter().map(|(n, v)| (n, v.as_tensor().clone())));
        }
        let mut buf = Vec::new();
        for (name, t) in named {
            h.update(format!("{name}\0{:?}\0", t.dims()).as_bytes());
            let values = t
                .flatten_all()
                .and_then(|t| t.to_dtype(candle_core::DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .model_ctx(format!("fingerprinting weight '{name}'"))?;
            for chunk in values.chunks(1 << 16) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                h.update(&buf);
            }
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Load from a .gguf file or an HF model dir onto `device`, with the chat template the model
    /// declares: the paper's family it is detected as, else its own Jinja template
    /// ([`ChatTemplate::choose`]). A model without one (a base checkpoint) is an error that names
    /// the choices: load it with [`Student::load_with`] and a template.
    pub fn load(path: &Path, device: &Device) -> Result<Student> {
        Student::load_with(path, device, None)
    }

    /// Load with `template` (`chatml`, `llama3`, `gemma`, `alpaca`, or `model`: the model's own
    /// Jinja template as it is) instead of the default; `None` keeps the default, which must exist.
    pub fn load_with(path: &Path, device: &Device, template: Option<&str>) -> Result<Student> {
        tune_candle_threads();
        let (config, tensors, tokenizer, detected, name) = if path.is_dir() { hf::load_dir(path, device)? } else { gguf::load(path, device)? };
        let template = ChatTemplate::choose(template, path, detected, &tokenizer, config.bos_token_id, config.eos_token_id)?;
        let model = Transformer::new(config.clone(), tensors, device)?;
        Ok(Student { name, source: path.to_path_buf(), declared_by: path.to_path_buf(), config, model, tokenizer, template })
    }

    /// The same student (weights and LoRA adapters shared, not copied) prompted with another
    /// template: evaluation uses it for the paper evaluator's prompts.
    pub fn with_template(&self, template: ChatTemplate) -> Student {
        Student {
            name: self.name.clone(),
            source: self.source.clone(),
            declared_by: self.declared_by.clone(),
            config: self.config.clone(),
            model: self.model.share_with_adapters(),
            tokenizer: self.tokenizer.clone(),
            template,
        }
    }

    /// Every base parameter, by HF name.
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.model.params
    }

    /// A student sharing this one's base weights (no copy), with fresh LoRA adapters.
    pub fn with_lora(&self, config: lora::LoraConfig, seed: u64) -> Result<Student> {
        let mut model = self.model.share();
        model.attach_lora(config, seed)?;
        Ok(Student {
            name: self.name.clone(),
            source: self.source.clone(),
            declared_by: self.declared_by.clone(),
            config: self.config.clone(),
            model,
            tokenizer: self.tokenizer.clone(),
            template: self.template.clone(),
        })
    }
}

/// The tokenizer's text for the EOS id (what alpaca appends to an answer), else `</s>`.
pub fn eos_text(tok: &tokenizers::Tokenizer, eos_id: Option<u32>) -> String {
    eos_id.and_then(|id| tok.id_to_token(id)).or_else(|| tok.id_to_token(2)).unwrap_or_else(|| "</s>".into())
}

/// Default for `CANDLE_BARRIER_POOL_SPIN_LIMIT`: candle 0.11 runs element-wise ops of 64 Ki
/// elements or more on its own thread pool, whose workers then spin 25 000 rounds before they
/// park. Our kernels and the GEMMs run on rayon's threads, so on a 2-core machine a spinning
/// candle worker takes a core from a GEMM after every such op (training runs thousands per
/// step). With 1 a training step is faster and takes fewer CPU-seconds, losses identical
/// (docs/performance-history.md).
const CANDLE_SPIN_LIMIT: &str = "1";

/// Sets candle's CPU thread-pool defaults (see [`CANDLE_SPIN_LIMIT`]) unless the user set them.
/// Must run before candle's first large element-wise op: `device`, `Student::load_with`,
/// `Transformer::new` and the `cotlab` binary's start call it; calling it again does nothing.
pub fn tune_candle_threads() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
            // std's own environment lock orders this against candle's `std::env::var` read.
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", CANDLE_SPIN_LIMIT);
        }
    });
}

/// Pick the compute device: "cpu", "cuda", "cuda:N", or "auto" (CUDA device 0 when this cotlab
/// was built with the `cuda` feature and a GPU is present, else the CPU, saying why once).
/// "cuda"/"cuda:N" without a usable device is an error that says what is missing.
pub fn device(spec: &str) -> Result<Device> {
    tune_candle_threads();
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => match open_cuda(0) {
            Ok(d) => Ok(d),
            Err(why) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| eprintln!("cotlab: device auto: {why}; running on the CPU"));
                Ok(Device::Cpu)
            }
        },
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n.parse::<usize>().map_err(|_| usage!("bad device '{s}': expected cuda:N with N a GPU index (cuda:0)"))?,
            };
            open_cuda(ordinal).map_err(|why| usage!("device '{s}': {why}"))
        }
        other => Err(usage!("unknown device '{other}': expected cpu, cuda, cuda:N or auto")),
    }
}

/// Whether this cotlab was built with CUDA support (`--features cuda`, scripts/build_cuda.sh).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// CUDA device `ordinal`, or why there is none.
fn open_cuda(ordinal: usize) -> std::result::Result<Device, String> {
    if !CUDA_BUILT {
        return Err("this cotlab was built without CUDA support (build one with scripts/build_cuda.sh, i.e. cargo build --release --features cuda)".into());
    }
    Device::new_cuda(ordinal).map_err(|e| {
        let e = crate::error::candle_message(&e);
        // A driver error reads best as its code alone (cudarc's text adds a failed lookup).
        let e = match e.find("CUDA_ERROR_") {
            Some(i) => e[i..].split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap_or("").to_string(),
            None => e,
        };
        format!("no usable CUDA device {ordinal} ({e}; is a GPU visible, and are the driver's libcuda.so.1 and the CUDA 13 libraries on LD_LIBRARY_PATH?)")
    })
}

/// The compute dtype for `spec` ("f32", "bf16", or "auto": bf16 on CUDA, f32 on the CPU).
/// Parameters, gradients and optimizer state stay f32 whatever this is (see `Transformer`).
pub fn compute_dtype(spec: &str, device: &Device) -> Result<candle_core::DType> {
    use candle_core::DType;
    match spec {
        "auto" => Ok(if device.is_cuda() { DType::BF16 } else { DType::F32 }),
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(usage!("unknown dtype '{other}': expected f32, bf16 or auto")),
    }
}
