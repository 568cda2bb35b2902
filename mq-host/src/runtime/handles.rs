//! The C handles the host gives plugins (`MQ_Context*`, `MQ_Connection*`,
//! `MQ_Message*`, `MQ_Address*`), and the one place that turns such a
//! value back into a host object.
//!
//! A handle is not an address of host memory. It is a 64-bit value
//!
//! ```text
//! kind (3) | registry (16) | plugin (9) | slot (18) | generation (18)
//! ```
//!
//! looked up in the *calling thread's* registry: each worker thread owns
//! one, with its own id. So a host function can refuse any argument
//! without reading memory it does not own:
//!
//! - a value of another kind, a garbage value or NULL does not decode;
//! - a handle from another thread carries another registry id (a plugin's
//!   own thread has no registry at all), so a call off the owning worker
//!   is recognised before anything is touched;
//! - a handle whose object is gone (a connection after `smtp_in_close`, a
//!   message after its chain) names a slot whose generation has moved on:
//!   stale, refused. A slot whose generation would wrap is never reused, so
//!   a stale handle can never alias a newer object.
//!
//! The plugin index in every handle says which plugin a connection or
//! context handle belongs to (each plugin has its own data slots, and a
//! resume says which plugin gives control back), and lets a refusal name
//! the plugin even when it comes from a thread the host does not know.
//!
//! Objects register themselves on first use as a handle (a [`Registration`]
//! field) and unregister when they are dropped, on their worker thread. The
//! registry keeps a `Weak` reference to each, so a lookup returns an `Rc`
//! that keeps the object alive while a host function uses it; it knows no
//! object type, which makes it a leaf of the runtime.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU16, Ordering};

/// What a handle stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Context = 1,
    Connection = 2,
    Message = 3,
    Address = 4,
}

impl Kind {
    /// The C type's name, for refusals.
    pub(crate) fn c_type(self) -> &'static str {
        match self {
            Kind::Context => "MQ_Context",
            Kind::Connection => "MQ_Connection",
            Kind::Message => "MQ_Message",
            Kind::Address => "MQ_Address",
        }
    }

    fn from_bits(bits: u64) -> Option<Kind> {
        match bits {
            1 => Some(Kind::Context),
            2 => Some(Kind::Connection),
            3 => Some(Kind::Message),
            4 => Some(Kind::Address),
            _ => None,
        }
    }
}

const KIND_SHIFT: u32 = 61;
const REGISTRY_SHIFT: u32 = 45;
const PLUGIN_SHIFT: u32 = 36;
const SLOT_SHIFT: u32 = 18;
const REGISTRY_MASK: u64 = (1 << 16) - 1;
const PLUGIN_MASK: u64 = (1 << 9) - 1;
const SLOT_MASK: u64 = (1 << 18) - 1;
const GENERATION_MASK: u64 = (1 << 18) - 1;

/// The most plugins a host can load (the handle's plugin field).
pub(crate) const MAX_PLUGINS: usize = 1 << 9;
/// The most objects one worker can have registered at once.
const MAX_SLOTS: usize = 1 << 18;
const MAX_GENERATION: u32 = (1 << 18) - 1;

/// A decoded handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handle {
    pub(crate) kind: Kind,
    pub(crate) registry: u16,
    pub(crate) plugin: usize,
    slot: u32,
    generation: u32,
}

impl Handle {
    pub(crate) fn to_raw(self) -> u64 {
        ((self.kind as u64) << KIND_SHIFT)
            | (u64::from(self.registry) << REGISTRY_SHIFT)
            | ((self.plugin as u64 & PLUGIN_MASK) << PLUGIN_SHIFT)
            | (u64::from(self.slot) << SLOT_SHIFT)
            | u64::from(self.generation)
    }

