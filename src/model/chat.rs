//! Chat templates: how a question is wrapped for a student, and what closes its answer. The
//! paper used llama3 for Llama, gemma for Gemma and alpaca for BLOOM; SmolLM2 and Qwen use chatml.

use candle_core::quantized::gguf_file::Content;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::usage;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum ChatTemplate {
    /// `<|im_start|>role\n...<|im_end|>\n`; SmolLM2 adds a default system message.
    Chatml { default_system: Option<String> },
    Llama3,
    Gemma,
    /// LLaMA-Factory's alpaca template; the answer ends with the tokenizer's EOS text.
    Alpaca { eos: String },
}

impl ChatTemplate {
    pub fn parse(name: &str, eos: &str) -> Result<ChatTemplate> {
        Ok(match name {
            "chatml" => ChatTemplate::Chatml { default_system: None },
            "llama3" => ChatTemplate::Llama3,
            "gemma" => ChatTemplate::Gemma,
            "alpaca" => ChatTemplate::Alpaca { eos: eos.to_string() },
            other => return Err(usage!("unknown chat template '{other}': expected chatml, llama3, gemma or alpaca")),
        })
    }

    /// Read the template family (and ChatML's default system message) from a GGUF's Jinja template.
    pub fn from_gguf(c: &Content) -> ChatTemplate {
        let jinja = c.metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        if jinja.contains("<|start_header_id|>") {
            ChatTemplate::Llama3
        } else if jinja.contains("<start_of_turn>") {
            ChatTemplate::Gemma
        } else {
            ChatTemplate::Chatml { default_system: default_system(&jinja) }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ChatTemplate::Chatml { .. } => "chatml",
            ChatTemplate::Llama3 => "llama3",
            ChatTemplate::Gemma => "gemma",
            ChatTemplate::Alpaca { .. } => "alpaca",
        }
    }

    /// The prompt up to where the model starts answering.
    pub fn prompt(&self, user: &str) -> String {
        match self {
            ChatTemplate::Chatml { default_system } => {
                let sys = default_system.as_ref().map(|s| format!("<|im_start|>system\n{s}<|im_end|>\n")).unwrap_or_default();
                format!("{sys}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
            }
            ChatTemplate::Llama3 => format!(
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
            ChatTemplate::Gemma => format!("<bos><start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"),
            ChatTemplate::Alpaca { .. } => format!(
                "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{user}\n\n### Response:\n"
            ),
        }
    }

    /// What follows the answer; trained on, so the student learns to stop.
    pub fn end(&self) -> String {
        match self {
            ChatTemplate::Chatml { .. } => "<|im_end|>\n".into(),
            ChatTemplate::Llama3 => "<|eot_id|>".into(),
            ChatTemplate::Gemma => "<end_of_turn>\n".into(),
            ChatTemplate::Alpaca { eos } => eos.clone(),
        }
    }

    /// A Jinja chat template for an exported tokenizer_config.json.
    pub fn jinja(&self) -> String {
        match self {
            ChatTemplate::Chatml { default_system } => {
                let sys = default_system.clone().unwrap_or_default();
                let default = if sys.is_empty() {
                    String::new()
                } else {
                    format!("{{% if messages[0]['role'] != 'system' %}}{{{{ '<|im_start|>system\\n{sys}<|im_end|>\\n' }}}}{{% endif %}}")
                };
                format!("{default}{{% for message in messages %}}{{{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}}}{{% endfor %}}{{% if add_generation_prompt %}}{{{{ '<|im_start|>assistant\\n' }}}}{{% endif %}}")
            }
            ChatTemplate::Llama3 => "{{ '<|begin_of_text|>' }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}".into(),
            ChatTemplate::Gemma => "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' + message['content'] + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}".into(),
            ChatTemplate::Alpaca { .. } => "{% for message in messages %}{% if message['role'] == 'user' %}{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}".into(),
        }
    }
}

/// SmolLM2's template prints `<|im_start|>system\n...<|im_end|>` when no system message is
/// given. The newline is a real one in GGUF metadata and may be an escaped `\n` in JSON configs.
pub fn default_system(jinja: &str) -> Option<String> {
    ["<|im_start|>system\n", "<|im_start|>system\\n"].iter().find_map(|marker| {
        let start = jinja.find(marker)? + marker.len();
        let end = jinja[start..].find("<|im_end|>")?;
        let s = &jinja[start..start + end];
        (!s.contains('{') && !s.is_empty()).then(|| s.to_string())
    })
}
