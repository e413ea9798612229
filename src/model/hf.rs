//! Load a Hugging Face model dir: config.json, model.safetensors (or shards), tokenizer.json,
//! and the chat template from tokenizer_config.json; and recognise a dir of the Hub cache
//! ([`hub_id`]), so exports can name the Hub model instead of a local path.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::chat::ChatTemplate;
use super::config::ModelConfig;
use super::family::Family;
use crate::error::{Error, Result};

type Loaded = (ModelConfig, HashMap<String, Tensor>, tokenizers::Tokenizer, Option<ChatTemplate>, String);

pub fn load_dir(dir: &Path, device: &Device) -> Result<Loaded> {
    let config = read_config(&dir.join("config.json"))?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && !p.file_name().unwrap().to_string_lossy().starts_with("adapter"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::data(dir, "no *.safetensors weights in the model dir"));
    }
    let mut tensors = HashMap::new();
    for f in &files {
        let t = candle_core::safetensors::load(f, device)
            .map_err(|e| Error::data(f, format!("not a readable safetensors file ({}); truncated or corrupt?", crate::error::candle_message(&e))))?;
        tensors.extend(t);
    }
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| Error::data(&tok_path, format!("{e}")))?;
    if tokenizer.get_vocab_size(true) > config.vocab_size {
        return Err(Error::data(
            &tok_path,
            format!("tokenizer has {} tokens but the model only {}: wrong tokenizer for this model?", tokenizer.get_vocab_size(true), config.vocab_size),
        ));
    }
    let template = template_from_dir(dir, &tokenizer);
    let name = dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    Ok((config, tensors, tokenizer, template, name))
}

fn template_from_dir(dir: &Path, tok: &tokenizers::Tokenizer) -> Option<ChatTemplate> {
    let cfg = crate::paths::read_text(&dir.join("tokenizer_config.json")).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let jinja = cfg.as_ref().and_then(|c| c.get("chat_template")).and_then(|v| v.as_str()).unwrap_or("");
    let eos = cfg.as_ref().and_then(|c| c.get("eos_token")).and_then(|v| v.as_str()).map(str::to_string);
    let eos = eos.or_else(|| tok.id_to_token(2)).unwrap_or_else(|| "</s>".into());
    ChatTemplate::from_jinja(jinja, &eos)
}

/// The config.json of an HF model dir, in cotlab's terms (family, rope scaling, defaults).
pub fn read_config(cfg_path: &Path) -> Result<ModelConfig> {
    let text = crate::paths::read_text(cfg_path)?;
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::data(cfg_path, format!("line {}: {e}", e.line())))?;
    let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let Some(family) = Family::from_model_type(&model_type) else {
        return Err(Error::data(cfg_path, format!("model_type '{model_type}' is not supported yet ({})", Family::MODEL_TYPES)));
    };
    if let Some(why) = family.unsupported_hf_config(&raw) {
        return Err(Error::data(cfg_path, why));
    }
    let mut raw = family.normalise_hf_config(raw);
    // Rope settings: top level (transformers 4) or `rope_parameters` / `rope_scaling` (5).
    let rope = raw.get("rope_parameters").or(raw.get("rope_scaling")).cloned().filter(|v| v.is_object());
    if let Some(r) = &rope {
        if raw.get("rope_theta").is_none() {
            if let Some(t) = r.get("rope_theta") {
                raw["rope_theta"] = t.clone();
            }
        }
        let kind = r.get("rope_type").or(r.get("type")).and_then(|v| v.as_str()).unwrap_or("default");
        match kind {
            "default" => {}
            "llama3" => {
                let f = |k: &str| r.get(k).and_then(|v| v.as_f64());
                let (Some(a), Some(b), Some(c), Some(d)) = (f("factor"), f("low_freq_factor"), f("high_freq_factor"), f("original_max_position_embeddings"))
                else {
                    return Err(Error::data(cfg_path, "llama3 rope scaling lacks factor/low_freq_factor/high_freq_factor/original_max_position_embeddings"));
                };
                raw["rope_llama3"] = serde_json::json!([a, b, c, d]);
            }
            other => return Err(Error::data(cfg_path, format!("rope type '{other}' is not supported yet (default, llama3)"))),
        }
    }
    if raw.get("num_key_value_heads").is_none() {
        raw["num_key_value_heads"] = raw["num_attention_heads"].clone();
    }
    for (k, d) in
        [("rope_theta", serde_json::json!(10000.0)), ("tie_word_embeddings", serde_json::json!(false)), ("max_position_embeddings", serde_json::json!(2048))]
    {
        if raw.get(k).is_none() {
            raw[k] = d;
        }
    }
    // eos_token_id may be a list in newer configs; keep the first.
    if let Some(serde_json::Value::Array(a)) = raw.get("eos_token_id") {
        raw["eos_token_id"] = a.first().cloned().unwrap_or(serde_json::Value::Null);
    }
    whole_sizes(&mut raw).map_err(|msg| Error::data(cfg_path, msg))?;
    let mut config: ModelConfig = serde_json::from_value(raw).map_err(|e| Error::data(cfg_path, format!("{e}")))?;
    // An explicit head_dim equal to the implied one is the same model.
    if config.head_dim.is_some_and(|hd| hd.checked_mul(config.num_attention_heads) == Some(config.hidden_size)) {
        config.head_dim = None;
    }
    // Checked here, before any weight is read or made, so the error names the file.
    config.validate().map_err(|e| Error::data(cfg_path, e.to_string()))?;
    Ok(config)
}

