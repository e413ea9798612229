//! Live heap accounting, so a runaway script stops with an error naming the limit instead of
//! being killed by the kernel (or aborting on a failed allocation) halfway through.
//!
//! A binary opts in by wrapping its allocator: `#[global_allocator] static A: Counting<MiMalloc>`.
//! Each thread keeps its own running difference and adds it to the shared count once it passes
//! [`FLUSH`] bytes (an atomic add per allocation slowed allocation-heavy scripts markedly);
//! the shared count is therefore exact to within `FLUSH` bytes per thread. [`in_use`] is
//! one load, cheap enough to check before every Rhai operation (see `script::engine`). Without the wrapper (the
//! library used from a notebook or a test binary) [`in_use`] is `None` and no ceiling applies
//! between operations; the builtins that allocate in proportion to an argument still refuse one
//! call larger than the ceiling (`script::limits`).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

static IN_USE: AtomicIsize = AtomicIsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// A thread's difference is added to the shared count once it is this large either way.
pub const FLUSH: isize = 256 << 10;

thread_local! {
    // Const-initialised and without a destructor: using it never allocates, as an allocator needs.
    static PENDING: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // A thread being torn down has no TLS any more: count straight into the shared total.
    let flushed = PENDING.try_with(|p| {
        let d = p.get() + delta;
        if d.abs() >= FLUSH {
            p.set(0);
            IN_USE.fetch_add(d, Ordering::Relaxed);
        } else {
            p.set(d);
        }
    });
    if flushed.is_err() {
        IN_USE.fetch_add(delta, Ordering::Relaxed);
    }
}

/// A global allocator that counts the bytes live in `A`.
pub struct Counting<A>(pub A);

// SAFETY: every call is forwarded to the wrapped allocator unchanged; only a counter is added.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = self.0.alloc(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = self.0.alloc_zeroed(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.0.dealloc(ptr, layout);
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = self.0.realloc(ptr, layout, new_size);
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Call once from `main` after installing [`Counting`] as the global allocator.
pub fn mark_installed() {
    INSTALLED.store(true, Ordering::Relaxed);
}

/// Heap bytes live now, if the binary counts them.
pub fn in_use() -> Option<usize> {
    // Frees counted on one thread for memory allocated on another can dip the total below zero.
    INSTALLED.load(Ordering::Relaxed).then(|| IN_USE.load(Ordering::Relaxed).max(0) as usize)
}

/// This machine's physical memory (Linux `/proc/meminfo`), if known.
pub fn physical() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// The default ceiling for a script: 80% of physical memory, leaving room for the OS and for the
/// allocation that crosses the line (the check runs between operations, not inside one).
pub fn default_ceiling() -> Option<u64> {
    physical().map(|b| b / 5 * 4)
}

/// Bytes as GiB with two decimals, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}
