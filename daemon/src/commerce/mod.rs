//! Commerce: finished goods, storefront orders, fulfillment, labels and
//! webhooks. Reads the domain log by cursor like metering; it never edits
//! the factory's records. ARCHITECTURE.md says what each module may know.

pub mod address;
pub mod carrier;
pub mod inventory;
pub mod labels;
pub mod orders;
pub mod service;
pub mod shopify;
#[cfg(test)]
mod tests;
pub mod webhooks;
