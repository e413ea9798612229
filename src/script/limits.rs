//! Rhai builtins whose allocation grows with an argument (`pad`, `blob`) or is a multiple of
//! their input (`to_chars`, a BLOB's `to_array`), re-registered so that each checks the bytes it
//! would allocate before allocating them. The memory ceiling (see [`super::engine`]) is checked
//! between operations only: one such call could allocate far past it, or abort the process on
//! a failed allocation, before the next check.
//!
//! Invariant: none of these calls allocates when the heap in use plus what it would add exceeds
//! the limit (the ceiling, or this machine's memory when there is none); it fails with an error
//! saying so instead. The results are otherwise Rhai's own (functions registered on the engine
//! take precedence over its packages').

use rhai::{Array, Blob, Dynamic, Engine, ImmutableString, INT};

use super::docs::def;
use super::{rt, RhaiResult};
use crate::usage;

/// Bytes one array element takes (a `Dynamic`).
const ELEMENT: u64 = std::mem::size_of::<Dynamic>() as u64;

/// What the calls are measured against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limit {
    bytes: u64,
    /// The `--max-memory` ceiling (else this machine's memory).
    ceiling: bool,
}

impl Limit {
    /// The script's ceiling, else this machine's memory; `None` when neither is known.
    pub(crate) fn new(ceiling: Option<u64>) -> Option<Limit> {
        match ceiling {
            Some(bytes) => Some(Limit { bytes, ceiling: true }),
            None => crate::memory::physical().map(|bytes| Limit { bytes, ceiling: false }),
        }
    }

    /// Ok when `bytes` more fit beside the heap in use now; else an error naming the call.
    pub(crate) fn admit(self, call: &str, bytes: u64) -> RhaiResult<()> {
        let used = crate::memory::in_use().unwrap_or(0) as u64;
        if used.saturating_add(bytes) <= self.bytes {
            return Ok(());
        }
        let limit = if self.ceiling {
            format!("the memory ceiling is {} (80% of this machine's RAM unless set; raise it with --max-memory GIB, 0 = none)", crate::memory::gib(self.bytes))
        } else {
            format!("this machine has {} of memory", crate::memory::gib(self.bytes))
        };
        Err(rt(usage!("{call} would allocate {} with {} already in use, but {limit}", crate::memory::gib(bytes), crate::memory::gib(used))))
    }
}

/// What one more copy of `item` adds to an array: the element, and the first level of an
/// array, map or BLOB it holds (strings are shared, not copied). A lower bound for nested values.
fn element_bytes(item: &Dynamic) -> u64 {
    let inner = if item.is_array() {
        item.as_array_ref().map(|a| a.len() as u64 * ELEMENT).unwrap_or(0)
    } else if item.is_blob() {
        item.as_blob_ref().map(|b| b.len() as u64).unwrap_or(0)
    } else if item.is_map() {
        item.as_map_ref().map(|m| m.len() as u64 * 4 * ELEMENT).unwrap_or(0)
    } else {
        0
    };
    ELEMENT.saturating_add(inner)
}

/// How many more items reach length `len` from `have`; `None` when there is nothing to add.
fn missing(len: INT, have: usize) -> Option<u64> {
    let len = u64::try_from(len).ok()?;
    (len > have as u64).then(|| len - have as u64)
}

pub(super) const INTRO: &str = "Rhai's own functions whose allocation grows with an argument, re-registered so that \
each checks the memory ceiling (`cotlab run --max-memory`) before allocating; otherwise as Rhai documents them \
(https://rhai.rs/book/).";

const PAD: &str = "Pad a string (with a character or a string, repeated), an array (with copies of `item`) or a BLOB (with a byte) to length `len`, in place; refused, before allocating, when the padding would not fit under the memory ceiling.\n\n```rhai\nlet s = \"7\"; s.pad(3, '0');   // \"700\"\nlet a = [1]; a.pad(3, 0);     // [1, 0, 0]\n```";

const BLOB: &str = "A BLOB of `len` bytes, each `value` (default 0); refused, before allocating, when it would not fit under the memory ceiling.\n\n```rhai\nlet b = blob(16, 0xff);\n```";

/// Re-register the allocating builtins over Rhai's (see the module doc).
pub(crate) fn register(engine: &mut Engine, ceiling: Option<u64>) {
    let Some(limit) = Limit::new(ceiling) else { return };

    def(engine, "pad", ["s", "len", "c"], PAD, move |s: &mut ImmutableString, len: INT, c: char| -> RhaiResult<()> {
        let Some(n) = missing(len, s.chars().count()) else { return Ok(()) };
        limit.admit("pad", n.saturating_mul(c.len_utf8() as u64))?;
        let p = s.make_mut();
        p.extend(std::iter::repeat_n(c, n as usize));
        Ok(())
    });
    def(engine, "pad", ["s", "len", "padding"], PAD, move |s: &mut ImmutableString, len: INT, padding: &str| -> RhaiResult<()> {
        let Some(n) = missing(len, s.chars().count()) else { return Ok(()) };
        // Rhai's own loops forever on an empty padding.
        if padding.is_empty() {
            return Err(rt(usage!("pad: the padding string is empty, so the string can never reach length {len}")));
        }
        let per_char = padding.len().div_ceil(padding.chars().count()) as u64;
        limit.admit("pad", n.saturating_mul(per_char))?;
        let p = s.make_mut();
        p.extend(padding.chars().cycle().take(n as usize));
        Ok(())
    });
    def(engine, "pad", ["a", "len", "item"], PAD, move |a: &mut Array, len: INT, item: Dynamic| -> RhaiResult<()> {
        let Some(n) = missing(len, a.len()) else { return Ok(()) };
        limit.admit("pad", n.saturating_mul(element_bytes(&item)))?;
        a.resize(a.len() + n as usize, item);
        Ok(())
    });
    def(engine, "pad", ["b", "len", "value"], PAD, move |b: &mut Blob, len: INT, value: INT| -> RhaiResult<()> {
        let Some(n) = missing(len, b.len()) else { return Ok(()) };
        limit.admit("pad", n)?;
        b.resize(b.len() + n as usize, value as u8);
        Ok(())
    });
    let blob = move |len: INT, value: INT| -> RhaiResult<Blob> {
        let n = missing(len, 0).unwrap_or(0);
        limit.admit("blob", n)?;
        Ok(vec![value as u8; n as usize])
    };
    def(engine, "blob", ["len"], BLOB, move |len: INT| blob(len, 0));
    def(engine, "blob", ["len", "value"], BLOB, blob);
    def(engine, "to_chars", ["s"], "The characters of a string, in an array; refused when they would not fit under the memory ceiling.\n\n```rhai\nprint(\"abc\".to_chars());   // ['a', 'b', 'c']\n```", move |s: &mut ImmutableString| -> RhaiResult<Array> {
        limit.admit("to_chars", (s.chars().count() as u64).saturating_mul(ELEMENT))?;
        Ok(s.chars().map(Dynamic::from).collect())
    });
    def(engine, "to_array", ["b"], "The bytes of a BLOB as an array of integers; refused when they would not fit under the memory ceiling.\n\n```rhai\nprint(blob(3, 1).to_array());   // [1, 1, 1]\n```", move |b: &mut Blob| -> RhaiResult<Array> {
        limit.admit("to_array", (b.len() as u64).saturating_mul(ELEMENT))?;
        Ok(b.iter().map(|&x| Dynamic::from_int(x as INT)).collect())
    });
}
