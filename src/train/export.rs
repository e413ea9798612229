//! Export a student as a Hugging Face model dir that transformers loads: config.json,
//! model.safetensors, tokenizer.json, tokenizer_config.json (with the chat template),
//! generation_config.json. Written to a temporary dir and renamed, so a failed export leaves
//! nothing that looks complete.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::run::RunDir;
use crate::error::{Error, ModelContext, Result};
use crate::model::Student;
use crate::usage;

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

pub fn export_hf(student: &Student, out: &Path) -> Result<()> {
    let tmp = staging(out)?;
    let weights: HashMap<String, Tensor> = student
        .params()
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?)))
        .collect::<candle_core::Result<_>>()
        .model_ctx("export: copying the weights to the CPU")?;
    let wp = tmp.join("model.safetensors");
    candle_core::safetensors::save(&weights, &wp).map_err(|e| Error::data(&wp, crate::error::candle_message(&e)))?;
    let write_json = |name: &str, v: serde_json::Value| -> Result<()> {
        let p = tmp.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).map_err(|e| Error::io(&p, e))
    };
    write_json("config.json", student.config.to_hf_json())?;
    let tp = tmp.join("tokenizer.json");
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
    )?;
    std::fs::rename(&tmp, out)
        .or_else(|_| {
            // `out` may exist as an empty dir.
            std::fs::remove_dir(out).and_then(|_| std::fs::rename(&tmp, out))
        })
        .map_err(|e| Error::io(out, e))
}

/// Write LoRA adapters in PEFT's layout: adapter_config.json + adapter_model.safetensors.
pub fn export_peft(student: &Student, base_name: &str, out: &Path) -> Result<()> {
    let lora = student.model.lora.as_ref().ok_or_else(|| usage!("this student has no LoRA adapters"))?;
    let tmp = staging(out)?;
    let tensors: HashMap<String, Tensor> = lora.peft_tensors().into_iter().collect();
    let wp = tmp.join("adapter_model.safetensors");
    candle_core::safetensors::save(&tensors, &wp).map_err(|e| Error::data(&wp, crate::error::candle_message(&e)))?;
    let cfg = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
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
    let _ = std::fs::remove_dir(out);
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}

/// Export the last checkpoint of a run dir: the base model named in its config, with the
/// checkpoint's weights. A LoRA run exports PEFT adapters, or with `merge` a full model with the
/// adapters folded in.
pub fn export_run(run_dir: &Path, out: &Path) -> Result<()> {
    export_run_with(run_dir, out, false)
}

pub fn export_run_with(run_dir: &Path, out: &Path, merge: bool) -> Result<()> {
    let mut student = load_run(run_dir)?;
    if student.model.lora.is_some() {
        if !merge {
            return export_peft(&student, &run_base_model(run_dir)?, out);
        }
        student.model.merge_lora()?;
    }
    export_hf(&student, out)
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