    /// Decodes a value a plugin passed; `None` for NULL and anything that
    /// is not a handle of some kind.
    pub(crate) fn from_raw(raw: u64) -> Option<Handle> {
        let kind = Kind::from_bits(raw >> KIND_SHIFT)?;
        Some(Handle {
            kind,
            registry: ((raw >> REGISTRY_SHIFT) & REGISTRY_MASK) as u16,
            plugin: ((raw >> PLUGIN_SHIFT) & PLUGIN_MASK) as usize,
            slot: ((raw >> SLOT_SHIFT) & SLOT_MASK) as u32,
            generation: (raw & GENERATION_MASK) as u32,
        })
    }

    /// The pointer-typed value a C function takes or returns.
    pub(crate) fn to_ptr<T>(self) -> *mut T {
        self.to_raw() as usize as *mut T
    }
}

struct Slot {
    generation: u32,
    object: Option<Weak<dyn Any>>,
}

/// One thread's registry.
struct Registry {
    id: u16,
    slots: RefCell<Vec<Slot>>,
    /// Free slots, oldest first (FIFO spreads reuse over all slots).
    free: RefCell<VecDeque<u32>>,
}

/// Registry ids: unique among live threads (0 is never used).
static NEXT_REGISTRY: AtomicU16 = AtomicU16::new(1);

thread_local! {
    static REGISTRY: Registry = Registry {
        id: {
            let mut id = NEXT_REGISTRY.fetch_add(1, Ordering::Relaxed);
            if id == 0 {
                id = NEXT_REGISTRY.fetch_add(1, Ordering::Relaxed);
            }
            id
        },
        slots: RefCell::new(Vec::new()),
        free: RefCell::new(VecDeque::new()),
    };
}

/// The calling thread's registry id (creating its registry).
pub(crate) fn this_thread() -> Option<u16> {
    REGISTRY.try_with(|r| r.id).ok()
}

/// The handle of a context: `plugin`'s context on the calling (worker) thread.
pub(crate) fn context_handle(plugin: usize) -> Option<Handle> {
    Some(Handle {
        kind: Kind::Context,
        registry: this_thread()?,
        plugin,
        slot: 0,
        generation: 0,
    })
}

/// A registration: where an object sits in its thread's registry.
#[derive(Debug, Default)]
pub(crate) struct Registration(Cell<Option<(u16, u32, u32)>>);

impl Registration {
    /// The object's handle for `plugin`, registering it on first use.
    /// `None` when the slot space is exhausted or the thread is ending.
    pub(crate) fn handle<T: Any>(
        &self,
        kind: Kind,
        plugin: usize,
        object: &Rc<T>,
    ) -> Option<Handle> {
        let (registry, slot, generation) = match self.0.get() {
            Some(r) => r,
            None => {
                let r = REGISTRY.try_with(|reg| {
                    let weak: Weak<dyn Any> = Rc::downgrade(object) as Weak<dyn Any>;
                    let (slot, generation) = reg.insert(weak)?;
                    Some((reg.id, slot, generation))
                });
                let r = r.ok().flatten()?;
                self.0.set(Some(r));
                r
            }
        };
        Some(Handle {
            kind,
            registry,
            plugin,
            slot,
            generation,
        })
    }

    /// Unregisters (the object is going away); stale handles stay refused.
    fn release(&self) {
        let Some((registry, slot, generation)) = self.0.take() else {
            return;
        };
        let _ = REGISTRY.try_with(|reg| {
            // An object is dropped on the thread that registered it (host
            // objects are `!Send`); a mismatch could only be a host bug.
            debug_assert_eq!(reg.id, registry, "host object dropped off its thread");
            if reg.id == registry {
                reg.remove(slot, generation);
            }
        });
    }
}

impl Registry {
    fn insert(&self, object: Weak<dyn Any>) -> Option<(u32, u32)> {
        let mut slots = self.slots.borrow_mut();
        if let Some(slot) = self.free.borrow_mut().pop_front() {
            let s = &mut slots[slot as usize];
            s.object = Some(object);
            return Some((slot, s.generation));
        }
        if slots.len() >= MAX_SLOTS {
            return None;
        }
        slots.push(Slot {
            generation: 0,
            object: Some(object),
        });
        Some(((slots.len() - 1) as u32, 0))
    }

