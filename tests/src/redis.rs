//! A real `redis-server` on a free loopback port, killed on drop: the one
//! plugin authors get from `mq-plugin-test` (`RedisServer`).

pub use mq_plugin_test::redis::RedisServer as Redis;
