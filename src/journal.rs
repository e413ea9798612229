//! The on-disk journal every resumable store is built on: an identity file (the JSON that says
//! what a directory holds, checked before anything is resumed) and append-only JSON-lines logs
//! that survive a crash mid-write and that several processes may append to at once (the shared
//! teacher cache).
//!
//! * Appends only add bytes at the end: a record is one line of compact JSON, written in one
//!   write call while the appender holds the journal's advisory lock (`flock`), so appenders in
//!   different processes never interleave and a reader always sees a prefix of the file to be.
//! * Reading never writes: [`Journal::open`] leaves the file as it is (a repair by rewrite would
//!   strand a process appending meanwhile on the replaced file, and its records with it).
//! * A crash mid-append leaves a torn line: cut-off JSON without its newline, at the end. The
//!   next append sees, under the lock, that the file does not end with a newline and starts on a
//!   fresh line, so a torn line stays behind as a line of its own. A line that is cut-off JSON
//!   (the text ends before its value does) is skipped, with a note, wherever it is; an
//!   unterminated last line that parses is a record.
//! * Any other line that fails to parse, with its newline or without, is an error naming the file
//!   and the line, and the file is left as it is: a crash cuts a line short, it never garbles one.
//! * Whole-file rewrites ([`Journal::retain`], the identity file) go through a temporary file in
//!   the same directory and a rename, so a crash leaves the old file or the new one. `retain`
//!   re-reads and replaces the file under the lock; an appender that gets the lock next sees that
//!   the path names another file and reopens it first, so no append lands in a replaced file.

use std::fs::File;
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::paths::FileLock;

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
    crate::paths::refuse_link(path)?;
    let text = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomic(path, serde_json::to_string_pretty(config).expect("JSON values serialise").as_bytes())?;
            return Ok(Identity::Created);
        }
        _ => crate::paths::read_text(path)?,
    };
    let old: Value = serde_json::from_str(&text).map_err(|e| Error::data(path, format!("not valid JSON ({e}): delete {} to start over", dir.display())))?;
    if &old == config {
        return Ok(Identity::Same);
    }
    let mut diffs = Vec::new();
    diff_keys("", &old, config, &mut diffs);
    Err(Error::usage(format!("{} holds {holds} ({}): choose another name or delete the dir", dir.display(), diffs.join("; "))))
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
/// handle sits behind a mutex), so one journal can be shared between threads; other handles on
/// the same file (other processes) are kept apart by the file lock.
pub struct Journal<T> {
    path: PathBuf,
    file: Mutex<File>,
    _records: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Open (creating it and its directory if needed) and return the records already there,
    /// skipping torn lines. Nothing already in the file is changed.
    pub fn open(path: &Path) -> Result<(Journal<T>, Vec<T>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        // A link planted at the journal's name is neither read nor appended through.
        crate::paths::refuse_link(path)?;
        let records = read_lines::<T>(path)?.into_iter().map(|(_, r)| r).collect();
        let file = open_append(path)?;
        Ok((Journal { path: path.to_path_buf(), file: Mutex::new(file), _records: PhantomData }, records))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record as one line, under the file lock, on a fresh line.
    pub fn append(&self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record).expect("journal records serialise to JSON");
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _locked = lock_live(&self.path, &mut f)?;
        if !ends_with_newline(&f).map_err(|e| Error::io(&self.path, e))? {
            // A torn line from a crash: close it, so this record is a line of its own.
            line.insert(0, b'\n');
        }
        // One write call per line: a reader never sees half of it followed by something else.
        (&*f).write_all(&line).and_then(|_| (&*f).flush()).map_err(|e| Error::io(&self.path, e))
    }

    /// Keep only the records for which `keep` holds (the lines are kept byte for byte, torn
    /// lines go) and return them. Re-reads the file under the lock and rewrites it atomically,
    /// and only when something is dropped: appends from other handles are never lost.
    pub fn retain(&self, keep: impl Fn(&T) -> bool) -> Result<Vec<T>> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _locked = lock_live(&self.path, &mut f)?;
        let lines = read_lines::<T>(&self.path)?;
        let before = lines.len();
        let (kept_text, kept): (Vec<Vec<u8>>, Vec<T>) = lines.into_iter().filter(|(_, r)| keep(r)).unzip();
        if kept.len() < before {
            // Our handle now names the replaced file: the next append sees it and reopens.
            write_atomic(&self.path, &kept_text.concat())?;
        }
        Ok(kept)
    }
}

fn open_append(path: &Path) -> Result<File> {
    // Readable too: an append reads the last byte to see whether a torn line needs closing.
    crate::paths::append(path)
}

/// Lock `file`, the journal at `path`, for a change: an exclusive `flock` held until the guard
/// drops. If `path` names another file by then (a `retain` elsewhere replaced it while we
/// waited), reopen it and lock that one, so what is written goes to the file readers will read.
fn lock_live(path: &Path, file: &mut File) -> Result<FileLock> {
    loop {
        let locked = FileLock::exclusive(file).map_err(|e| Error::io(path, e))?;
        if is_file_at(file, path).map_err(|e| Error::io(path, e))? {
            return Ok(locked);
        }
        drop(locked);
        *file = open_append(path)?;
    }
}

