//! How the process allocates memory. A training step allocates and frees the same large
//! activation and gradient buffers every step; glibc hands buffers above 128 KiB back to
//! the kernel on free and page-faults them in again on the next step. Keeping them in the
//! heap instead made a tiny-cnn CPU step about 20 % faster on the development machine.

/// Keeps freed buffers in the process and never trims the heap. Call once, early; a no-op
/// outside glibc.
///
/// glibc serves a buffer above its mmap threshold with a fresh mapping and unmaps it on
/// free, and the threshold cannot be raised beyond 32 MiB. ResNet-18's first-stage
/// activations and gradients (batch 128: 64 x 32 x 32 values per image, 33.5 MB) are just
/// above it: each was mapped, faulted in page by page and unmapped (with a TLB shootdown
/// across cores) several times per step, about 35,000 page faults per step. So mappings
/// are turned off altogether: every buffer comes from the heap, which keeps what is freed
/// (ResNet-18 step 154 -> 181 images/s, median of 3 paired runs; page faults of a 15-step
/// `adanoise bench` 531,000 -> 121,000). A buffer too large for a thread's heap still gets
/// memory: glibc retries in the main heap, which grows with `brk`.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before the training
    // threads start and takes plain integers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_MMAP_MAX, 0);
    }
}

#[cfg(test)]
mod tests {
    /// With mappings turned off, buffers far larger than a thread's heap (64 MiB) are
    /// still served, on the main thread and on others, and hold what was written.
    #[test]
    fn large_buffers_are_served_without_mappings() {
        super::keep_freed_buffers();
        let fill = |len: usize| {
            let mut buffer = vec![0u8; len];
            buffer[len - 1] = 7;
            buffer.iter().map(|&b| b as usize).sum::<usize>()
        };
        assert_eq!(fill(200 << 20), 7);
        let threads: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(move || (fill(150 << 20), fill(40 << 20))))
            .collect();
        for thread in threads {
            assert_eq!(thread.join().expect("the thread allocates"), (7, 7));
        }
    }
}
