//! Export a student as a Hugging Face model dir that transformers loads: config.json, the
//! weights (one model.safetensors, or shards with model.safetensors.index.json past
//! [`SHARD_BYTES`]), tokenizer.json, tokenizer_config.json (with the chat template),
//! generation_config.json; in f32 or bf16 ([`ExportOptions`]). LoRA runs export PEFT adapters
//! whose `base_model_name_or_path` is something PEFT can load (see [`peft_base`]). Everything is
//! written to a temporary dir and renamed, so a failed export leaves nothing that looks complete.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::run::RunDir;
use crate::error::{Error, ModelContext, Result};
use crate::model::Student;
use crate::usage;

/// transformers' default `max_shard_size` ("5GB", decimal): a model past it is written as shards.
pub const SHARD_BYTES: u64 = 5_000_000_000;

crate::choices! {
    /// The dtype an export stores its weights in (training keeps f32 master weights either way).
    #[derive(Default)]
    pub enum ExportDtype("dtype") {
        /// The f32 weights as trained: exact.
        #[default]
        F32 = "f32",
        /// bfloat16: half the bytes, what Hub checkpoints ship in; each weight rounded to nearest.
        Bf16 = "bf16",
    }
}

impl ExportDtype {
    fn dtype(self) -> DType {
        match self {
            ExportDtype::F32 => DType::F32,
            ExportDtype::Bf16 => DType::BF16,
        }
    }

    /// config.json's `torch_dtype`.
    fn torch_name(self) -> &'static str {
        match self {
            ExportDtype::F32 => "float32",
            ExportDtype::Bf16 => "bfloat16",
        }
    }
}

/// How [`export_hf_with`] writes the weights.
#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    pub dtype: ExportDtype,
    /// Weights past this many bytes are split into shards of at most this size (a tensor
    /// larger than it gets a shard of its own), as transformers' `save_pretrained` does.
    pub shard_bytes: u64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { dtype: ExportDtype::F32, shard_bytes: SHARD_BYTES }
    }
}

/// A fresh `<out>.partial` dir to write into; refuses a non-empty `out`.
fn staging(out: &Path) -> Result<std::path::PathBuf> {
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(false) {
        return Err(usage!("{} exists and is not empty: export into a new dir", out.display()));
    }
    let tmp = out.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}

/// Rename the finished staging dir onto `out` (which may exist as an empty dir).
fn publish(tmp: &Path, out: &Path) -> Result<()> {
    std::fs::rename(tmp, out).or_else(|_| std::fs::remove_dir(out).and_then(|_| std::fs::rename(tmp, out))).map_err(|e| Error::io(out, e))
}

/// [`export_hf_with`] in f32, sharded past [`SHARD_BYTES`].
pub fn export_hf(student: &Student, out: &Path) -> Result<()> {
    export_hf_with(student, out, &ExportOptions::default())
}

pub fn export_hf_with(student: &Student, out: &Path, opts: &ExportOptions) -> Result<()> {
    let tmp = staging(out)?;
    write_hf_dir(student, &tmp, opts)?;
    publish(&tmp, out)
}

/// The files of an HF model dir, written into the existing dir `dir`.
fn write_hf_dir(student: &Student, dir: &Path, opts: &ExportOptions) -> Result<()> {
    let weights: BTreeMap<String, Tensor> = student
        .params()
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?.to_dtype(opts.dtype.dtype())?)))
        .collect::<candle_core::Result<_>>()
        .model_ctx("export: copying the weights to the CPU")?;
    write_weights(&weights, dir, opts.shard_bytes)?;
    let write_json = |name: &str, v: serde_json::Value| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).map_err(|e| Error::io(&p, e))
    };
    let mut config = student.config.to_hf_json();
    config["torch_dtype"] = opts.dtype.torch_name().into();
    write_json("config.json", config)?;
    let tp = dir.join("tokenizer.json");
    student.tokenizer.save(&tp, false).map_err(|e| Error::data(&tp, e.to_string()))?;
    let tok_name = |id: Option<u32>| id.and_then(|i| student.tokenizer.id_to_token(i));
    let eos = tok_name(student.config.eos_token_id);
    let bos = tok_name(student.config.bos_token_id);
    write_json(
        "tokenizer_config.json",
        serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "chat_template": student.template.jinja(),
            "bos_token": bos, "eos_token": eos, "pad_token": eos,
            "model_max_length": student.config.max_position_embeddings,
            "add_prefix_space": false,
        }),
    )?;
    write_json(
        "generation_config.json",
        serde_json::json!({"bos_token_id": student.config.bos_token_id, "eos_token_id": student.config.eos_token_id, "do_sample": false}),
    )
}

