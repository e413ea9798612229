//! The per-request disk cache of teacher answers: JSON lines `{key, text, prompt_tokens,
//! completion_tokens}` (plus `reasoning` and `reasoning_tokens` for a reasoning model's answer;
//! lines written before those existed read as answers without a trace), appended and flushed one answer at a time (a [`Journal`]). Several
//! processes may share one cache file (the default is one per user): appends are locked, opening
//! never rewrites it, and a torn line from a crash mid-write is skipped, so that request is sent
//! again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::journal::Journal;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub key: String,
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The answer's reasoning trace, kept apart from `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

pub struct Cache {
    journal: Journal<Entry>,
    entries: Mutex<HashMap<String, Entry>>,
}

/// A 128-bit FNV-1a key over the request's parts (stable across Rust versions and machines).
pub fn key(parts: &[&str]) -> String {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    for p in parts {
        for byte in p.bytes().chain([0xffu8]) {
            a = (a ^ byte as u64).wrapping_mul(0x100_0000_01b3);
            b = (b ^ byte as u64).wrapping_mul(0x100_0000_01b3).rotate_left(5);
        }
    }
    format!("{a:016x}{b:016x}")
}

impl Cache {
    pub fn open(path: &Path) -> Result<Cache> {
        let (journal, old) = Journal::<Entry>::open(path)?;
        let entries = old.into_iter().map(|e| (e.key.clone(), e)).collect();
        Ok(Cache { journal, entries: Mutex::new(entries) })
    }

    /// The cache file (the Batch API's journal lives beside it).
    pub fn path(&self) -> &Path {
        self.journal.path()
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.entries.lock().unwrap().get(key).cloned()
    }

    pub fn put(&self, e: Entry) -> Result<()> {
        self.journal.append(&e)?;
        self.entries.lock().unwrap().insert(e.key.clone(), e);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
