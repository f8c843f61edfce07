//! Postal addresses as a storefront sends them and a label prints them.
//! One type for orders, shipments and labels so a checked address is never
//! copied into a looser one.

use serde::{Deserialize, Serialize};

/// A ship-to or ship-from address. Field names follow the storefront's
/// order JSON; `region` is a state, province or county code where the
/// country uses one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub name: String,
    pub street1: String,
    #[serde(default)]
    pub street2: Option<String>,
    pub city: String,
    #[serde(default)]
    pub region: Option<String>,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}
