//! The process's memory allocator: mimalloc for `convoy server`, the C
//! library's for everything else.
//!
//! The server allocates and frees small objects on every request from two
//! runtime threads and its database threads at once. Measured under load
//! (BENCHMARKS.md, "Control plane at scale"), glibc's malloc spent about a
//! fifth of the server's CPU consolidating and unlinking free chunks;
//! mimalloc's per-thread pages avoid that. The agent and the operator
//! commands keep glibc's allocator, which holds less memory at rest (the
//! agent's goal is 12 MB).
//!
//! The choice is made once, at the top of `main`, before the runtime starts
//! its threads. Memory allocated before it (the parsed command line) stays
//! with the C library's allocator: a block is freed or grown by the
//! allocator whose heap holds it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

use libmimalloc_sys as mi;

/// Set once, before any thread but the main one exists.
static MIMALLOC: AtomicBool = AtomicBool::new(false);

/// mimalloc's options as the server sets them: (`mi_option_t` as numbered
/// in mimalloc.h, v2, the option named by the variable; value; the
/// variable that overrides it). Memory is committed as it is used, not a
/// whole arena at once. What is freed goes back to the system after
/// [`PURGE_DELAY_MS`] (mimalloc's default: 10 ms, 100 ms in arenas, and not
/// on a thread's exit), or sooner when a runtime thread goes idle
/// ([`collect_on_park`]): mimalloc itself purges a segment's free pages
/// only when the thread that owns the segment calls it again. Threads
/// outside the runtime (SQLite's connection threads, blocking tasks)
/// never collect: what they free waits for their next allocation. With the `no_thp` build
/// feature (mimalloc does not ask for transparent huge pages; a host whose
/// THP setting is `always` still gives them) the server's resident memory
/// follows what it holds.
const OPTIONS: [(mi::mi_option_t, std::ffi::c_long, &str); 4] = [
    (4, 0, "MIMALLOC_ARENA_EAGER_COMMIT"),
    (12, 1, "MIMALLOC_ABANDONED_PAGE_PURGE"),
    (15, PURGE_DELAY_MS, "MIMALLOC_PURGE_DELAY"),
    (24, 1, "MIMALLOC_ARENA_PURGE_MULT"),
];

/// How long freed memory stays committed before it goes back to the
/// system. Memory freed while requests come is mostly taken again within
/// this time: at 0 (returned at once), every page that empties is unmapped
/// and faulted back in by the next request, and the unmapping interrupts
/// the other core to flush its TLB (about a thousand `madvise` calls a
/// second while reports came). Measured at 20k targets with 64 reporting
/// connections (BENCHMARKS.md, tenth session): one build run at 100 ms
/// and at 0, alternating, gave 21.4k/18.0k, 19.4k/16.3k, 18.7k/15.8k
/// reports/s; with [`collect_on_park`], five runs each against the build
/// before, median 20.2k against 19.0k (server CPU per report 57 against
/// 59 µs).
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Options set whatever the environment says, because `from_mimalloc`
/// depends on them (numbered as in mimalloc.h, v2: 17 disallow_os_alloc,
/// 27 disallow_arena_alloc): every mimalloc segment lies in one of its arenas
/// (`disallow_os_alloc` = 1, `disallow_arena_alloc` = 0), which
/// `mi_is_in_heap_region` recognises by address range. Without them a
/// segment mapped straight from the system above mimalloc's segment map
/// (48 TiB) would not be recognised. When no arena can be had, mimalloc
/// returns null and the block comes from the C library instead.
const REQUIRED: [(mi::mi_option_t, std::ffi::c_long); 2] = [(17, 1), (27, 0)];

