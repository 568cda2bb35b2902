//! `mq_plugin::time::now()`: the worker's clock (the host's clock offset of
//! the running hook's context) in hook futures and synchronous hooks, the
//! real clock anywhere else. The mock host reports the offset a test sets.

mod mock;

use mock::*;
use mq_plugin::__private::v1 as rt;
use mq_plugin::sys::*;
use mq_plugin::Flow;
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// An hour: far more than a test's real time between two readings.
const OFFSET: Duration = Duration::from_secs(3600);

fn set_offset(offset: Duration) {
    CLOCK_OFFSET.with(|o| o.set(u64::try_from(offset.as_nanos()).unwrap()));
}

fn raw(ctx: &'static MockContext) -> *mut MQ_Context {
    ctx as *const MockContext as *mut MQ_Context
}

#[test]
fn outside_a_hook_it_is_the_real_clock() {
    attach_mock_host();
    set_offset(OFFSET);
    let before = Instant::now();
    let now = mq_plugin::time::now();
    assert!(
        now >= before && now < before + OFFSET,
        "{now:?} vs {before:?}"
    );
}

#[test]
fn a_synchronous_hook_sees_its_workers_clock_and_only_while_it_runs() {
    let ctx = context();
    attach_mock_host();
    set_offset(OFFSET);
    let seen = Rc::new(Cell::new(None));
    let before = Instant::now();
    let inside = Rc::clone(&seen);
    // SAFETY: the arguments of a hook call the mock keeps alive.
    let took = unsafe {
        rt::connection::<Flow, _>(&META, raw(ctx), 8 as *mut MQ_Connection, move |_, _| {
            inside.set(Some(mq_plugin::time::now()));
            Flow::Continue
        })
    };
    assert!(!took);
    let in_hook = seen.get().expect("the hook ran");
    assert!(in_hook >= before + OFFSET, "{in_hook:?} vs {before:?}");
    // After the call, the thread is outside any hook again.
    assert!(mq_plugin::time::now() < before + OFFSET);
    cleanup(ctx);
}

#[test]
fn a_hook_future_sees_its_workers_clock() {
    let ctx = context();
    set_offset(OFFSET);
    let seen = Rc::new(Cell::new(None));
    let before = Instant::now();
    let inside = Rc::clone(&seen);
    assert!(!call_hook(ctx, async move {
        inside.set(Some(mq_plugin::time::now()));
        Flow::Continue
    }));
    let in_hook = seen.get().expect("the future ran");
    assert!(in_hook >= before + OFFSET, "{in_hook:?} vs {before:?}");
    cleanup(ctx);
}
