//! Build a Hugging Face tokenizer from GGUF metadata.
//!
//! candle's own `TokenizerFromGguf` gets SmolLM2 wrong (pre-tokenizer "smollm" falls back to a
//! ByteLevel *with* a prefix space). llama.cpp's rule for "smollm" is: split digits one by one,
//! then GPT-2 ByteLevel without prefix space. With that, ids match transformers id for id.

use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use super::meta::meta;
use crate::error::{Error, Result};

pub fn from_gguf(c: &Content, path: &Path) -> Result<Tokenizer> {
    let err = |m: String| Error::data(path, m);
    let model = meta(c, path, "tokenizer.ggml.model")?.to_string().map_err(|e| err(e.to_string()))?;
    if model != "gpt2" {
        return Err(err(format!("tokenizer model '{model}' is not supported yet (only BPE 'gpt2')")));
    }
    let pre = c.metadata.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(|s| s.as_str()).unwrap_or("default");
    let digits_first = match pre {
        "smollm" => true,
        "default" | "gpt2" | "gpt-2" => false,
        other => return Err(err(format!("pre-tokenizer '{other}' is not supported yet (supported: smollm, gpt2)"))),
    };
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
    let byte_level = ByteLevel::new(false, true, true);
    if digits_first {
        tok.with_pre_tokenizer(Some(Sequence::new(vec![Digits::new(true).into(), byte_level.into()])));
    } else {
        tok.with_pre_tokenizer(Some(byte_level));
    }
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    // Control tokens (type 3) are special: matched whole, skipped when decoding.
    let specials: Vec<AddedToken> = tokens.iter().zip(&types).filter(|(_, &t)| t == 3).map(|(s, _)| AddedToken::from(s.clone(), true)).collect();
    tok.add_special_tokens(specials).map_err(|e| err(format!("special tokens: {e}")))?;
    Ok(tok)
}
