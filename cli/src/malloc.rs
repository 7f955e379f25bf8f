//! The C allocator's settings for the processes that hold a controller.
//!
//! glibc's malloc gives each thread that allocates under contention an
//! arena of its own (up to 8 per core) and never moves free memory between
//! arenas. A controller parses a large DAG on a blocking thread and then
//! schedules its run on the runtime's threads, so memory freed in one arena
//! is not reused by the next and the process's RSS grows by the difference:
//! the `memory` benchmark's 100,000-task run peaked at 205 MiB with the
//! default arenas and at 175 MiB with two (`bench/README.md`, "memory").
//!
//! Large short-lived buffers (a 100,000-task spec, the first batch of a run
//! that size) are also kept out of the arenas: by default glibc raises its
//! mmap threshold to the size of each mapped block freed, so the next
//! buffers of that size come from an arena and stay in the process's RSS
//! once freed, and every further run of a large DAG grew the peak.

/// Arenas a controller's process uses unless `MALLOC_ARENA_MAX` says
/// otherwise. Two, not one: the runtime's threads and the blocking pool
/// then share two locks; one arena saved only ~6 MiB more in a trial.
const CONTROLLER_ARENAS: i32 = 2;

/// Blocks of this size or more are mapped on their own and given back when
/// freed, unless `MALLOC_MMAP_THRESHOLD_` says otherwise. Setting it keeps
/// glibc from raising it.
const CONTROLLER_MMAP_THRESHOLD: i32 = 1024 * 1024;

/// Caps malloc's arenas at [`CONTROLLER_ARENAS`] and fixes its mmap
/// threshold at [`CONTROLLER_MMAP_THRESHOLD`]; either one set in the
/// environment (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, or the same
/// tunable in `GLIBC_TUNABLES`, which glibc reads itself) is left to
/// decide. Call it from `main` before any thread is started: `mallopt` is
/// not safe while other threads allocate, and no thread should have taken
/// an arena yet. Returns the settings glibc refused, to be logged.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_for_controller() -> Vec<&'static str> {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    let settings = [
        (
            "MALLOC_ARENA_MAX",
            "glibc.malloc.arena_max",
            libc::M_ARENA_MAX,
            CONTROLLER_ARENAS,
        ),
        (
            "MALLOC_MMAP_THRESHOLD_",
            "glibc.malloc.mmap_threshold",
            libc::M_MMAP_THRESHOLD,
            CONTROLLER_MMAP_THRESHOLD,
        ),
    ];
    let mut refused = Vec::new();
    for (variable, tunable, parameter, value) in settings {
        if std::env::var_os(variable).is_some() || tunables.contains(tunable) {
            continue;
        }
        // SAFETY: `mallopt` takes no pointers; both parameters take the
        // positive values given here, as glibc documents. glibc marks it
        // MT-unsafe, and the caller runs it before any other thread exists.
        #[allow(unsafe_code)]
        let accepted = unsafe { libc::mallopt(parameter, value) } == 1;
        if !accepted {
            refused.push(variable);
        }
    }
    refused
}

/// Other allocators keep no per-thread arenas to cap.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_for_controller() -> Vec<&'static str> {
    Vec::new()
}