/// Whether `path` still names the open `file` (false when it names another file or none).
fn is_file_at(file: &File, path: &Path) -> std::io::Result<bool> {
    let at = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(same_inode(&file.metadata()?, &at))
}

#[cfg(unix)]
fn same_inode(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// Off Unix a file cannot be told from its replacement: appends trust the handle.
#[cfg(not(unix))]
fn same_inode(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    true
}

/// Whether the file is empty or ends with a newline (else a torn line is at its end).
fn ends_with_newline(file: &File) -> std::io::Result<bool> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(true);
    }
    let mut last = [0u8];
    #[cfg(unix)]
    std::os::unix::fs::FileExt::read_exact_at(file, &mut last, len - 1)?;
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek};
        let mut f = file;
        f.seek(std::io::SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
    }
    Ok(last[0] == b'\n')
}

/// Parse every line of `path` (absent = empty), returning each record with its line (newline
/// included). Torn lines are skipped with a note; any other bad line is an error. Reads only.
fn read_lines<T: DeserializeOwned>(path: &Path) -> Result<Vec<(Vec<u8>, T)>> {
    // Bytes, not a String: a write cut inside a multi-byte character is still only a torn line.
    let bytes = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        // A regular file only (a FIFO planted here would hang the read).
        _ => crate::paths::read_bytes(path)?,
    };
    let mut out = Vec::new();
    let mut torn = Vec::new();
    for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        if body.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<T>(body) {
            Ok(r) => out.push(([body, b"\n"].concat(), r)),
            Err(_) if is_cut_off(body) => torn.push((i + 1).to_string()),
            Err(err) => {
                return Err(Error::data(path, format!("line {}: {err}: a crash only cuts a line short, it never garbles one; fix or delete this line", i + 1)))
            }
        }
    }
    if !torn.is_empty() {
        eprintln!("note: {}: skipped torn line(s) {} left by interrupted writes", path.display(), torn.join(", "));
    }
    Ok(out)
}