    fn remove(&self, slot: u32, generation: u32) {
        let mut slots = self.slots.borrow_mut();
        let Some(s) = slots.get_mut(slot as usize) else {
            return;
        };
        if s.generation != generation || s.object.take().is_none() {
            return;
        }
        // A slot whose generation would wrap is retired, never reused.
        if s.generation < MAX_GENERATION {
            s.generation += 1;
            self.free.borrow_mut().push_back(slot);
        }
    }

    /// The object of a handle of this thread, if it is still registered.
    fn get(&self, h: Handle) -> Option<Rc<dyn Any>> {
        let slots = self.slots.borrow();
        let s = slots.get(h.slot as usize)?;
        if s.generation != h.generation {
            return None;
        }
        s.object.as_ref()?.upgrade()
    }
}

/// Why a handle was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// NULL.
    Null,
    /// Not a handle of the expected kind (or not a handle at all).
    NotA(Kind),
    /// A handle of the right kind, but of another thread (or called from a
    /// thread that is no worker).
    OtherThread,
    /// The object is gone.
    Stale,
}

impl Refusal {
    /// The reason, for the host's log line.
    pub(crate) fn describe(self, expected: Kind) -> String {
        match self {
            Refusal::Null => format!("the {} is NULL", expected.c_type()),
            Refusal::NotA(kind) => format!("the argument is not an {}", kind.c_type()),
            Refusal::OtherThread => format!(
                "called with an {} off the worker thread that owns it; host functions \
                 other than MQ_log must run on the event loop of the hook's worker",
                expected.c_type()
            ),
            Refusal::Stale => format!(
                "the {} is no longer valid (its {} is over); keep no handle past the \
                 hook's control",
                expected.c_type(),
                match expected {
                    Kind::Connection => "connection",
                    Kind::Message => "message's chain",
                    Kind::Address => "address's chain",
                    Kind::Context => "worker",
                }
            ),
        }
    }
}

/// Decodes `raw` as a handle of `kind` owned by the calling thread.
pub(crate) fn decode(raw: u64, kind: Kind) -> Result<Handle, Refusal> {
    if raw == 0 {
        return Err(Refusal::Null);
    }
    let h = Handle::from_raw(raw).ok_or(Refusal::NotA(kind))?;
    if h.kind != kind {
        return Err(Refusal::NotA(kind));
    }
    if this_thread() != Some(h.registry) {
        return Err(Refusal::OtherThread);
    }
    Ok(h)
}

/// The plugin a value names, if it decodes as a handle of any kind (for
/// naming the plugin in a refusal, whatever thread calls).
pub(crate) fn plugin_of(raw: u64) -> Option<(usize, u16)> {
    Handle::from_raw(raw).map(|h| (h.plugin, h.registry))
}

