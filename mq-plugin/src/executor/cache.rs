//! The per-hook task cache: task memory reused across hook calls.

use std::cell::Cell;
use std::ptr::NonNull;

/// A per-hook, per-thread cache of empty task allocations, so that neither
/// a ready hook nor a take-over allocates once warm: a free list threaded
/// through the slots themselves (no allocation of its own), holding at most
/// [`TaskCache::MAX_BYTES`] of them.
pub struct TaskCache {
    /// The first free slot; its first word points to the next (or null).
    head: Cell<*mut u8>,
    /// The slots' layout (one future type per hook).
    layout: Cell<Option<std::alloc::Layout>>,
    count: Cell<usize>,
}

impl TaskCache {
    /// How much memory one cache keeps at most: enough for a worker's
    /// burst of held hooks, bounded after it.
    pub const MAX_BYTES: usize = 64 * 1024;

    /// An empty cache (one per hook, in a `thread_local!`).
    pub const fn new() -> TaskCache {
        TaskCache {
            head: Cell::new(std::ptr::null_mut()),
            layout: Cell::new(None),
            count: Cell::new(0),
        }
    }

    /// A free slot of `layout`, if the cache has one.
    pub(super) fn take(&self, layout: std::alloc::Layout) -> Option<NonNull<u8>> {
        let head = NonNull::new(self.head.get())?;
        if self.layout.get() != Some(layout) {
            return None;
        }
        // SAFETY: a free slot of this cache, at least a pointer in size and
        // alignment (a task starts with an AtomicUsize); its first word is
        // the link written by `keep`.
        let next = unsafe { head.as_ptr().cast::<*mut u8>().read() };
        self.head.set(next);
        self.count.set(self.count.get() - 1);
        Some(head)
    }

    /// Keeps an empty task allocation of `layout`; false if the cache is
    /// full or holds another layout (the caller frees this one).
    pub(super) fn keep(&self, slot: NonNull<u8>, layout: std::alloc::Layout) -> bool {
        match self.layout.get() {
            Some(kept) if kept != layout => return false,
            Some(_) => {}
            None => self.layout.set(Some(layout)),
        }
        if (self.count.get() + 1) * layout.size() > Self::MAX_BYTES {
            return false;
        }
        // SAFETY: the slot is ours, empty, and large and aligned enough
        // for the link (see `take`).
        unsafe { slot.as_ptr().cast::<*mut u8>().write(self.head.get()) };
        self.head.set(slot.as_ptr());
        self.count.set(self.count.get() + 1);
        true
    }
}

impl Drop for TaskCache {
    fn drop(&mut self) {
        let Some(layout) = self.layout.get() else {
            return;
        };
        while let Some(slot) = self.take(layout) {
            // SAFETY: an empty task allocation of this layout, made by Box.
            unsafe { std::alloc::dealloc(slot.as_ptr(), layout) };
        }
    }
}

impl Default for TaskCache {
    fn default() -> Self {
        TaskCache::new()
    }
}
