//! [`Interest`]: which readiness of a file descriptor is watched for, or
//! present — the `MQ_READ | MQ_WRITE` bits of `MQ_ioWatch` as a type.

use crate::sys::{MQ_READ, MQ_WRITE};
use std::ffi::c_int;

/// Which readiness to watch for, or which is present: a plain pair of
/// flags, converted from and to the C API's `MQ_READ | MQ_WRITE` bits with
/// [`Interest::from_events`] and [`Interest::events`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Interest {
    /// Readable (`MQ_READ`; also on hang-up or error).
    pub read: bool,
    /// Writable (`MQ_WRITE`; also on hang-up or error).
    pub write: bool,
}

impl Interest {
    /// Neither readable nor writable.
    pub const NONE: Interest = Interest {
        read: false,
        write: false,
    };
    /// Readable.
    pub const READ: Interest = Interest {
        read: true,
        write: false,
    };
    /// Writable.
    pub const WRITE: Interest = Interest {
        read: false,
        write: true,
    };
    /// Readable and writable.
    pub const BOTH: Interest = Interest {
        read: true,
        write: true,
    };

    /// From the C `events` bit mask; bits other than `MQ_READ` and
    /// `MQ_WRITE` are ignored.
    pub const fn from_events(events: c_int) -> Interest {
        Interest {
            read: events & MQ_READ != 0,
            write: events & MQ_WRITE != 0,
        }
    }

    /// To the C `events` bit mask.
    pub const fn events(self) -> c_int {
        (if self.read { MQ_READ } else { 0 }) | (if self.write { MQ_WRITE } else { 0 })
    }

    /// True if neither flag is set.
    pub const fn is_empty(self) -> bool {
        !self.read && !self.write
    }

    /// The flags set in `self` or in `other`.
    pub const fn union(self, other: Interest) -> Interest {
        Interest {
            read: self.read || other.read,
            write: self.write || other.write,
        }
    }

    /// The flags set in both `self` and `other`.
    pub const fn intersection(self, other: Interest) -> Interest {
        Interest {
            read: self.read && other.read,
            write: self.write && other.write,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_the_c_bits_both_ways() {
        assert_eq!(Interest::from_events(MQ_READ), Interest::READ);
        assert_eq!(Interest::from_events(MQ_WRITE), Interest::WRITE);
        assert_eq!(Interest::from_events(MQ_READ | MQ_WRITE), Interest::BOTH);
        assert_eq!(Interest::from_events(0), Interest::NONE);
        assert_eq!(
            Interest::from_events(!0),
            Interest::BOTH,
            "other bits ignored"
        );
        for i in [
            Interest::NONE,
            Interest::READ,
            Interest::WRITE,
            Interest::BOTH,
        ] {
            assert_eq!(Interest::from_events(i.events()), i);
        }
    }

    #[test]
    fn set_operations() {
        assert_eq!(Interest::READ.union(Interest::WRITE), Interest::BOTH);
        assert_eq!(
            Interest::BOTH.intersection(Interest::WRITE),
            Interest::WRITE
        );
        assert!(Interest::READ.intersection(Interest::WRITE).is_empty());
        assert!(!Interest::READ.is_empty());
    }
}
