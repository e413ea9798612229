//! Typed reads of GGUF metadata, each failure naming the file and the key.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{Error, Result};

/// The value at `key`, or an error naming the file and the key.
pub(crate) fn meta<'a>(c: &'a Content, path: &Path, key: &str) -> Result<&'a Value> {
    c.metadata.get(key).ok_or_else(|| Error::data(path, format!("GGUF metadata lacks '{key}'")))
}

pub(crate) fn meta_usize(c: &Content, path: &Path, key: &str) -> Result<usize> {
    let v = meta(c, path, key)?;
    v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| x as usize))
        .map_err(|e| Error::data(path, format!("GGUF '{key}': {}", crate::error::candle_message(&e))))
}

pub(crate) fn meta_f64(c: &Content, path: &Path, key: &str) -> Result<f64> {
    meta(c, path, key)?.to_f32().map(|x| x as f64).map_err(|e| Error::data(path, format!("GGUF '{key}': {}", crate::error::candle_message(&e))))
}