/// The integer sizes of a config.
const SIZE_KEYS: [&str; 8] = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "head_dim",
];

/// Sizes written as whole floats (`1e9`, `2048.0`) become integers; any other non-integer is an
/// error naming the key (serde's own says only "expected usize", not where).
fn whole_sizes(raw: &mut serde_json::Value) -> std::result::Result<(), String> {
    for k in SIZE_KEYS {
        let Some(v) = raw.get(k) else { continue };
        if v.is_u64() || v.is_null() {
            continue;
        }
        match v.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 2f64.powi(53) => raw[k] = serde_json::json!(f as u64),
            _ => return Err(format!("'{k}' must be a whole number ≥ 1, got {v}")),
        }
    }
    Ok(())
}

/// The Hub id and commit of a snapshot dir of the Hugging Face cache
/// (`…/models--ORG--NAME/snapshots/COMMIT`, where `hf:ORG/NAME` downloads to), else `None`.
pub fn hub_id(dir: &Path) -> Option<(String, String)> {
    let commit = dir.file_name()?.to_str()?;
    let snapshots = dir.parent()?;
    if snapshots.file_name()? != "snapshots" {
        return None;
    }
    let repo = snapshots.parent()?.file_name()?.to_str()?.strip_prefix("models--")?;
    // Hub names never hold "--": the first one separates the owner from the name.
    let id = match repo.split_once("--") {
        Some((owner, name)) => format!("{owner}/{name}"),
        None => repo.to_string(),
    };
    (!id.is_empty() && !commit.is_empty()).then(|| (id, commit.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot of the Hub cache names its repo and commit; any other dir names none.
    #[test]
    fn hub_id_reads_the_cache_layout() {
        let p = Path::new("/h/hub/models--Qwen--Qwen3-0.6B/snapshots/abc123");
        assert_eq!(hub_id(p), Some(("Qwen/Qwen3-0.6B".into(), "abc123".into())));
        assert_eq!(hub_id(Path::new("/h/hub/models--gpt2/snapshots/c0ffee")), Some(("gpt2".into(), "c0ffee".into())));
        assert_eq!(hub_id(Path::new("/work/models/Qwen3-0.6B")), None);
        assert_eq!(hub_id(Path::new("/h/hub/datasets--a--b/snapshots/abc")), None);
    }
}
