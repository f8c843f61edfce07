//! Bearer tokens and roles. Tokens are random, shown once, and stored only
//! as their sha256, so a copy of the data directory does not leak them.

use axum::http::Method;

use crate::files::sha256_hex;
use crate::model::{Role, TokenRecord, now_ms};
use crate::store::{Store, StoreError};

/// Prefix that makes tokens recognisable in logs and secret scanners.
const PREFIX: &str = "mfd_";

/// Creates a token, stores its hash and returns the token itself.
pub fn create_token(store: &Store, role: Role, name: &str) -> Result<String, StoreError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token = format!(
        "{PREFIX}{}",
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    add_token(store, &token, role, name)?;
    Ok(token)
}

/// Stores a token chosen by the operator (the demo's `MICROFACTORYD_TOKEN`).
pub fn add_token(store: &Store, token: &str, role: Role, name: &str) -> Result<(), StoreError> {
    store.put_token(
        &sha256_hex(token.as_bytes()),
        &TokenRecord {
            name: name.to_string(),
            role,
            created_ms: now_ms(),
        },
    )
}

/// The token's record, if the token is known.
pub fn lookup(store: &Store, token: &str) -> Result<Option<TokenRecord>, StoreError> {
    if token.is_empty() || token.len() > 256 {
        return Ok(None);
    }
    store.token(&sha256_hex(token.as_bytes()))
}

/// Whether `role` may call a route with `method`. Reading is open to
/// viewers; changing anything needs an operator. The storefront and
/// machine roles are reserved and may call nothing yet.
pub fn allowed(role: Role, method: &Method) -> bool {
    match role {
        Role::Operator => true,
        Role::Viewer => method == Method::GET || method == Method::HEAD,
        Role::Storefront | Role::Machine => false,
    }
}
