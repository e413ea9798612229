//! Turn (question, rationale) pairs into token ids with a loss mask: the prompt (chat template
//! around the question) is context, the rationale plus the template's end marker is the
//! response the loss is computed on ([`ChatTemplate::split`]: with a model's own template, the
//! rendering with the answer minus the prompt rendering).

use crate::data::Corpus;
use crate::error::{Error, Result};
use crate::model::ChatTemplate;
use crate::usage;

/// The paper's training cut-off in tokens: LLaMA-Factory `cutoff_len: 4096` in every config of
/// its repository (`config/yamlgeneration.py`, `config/examples/*.yaml`).
pub const PAPER_CUTOFF_LEN: usize = 4096;

/// A hash of every (question, rationale) pair of `corpus`, in order (hex).
pub fn corpus_fingerprint(corpus: &Corpus) -> String {
    let h = corpus.rationales.iter().fold(crate::rng::FNV_OFFSET, |h, r| crate::rng::fnv1a(h, r.question.bytes().chain([0]).chain(r.text.bytes()).chain([1])));
    format!("{h:016x}")
}

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
    /// Examples whose rationale states its answer ("The answer is …").
    pub with_answer: usize,
    /// Truncated examples whose kept response no longer holds the final "The answer is …"
    /// sentence (the student is trained on a rationale without its answer).
    pub answer_lost: usize,
    /// The longest example in tokens (prompt + response) before truncation.
    pub longest: usize,
}

/// Where the final answer sentence of `text` ends: the end of the line holding the last
/// "the answer is" (case-insensitive), or None when there is none.
fn answer_end(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let at = lower.rfind("the answer is")?;
    Some(text[at..].find('\n').map(|i| at + i).unwrap_or(text.len()).max(at + "the answer is".len()))
}

pub fn tokenize(tok: &tokenizers::Tokenizer, template: &ChatTemplate, pairs: &[(String, String)], max_len: usize) -> Result<Tokenized> {
    if pairs.is_empty() {
        return Err(usage!("no training examples"));
    }
    let enc = |s: &str| -> Result<Vec<u32>> {
        tok.encode(s, false).map(|e| e.get_ids().to_vec()).map_err(|e| Error::Model { context: "tokenizing a training example".into(), msg: e.to_string() })
    };
    let mut out = Tokenized::default();
    for (q, r) in pairs {
        let (prompt, response) = template.split(q, r)?;
        let prompt = enc(&prompt)?;
        let mut response = enc(&response)?;
        out.longest = out.longest.max(prompt.len() + response.len());
        // Measured on the decoded response, so the cut is compared in the same text.
        let answer = answer_end(r).and_then(|_| answer_end(&tok.decode(&response, true).unwrap_or_default()));
        out.with_answer += answer.is_some() as usize;
        if prompt.len() + 1 >= max_len {
            out.dropped += 1;
            continue;
        }
        if prompt.len() + response.len() > max_len {
            response.truncate(max_len - prompt.len());
            out.truncated += 1;
            if let Some(end) = answer {
                out.answer_lost += (tok.decode(&response, true).unwrap_or_default().len() < end) as usize;
            }
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