/// The object of a handle of `kind` owned by the calling thread, and the
/// plugin the handle names. `T` is the object type of `kind`.
pub(crate) fn resolve<T: Any>(raw: u64, kind: Kind) -> Result<(Rc<T>, usize), Refusal> {
    let h = decode(raw, kind)?;
    let object = REGISTRY
        .try_with(|r| r.get(h))
        .ok()
        .flatten()
        .ok_or(Refusal::Stale)?;
    let object = object.downcast::<T>().map_err(|_| Refusal::NotA(kind))?;
    Ok((object, h.plugin))
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object as the runtime's are: it owns its registration.
    #[derive(Default)]
    struct Thing {
        value: u32,
        registration: Registration,
    }

    fn thing(value: u32) -> Rc<Thing> {
        Rc::new(Thing {
            value,
            registration: Registration::default(),
        })
    }

    fn handle(t: &Rc<Thing>, kind: Kind, plugin: usize) -> u64 {
        t.registration.handle(kind, plugin, t).unwrap().to_raw()
    }

    #[test]
    fn handles_round_trip_and_are_never_null() {
        let h = Handle {
            kind: Kind::Message,
            registry: 0xffff,
            plugin: MAX_PLUGINS - 1,
            slot: (MAX_SLOTS - 1) as u32,
            generation: MAX_GENERATION,
        };
        assert_eq!(Handle::from_raw(h.to_raw()), Some(h));
        let zero = Handle {
            kind: Kind::Context,
            registry: 0,
            plugin: 0,
            slot: 0,
            generation: 0,
        };
        assert_ne!(zero.to_raw(), 0);
    }

    #[test]
    fn garbage_null_and_wrong_kinds_are_refused() {
        assert_eq!(decode(0, Kind::Message), Err(Refusal::Null));
        assert_eq!(
            decode(0x1234, Kind::Message),
            Err(Refusal::NotA(Kind::Message))
        );
        assert_eq!(
            decode(u64::MAX, Kind::Message),
            Err(Refusal::NotA(Kind::Message))
        );
        let t = thing(7);
        let raw = handle(&t, Kind::Address, 0);
        assert_eq!(
            resolve::<Thing>(raw, Kind::Message).err(),
            Some(Refusal::NotA(Kind::Message))
        );
        assert_eq!(resolve::<Thing>(raw, Kind::Address).unwrap().0.value, 7);
        assert_eq!(
            resolve::<u8>(raw, Kind::Address).err(),
            Some(Refusal::NotA(Kind::Address)),
            "another type behind the handle"
        );
    }

    #[test]
    fn a_dropped_object_leaves_a_stale_handle() {
        let t = thing(1);
        let raw = handle(&t, Kind::Message, 3);
        assert_eq!(resolve::<Thing>(raw, Kind::Message).unwrap().1, 3);
        drop(t);
        assert_eq!(
            resolve::<Thing>(raw, Kind::Message).err(),
            Some(Refusal::Stale)
        );
        // A new object in the same slot gets a new generation.
        let n = thing(2);
        let fresh = handle(&n, Kind::Message, 3);
        assert_ne!(fresh, raw);
        assert_eq!(
            resolve::<Thing>(raw, Kind::Message).err(),
            Some(Refusal::Stale)
        );
        assert!(resolve::<Thing>(fresh, Kind::Message).is_ok());
    }

    #[test]
    fn one_registration_per_object_whatever_the_plugin() {
        let t = thing(1);
        let a = Handle::from_raw(handle(&t, Kind::Message, 1)).unwrap();
        let b = Handle::from_raw(handle(&t, Kind::Message, 2)).unwrap();
        assert_eq!((a.slot, a.generation), (b.slot, b.generation));
        assert_eq!((a.plugin, b.plugin), (1, 2));
    }

    #[test]
    fn handles_of_another_thread_are_refused_without_a_lookup() {
        let t = thing(1);
        let raw = handle(&t, Kind::Message, 0);
        let there = std::thread::spawn(move || resolve::<Thing>(raw, Kind::Message).err())
            .join()
            .unwrap();
        assert_eq!(there, Some(Refusal::OtherThread));
        assert!(resolve::<Thing>(raw, Kind::Message).is_ok());
    }

    #[test]
    fn a_slot_whose_generation_would_wrap_is_retired() {
        let reg = Registry {
            id: 1,
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(VecDeque::new()),
        };
        let t: Rc<dyn Any> = thing(1);
        let (slot, _) = reg.insert(Rc::downgrade(&t)).unwrap();
        reg.slots.borrow_mut()[slot as usize].generation = MAX_GENERATION;
        reg.remove(slot, MAX_GENERATION);
        assert!(reg.free.borrow().is_empty(), "not reused");
        let (next, generation) = reg.insert(Rc::downgrade(&t)).unwrap();
        assert_ne!(next, slot);
        assert_eq!(generation, 0);
    }
}
