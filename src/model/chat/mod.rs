//! Chat templates: how a question is wrapped for a student, and what closes its answer. The
//! paper used llama3 for Llama, gemma for Gemma and alpaca for BLOOM; SmolLM2 and Qwen use chatml.
//!
//! Training and evaluation prompts differ in the paper: LLaMA-Factory's templates train the
//! students, while its evaluators build their own prompts ([`ChatTemplate::paper_eval`]).
//!
//! A student's template is, unless one is named: the paper's family its own Jinja template is
//! detected as (so the paper's students keep the paper's protocol), else that Jinja template
//! itself ([`ChatTemplate::Model`], rendered as transformers does: [`jinja`]). Training computes the
//! loss on the response only: with a model template, the rendering with the answer minus the
//! rendering of the prompt ([`ChatTemplate::split`]).

mod jinja;

use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use serde::{Deserialize, Serialize};

pub use jinja::{read_messages, turns_value, ModelTemplate};

use crate::answer::Evaluator;
use crate::error::{Error, Result};
use crate::usage;

/// The names `student(spec, #{template})` and `cotlab eval --template` accept.
pub const TEMPLATE_NAMES: &str = "chatml, llama3, gemma, alpaca, model";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum ChatTemplate {
    /// `<|im_start|>role\n...<|im_end|>\n`; SmolLM2 adds a default system message.
    Chatml {
        default_system: Option<String>,
    },
    Llama3,
    Gemma,
    /// LLaMA-Factory's alpaca template; the answer ends with the tokenizer's EOS text.
    Alpaca {
        eos: String,
    },
    /// A fixed text around the question: the paper evaluator's prompt for a template
    /// ([`ChatTemplate::paper_eval`]); `base` names the template it stands for.
    Wrapped {
        base: String,
        before: String,
        after: String,
        end: String,
    },
    /// The model's own Jinja chat template, rendered as transformers' `apply_chat_template`.
    Model(ModelTemplate),
}

impl ChatTemplate {
    pub fn parse(name: &str, eos: &str) -> Result<ChatTemplate> {
        Ok(match name {
            "chatml" => ChatTemplate::Chatml { default_system: None },
            "llama3" => ChatTemplate::Llama3,
            "gemma" => ChatTemplate::Gemma,
            "alpaca" => ChatTemplate::Alpaca { eos: eos.to_string() },
            "model" => {
                return Err(usage!("template: 'model' is the model's own chat template: load the student with it (student(spec, #{{template: \"model\"}}))"))
            }
            other => return Err(usage!("template: unknown value '{other}': expected one of {TEMPLATE_NAMES}")),
        })
    }

    /// The template a student loaded from `path` is prompted with: the `name`d one (`model`: the
    /// model's own Jinja template), else the paper family `detected` in its own template, else
    /// its own template; an error naming the choices when it declares none.
    pub fn choose(
        name: Option<&str>,
        path: &Path,
        detected: Option<ChatTemplate>,
        tok: &tokenizers::Tokenizer,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
    ) -> Result<ChatTemplate> {
        match (name, detected) {
            (Some("model"), _) | (None, None) => Ok(ChatTemplate::Model(declared(path, tok, bos_id, eos_id)?)),
            (Some(t), _) => ChatTemplate::parse(t, &super::eos_text(tok, eos_id)),
            (None, Some(t)) => Ok(t),
        }
    }

    /// Read the template family (and ChatML's default system message) from a GGUF's Jinja
    /// template; `None` when it has none or one of no known family.
    pub fn from_gguf(c: &Content, eos: &str) -> Option<ChatTemplate> {
        let jinja = c.metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        ChatTemplate::from_jinja(&jinja, eos)
    }

