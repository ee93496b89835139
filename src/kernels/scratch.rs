//! Work buffers that outlive one call, pooled per thread. A convolution takes the matrices
//! it writes in full before reading (patches, gathered gradients, product results) from
//! here instead of allocating them: a fresh multi-megabyte buffer costs page faults, the
//! kernel's zeroing of each page and `vec!`'s own zeroing on every call. A pooled buffer
//! holds whatever an earlier user left in it, so it is only for values written before
//! they are read. Taking one moves it out of the pool, so a task that rayon runs nested
//! inside another on the same thread simply gets a buffer of its own.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers kept per thread; more in use at once are allocated and then kept up to this.
const POOLED: usize = 4;

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// `len` values of unspecified content, returned to the thread's pool when dropped.
pub(crate) struct Scratch {
    buffer: Vec<f32>,
    len: usize,
}

/// A work buffer of `len` values; its contents are whatever was left in it.
pub(crate) fn scratch(len: usize) -> Scratch {
    let mut buffer = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        // The smallest that is large enough, else the largest (grown below).
        let fits = (0..pool.len())
            .filter(|&i| pool[i].len() >= len)
            .min_by_key(|&i| pool[i].len());
        let pick = fits.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()));
        pick.map(|i| pool.swap_remove(i)).unwrap_or_default()
    });
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    // The kernels' unit tests see NaN wherever a user reads a value it did not write.
    if cfg!(test) {
        buffer[..len].fill(f32::NAN);
    }
    Scratch { buffer, len }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buffer[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buffer[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        // During thread teardown the pool may be gone; the buffer is then simply freed.
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOLED {
                pool.push(buffer);
            } else if let Some(smallest) = (0..pool.len())
                .min_by_key(|&i| pool[i].len())
                .filter(|&i| pool[i].len() < buffer.len())
            {
                pool[smallest] = buffer;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized() {
        let first = {
            let mut a = scratch(1000);
            assert_eq!(a.len(), 1000);
            a[999] = 7.0;
            a.as_ptr()
        };
        // The same allocation comes back for a smaller request (poisoned with NaN in tests).
        let b = scratch(10);
        assert_eq!(b.len(), 10);
        assert_eq!(b.as_ptr(), first);
        assert!(b.iter().all(|v| v.is_nan()));
        // One taken and not yet returned is never handed out twice.
        let c = scratch(10);
        assert_ne!(c.as_ptr(), b.as_ptr());
        drop((b, c));
        let big = scratch(5000);
        assert_eq!(big.len(), 5000);
    }
}
