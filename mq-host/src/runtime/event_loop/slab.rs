//! A vector of generational slots, for the loop's watchers and timers.
//!
//! A slot remembers why its last value left ([`Ended`]), so that a stale
//! handle of that value can be told apart from a handle the loop never
//! gave out; that memory lasts until the slot is reused *and* freed again.

/// Why a value left its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// A timer fired (it is freed before its callback runs).
    Fired,
    /// A timer was stopped.
    Stopped,
    /// A watcher was unwatched.
    Unwatched,
    /// A watcher was discarded: its fd was closed and the number watched anew.
    Discarded,
}

pub(super) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// How many slots hold a value.
    pub(super) live: usize,
}

struct Slot<T> {
    generation: u16,
    value: Option<T>,
    /// The generation of the last value that left, and why.
    ended: Option<(u16, Ended)>,
}

impl<T> Slab<T> {
    pub(super) fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Stores `value`; returns `(slot, generation)`.
    pub(super) fn insert(&mut self, value: T) -> (u32, u16) {
        self.live += 1;
        if let Some(slot) = self.free.pop() {
            let s = &mut self.slots[slot as usize];
            s.value = Some(value);
            return (slot, s.generation);
        }
        let slot = u32::try_from(self.slots.len())
            .ok()
            .filter(|&n| n < u32::MAX)
            .expect("event loop slot space exhausted");
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
            ended: None,
        });
        (slot, 0)
    }

    pub(super) fn get_mut(&mut self, slot: u32, generation: u16) -> Option<&mut T> {
        self.slots
            .get_mut(slot as usize)
            .filter(|s| s.generation == generation)
            .and_then(|s| s.value.as_mut())
    }

    /// The value in `slot` (of any generation) and its generation.
    pub(super) fn get_any(&self, slot: u32) -> Option<(&T, u16)> {
        let s = self.slots.get(slot as usize)?;
        s.value.as_ref().map(|v| (v, s.generation))
    }

    /// The value in `slot`, which must hold one (a link of the loop's own).
    pub(super) fn linked_mut(&mut self, slot: u32) -> &mut T {
        self.slots[slot as usize]
            .value
            .as_mut()
            .expect("a linked slot holds a value")
    }

    /// Frees the slot, remembering `why`; a slot whose generation would
    /// wrap is retired instead of reused, so a stale handle can never alias
    /// a new value.
    pub(super) fn remove(&mut self, slot: u32, generation: u16, why: Ended) -> Option<T> {
        let s = self
            .slots
            .get_mut(slot as usize)
            .filter(|s| s.generation == generation)?;
        let value = s.value.take()?;
        self.live -= 1;
        s.ended = Some((generation, why));
        if s.generation < u16::MAX {
            s.generation += 1;
            self.free.push(slot);
        }
        Some(value)
    }

    /// Why the value of `(slot, generation)` left, if this slot's last
    /// value was that one; `None` if the loop never gave out such a handle
    /// or no longer remembers it.
    pub(super) fn ended(&self, slot: u32, generation: u16) -> Option<Ended> {
        let s = self.slots.get(slot as usize)?;
        match s.ended {
            Some((g, why)) if g == generation => Some(why),
            _ => None,
        }
    }

    /// Whether a value of `(slot, generation)` was ever stored (and maybe
    /// freed since).
    pub(super) fn was_used(&self, slot: u32, generation: u16) -> bool {
        self.slots.get(slot as usize).is_some_and(|s| {
            generation < s.generation || (generation == s.generation && s.value.is_some())
        }) || self.ended(slot, generation).is_some()
    }
}