    /// The paper's template family of a Jinja chat template (a model's `chat_template`); `None`
    /// for an empty or unknown one (then [`ChatTemplate::choose`] takes the Jinja template itself,
    /// or tells the caller to choose when there is none: no silent fallback).
    /// `eos` is the tokenizer's EOS text (alpaca ends answers with it).
    pub fn from_jinja(jinja: &str, eos: &str) -> Option<ChatTemplate> {
        if jinja.contains("<|start_header_id|>") {
            Some(ChatTemplate::Llama3)
        } else if jinja.contains("<start_of_turn>") {
            Some(ChatTemplate::Gemma)
        } else if jinja.contains("<|im_start|>") {
            Some(ChatTemplate::Chatml { default_system: default_system(jinja) })
        } else if jinja.contains("### Instruction:") && jinja.contains("### Response:") {
            // What `jinja()` writes for alpaca (exported BLOOM students read back as trained).
            Some(ChatTemplate::Alpaca { eos: eos.to_string() })
        } else {
            None
        }
    }

    /// The prompt the paper's evaluators give a student trained with this template (zero-shot;
    /// EIT-NLP/Distilling-CoT-Reasoning `Evaluation/reasoning_eval/prompt_utils.py`, whose forms
    /// `autoevaluate.py` picks by family: alpaca for BLOOM, gemma, llama3):
    ///
    /// - commonsense (`run_reasoning.py`: `get_prompt([(q, "")], form)`, the whole `tmp`):
    ///   alpaca `…request.\n\n### Instruction:\n{q}\n\n### Response: \n`; llama3 with the
    ///   system turn "You are a helpful assistant."; gemma `<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n\n`.
    /// - math (MAmmoTH `run_open.py`/`run_choice.py`: `prompt_no_input + prefix.format(query=q)`
    ///   with no examples): alpaca `…request.\n\n### Instruction:\n{q}\n\n### Response:`; the
    ///   same llama3 prompt; gemma `\n<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n`.
    ///
    /// vLLM and transformers add the tokenizer's BOS to a prompt string (`<|begin_of_text|>`,
    /// `<bos>`; BLOOM has none); cotlab tokenizes prompts without special tokens, so the BOS is
    /// written here. ChatML has no paper prompt (no student of the paper used it), nor has a
    /// model's own template: their training prompt is kept.
    pub fn paper_eval(&self, evaluator: Evaluator) -> ChatTemplate {
        let commonsense = evaluator == Evaluator::Commonsense;
        let wrap = |before: String, after: &str| ChatTemplate::Wrapped { base: self.name().to_string(), before, after: after.to_string(), end: self.end() };
        match self {
            ChatTemplate::Chatml { .. } | ChatTemplate::Wrapped { .. } | ChatTemplate::Model(_) => self.clone(),
            ChatTemplate::Llama3 => wrap(
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n".into(),
                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            ),
            ChatTemplate::Gemma => wrap(
                if commonsense { "<bos><start_of_turn>user\n" } else { "<bos>\n<start_of_turn>user\n" }.into(),
                if commonsense { "<end_of_turn>\n<start_of_turn>model\n\n" } else { "<end_of_turn>\n<start_of_turn>model\n" },
            ),
            ChatTemplate::Alpaca { .. } => wrap(
                "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n".into(),
                if commonsense { "\n\n### Response: \n" } else { "\n\n### Response:" },
            ),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ChatTemplate::Chatml { .. } => "chatml",
            ChatTemplate::Llama3 => "llama3",
            ChatTemplate::Gemma => "gemma",
            ChatTemplate::Alpaca { .. } => "alpaca",
            ChatTemplate::Wrapped { .. } => "wrapped",
            ChatTemplate::Model(_) => "model",
        }
    }

    /// What results record as the template used: its name; the paper evaluator's prompt for a
    /// family is `paper-<family>`; a model template adds where it came from.
    pub fn label(&self) -> String {
        match self {
            ChatTemplate::Wrapped { base, .. } => format!("paper-{base}"),
            ChatTemplate::Model(m) => format!("model ({})", m.source),
            _ => self.name().to_string(),
        }
    }

    /// The prompt up to where the model starts answering (a model template: the rendering of
    /// the user turn with `add_generation_prompt`; an error when the template raises).
    pub fn prompt(&self, user: &str) -> Result<String> {
        Ok(match self {
            ChatTemplate::Model(m) => m.render_turns(&[("user", user)], true)?,
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
            ChatTemplate::Wrapped { before, after, .. } => format!("{before}{user}{after}"),
        })
    }

