//! Handing the memory a reconcile pass freed back to the operating system.
//!
//! A pass holds the desired state of the whole fleet, the pages of a namespace list and the
//! answers of its applies at the same time: at 10,000 VPS about 170 MB of heap at its peak, of
//! which about 130 MB stays live afterwards (heaptrack). glibc's allocator keeps the freed rest
//! in its per-thread arenas, so sigma-api's resident memory stayed at the high-water mark of
//! its largest pass (344 MiB at 10,000 VPS, 2.4 GiB at 100,000; `cargo bench -p sigma-e2e
//! --bench mesh_scale`). Asking glibc to trim returns those pages: the reconciler does it once
//! no pass has run for [`RELEASE_AFTER_QUIET`]. Trimming after every pass made each change pass
//! at 100,000 VPS fault its working set back in (register -> WorkloadEntry p50 3.8 -> 5.2 s).

use std::time::Duration;

/// How long the reconciler is quiet (no pass) before it releases freed memory.
pub(crate) const RELEASE_AFTER_QUIET: Duration = Duration::from_secs(10);

/// Returns the allocator's free pages to the operating system (glibc only; elsewhere a no-op).
pub(crate) fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own arenas under their locks;
    // it may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
