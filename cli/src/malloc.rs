//! The C allocator's settings for the processes that hold a controller.
//!
//! glibc's malloc gives each thread that allocates under contention an
//! arena of its own (up to 8 per core) and never moves free memory between
//! arenas. A controller parses a large DAG on a blocking thread and then
//! schedules its run on the runtime's threads, so memory freed in one arena
//! is not reused by the next and the process's RSS grows by the difference:
//! the `memory` benchmark's 100,000-task run peaked at 205 MiB with the
//! default arenas and at 175 MiB with two (`bench/README.md`, "memory").

/// Arenas a controller's process uses unless `MALLOC_ARENA_MAX` says
/// otherwise. Two, not one: the runtime's threads and the blocking pool
/// then share two locks; one arena saved only ~6 MiB more in a trial.
const CONTROLLER_ARENAS: i32 = 2;

/// Caps malloc's arenas at [`CONTROLLER_ARENAS`]; a `MALLOC_ARENA_MAX` in
/// the environment (which glibc reads itself) is left to decide. Call it
/// before any thread is started, so that no thread has taken an arena yet.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_arenas_for_controller() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: `mallopt` sets a parameter of glibc's allocator and is safe
    // to call at any time; `M_ARENA_MAX` with a positive value is one it
    // documents. It takes no pointers.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, CONTROLLER_ARENAS);
    }
}

/// Other allocators keep no per-thread arenas to cap.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas_for_controller() {}
