//! Machines: drivers that run the sans-IO host state machines of
//! `microfactory-protocol` over real serial ports, and firmware simulators
//! that serve pseudo-terminals for tests and the demo factory.

pub mod driver;
pub mod profile;
pub mod sim;
