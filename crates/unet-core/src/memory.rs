//! The allocator's handling of large buffers, for programs that run many batches, and how much
//! memory the process may still take.
//!
//! glibc serves and frees every allocation of 32 MiB or more (at most: its threshold grows
//! to the largest one freed, up to 32 MiB) with mmap and munmap, so a buffer of that size
//! allocated per batch is faulted in afresh each time: a batch of 32 probability maps of
//! 512x512 in f32 is exactly 32 MiB. Measured on the 2-core Xeon: 17.7 ms to allocate and fill
//! such a buffer anew, 3.7 ms once freed memory is reused, 2.5 ms to refill a kept one.

/// Largest buffer served from the heap, and most free memory kept at its top.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEPT_BYTES: i32 = 256 << 20;

/// Has the allocator reuse freed buffers up to 256 MiB rather than return them to the OS (on
/// glibc; elsewhere nothing changes). Call it early in `main`: it applies to what is
/// allocated after it.
pub fn reuse_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two of the allocator's parameters, under its own lock; both
    // values are in range (positive, below 2 GiB).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, KEPT_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEPT_BYTES);
    }
}

/// Memory this process may still take, in bytes: the host's available memory, or under a
/// cgroup memory limit (a container's, a Slurm job's `--mem`) that limit less what the cgroup
/// holds resident, whichever is less. Page cache does not count: the kernel reclaims it before
/// the limit kills anything. Off Linux only the host's figure counts; `None` where the system
/// gives none. On glibc it first gives the allocator's kept free memory back to the OS.
///
/// sysinfo reads both cgroup versions and walks the limits of the cgroup's ancestors. The
/// process's own cgroup is where a Slurm job's limit is; the root of the mounted hierarchy is
/// where a container without its own cgroup namespace sees its limit; the least of the two
/// holds.
pub fn spare_bytes() -> Option<u64> {
    use sysinfo::{
        CGroupLimits, MemoryRefreshKind, ProcessRefreshKind, ProcessesToUpdate, RefreshKind,
        System, get_current_pid,
    };
    // Memory freed and kept for reuse (`reuse_large_buffers`: the model file's bytes, the
    // weights before packing) counts as resident: given back, it counts as spare.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim returns free pages of the heap to the OS under the allocator's lock;
    // it moves and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
    let mut system = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    let host = Some(system.available_memory()).filter(|&bytes| bytes > 0);
    let process = get_current_pid().ok().and_then(|pid| {
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            false,
            ProcessRefreshKind::nothing(),
        );
        system.process(pid)?.cgroup_limits()
    });
    let spare = |limits: Option<CGroupLimits>| limits.map(|l| l.total_memory.saturating_sub(l.rss));
    [host, spare(process), spare(system.cgroup_limits())]
        .into_iter()
        .flatten()
        .min()
}
