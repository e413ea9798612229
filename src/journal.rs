//! The on-disk journal every resumable store is built on: an identity file (the JSON that says
//! what a directory holds, checked before anything is resumed) and append-only JSON-lines logs
//! that survive a crash mid-write.
//!
//! A process killed while appending leaves at most one torn line, and it is the last one:
//! [`Journal::open`] drops it and repairs the file so the next append starts on a fresh line. A
//! bad line anywhere else was not made by a crash, so it is an error naming the file and line.
//! Whole-file rewrites (repair, [`Journal::retain`], the identity file) go through a temporary
//! file in the same directory and a rename, so a crash leaves the old file or the new one.

use std::fs::File;
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Write `bytes` to `path` atomically: a temporary file next to it, synced, then renamed over it.
/// The temporary file is this writer's own (pid, thread, time), so processes replacing the same
/// file at once (array tasks writing one `sweep.json`) never write into each other's.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = path.with_file_name(format!(".{name}.tmp-{}-{:?}-{nanos}", std::process::id(), std::thread::current().id()));
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        // A name of our own is never reused: do not leave it behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// What [`ensure_identity`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// No identity file yet: it was written, the directory is new.
    Created,
    /// The identity file holds the same JSON: the directory may be resumed.
    Same,
}

/// Write `config` to `path` (pretty JSON), or check that the file already there holds the same
/// JSON. On a mismatch the error names the directory, says what it `holds` (e.g. "a different
/// run"), lists the differing keys as `key: old -> new`, and says what to do.
pub fn ensure_identity(path: &Path, config: &Value, holds: &str) -> Result<Identity> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomic(path, serde_json::to_string_pretty(config).expect("JSON values serialise").as_bytes())?;
            return Ok(Identity::Created);
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    let old: Value = serde_json::from_str(&text)
        .map_err(|e| Error::data(path, format!("not valid JSON ({e}): delete {} to start over", dir.display())))?;
    if &old == config {
        return Ok(Identity::Same);
    }
    let mut diffs = Vec::new();
    diff_keys("", &old, config, &mut diffs);
    Err(Error::usage(format!(
        "{} holds {holds} ({}): choose another name or delete the dir",
        dir.display(),
        diffs.join("; ")
    )))
}

/// Collect `key: old -> new` for every leaf that differs, with dotted paths into nested objects
/// (`options.lr: 0.00005 -> 0.0001`); a key on one side only shows `null` on the other.
fn diff_keys(prefix: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut keys: Vec<&String> = n.keys().collect();
            keys.extend(o.keys().filter(|k| !n.contains_key(*k)));
            for k in keys {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                diff_keys(&path, o.get(k).unwrap_or(&Value::Null), n.get(k).unwrap_or(&Value::Null), out);
            }
        }
        _ if old != new => out.push(format!("{}: {old} -> {new}", if prefix.is_empty() { "(whole file)" } else { prefix })),
        _ => {}
    }
}

/// An append-only JSON-lines log of `T` records, one per line. Appends take `&self` (the file
/// handle sits behind a lock), so one journal can be shared between threads.
pub struct Journal<T> {
    path: PathBuf,
    file: Mutex<File>,
    _records: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Open (creating it and its directory if needed) and return the records already there,
    /// after dropping a torn last line.
    pub fn open(path: &Path) -> Result<(Journal<T>, Vec<T>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let records = read_lines::<T>(path)?.into_iter().map(|(_, r)| r).collect();
        let file = open_append(path)?;
        Ok((Journal { path: path.to_path_buf(), file: Mutex::new(file), _records: PhantomData }, records))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record as one line and flush it.
    pub fn append(&self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record).expect("journal records serialise to JSON");
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // One write call per line: concurrent appenders never interleave inside a line.
        f.write_all(&line).and_then(|_| f.flush()).map_err(|e| Error::io(&self.path, e))
    }

    /// Keep only the records for which `keep` holds (the lines are kept byte for byte) and
    /// return them. Rewrites the file atomically, and only when something is dropped.
    pub fn retain(&self, keep: impl Fn(&T) -> bool) -> Result<Vec<T>> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let lines = read_lines::<T>(&self.path)?;
        let before = lines.len();
        let (kept_text, kept): (Vec<Vec<u8>>, Vec<T>) = lines.into_iter().filter(|(_, r)| keep(r)).unzip();
        if kept.len() < before {
            write_atomic(&self.path, &kept_text.concat())?;
        }
        // A rewrite (here or a repair while reading) renamed a new file into place: appends
        // must go to it, not to the old one.
        *f = open_append(&self.path)?;
        Ok(kept)
    }
}

fn open_append(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))
}