/// Weights in shards of at most `shard_bytes`, filled in name order (a tensor larger than the
/// limit alone in its shard); one shard is the one file `model.safetensors`, several are
/// `model-0000i-of-0000n.safetensors` with the `model.safetensors.index.json` transformers reads.
pub fn shard_plan(weights: &BTreeMap<String, Tensor>, shard_bytes: u64) -> Vec<Vec<String>> {
    let mut shards: Vec<Vec<String>> = Vec::new();
    let mut used = 0u64;
    for (name, t) in weights {
        let bytes = (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        match shards.last_mut() {
            Some(last) if used + bytes <= shard_bytes => last.push(name.clone()),
            _ => {
                shards.push(vec![name.clone()]);
                used = 0;
            }
        }
        used += bytes;
    }
    shards
}

fn write_weights(weights: &BTreeMap<String, Tensor>, dir: &Path, shard_bytes: u64) -> Result<()> {
    let plan = shard_plan(weights, shard_bytes.max(1));
    let save = |names: &[String], file: &str| -> Result<()> {
        let part: HashMap<String, Tensor> = names.iter().map(|n| (n.clone(), weights[n].clone())).collect();
        let p = dir.join(file);
        candle_core::safetensors::save(&part, &p).map_err(|e| Error::data(&p, crate::error::candle_message(&e)))
    };
    if plan.len() <= 1 {
        return save(plan.first().map(Vec::as_slice).unwrap_or(&[]), "model.safetensors");
    }
    let n = plan.len();
    let mut weight_map = serde_json::Map::new();
    for (i, names) in plan.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        save(names, &file)?;
        weight_map.extend(names.iter().map(|name| (name.clone(), serde_json::Value::from(file.clone()))));
    }
    let total: u64 = weights.values().map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64).sum();
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let p = dir.join("model.safetensors.index.json");
    std::fs::write(&p, serde_json::to_string_pretty(&index).unwrap()).map_err(|e| Error::io(&p, e))
}

/// What a PEFT adapter's `base_model_name_or_path` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeftBase {
    /// A Hub model (the student came from `hf:`): its id, and the snapshot's commit as `revision`.
    Hub { id: String, revision: String },
    /// A Hugging Face model dir on this machine, by its absolute path.
    Dir(PathBuf),
    /// Something PEFT cannot load (a GGUF file, a training run's checkpoint): the base weights
    /// are exported into the adapter dir's `base/`, named by its absolute path.
    Exported { from: String },
}

