//! `mq_smtp_in_close` of a Rust plugin whose author wrote no such hook is
//! mq-plugin's housekeeping: it drops the plugin's connection data. The
//! host calls it only where the plugin keeps data on the connection (a C
//! plugin without the hook is never called); the data is still dropped.

use mq_e2e::*;
use mq_host::{Direction, Event};

#[test]
fn housekeeping_close_runs_only_where_the_plugin_keeps_connection_data() {
    let dir = PluginDir::new("close-housekeeping");
    // `drop-panics`: `smtp_in_connect` attaches connection data (whose Drop
    // logs, then panics); the other hooks attach none.
    dir.add(
        "10-hostile.so",
        &plugin_so("mq-test-hostile"),
        "drop-panics",
    );
    let host = dir.builder().start().unwrap();

    let mut bare = host.open(Direction::Incoming).unwrap();
    let r = bare.run(Event::MailFrom("a@example.org".into())).unwrap();
    assert_eq!(called(&r), ["10-hostile"]);
    let closed = bare.close().unwrap().expect("the close chain ran");
    assert!(
        closed.calls.is_empty(),
        "no data on the connection: no call ({:?})",
        called(&closed)
    );

    let mut with_data = host.open(Direction::Incoming).unwrap();
    with_data.run(Event::Connect).unwrap();
    let closed = with_data.close().unwrap().expect("the close chain ran");
    assert_eq!(called(&closed), ["10-hostile"], "data on the connection");
    let log = closed.plugin_log().join("\n");
    assert!(log.contains("dropping connection value one"), "{log}");
    assert!(log.contains("dropping connection value two"), "{log}");

    let calls = host.counters().calls_by_hook();
    assert!(calls.contains(&("smtp_in_close", 1)), "{calls:?}");
}