/// Whether `body` is JSON cut short: every byte fits, the text ends before its value does.
fn is_cut_off(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err_and(|e| e.is_eof())
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

    /// A line of `rec(2)` cut inside the multi-byte 'é': not even valid UTF-8.
    fn torn_rec2() -> Vec<u8> {
        let torn = serde_json::to_vec(&rec(2)).unwrap();
        let cut = torn.iter().position(|&b| b == 0xc3).unwrap() + 1;
        torn[..cut].to_vec()
    }

    fn line(r: Rec) -> String {
        serde_json::to_string(&r).unwrap() + "\n"
    }

    #[cfg(unix)]
    fn inode(p: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
    }

    #[test]
    fn torn_last_line_is_skipped_and_the_file_is_left_as_it_is() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        let bytes = [line(rec(1)).as_bytes(), &torn_rec2()].concat();
        std::fs::write(&p, &bytes).unwrap();
        #[cfg(unix)]
        let ino = inode(&p);
        let (_j, got) = Journal::<Rec>::open(&p).unwrap();
        assert_eq!(got, vec![rec(1)]);
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "reading never writes");
        #[cfg(unix)]
        assert_eq!(inode(&p), ino, "nor replaces the file");
    }

    #[test]
    fn append_after_a_torn_line_starts_a_fresh_line_and_the_torn_line_stays_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        std::fs::write(&p, [line(rec(1)).as_bytes(), &torn_rec2()].concat()).unwrap();
        let (j, _) = Journal::<Rec>::open(&p).unwrap();
        j.append(&rec(3)).unwrap();
        let want = [line(rec(1)).as_bytes(), &torn_rec2(), b"\n", line(rec(3)).as_bytes()].concat();
        assert_eq!(std::fs::read(&p).unwrap(), want, "the torn line is closed, not deleted");
        j.append(&rec(4)).unwrap();
        let (_, got) = Journal::<Rec>::open(&p).unwrap();
        assert_eq!(got, vec![rec(1), rec(3), rec(4)], "a torn line inside the file is skipped too");
    }

    #[test]
    fn complete_last_line_without_newline_is_kept_and_terminated() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        std::fs::write(&p, serde_json::to_string(&rec(1)).unwrap()).unwrap();
        let (j, got) = Journal::<Rec>::open(&p).unwrap();
        assert_eq!(got, vec![rec(1)]);
        j.append(&rec(2)).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), line(rec(1)) + line(rec(2)).as_str());
        let (_, got) = Journal::<Rec>::open(&p).unwrap();
        assert_eq!(got, vec![rec(1), rec(2)]);
    }

    #[test]
    fn corrupt_middle_line_is_an_error_with_its_line_number() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        let text = format!("{}\n{{\"step\": oops\n{}", line(rec(1)), line(rec(2)));
        std::fs::write(&p, &text).unwrap();
        let e = Journal::<Rec>::open(&p).err().unwrap().to_string();
        assert!(e.contains("log.jsonl") && e.contains("line 3:") && e.contains("fix or delete"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text, "nothing is rewritten on error");
    }

    /// A complete last line that fails to parse was not cut short by a crash (another version's
    /// record, an edit): an error, and the line stays. Unterminated but garbled: the same.
    #[test]
    fn complete_unparseable_last_line_is_an_error_and_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        for last in ["{\"step\": 2, \"note\": 5}\n", "{\"step\": 2, \"note\": 5}", "{\"step\": 2, oops"] {
            let text = line(rec(1)) + last;
            std::fs::write(&p, &text).unwrap();
            let e = Journal::<Rec>::open(&p).err().unwrap().to_string();
            assert!(e.contains("log.jsonl") && e.contains("line 2:") && e.contains("fix or delete"), "{last}: {e}");
            assert_eq!(std::fs::read_to_string(&p).unwrap(), text, "{last}: the file is unchanged");
        }
    }

    /// The case: one handle appends while another opens the journal and sees a torn
    /// last line; the appender's records must land in the file the path names.
    #[test]
    fn opening_with_a_torn_line_never_strands_another_handles_appends() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        let (writer, _) = Journal::<Rec>::open(&p).unwrap();
        writer.append(&rec(1)).unwrap();
        // A third process died mid-append.
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(&torn_rec2()).unwrap();
        let (_reader, got) = Journal::<Rec>::open(&p).unwrap();
        assert_eq!(got, vec![rec(1)]);
        for s in 3..=5 {
            writer.append(&rec(s)).unwrap();
        }
        let (_, got) = Journal::<Rec>::open(&p).unwrap();
        assert_eq!(got.iter().map(|r| r.step).collect::<Vec<_>>(), vec![1, 3, 4, 5]);
    }

    #[cfg(unix)]
    #[test]
    fn an_append_waits_for_the_file_lock_of_another_handle() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        let (j, _) = Journal::<Rec>::open(&p).unwrap();
        let other = open_append(&p).unwrap();
        let held = FileLock::exclusive(&other).unwrap();
        std::thread::scope(|s| {
            let t = s.spawn(|| j.append(&rec(1)).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert_eq!(std::fs::read(&p).unwrap(), b"", "no write while another handle holds the lock");
            drop(held);
            t.join().unwrap();
        });
        assert_eq!(std::fs::read_to_string(&p).unwrap(), line(rec(1)));
    }

    /// Writers on their own handles (as separate processes have) while another opens the journal
    /// again and again: every open succeeds, and no record is lost. Long lines, so that an open
    /// often reads one half written.
    #[test]
    fn concurrent_appenders_and_openers_lose_nothing() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        let long = |step: u64| Rec { step, note: "é".repeat(20_000) };
        let done = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for w in 0..4u64 {
                let (p, done) = (&p, &done);
                s.spawn(move || {
                    let (j, _) = Journal::<Rec>::open(p).unwrap();
                    for i in 0..50 {
                        j.append(&long(w * 1000 + i)).unwrap();
                    }
                    done.fetch_add(1, SeqCst);
                });
            }
            s.spawn(|| {
                let mut opens = 0;
                while done.load(SeqCst) < 4 || opens == 0 {
                    Journal::<Rec>::open(&p).unwrap();
                    opens += 1;
                }
            });
        });
        let (_, got) = Journal::<Rec>::open(&p).unwrap();
        let mut steps: Vec<u64> = got.iter().map(|r| r.step).collect();
        steps.sort();
        let want: Vec<u64> = (0..4).flat_map(|w| (0..50).map(move |i| w * 1000 + i)).collect();
        assert_eq!(steps, want);
    }

    /// `retain` on one handle replaces the file again and again while others append: those
    /// appends go to the new file, none to a replaced one.
    #[test]
    fn retain_under_concurrent_appends_loses_no_append() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        let stop = AtomicBool::new(false);
        let want = std::thread::scope(|s| {
            let writers: Vec<_> = (1..=3u64)
                .map(|w| {
                    let (p, stop) = (&p, &stop);
                    s.spawn(move || {
                        let (j, _) = Journal::<Rec>::open(p).unwrap();
                        let mut wrote = Vec::new();
                        // At least a few, then until the rewrites are over.
                        while wrote.len() < 20 || (!stop.load(SeqCst) && wrote.len() < 5000) {
                            let step = w * 100_000 + wrote.len() as u64;
                            j.append(&rec(step)).unwrap();
                            wrote.push(step);
                        }
                        wrote
                    })
                })
                .collect();
            let (j, _) = Journal::<Rec>::open(&p).unwrap();
            for _ in 0..30 {
                j.append(&Rec { step: 0, note: "drop me".into() }).unwrap();
                j.retain(|r| r.step != 0).unwrap();
            }
            stop.store(true, SeqCst);
            let mut want: Vec<u64> = writers.into_iter().flat_map(|t| t.join().unwrap()).collect();
            want.sort();
            want
        });
        let (_, got) = Journal::<Rec>::open(&p).unwrap();
        let mut steps: Vec<u64> = got.iter().map(|r| r.step).collect();
        steps.sort();
        assert_eq!(steps, want);
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