/// The base PEFT is to load for adapters trained on `model` (a run config's `model`).
pub fn peft_base(model: &str) -> PeftBase {
    let p = Path::new(model);
    if let Some((id, revision)) = crate::model::hf::hub_id(p) {
        return PeftBase::Hub { id, revision };
    }
    if p.join("config.json").is_file() && !RunDir::new(p).checkpoint().is_dir() {
        return PeftBase::Dir(std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
    }
    PeftBase::Exported { from: model.to_string() }
}

/// Write LoRA adapters in PEFT's layout: adapter_config.json + adapter_model.safetensors, a
/// README.md saying what the base is and how to load both, and for [`PeftBase::Exported`] the
/// base model dir `base/` (in `opts`' dtype).
pub fn export_peft(student: &Student, base: &PeftBase, out: &Path, opts: &ExportOptions) -> Result<()> {
    let lora = student.model.lora.as_ref().ok_or_else(|| usage!("this student has no LoRA adapters"))?;
    let tmp = staging(out)?;
    let tensors: HashMap<String, Tensor> = lora.peft_tensors().into_iter().collect();
    let wp = tmp.join("adapter_model.safetensors");
    candle_core::safetensors::save(&tensors, &wp).map_err(|e| Error::data(&wp, crate::error::candle_message(&e)))?;
    let (name, revision) = match base {
        PeftBase::Hub { id, revision } => (id.clone(), Some(revision.clone())),
        PeftBase::Dir(d) => (d.display().to_string(), None),
        PeftBase::Exported { .. } => {
            let dir = tmp.join("base");
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            write_hf_dir(student, &dir, opts)?;
            let abs = std::path::absolute(out).map_err(|e| Error::io(out, e))?;
            (abs.join("base").display().to_string(), None)
        }
    };
    let cfg = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": name,
        "revision": revision,
        "r": lora.config.r,
        "lora_alpha": lora.config.alpha,
        "lora_dropout": lora.config.dropout,
        "target_modules": lora.config.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
    });
    let cp = tmp.join("adapter_config.json");
    std::fs::write(&cp, serde_json::to_string_pretty(&cfg).unwrap()).map_err(|e| Error::io(&cp, e))?;
    let rp = tmp.join("README.md");
    std::fs::write(&rp, peft_readme(base, &name, out)).map_err(|e| Error::io(&rp, e))?;
    publish(&tmp, out)
}

/// The adapter dir's README.md: the base, and what to change when the dir moves.
fn peft_readme(base: &PeftBase, name: &str, out: &Path) -> String {
    let note = match base {
        PeftBase::Hub { id, revision } => format!("The base model is `{id}` on the Hugging Face Hub, at commit `{revision}` (`revision` in adapter_config.json)."),
        PeftBase::Dir(d) => format!(
            "The base model is the local model dir `{}`: on another machine, copy that dir there and set `base_model_name_or_path` in adapter_config.json to its path.",
            d.display()
        ),
        PeftBase::Exported { from } => format!(
            "The adapters were trained on `{from}`, which PEFT cannot load (a GGUF file or a cotlab run's checkpoint), so its weights are exported beside \
             the adapters in `base/`, and `base_model_name_or_path` names that dir by its absolute path. After moving this dir, set \
             `base_model_name_or_path` in adapter_config.json to the new path of `base/`."
        ),
    };
    format!(
        "# LoRA adapters trained with cotlab\n\nBase model: `{name}`\n\n{note}\n\n```python\nfrom peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(\"{}\")\n```\n",
        out.display()
    )
}

/// Export the last checkpoint of a run dir: the base model named in its config, with the
/// checkpoint's weights. A LoRA run exports PEFT adapters, or with `merge` a full model with the
/// adapters folded in.
pub fn export_run(run_dir: &Path, out: &Path) -> Result<()> {
    export_run_with(run_dir, out, false)
}

pub fn export_run_with(run_dir: &Path, out: &Path, merge: bool) -> Result<()> {
    export_run_as(run_dir, out, merge, &ExportOptions::default())
}

/// [`export_run_with`] writing the weights as `opts` says.
pub fn export_run_as(run_dir: &Path, out: &Path, merge: bool, opts: &ExportOptions) -> Result<()> {
    let mut student = load_run(run_dir)?;
    if student.model.lora.is_some() {
        if !merge {
            return export_peft(&student, &peft_base(&run_base_model(run_dir)?), out, opts);
        }
        student.model.merge_lora()?;
    }
    export_hf_with(&student, out, opts)
}

