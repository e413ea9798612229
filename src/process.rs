//! How the `cotlab` process sets itself up before any command runs: its allocator (counted, for
//! the scripts' memory ceiling), candle's thread count, and the main thread as a compute thread.
//! Binary-only: a notebook that links the library keeps its own allocator and threads.

/// Training allocates and frees GB of tensors every step. glibc (and mimalloc by default) hand
/// large blocks back to the kernel, which must then zero fresh pages on the next allocation:
/// a large share of a training step. mimalloc without purging keeps them.
/// Counted, so a script can be stopped at its memory ceiling (`cotlab::memory`).
#[global_allocator]
static GLOBAL: cotlab::memory::Counting<mimalloc::MiMalloc> = cotlab::memory::Counting(mimalloc::MiMalloc);

fn tune_allocator() {
    // SAFETY: sets a global mimalloc option; no allocation races at program start.
    // Option 15 is `mi_option_purge_delay` in mimalloc 2 (libmimalloc-sys names it only in C).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// candle asks for its thread count before every CPU matmul, and without RAYON_NUM_THREADS it
/// counts physical cores by reading /proc/cpuinfo each time (`num_cpus::get_physical`):
/// thousands of opens of that file in one short generation, and a visible share of an
/// evaluation's profile in the kernel formatting it. Fixing the variable once, to the count
/// candle would find, keeps the thread count and drops the reads.
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        // Program start: no other thread reads the environment yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Makes the calling thread one of rayon's compute threads (index 0 of a pool of the pinned
/// size; `global`: the global pool, else a pool kept alive by the returned handle). candle runs
/// an op on the thread that calls it and hands its parallel parts to rayon: when that thread is
/// not a worker, it and the workers are one thread more than the cores, and the idle workers'
/// spinning takes time from it; with it, decoding on 2 cores is faster at batch 1 and at batch
/// 16 (docs/performance-history.md).
pub fn compute_on_this_thread(global: bool) -> Option<rayon::ThreadPool> {
    let b = rayon::ThreadPoolBuilder::new().use_current_thread();
    if global {
        // Fails only if a pool was built already: then decoding still works, as before.
        let _ = b.build_global();
        None
    } else {
        b.build().ok()
    }
}

/// Everything above, once, at program start.
pub fn set_up() {
    tune_allocator();
    pin_thread_count();
    cotlab::model::tune_candle_threads();
    compute_on_this_thread(true);
    cotlab::memory::mark_installed();
}
