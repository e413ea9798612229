//! TensorBoard event files: what `tensorboard --logdir` and its `EventAccumulator` read.
//!
//! Invariants:
//! * One file per writer, `events.out.tfevents.<secs>.<host>.<pid>.<n>` in the given dir (created
//!   on the first event, so an invocation that logs nothing leaves no file); an existing file is
//!   never opened again, so a resumed run appends a file and never rewrites an earlier one.
//! * Every record is TFRecord-framed as tensorboard's `record_writer.py` writes it: the data's
//!   length (u64 LE), the masked CRC-32C of those 8 bytes, the data, the masked CRC-32C of the
//!   data. The first record of a file is an `Event` with `file_version: "brain.Event:2"`.
//! * A writer that resumes at step `k` writes a `SessionLog START` at step `k + 1` first: readers
//!   then drop what an earlier file holds past the checkpoint (steps that are trained again).
//! * Each event is flushed as written: a killed run loses at most the record being written, and
//!   readers skip a torn last record.
//!
//! The messages are tensorboard's `compat/proto/event.proto` and `summary.proto`, only the
//! fields written here, declared with prost's derives (field numbers as in those files).

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};

/// `tensorboard.Event` (event.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

/// `Event.what`: the fields of the oneof this writer uses.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorboard.SessionLog`: `status` 1 is START.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

const SESSION_START: i32 = 1;

/// `tensorboard.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorboard.Summary.Value`: a tag and a scalar.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(string, tag = "1")]
    pub tag: String,
    /// A oneof in summary.proto, so a scalar of 0 is still written (a plain proto3 field
    /// at its default would be left out, and readers would see no scalar at all).
    #[prost(oneof = "Kind", tags = "2")]
    pub kind: Option<Kind>,
}

/// `Summary.Value.value`: the scalar case.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
}

/// The version string readers check in a file's first event.
pub const FILE_VERSION: &str = "brain.Event:2";

/// CRC-32C, rotated and offset as TFRecord stores it (`masked_crc32c`).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, the data's masked CRC.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

fn wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The machine's name as the kernel has it (Linux), or `localhost`.
fn host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    // The host is part of a file name: nothing that would make it a path.
    let clean: String = name.trim().chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '-' }).collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// An event file, opened on the first event (see the module doc).
pub struct EventWriter {
    dir: PathBuf,
    /// The step a resumed run goes on from (a START event is written before the first scalar).
    resume_at: Option<i64>,
    file: Option<(PathBuf, std::fs::File)>,
}

impl EventWriter {
    /// A writer for `dir`; `resumed_from` is the step of the checkpoint a run goes on from.
    pub fn new(dir: &Path, resumed_from: Option<u64>) -> EventWriter {
        EventWriter { dir: dir.to_path_buf(), resume_at: resumed_from.map(|s| s as i64 + 1), file: None }
    }

    /// The file written so far (None until the first event).
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(p, _)| p.as_path())
    }

    fn open(&mut self) -> Result<&mut std::fs::File> {
        if self.file.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
            let secs = wall_time() as u64;
            let (host, pid) = (host(), std::process::id());
            // A new name each time: two writers in one second (a sweep's train and eval) or two
            // processes never share a file.
            let mut n = 0;
            let (path, f) = loop {
                let p = self.dir.join(format!("events.out.tfevents.{secs}.{host}.{pid}.{n}"));
                match std::fs::OpenOptions::new().write(true).create_new(true).open(&p) {
                    Ok(f) => break (p, f),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                    Err(e) => return Err(Error::io(&p, e)),
                }
            };
            self.file = Some((path, f));
            self.write(&Event { wall_time: wall_time(), step: 0, what: Some(What::FileVersion(FILE_VERSION.into())) })?;
            if let Some(step) = self.resume_at {
                self.write(&Event { wall_time: wall_time(), step, what: Some(What::SessionLog(SessionLog { status: SESSION_START })) })?;
            }
        }
        Ok(&mut self.file.as_mut().expect("opened above").1)
    }

    fn write(&mut self, e: &Event) -> Result<()> {
        let bytes = frame(&e.encode_to_vec());
        let (path, f) = self.file.as_mut().expect("write after open");
        f.write_all(&bytes).and_then(|_| f.flush()).map_err(|e| Error::io(path, e))
    }

    /// One event holding `values` (tag, value) as scalars at `step`.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        self.open()?;
        let value = values.iter().map(|(tag, v)| Value { tag: tag.to_string(), kind: Some(Kind::SimpleValue(*v as f32)) }).collect();
        self.write(&Event { wall_time: wall_time(), step: step as i64, what: Some(What::Summary(Summary { value })) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known values: `masked_crc32c` of tensorboard's record writer (crc32c("") = 0,
    /// crc32c("123456789") = 0xe3069283, the CRC-32C check value).
    #[test]
    fn masked_crc_matches_the_tfrecord_definition() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
        assert_eq!(masked_crc32c(b"123456789"), 0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    /// A file holds the version event first, then the START of a resumed run, then the scalars
    /// (zeros included), each record framed; a second writer in the same dir writes a second file.
    #[test]
    fn records_are_framed_and_each_writer_has_its_own_file() {
        let d = tempfile::tempdir().unwrap();
        let mut w = EventWriter::new(d.path(), Some(4));
        assert!(w.path().is_none(), "nothing written, no file");
        w.scalars(5, &[("train/loss", 1.5), ("eval/accuracy", 0.0)]).unwrap();
        let bytes = std::fs::read(w.path().unwrap()).unwrap();
        let mut events = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), masked_crc32c(&bytes[at..at + 8]));
            let data = &bytes[at + 12..at + 12 + len];
            assert_eq!(u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()), masked_crc32c(data));
            events.push(Event::decode(data).unwrap());
            at += 16 + len;
        }
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].what, Some(What::FileVersion(FILE_VERSION.into())));
        assert_eq!((events[1].step, &events[1].what), (5, &Some(What::SessionLog(SessionLog { status: SESSION_START }))));
        let Some(What::Summary(s)) = &events[2].what else { panic!("{:?}", events[2]) };
        assert_eq!((events[2].step, s.value[0].tag.as_str(), &s.value[0].kind, s.value.len()), (5, "train/loss", &Some(Kind::SimpleValue(1.5)), 2));
        // A zero is a scalar too: written, not left out as a default.
        assert_eq!(s.value[1].kind, Some(Kind::SimpleValue(0.0)));
        let mut again = EventWriter::new(d.path(), None);
        again.scalars(6, &[("train/loss", 1.0)]).unwrap();
        assert_ne!(again.path(), w.path());
        assert_eq!(std::fs::read(w.path().unwrap()).unwrap(), bytes, "the first file is not touched");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }
}
