//! The loop's public vocabulary: [`Interest`], the generational handles
//! [`WatcherHandle`] and [`TimerHandle`] (and how they are encoded), and the
//! callback types.

use std::os::fd::RawFd;

pub use mq_abi::Interest;

/// The mio registration for `interest`; `None` for none.
pub(super) fn to_mio(interest: Interest) -> Option<mio::Interest> {
    match (interest.read, interest.write) {
        (true, true) => Some(mio::Interest::READABLE | mio::Interest::WRITABLE),
        (true, false) => Some(mio::Interest::READABLE),
        (false, true) => Some(mio::Interest::WRITABLE),
        (false, false) => None,
    }
}

/// libev's mapping: an error or a hang-up makes both directions ready.
pub(super) fn from_event(ev: &mio::event::Event) -> Interest {
    let err = ev.is_error();
    Interest {
        read: ev.is_readable() || ev.is_read_closed() || err,
        write: ev.is_writable() || ev.is_write_closed() || err,
    }
}

/// Identifies an io watcher of one [`EventLoop`](super::EventLoop).
///
/// Encodes `loop_id | generation | slot`; never 0. A handle whose watcher was
/// unwatched (or discarded because its fd was closed and the number reused),
/// or that belongs to another loop, is stale: using it is a harmless no-op.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct WatcherHandle(pub(super) u64);

impl WatcherHandle {
    /// The raw value, e.g. to pass it through C as an opaque pointer. Never 0.
    pub fn to_raw(self) -> u64 {
        self.0
    }

    /// A handle from a raw value of [`WatcherHandle::to_raw`]; `None` for 0.
    pub fn from_raw(raw: u64) -> Option<Self> {
        (raw != 0).then_some(WatcherHandle(raw))
    }
}

/// Identifies a timer of one [`EventLoop`](super::EventLoop).
///
/// Encodes `loop_id | generation | slot`; never 0. A handle whose timer fired
/// or was stopped, or that belongs to another loop, is stale: using it is a
/// harmless no-op.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TimerHandle(pub(super) u64);

impl TimerHandle {
    /// The raw value, e.g. to pass it through C as an opaque pointer. Never 0.
    pub fn to_raw(self) -> u64 {
        self.0
    }

    /// A handle from a raw value of [`TimerHandle::to_raw`]; `None` for 0.
    pub fn from_raw(raw: u64) -> Option<Self> {
        (raw != 0).then_some(TimerHandle(raw))
    }
}

/// An io watcher's callback: its own handle, the fd, and which of the
/// watched events are ready now (never empty).
pub type IoCallback = Box<dyn FnMut(WatcherHandle, RawFd, Interest)>;

/// A timer's callback; timers are one-shot.
pub type TimerCallback = Box<dyn FnOnce()>;

/// Work posted from another thread with [`LoopRemote::post`](super::LoopRemote::post).
pub type Task = Box<dyn FnOnce() + Send>;

pub(super) fn encode(loop_id: u16, generation: u16, slot: u32) -> u64 {
    (u64::from(loop_id) << 48) | (u64::from(generation) << 32) | (u64::from(slot) + 1)
}

/// `(slot, generation)` of a handle of loop `loop_id`.
pub(super) fn decode(raw: u64, loop_id: u16) -> Option<(u32, u16)> {
    if (raw >> 48) as u16 != loop_id {
        return None;
    }
    let low = raw as u32;
    if low == 0 {
        return None;
    }
    Some((low - 1, (raw >> 32) as u16))
}
