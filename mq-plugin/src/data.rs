//! Typed per-context and per-connection plugin data.
//!
//! The host offers one `void*` slot per plugin per context and per
//! connection. The runtime keeps a [`DataStore`] there: a small map from type
//! to value. Values are only ever added, never replaced or removed while
//! the context or connection lives, so a `&T` handed out stays valid for the
//! handle's lifetime; use `Cell`/`RefCell` inside `T` for mutable state. The
//! framework drops the whole store at `mq_context_cleanup` (context data)
//! and after `mq_smtp_in_close` (connection data).

use std::any::{Any, TypeId};
use std::cell::RefCell;

/// The values attached to one context or connection.
#[derive(Default)]
pub(crate) struct DataStore {
    /// The framework's own state (the context's executor). Declared first so
    /// it drops first: pending hook futures go before the data they may use.
    pub(crate) runtime: crate::executor::RuntimeSlot,
    entries: RefCell<Vec<(TypeId, Box<dyn Any>)>>,
}

impl DataStore {
    /// The value of type `T`, if one was inserted.
    pub(crate) fn get<T: 'static>(&self) -> Option<&T> {
        let entries = self.entries.borrow();
        let value = entries
            .iter()
            .find(|(id, _)| *id == TypeId::of::<T>())?
            .1
            .downcast_ref::<T>()?;
        let value: *const T = value;
        drop(entries);
        // SAFETY: entries are boxed and never removed or replaced while the
        // store lives (only pushed), so the box's contents do not move and
        // outlive `&self`.
        Some(unsafe { &*value })
    }

    /// The value of type `T`, inserting `make()` first if there is none.
    /// `make` may itself use the store.
    pub(crate) fn get_or_insert_with<T: 'static>(&self, make: impl FnOnce() -> T) -> &T {
        if let Some(v) = self.get::<T>() {
            return v;
        }
        let value = make();
        // `make` may have inserted a `T` itself; the first one wins.
        if let Some(v) = self.get::<T>() {
            return v;
        }
        self.entries
            .borrow_mut()
            .push((TypeId::of::<T>(), Box::new(value)));
        self.get::<T>().expect("just inserted")
    }

    /// Number of values (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.borrow().len()
    }
}

impl Drop for DataStore {
    /// The framework's state first (pending hook futures go before the data
    /// they may use), then each value in a panic boundary of its own: a
    /// `Drop` that panics is logged, and the other values are still dropped
    /// (two panicking values dropped in one unwind would abort).
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.runtime));
        let entries = std::mem::take(&mut *self.entries.borrow_mut());
        for (_, value) in entries {
            if let Err(message) = crate::boundary::catch(move || drop(value)) {
                crate::log::log_text(
                    crate::sys::MQ_CRIT,
                    &format!(
                        "[{}] dropping plugin data panicked: {message}",
                        crate::log::plugin_name()
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn values_are_typed_and_stable() {
        let store = DataStore::default();
        assert!(store.get::<u32>().is_none());
        let a = store.get_or_insert_with(|| 5u32);
        let b = store.get_or_insert_with(|| String::from("x"));
        for i in 0..100u64 {
            // Growth of the list must not move earlier values.
            store.get_or_insert_with(move || [i; 3]);
        }
        assert_eq!(*a, 5);
        assert_eq!(b, "x");
        assert_eq!(*store.get_or_insert_with(|| 7u32), 5, "first value wins");
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn make_may_use_the_store() {
        let store = DataStore::default();
        let v = store.get_or_insert_with(|| {
            let _ = store.get_or_insert_with(|| 1u8);
            Cell::new(2u16)
        });
        v.set(3);
        assert_eq!(store.get::<Cell<u16>>().unwrap().get(), 3);
        assert_eq!(*store.get::<u8>().unwrap(), 1);
    }

    #[test]
    fn values_whose_drop_panics_are_dropped_one_by_one() {
        struct Panics(Rc<Cell<u32>>);
        impl Drop for Panics {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
                panic!("drop panics");
            }
        }
        struct Other(Rc<Cell<u32>>);
        impl Drop for Other {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
                panic!("this one too");
            }
        }
        let dropped = Rc::new(Cell::new(0));
        let store = DataStore::default();
        store.get_or_insert_with(|| Panics(dropped.clone()));
        store.get_or_insert_with(|| Other(dropped.clone()));
        store.get_or_insert_with(|| 5u8);
        drop(store);
        assert_eq!(dropped.get(), 2, "both dropped, no abort");
    }

    #[test]
    fn dropping_the_store_drops_values() {
        let marker = Rc::new(());
        let store = DataStore::default();
        store.get_or_insert_with(|| marker.clone());
        assert_eq!(Rc::strong_count(&marker), 2);
        drop(store);
        assert_eq!(Rc::strong_count(&marker), 1);
    }
}