/// Parse every line of `path` (absent = empty), returning each record with its line (newline
/// included). A torn last line is dropped and the file repaired; a bad line before it is an error.
fn read_lines<T: DeserializeOwned>(path: &Path) -> Result<Vec<(Vec<u8>, T)>> {
    // Bytes, not a String: a write cut inside a multi-byte character is still only a torn line.
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut spans = Vec::new(); // (line number, start, end without the newline)
    let mut start = 0;
    for (no, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        let end = start + line.len();
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        if !body.iter().all(u8::is_ascii_whitespace) {
            spans.push((no + 1, start, start + body.len()));
        }
        start = end;
    }
    let mut out = Vec::with_capacity(spans.len());
    let mut good_end = 0; // bytes of the file that stay as they are
    for (i, &(no, s, e)) in spans.iter().enumerate() {
        match serde_json::from_slice::<T>(&bytes[s..e]) {
            Ok(r) => {
                let mut text = bytes[s..e].to_vec();
                text.push(b'\n');
                out.push((text, r));
                good_end = e;
            }
            Err(_) if i + 1 == spans.len() => {
                eprintln!("note: {}: dropped a torn last line (line {no}) left by an interrupted write", path.display());
            }
            Err(err) => {
                return Err(Error::data(
                    path,
                    format!("line {no}: {err}: only the last line can be torn by a crash; fix or delete this line"),
                ))
            }
        }
    }
    // Repair: cut a torn line and make sure the file ends with a newline before the next append.
    let repaired_len = if good_end == 0 { 0 } else { good_end + 1 };
    if bytes.len() != repaired_len || (good_end > 0 && bytes[good_end] != b'\n') {
        let mut keep = bytes[..good_end].to_vec();
        if good_end > 0 {
            keep.push(b'\n');
        }
        write_atomic(path, &keep)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        step: u64,
        note: String,
    }

    fn rec(step: u64) -> Rec {
        Rec { step, note: format!("n{step}é") }
    }

    #[test]
    fn appends_one_line_per_record_and_reads_them_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/log.jsonl");
        let (j, old) = Journal::<Rec>::open(&p).unwrap();
        assert!(old.is_empty());
        j.append(&rec(1)).unwrap();
        j.append(&rec(2)).unwrap();
        drop(j);
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 2);
        let (_, back) = Journal::<Rec>::open(&p).unwrap();
        assert_eq!(back, vec![rec(1), rec(2)]);
    }

    #[test]
    fn torn_last_line_is_dropped_and_the_next_append_starts_fresh() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        let full = serde_json::to_string(&rec(1)).unwrap();
        // Cut inside the multi-byte 'é': the torn line is not even valid UTF-8.
        let torn = serde_json::to_vec(&rec(2)).unwrap();
        let cut = torn.iter().position(|&b| b == 0xc3).unwrap() + 1;
        std::fs::write(&p, [format!("{full}\n").as_bytes(), &torn[..cut]].concat()).unwrap();
        let (j, got) = Journal::<Rec>::open(&p).unwrap();
        assert_eq!(got, vec![rec(1)]);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{full}\n"), "the torn line is cut from the file");
        j.append(&rec(3)).unwrap();
        let (_, got) = Journal::<Rec>::open(&p).unwrap();
        assert_eq!(got, vec![rec(1), rec(3)]);
    }

    #[test]
    fn complete_last_line_without_newline_is_kept_and_terminated() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        std::fs::write(&p, serde_json::to_string(&rec(1)).unwrap()).unwrap();
        let (j, got) = Journal::<Rec>::open(&p).unwrap();
        assert_eq!(got, vec![rec(1)]);
        j.append(&rec(2)).unwrap();
        let (_, got) = Journal::<Rec>::open(&p).unwrap();
        assert_eq!(got, vec![rec(1), rec(2)]);
    }

    #[test]
    fn corrupt_middle_line_is_an_error_with_its_line_number() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        let line = |r: Rec| serde_json::to_string(&r).unwrap();
        std::fs::write(&p, format!("{}\n\n{{\"step\": oops\n{}\n", line(rec(1)), line(rec(2)))).unwrap();
        let e = Journal::<Rec>::open(&p).err().unwrap().to_string();
        assert!(e.contains("log.jsonl") && e.contains("line 3:") && e.contains("fix or delete"), "{e}");
        assert!(std::fs::read_to_string(&p).unwrap().contains("oops"), "nothing is rewritten on error");
    }

    #[test]
    fn retain_keeps_matching_lines_and_appends_continue_after_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        let (j, _) = Journal::<Rec>::open(&p).unwrap();
        for s in 1..=5 {
            j.append(&rec(s)).unwrap();
        }
        assert_eq!(j.retain(|r| r.step <= 3).unwrap(), vec![rec(1), rec(2), rec(3)]);
        j.append(&rec(4)).unwrap();
        let (_, got) = Journal::<Rec>::open(&p).unwrap();
        assert_eq!(got.iter().map(|r| r.step).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().contains(".tmp")).collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn identity_is_written_then_checked_and_a_mismatch_lists_the_keys() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run/config.json");
        let a = serde_json::json!({"model": "m", "options": {"lr": 0.1, "epochs": 3}, "gone": 1});
        assert_eq!(ensure_identity(&p, &a, "a different run").unwrap(), Identity::Created);
        assert_eq!(ensure_identity(&p, &a, "a different run").unwrap(), Identity::Same);
        let b = serde_json::json!({"model": "m", "options": {"lr": 0.2, "epochs": 3}, "new": true});
        let e = ensure_identity(&p, &b, "a different run").err().unwrap().to_string();
        assert!(e.contains("holds a different run"), "{e}");
        assert!(e.contains("options.lr: 0.1 -> 0.2") && e.contains("new: null -> true") && e.contains("gone: 1 -> null"), "{e}");
        assert!(!e.contains("model:") && !e.contains("epochs"), "only differing keys: {e}");
        assert!(e.contains("choose another name or delete the dir"), "{e}");
        assert_eq!(serde_json::from_str::<Value>(&std::fs::read_to_string(&p).unwrap()).unwrap(), a, "the file is not replaced");
    }
}
