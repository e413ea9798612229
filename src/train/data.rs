//! Turn (question, rationale) pairs into token ids with a loss mask: the prompt (chat template
//! around the question) is context, the rationale plus the template's end marker is the
//! response the loss is computed on.

use crate::error::{Error, Result};
use crate::model::ChatTemplate;
use crate::usage;

#[derive(Clone, Debug, PartialEq)]
pub struct TrainExample {
    pub ids: Vec<u32>,
    /// Number of leading prompt tokens (no loss on them).
    pub prompt_len: usize,
}

impl TrainExample {
    /// Tokens the loss is computed on.
    pub fn response_tokens(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tokenized {
    pub examples: Vec<TrainExample>,
    /// Examples whose response was cut at `max_len`.
    pub truncated: usize,
    /// Examples dropped because the prompt alone filled `max_len`.
    pub dropped: usize,
}

pub fn tokenize(
    tok: &tokenizers::Tokenizer,
    template: &ChatTemplate,
    pairs: &[(String, String)],
    max_len: usize,
) -> Result<Tokenized> {
    if pairs.is_empty() {
        return Err(usage!("no training examples"));
    }
    let enc = |s: &str| -> Result<Vec<u32>> {
        tok.encode(s, false).map(|e| e.get_ids().to_vec()).map_err(|e| Error::Model { context: "tokenizing a training example".into(), msg: e.to_string() })
    };
    let mut out = Tokenized::default();
    for (q, r) in pairs {
        let prompt = enc(&template.prompt(q))?;
        let mut response = enc(&format!("{}{}", r.trim(), template.end()))?;
        if prompt.len() + 1 >= max_len {
            out.dropped += 1;
            continue;
        }
        if prompt.len() + response.len() > max_len {
            response.truncate(max_len - prompt.len());
            out.truncated += 1;
        }
        let prompt_len = prompt.len();
        let mut ids = prompt;
        ids.extend(response);
        out.examples.push(TrainExample { ids, prompt_len });
    }
    if out.examples.is_empty() {
        return Err(usage!("every example's prompt is longer than max_len = {max_len}: raise max_len"));
    }
    Ok(out)
}
