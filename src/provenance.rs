//! What a result was made with: the cotlab version and git commit of this build, and SHA-256
//! hashes of the files read (model weights, data files). Every training run appends one record
//! per invocation (`provenance.jsonl`) and every sweep point stores one in `point.json`, so a
//! number can be traced to the exact code, weights and data behind it.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit this binary was built from (`-dirty` when tracked files had changes), or
/// "unknown" outside a git checkout (see `build.rs`).
pub fn git_commit() -> &'static str {
    option_env!("COTLAB_GIT_COMMIT").unwrap_or("unknown")
}

/// One file read: where, how big, and its SHA-256 (hex).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileHash {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The build and the inputs behind a result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    pub cotlab_version: String,
    pub git_commit: String,
    /// The model file(s) the student was loaded from.
    pub model: Vec<FileHash>,
    /// Data files read (training corpus, gold answers, test set); generated data lists none.
    pub data: Vec<FileHash>,
    /// Every seed that decides the result, by name (`sft`, `train_data`, `eval`, …).
    pub seeds: serde_json::Map<String, serde_json::Value>,
    pub created_unix_s: u64,
}

impl Provenance {
    pub fn new(model: &[PathBuf], data: &[PathBuf], seeds: serde_json::Map<String, serde_json::Value>) -> Result<Provenance> {
        Ok(Provenance {
            cotlab_version: VERSION.to_string(),
            git_commit: git_commit().to_string(),
            model: model.iter().map(|p| hash_file(p)).collect::<Result<_>>()?,
            data: data.iter().map(|p| hash_file(p)).collect::<Result<_>>()?,
            seeds,
            created_unix_s: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        })
    }
}

/// Hashes already computed in this process, keyed by (path, size, mtime): a sweep reads the same
/// 100 MB model file for every point, and hashing it once is enough while it is unchanged.
/// What identifies one version of a file without reading it: (path, size, mtime).
type FileVersion = (PathBuf, u64, SystemTime);
static CACHE: Mutex<Option<HashMap<FileVersion, String>>> = Mutex::new(None);

/// SHA-256 of a file (a directory: of its regular files in name order, each name then bytes, so
/// a Hugging Face model dir hashes to one value).
pub fn hash_file(path: &Path) -> Result<FileHash> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(path).map_err(|e| Error::io(path, e))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
        entries.sort();
        let mut h = Sha256::new();
        let mut bytes = 0;
        for p in entries {
            let f = hash_file(&p)?;
            h.update(p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default().as_bytes());
            h.update(f.sha256.as_bytes());
            bytes += f.bytes;
        }
        return Ok(FileHash { path: path.display().to_string(), bytes, sha256: hex(&h.finalize()) });
    }
    let key = (path.to_path_buf(), meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
    if let Some(sha) = CACHE.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashMap::new).get(&key) {
        return Ok(FileHash { path: path.display().to_string(), bytes: meta.len(), sha256: sha.clone() });
    }
    let (mut f, _) = crate::paths::open_regular(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let sha = hex(&h.finalize());
    CACHE.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashMap::new).insert(key, sha.clone());
    Ok(FileHash { path: path.display().to_string(), bytes: meta.len(), sha256: sha })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_bytes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("abc.txt");
        std::fs::write(&p, "abc").unwrap();
        // FIPS 180-2's test vector for "abc".
        assert_eq!(hash_file(&p).unwrap().sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(hash_file(&p).unwrap().bytes, 3);
        // A changed file is hashed again, not served from the cache.
        std::fs::write(&p, "abcd").unwrap();
        assert_ne!(hash_file(&p).unwrap().sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(hash_file(&d.path().join("missing")).unwrap_err().to_string().contains("missing"));
    }
}