/// The model a run started from (its config's `model`).
pub fn run_base_model(run_dir: &Path) -> Result<String> {
    let run = RunDir::new(run_dir);
    let cfg = run.config()?;
    let cfg_path = run.config_path();
    cfg["model"].as_str().map(str::to_string).ok_or_else(|| Error::data(&cfg_path, "no 'model' entry"))
}

/// The student of a run dir's last checkpoint: its base model with the checkpoint's weights
/// (and LoRA adapters for LoRA runs), on the CPU.
pub fn load_run(run_dir: &Path) -> Result<Student> {
    load_run_on(run_dir, &Device::Cpu)
}

/// [`load_run`] onto `device`.
pub fn load_run_on(run_dir: &Path, device: &Device) -> Result<Student> {
    let run = RunDir::new(run_dir);
    let cfg = run.config()?;
    let cfg_path = run.config_path();
    let model = run_base_model(run_dir)?;
    let model = model.as_str();
    // A run trained from another run's checkpoint names that run dir as its model.
    let base_path = Path::new(model);
    // The template the run trained with (runs from before it was recorded: the base's own).
    let template: Option<crate::model::ChatTemplate> = match cfg.get("template") {
        Some(v) if !v.is_null() => Some(serde_json::from_value(v.clone()).map_err(|e| Error::data(&cfg_path, format!("template: {e}")))?),
        _ => None,
    };
    let mut base = if RunDir::new(base_path).checkpoint().is_dir() {
        load_run_on(base_path, device)?
    } else {
        Student::load_with(base_path, device, template.as_ref().map(|t| t.name()))?
    };
    if let Some(t) = template {
        base.template = t;
    }
    let lora: Option<crate::model::lora::LoraConfig> = match cfg["options"].get("lora") {
        Some(v) if !v.is_null() => Some(serde_json::from_value(v.clone()).map_err(|e| Error::data(&cfg_path, e.to_string()))?),
        _ => None,
    };
    let student = match lora {
        Some(l) => base.with_lora(l, 0)?,
        None => base,
    };
    let wp = run.weights_path();
    if !wp.exists() {
        return Err(Error::data(&wp, "no checkpoint in this run dir yet"));
    }
    let weights = candle_core::safetensors::load(&wp, device).map_err(|e| Error::data(&wp, crate::error::candle_message(&e)))?;
    for (n, v) in student.model.trainable_named() {
        let w = weights.get(&n).ok_or_else(|| Error::data(&wp, format!("checkpoint lacks '{n}'")))?;
        v.set(w).map_err(|e| Error::data(&wp, format!("'{n}': {}", crate::error::candle_message(&e))))?;
    }
    // The run is the model now: eval dirs and later runs must not mistake it for its base.
    let mut student = student;
    student.source = run_dir.to_path_buf();
    Ok(student)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(sizes: &[(&str, usize)]) -> BTreeMap<String, Tensor> {
        sizes.iter().map(|(n, k)| (n.to_string(), Tensor::zeros(*k, DType::F32, &Device::Cpu).unwrap())).collect()
    }

    /// Shards hold at most the limit, in name order; a tensor past the limit is alone; under the
    /// limit everything is one shard.
    #[test]
    fn shards_respect_the_limit() {
        let w = weights(&[("a", 10), ("b", 10), ("c", 100), ("d", 5), ("e", 5), ("f", 20)]);
        let plan = shard_plan(&w, 80);
        assert_eq!(plan, vec![vec!["a", "b"], vec!["c"], vec!["d", "e"], vec!["f"]]);
        assert_eq!(shard_plan(&w, 1000).len(), 1);
    }

    /// `--dtype` takes f32 and bf16; anything else names both.
    #[test]
    fn export_dtype_names_the_choices() {
        assert_eq!(ExportDtype::parse("bf16"), Ok(ExportDtype::Bf16));
        let e = ExportDtype::parse("f16").unwrap_err();
        assert!(e.contains("f16") && e.contains("bf16") && e.contains("f32"), "{e}");
    }
}
