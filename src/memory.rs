//! Keeping the resident set close to the live data under glibc's allocator, which serves the C and C++
//! libraries (SQLite, ONNX Runtime); the binary gives Rust's own allocations to mimalloc.
//!
//! glibc gives threads that allocate at the same moment separate arenas (up to eight per core), and memory
//! freed into an arena mostly stays mapped. This server allocates from many threads at once (SQLite on
//! the blocking pool, ONNX Runtime's sessions; before mimalloc, all of Rust's allocations too), so without a
//! limit its RSS grew far beyond what it held. `limit_arenas` caps them, `trim` hands free pages back after heavy work
//! (the maintenance loop calls it after optimising and flushing). Both do nothing on other platforms.

/// Arenas when `MALLOC_ARENA_MAX` is not set in the environment.
pub const DEFAULT_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas; call first thing in `main`, before any thread starts. An explicit
/// `MALLOC_ARENA_MAX` in the environment wins (glibc reads it itself).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, DEFAULT_ARENAS);
        }
    }
}

/// Returns free heap pages of every arena to the operating system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
