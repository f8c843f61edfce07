//! MQTT: the factory's state published to a broker, and machines that
//! report through it.
//!
//! Like `core/`, the schema and the adapters are pure (no tokio, no
//! rumqttc): [`schema`] (every topic and payload we publish, from a log
//! record), [`adapters`] (what MQTT machines send, turned into the status
//! a serial driver would publish) and [`backoff`] (the wait between
//! reconnects). The shell is [`client`] (the one broker connection, the
//! publisher that reads the log by cursor, the ingest) and [`link`] (an
//! MQTT machine as a `factory::link::MachineLink`), with [`tls`] (the
//! `mqtts://` connector from `[mqtt]`'s files, through the system's
//! OpenSSL). docs/mqtt.md documents the topics and payloads.

pub mod adapters;
pub mod backoff;
pub mod client;
pub mod link;
pub mod schema;
pub mod tls;

pub use client::{Mqtt, MqttError, MqttHealth};