/// New blocks come from mimalloc from now on (call it once, early in
/// `main`, before other threads start); an operator's `MIMALLOC_*`
/// variables of the [`OPTIONS`] names stand (not mimalloc's older
/// aliases).
#[allow(unsafe_code)]
pub fn use_mimalloc() {
    let tuning = OPTIONS.into_iter().filter(|(_, _, var)| std::env::var_os(var).is_none()).map(|(o, v, _)| (o, v));
    for (option, value) in tuning.chain(REQUIRED) {
        // SAFETY: sets one of mimalloc's option values (an integer); each
        // is read when used, and nothing has been allocated from mimalloc
        // yet
        unsafe { mi::mi_option_set(option, value) };
    }
    MIMALLOC.store(true, Ordering::SeqCst);
}

/// The least time between two collections by one runtime thread.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

thread_local! {
    static COLLECTED: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// For the runtime's `on_thread_park`: as a thread goes idle, it gives
/// back what it freed and has not yet returned to the system (all of it,
/// the purge delay not waited out), at most every [`COLLECT_EVERY`]. An
/// idle thread calls mimalloc no more, so without this what it freed last
/// would stay committed for as long as the server is at rest (measured at
/// 20k targets: 162–174 MiB at rest, against 114–120 MiB with no purge
/// delay and 125 MiB with this). What a thread frees after its last
/// collection and before it parks within [`COLLECT_EVERY`] of it stays
/// committed until that thread next parks.
#[allow(unsafe_code)]
pub fn collect_on_park() {
    if !MIMALLOC.load(Ordering::Relaxed) {
        return;
    }
    let now = std::time::Instant::now();
    if COLLECTED.get().is_some_and(|t| now.duration_since(t) < COLLECT_EVERY) {
        return;
    }
    COLLECTED.set(Some(now));
    // SAFETY: collects the calling thread's own heap (and purges what
    // mimalloc's shared arenas have scheduled, unless another thread is
    // at it); no block is touched. Twice: the
    // first pass frees the pages found empty, which only schedules their
    // purge; the second purges what is scheduled.
    unsafe {
        mi::mi_collect(true);
        mi::mi_collect(true);
    }
}

/// Alignment of every mimalloc block of at least this size
/// (`MI_MAX_ALIGN_SIZE`); smaller blocks are aligned to their size class.
const MI_ALIGN: usize = 16;

/// Largest block and alignment asked of mimalloc; bigger ones (rare: body
/// buffers, big reads) come from the C library. Below them every mimalloc
/// block lies in one of its ordinary 32 MiB segments (never a huge one).
const MI_MAX_SIZE: usize = 1 << 20;
const MI_MAX_ALIGN: usize = 4096;

/// Whether a new block of this layout comes from mimalloc.
fn to_mimalloc(size: usize, align: usize) -> bool {
    size <= MI_MAX_SIZE && align <= MI_MAX_ALIGN && MIMALLOC.load(Ordering::Relaxed)
}

/// Whether mimalloc's plain calls give this alignment (as the standard
/// library's own allocator decides: a block smaller than 16 bytes is
/// aligned only to its size class).
fn plain(size: usize, align: usize) -> bool {
    align <= MI_ALIGN && align <= size
}

pub struct Allocator;

/// A block from mimalloc (zeroed if asked), or null when it is not to be
/// asked or has no arena to give from (then the C library's).
///
/// # Safety
/// As `GlobalAlloc::alloc`: the layout's size is not zero.
#[allow(unsafe_code)]
unsafe fn mi_block(layout: Layout, zeroed: bool) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    if !to_mimalloc(size, align) {
        return std::ptr::null_mut();
    }
    // SAFETY: plain calls only where they give the alignment (`plain`)
    unsafe {
        match (plain(size, align), zeroed) {
            (true, false) => mi::mi_malloc(size),
            (true, true) => mi::mi_zalloc(size),
            (false, false) => mi::mi_malloc_aligned(size, align),
            (false, true) => mi::mi_zalloc_aligned(size, align),
        }
        .cast()
    }
}

/// Whether `p` came from mimalloc (never, unless it was chosen).
#[allow(unsafe_code)]
fn from_mimalloc(p: *mut u8) -> bool {
    // SAFETY: mi_is_in_heap_region only compares the address with
    // mimalloc's own tables; it reads nothing at the address.
    MIMALLOC.load(Ordering::Relaxed) && unsafe { mi::mi_is_in_heap_region(p.cast()) }
}

