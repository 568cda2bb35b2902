//! One connection as the runtime keeps it: its state, its plugins' data
//! slots, the chain running on it, and the take-overs whose hold expired
//! but which a plugin may still resume late.

use crate::runtime::handles::{Handle, Kind, Registration};
use crate::runtime::message::{ChainArgs, MessageObj, NotSend};
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::rc::Rc;

/// A map keyed by the host's own connection ids (see [`IdHasher`]).
pub(crate) type IdMap<V> = std::collections::HashMap<u64, V, BuildIdHasher>;

/// An empty [`IdMap`].
pub(crate) fn id_map<V>() -> IdMap<V> {
    IdMap::with_hasher(BuildIdHasher)
}

/// Builds [`IdHasher`]s.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BuildIdHasher;

impl std::hash::BuildHasher for BuildIdHasher {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// The hash of a connection id: one multiplication (Fibonacci hashing)
/// instead of SipHash, whose dozens of rounds per lookup were a fifth of
/// the host's cost of a hook call. The keys are numbers the host hands
/// out itself in sequence, never chosen by a client or a plugin, so the
/// flooding that SipHash resists cannot happen; the multiplication
/// spreads consecutive ids over the high bits and the rotation brings
/// them down to the low bits that pick a bucket.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used for `u64` keys; correct for anything else all the same.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(32);
    }
}

/// The result of `smtp_in_authenticate` so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AuthState {
    pub(crate) authenticated: bool,
    /// A plugin said no: the login fails whatever others say.
    pub(crate) refused: bool,
}

/// A take-over whose hold deadline passed without the plugin giving
/// control back, and which could not be cancelled: the plugin may still
/// use what it was given, and will resume late. Pins its message.
pub(crate) struct ExpiredHold {
    pub(crate) plugin: usize,
    args: ChainArgs,
}

impl ExpiredHold {
    pub(crate) fn new(plugin: usize, args: ChainArgs) -> ExpiredHold {
        if let ChainArgs::Message(m) = &args {
            m.pin();
        }
        ExpiredHold { plugin, args }
    }
}

impl Drop for ExpiredHold {
    fn drop(&mut self) {
        if let ChainArgs::Message(m) = &self.args {
            m.unpin();
        }
    }
}

/// One SMTP connection, owned by its worker.
pub(crate) struct ConnectionState {
    pub(crate) id: u64,
    pub(crate) fd: Cell<RawFd>,
    pub(crate) secure: Cell<bool>,
    pub(crate) auth: Cell<AuthState>,
    /// Bytes plugins sent with `MQ_send` since the host last took them.
    pub(crate) sent: RefCell<Vec<u8>>,
    /// The most bytes `sent` may hold (see [`ConnectionState::send`]).
    pub(crate) send_limit: Cell<usize>,
    /// Each plugin's `MQ_connectionData` slot, in plugin order.
    pub(crate) data: Box<[Cell<*mut c_void>]>,
    /// The last take-over on this connection and whether it ended, for
    /// telling double resumes from stray ones.
    pub(crate) last_takeover: Cell<Option<(usize, TakeoverEnd)>>,
    /// The message between `smtp_out_data` and `smtp_out_sent`.
    pub(crate) outgoing_message: RefCell<Option<Rc<MessageObj>>>,
    /// Expired, uncancelled take-overs, oldest first: a late resume of a
    /// plugin is credited to its oldest one.
    pub(crate) expired: RefCell<Vec<ExpiredHold>>,
    /// `smtp_in_close` has run (or the connection was dropped): host
    /// functions on it are refused.
    pub(crate) closed: Cell<bool>,
    pub(crate) registration: Registration,
    _not_send: NotSend,
}

/// How the last take-over on a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TakeoverEnd {
    Held,
    Resumed,
    Expired,
}

impl ConnectionState {
    pub(crate) fn new(id: u64, fd: RawFd, plugins: usize) -> Rc<ConnectionState> {
        Rc::new(ConnectionState {
            id,
            fd: Cell::new(fd),
            secure: Cell::new(false),
            auth: Cell::new(AuthState::default()),
            sent: RefCell::new(Vec::new()),
            send_limit: Cell::new(usize::MAX),
            data: (0..plugins)
                .map(|_| Cell::new(std::ptr::null_mut()))
                .collect(),
            last_takeover: Cell::new(None),
            outgoing_message: RefCell::new(None),
            expired: RefCell::new(Vec::new()),
            closed: Cell::new(false),
            registration: Registration::default(),
            _not_send: PhantomData,
        })
    }

    /// Buffers `bytes` a plugin sent, as far as the send limit allows;
    /// returns how many were taken.
    pub(crate) fn send(&self, bytes: &[u8]) -> usize {
        let mut sent = self.sent.borrow_mut();
        let room = self.send_limit.get().saturating_sub(sent.len());
        let taken = bytes.len().min(room);
        sent.extend_from_slice(&bytes[..taken]);
        taken
    }

    /// Takes the bytes plugins sent.
    pub(crate) fn take_sent(&self) -> Vec<u8> {
        std::mem::take(&mut *self.sent.borrow_mut())
    }

    /// Whether a plugin whose hold expired may still use this connection.
    pub(crate) fn has_expired_holds(&self) -> bool {
        !self.expired.borrow().is_empty()
    }

    /// This connection's handle for `plugin` (registered on first use).
    pub(crate) fn handle(self: &Rc<Self>, plugin: usize) -> Option<Handle> {
        self.registration.handle(Kind::Connection, plugin, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_keep_consecutive_and_scattered_ids_apart() {
        let mut map = id_map();
        let ids: Vec<u64> = (0..10_000).chain([u64::MAX, 1 << 40, 1 << 63]).collect();
        for &id in &ids {
            assert!(map.insert(id, id).is_none());
        }
        for &id in &ids {
            assert_eq!(map.get(&id), Some(&id));
        }
        assert_eq!(map.len(), ids.len());
        use std::hash::{BuildHasher, Hasher};
        let hash = |n: u64| {
            let mut h = BuildIdHasher.build_hasher();
            h.write_u64(n);
            h.finish()
        };
        // Consecutive ids land in different buckets of a small table.
        let buckets: std::collections::HashSet<u64> = (0..64).map(|n| hash(n) & 63).collect();
        assert!(buckets.len() > 32, "{} buckets of 64", buckets.len());
    }
}
