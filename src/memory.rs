//! How the process allocates memory. A training step allocates and frees the same large
//! activation and gradient buffers every step; glibc hands buffers above 128 KiB back to
//! the kernel on free and page-faults them in again on the next step. Keeping them in the
//! heap instead made a tiny-cnn CPU step about 20 % faster on the development machine.

/// Keeps freed buffers of up to 32 MiB (glibc's largest threshold) in the process, and
/// never trims the heap. Call once, early; a no-op outside glibc.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before the training
    // threads start and takes plain integers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
