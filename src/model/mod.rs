//! Stage 4 — students: decoder LMs in candle that can be trained. Weights come from a GGUF file
//! (dequantised to f32, tokenizer built from its metadata) or a Hugging Face model dir
//! (config.json, *.safetensors, tokenizer.json). Parameters are kept under Hugging Face names so
//! checkpoints and exports are plain HF files.
//!
//! Layout: `family/` holds one file per architecture (tensor names, HF config in/out, the
//! decoder block); `transformer.rs` the weights, LoRA and the kernels blocks are written with;
//! `ops.rs` the fused ops with a backward; `generate.rs` batched cached decoding.

pub mod chat;
pub mod config;
pub mod family;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod lora;
pub mod ops;
pub mod tokenizer;
pub mod transformer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Var};

pub use chat::ChatTemplate;
pub use config::ModelConfig;
pub use family::Family;
pub use transformer::Transformer;

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
/// (downloaded once into the Hugging Face cache; needs internet).
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
        let fail = |what: &str, e: String| usage!("hf:{repo}: could not fetch {what}: {e} (no internet? pass a local model dir instead)");
        let api = ApiBuilder::new().with_progress(true).build().map_err(|e| fail("the hub client", e.to_string()))?;
        let r = api.repo(Repo::with_revision(name.to_string(), RepoType::Model, rev.to_string()));
        let config = r.get("config.json").map_err(|e| fail("config.json", e.to_string()))?;
        r.get("tokenizer.json").map_err(|e| fail("tokenizer.json", e.to_string()))?;
        let _ = r.get("tokenizer_config.json");
        match r.get("model.safetensors.index.json") {
            Ok(index) => {
                let text = std::fs::read_to_string(&index).map_err(|e| fail("the weight index", e.to_string()))?;
                let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail("the weight index", e.to_string()))?;
                let mut shards: Vec<String> =
                    v["weight_map"].as_object().into_iter().flatten().filter_map(|(_, f)| f.as_str().map(str::to_string)).collect();
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
    pub config: ModelConfig,
    pub model: Transformer,
    pub tokenizer: tokenizers::Tokenizer,
    pub template: ChatTemplate,
}

impl Student {
    /// Load from a .gguf file or an HF model dir onto `device`, with the chat template the model
    /// declares. A model without one (a base checkpoint) is an error that names the choices:
    /// load it with [`Student::load_with`] and a template.
    pub fn load(path: &Path, device: &Device) -> Result<Student> {
        Student::load_with(path, device, None)
    }

    /// Load with `template` (`chatml`, `llama3`, `gemma`, `alpaca`) instead of the model's own
    /// chat template; `None` keeps the model's, which must then exist.
    pub fn load_with(path: &Path, device: &Device, template: Option<&str>) -> Result<Student> {
        let (config, tensors, tokenizer, detected, name) = if path.is_dir() {
            hf::load_dir(path, device)?
        } else {
            gguf::load(path, device)?
        };
        let template = match template {
            Some(t) => ChatTemplate::parse(t, &eos_text(&tokenizer, config.eos_token_id))?,
            None => detected.ok_or_else(|| {
                Error::data(
                    path,
                    format!(
                        "the model declares no chat template of a known family (a base checkpoint?): choose the one it was or will be trained with, \
                         student(spec, #{{template: \"alpaca\"}}) in Rhai or --template alpaca on the command line; templates: {} (the paper used alpaca for BLOOM, llama3 for Llama, gemma for Gemma)",
                        chat::TEMPLATE_NAMES
                    ),
                )
            })?,
        };
        let model = Transformer::new(config.clone(), tensors, device)?;
        Ok(Student { name, source: path.to_path_buf(), config, model, tokenizer, template })
    }

    /// The same student (weights and LoRA adapters shared, not copied) prompted with another
    /// template: evaluation uses it for the paper evaluator's prompts.
    pub fn with_template(&self, template: ChatTemplate) -> Student {
        Student {
            name: self.name.clone(),
            source: self.source.clone(),
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

/// Pick the compute device: "cpu", "cuda", "cuda:N", or "auto" (CUDA when built with it and present).
pub fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        s if s.starts_with("cuda") => {
            let ordinal = s.strip_prefix("cuda:").map(|n| n.parse::<usize>()).transpose().map_err(|_| usage!("bad device '{s}'"))?.unwrap_or(0);
            Device::new_cuda(ordinal).map_err(|e| usage!("device '{s}': {e} (build with --features cuda on a machine with a GPU)"))
        }
        other => Err(usage!("unknown device '{other}': expected cpu, cuda, cuda:N or auto")),
    }
}