// SAFETY: each block is allocated by exactly one of the two allocators and
// is freed or resized by that same one (`from_mimalloc`, exact because
// every mimalloc block lies in an arena: REQUIRED); mimalloc is asked for
// blocks of at most MI_MAX_SIZE and MI_MAX_ALIGN, with its `_aligned`
// calls whenever its plain ones would not give the alignment; when it
// returns null the C library is asked, and null is returned only if that
// fails too, as GlobalAlloc expects.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { mi_block(layout, false) };
        if !p.is_null() {
            return p;
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { mi_block(layout, true) };
        if !p.is_null() {
            return p;
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if from_mimalloc(p) {
            unsafe { mi::mi_free(p.cast()) }
        } else {
            unsafe { System.dealloc(p, layout) }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !from_mimalloc(p) {
            return unsafe { System.realloc(p, layout, new_size) };
        }
        let align = layout.align();
        if new_size <= MI_MAX_SIZE {
            let q: *mut u8 = unsafe {
                if plain(new_size, align) {
                    mi::mi_realloc(p.cast(), new_size).cast()
                } else {
                    mi::mi_realloc_aligned(p.cast(), new_size, align).cast()
                }
            };
            if !q.is_null() {
                return q;
            }
            // mimalloc could not (the block is still there): below
        }
        // grown past what mimalloc is asked for, or mimalloc had no room:
        // moved to the C library
        // SAFETY (caller's): new_size is non-zero and fits a Layout
        let new = unsafe { Layout::from_size_align_unchecked(new_size, align) };
        let q = unsafe { System.alloc(new) };
        if !q.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                mi::mi_free(p.cast());
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks made before the switch are freed and grown by the C
    /// library's allocator, later ones by mimalloc (the test binary uses
    /// this allocator too: after the switch, every test runs on both).
    #[test]
    #[allow(unsafe_code)]
    fn each_block_goes_back_to_its_allocator() {
        let before: Vec<u64> = (0..1_000).collect();
        let mut grown: Vec<u8> = vec![7; 100];
        use_mimalloc();
        let after: Vec<u64> = (0..1_000).collect();
        // SAFETY: only compares addresses with mimalloc's tables
        let owned = |p: *const u8| unsafe { mi::mi_is_in_heap_region(p.cast()) };
        assert!(!owned(before.as_ptr().cast()), "a block from before the switch is not mimalloc's");
        assert!(owned(after.as_ptr().cast()), "a block from after the switch is mimalloc's");
        grown.extend(std::iter::repeat_n(9u8, 100_000));
        assert!(!owned(grown.as_ptr()), "a block grows within the allocator that made it");
        assert_eq!((grown[99], grown[100], grown.len()), (7, 9, 100_100));
        let aligned = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: a non-zero size; freed with the same layout
        unsafe {
            let p = std::alloc::alloc(aligned);
            assert!(!p.is_null() && (p as usize).is_multiple_of(4096) && owned(p));
            std::alloc::dealloc(p, aligned);
        }
        // big blocks and big alignments come from the C library, and a
        // mimalloc block grown past the limit moves there
        let big = vec![1u8; MI_MAX_SIZE + 1];
        assert!(!owned(big.as_ptr()));
        let mut moved: Vec<u8> = vec![3; 1000];
        assert!(owned(moved.as_ptr()));
        moved.resize(MI_MAX_SIZE * 2, 4);
        assert!(!owned(moved.as_ptr()));
        assert_eq!((moved[999], moved[1000], moved.len()), (3, 4, MI_MAX_SIZE * 2));
        // a small block with an alignment above its size class
        let small = std::alloc::Layout::from_size_align(8, 16).unwrap();
        // SAFETY: a non-zero size; freed with the same layout
        unsafe {
            let p = std::alloc::alloc(small);
            assert!(!p.is_null() && (p as usize).is_multiple_of(16) && owned(p));
            std::alloc::dealloc(p, small);
        }
        drop((before, after, big));
    }
}