    /// A training example as (prompt, response): the loss is computed on the response only.
    /// Named templates: the rationale (trimmed) and [`ChatTemplate::end`]. A model template: its
    /// rendering with the assistant turn minus the prompt rendering, which must be its prefix.
    pub fn split(&self, user: &str, rationale: &str) -> Result<(String, String)> {
        let prompt = self.prompt(user)?;
        let ChatTemplate::Model(m) = self else {
            return Ok((prompt, format!("{}{}", rationale.trim(), self.end())));
        };
        let full = m.render_turns(&[("user", user), ("assistant", rationale.trim())], false)?;
        match full.strip_prefix(&prompt) {
            Some(response) => Ok((prompt.clone(), response.to_string())),
            None => {
                let at = prompt.char_indices().zip(full.chars()).find(|((_, a), b)| a != b).map(|((i, _), _)| i).unwrap_or(full.len().min(prompt.len()));
                let near = |s: &str| s[at..].chars().take(40).collect::<String>();
                Err(Error::data(
                    &m.source,
                    format!(
                        "chat template: the rendering with the answer does not start with the prompt rendering (byte {at}: prompt has {:?}, with the answer {:?}), \
                         so the loss cannot be masked to the answer; train with a named template (template: {TEMPLATE_NAMES})",
                        near(&prompt),
                        near(&full)
                    ),
                ))
            }
        }
    }

    /// What follows the answer; trained on, so the student learns to stop (a model template:
    /// its end-of-turn marker, [`ModelTemplate::answer_end`], which generation stops at).
    pub fn end(&self) -> String {
        match self {
            ChatTemplate::Chatml { .. } => "<|im_end|>\n".into(),
            ChatTemplate::Llama3 => "<|eot_id|>".into(),
            ChatTemplate::Gemma => "<end_of_turn>\n".into(),
            ChatTemplate::Alpaca { eos } => eos.clone(),
            ChatTemplate::Wrapped { end, .. } => end.clone(),
            ChatTemplate::Model(m) => m.answer_end().unwrap_or_else(|| m.eos.clone()),
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
            ChatTemplate::Wrapped { before, after, end, .. } => {
                let q = |s: &str| s.replace('\\', "\\\\").replace('\n', "\\n").replace('\'', "\\'");
                format!("{{% for message in messages %}}{{% if message['role'] == 'user' %}}{{{{ '{}' + message['content'] + '{}' }}}}{{% else %}}{{{{ message['content'] + '{}' }}}}{{% endif %}}{{% endfor %}}", q(before), q(after), q(end))
            }
            ChatTemplate::Model(m) => m.jinja.clone(),
            ChatTemplate::Alpaca { .. } => "{% for message in messages %}{% if message['role'] == 'user' %}{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}".into(),
        }
    }
}

/// The Jinja chat template the model at `path` declares; an error naming the choices when it
/// declares none.
fn declared(path: &Path, tok: &tokenizers::Tokenizer, bos_id: Option<u32>, eos_id: Option<u32>) -> Result<ModelTemplate> {
    ModelTemplate::of_model(path, tok, bos_id, eos_id)?.ok_or_else(|| {
        Error::data(
            path,
            format!(
                "the model declares no chat template (a base checkpoint?): choose the one it was or will be trained with, \
                 student(spec, #{{template: \"alpaca\"}}) in Rhai or --template alpaca on the command line; templates: {TEMPLATE_NAMES} (the paper used alpaca for BLOOM, llama3 for Llama, gemma for Gemma)"
            ),
        )
    })
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

impl super::Student {
    /// The student's own Jinja chat template (what `template: "model"` and `prompt: "model"`
    /// use), whichever template it is prompted with now; an error naming the choices when its
    /// model declares none.
    pub fn own_template(&self) -> Result<ModelTemplate> {
        match &self.template {
            ChatTemplate::Model(m) => Ok(m.clone()),
            _ => declared(&self.declared_by, &self.tokenizer, self.config.bos_token_id, self.config.eos_token_id),
        }
    }

    /// What `cotlab chat-template` prints: `messages` ([`read_messages`]) rendered by the
    /// student's own template, as transformers' `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)` renders them.
    pub fn render_messages(&self, messages: &minijinja::Value, add_generation_prompt: bool) -> Result<String> {
        self.own_template()?.render(messages, add_generation_prompt)
    }
}
