//! The per-request disk cache of teacher answers: JSON lines `{key, text, prompt_tokens,
//! completion_tokens}`, appended and flushed one answer at a time. A torn last line (crash
//! mid-write) is ignored.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub key: String,
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

pub struct Cache {
    path: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
    file: Mutex<std::fs::File>,
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
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let mut entries = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines() {
                if let Ok(e) = serde_json::from_str::<Entry>(line) {
                    entries.insert(e.key.clone(), e);
                }
            }
            // Make sure the next append starts on a fresh line after a torn write.
            if !text.is_empty() && !text.ends_with('\n') {
                std::fs::OpenOptions::new().append(true).open(path).and_then(|mut f| f.write_all(b"\n")).map_err(|e| Error::io(path, e))?;
            }
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(Cache { path: path.to_path_buf(), entries: Mutex::new(entries), file: Mutex::new(file) })
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.entries.lock().unwrap().get(key).cloned()
    }

    pub fn put(&self, key: &str, text: &str, prompt_tokens: u64, completion_tokens: u64) -> Result<()> {
        let e = Entry { key: key.to_string(), text: text.to_string(), prompt_tokens, completion_tokens };
        let line = serde_json::to_string(&e).expect("entry serialises") + "\n";
        {
            let mut f = self.file.lock().unwrap();
            f.write_all(line.as_bytes()).and_then(|_| f.flush()).map_err(|err| Error::io(&self.path, err))?;
        }
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
