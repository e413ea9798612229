//! Build a Hugging Face tokenizer from GGUF metadata, so that its ids are those of the model's
//! own tokenizer.json id for id.
//!
//! A GGUF names its pre-tokenizer (`tokenizer.ggml.pre`) instead of storing it; each name maps
//! to the pre-tokenizer of the model's tokenizer.json (see [`PreTokenizer`]), as llama.cpp's
//! llama-vocab.cpp maps it to a regex. candle's own `TokenizerFromGguf` gets SmolLM2 wrong
//! ("smollm" falls back to a ByteLevel *with* a prefix space).

use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::meta::meta;
use crate::error::{Error, Result};

pub fn from_gguf(c: &Content, path: &Path) -> Result<Tokenizer> {
    let err = |m: String| Error::data(path, m);
    let model = meta(c, path, "tokenizer.ggml.model")?.to_string().map_err(|e| err(e.to_string()))?;
    if model != "gpt2" {
        return Err(err(format!("tokenizer model '{model}' is not supported yet (only BPE 'gpt2')")));
    }
    let pre = c.metadata.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(|s| s.as_str()).unwrap_or("default");
    let pre = PreTokenizer::named(pre).ok_or_else(|| err(format!("pre-tokenizer '{pre}' is not supported yet (supported: {})", PreTokenizer::NAMES)))?;
    let tokens: Vec<String> = meta(c, path, "tokenizer.ggml.tokens")?
        .to_vec()
        .map_err(|e| err(e.to_string()))?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| err(format!("tokenizer.ggml.tokens: {e}")))?;
    let merges: Vec<(String, String)> = meta(c, path, "tokenizer.ggml.merges")?
        .to_vec()
        .map_err(|e| err(e.to_string()))?
        .iter()
        .map(|v| {
            let s = v.to_string().map_err(|e| err(e.to_string()))?;
            s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| err(format!("bad merge '{s}'")))
        })
        .collect::<Result<_>>()?;
    let types: Vec<i32> = match c.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v.to_vec().map_err(|e| err(e.to_string()))?.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| err(format!("BPE: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    pre.install(&mut tok).map_err(|e| err(format!("pre-tokenizer: {e}")))?;
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    // Control tokens (type 3) are special: matched whole, skipped when decoding.
    let specials: Vec<AddedToken> = tokens.iter().zip(&types).filter(|(_, &t)| t == 3).map(|(s, _)| AddedToken::from(s.clone(), true)).collect();
    tok.add_special_tokens(specials).map_err(|e| err(format!("special tokens: {e}")))?;
    // User-defined tokens (type 4: Qwen's <think>, <tool_call>, …) are matched whole too, and
    // kept when decoding, as tokenizer.json's non-special added tokens.
    let user: Vec<AddedToken> = tokens.iter().zip(&types).filter(|(_, &t)| t == 4).map(|(s, _)| AddedToken::from(s.clone(), false).normalized(false)).collect();
    tok.add_tokens(user).map_err(|e| err(format!("user-defined tokens: {e}")))?;
    Ok(tok)
}

/// Llama-3's split (its tokenizer.json's; llama.cpp runs the same with `(?i:…)` spelled out):
/// contractions in any case, letters with one leading non-letter, numbers in runs of 1 to 3
/// digits, punctuation runs, newlines, whitespace.
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's (also Qwen2.5's, Qwen3's, DeepSeek-R1-Distill-Qwen's): Llama-3's with single digits.
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers a GGUF's `tokenizer.ggml.pre` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's ByteLevel regex, no prefix space.
    Gpt2,
    /// SmolLM2: digits one by one, then GPT-2's.
    Smollm,
    /// Llama-3 (`llama-bpe`): [`LLAMA3_REGEX`], then ByteLevel without its own regex.
    Llama3,
    /// Qwen2 family: NFC, [`QWEN2_REGEX`], then ByteLevel without its own regex.
    Qwen2,
}

impl PreTokenizer {
    /// The names accepted, for error messages.
    pub const NAMES: &'static str = "default, gpt2, smollm, llama-bpe (llama3, llama-v3), qwen2 (deepseek-r1-qwen)";

    /// The pre-tokenizer of a `tokenizer.ggml.pre` value (llama.cpp's names), if supported.
    pub fn named(name: &str) -> Option<PreTokenizer> {
        Some(match name {
            "default" | "gpt2" | "gpt-2" => PreTokenizer::Gpt2,
            "smollm" => PreTokenizer::Smollm,
            "llama-bpe" | "llama3" | "llama-v3" => PreTokenizer::Llama3,
            "qwen2" | "deepseek-r1-qwen" => PreTokenizer::Qwen2,
            _ => return None,
        })
    }

    /// Set the normalizer and pre-tokenizer of `tok` as the model's tokenizer.json has them.
    pub fn install(self, tok: &mut Tokenizer) -> tokenizers::Result<()> {
        let split = |re: &str| Split::new(SplitPattern::Regex(re.into()), SplitDelimiterBehavior::Isolated, false);
        match self {
            PreTokenizer::Gpt2 => {
                tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
            }
            PreTokenizer::Smollm => {
                tok.with_pre_tokenizer(Some(Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()])));
            }
            PreTokenizer::Llama3 => {
                tok.with_pre_tokenizer(Some(Sequence::new(vec![split(LLAMA3_REGEX)?.into(), ByteLevel::new(false, true, false).into()])));
            }
            PreTokenizer::Qwen2 => {
                tok.with_normalizer(Some(tokenizers::normalizers::unicode::NFC))?;
                tok.with_pre_tokenizer(Some(Sequence::new(vec![split(QWEN2_REGEX)?.into(), ByteLevel::new(false, false, false).into()])));
            }
        }
        Ok(())
    }
}
