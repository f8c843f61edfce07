//! Bearer tokens and roles. Tokens are random, shown once, and stored only
//! as their sha256, so a copy of the data directory does not leak them.

use crate::clock::now_ms;
use crate::core::model::{Role, TokenRecord};
use crate::factory::files::sha256_hex;
use crate::store::{Store, StoreError};

/// Prefix that makes tokens recognisable in logs and secret scanners.
const PREFIX: &str = "mfd_";

/// Name of the dashboard's session cookie.
pub const SESSION_COOKIE: &str = "mfd_session";

/// Header a cookie-authenticated request must carry to change anything:
/// a cross-site form or `fetch` cannot set it without a CORS preflight,
/// which this daemon never grants.
pub const CSRF_HEADER: &str = "x-microfactory-csrf";

fn random_hex() -> Result<String, StoreError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(crate::factory::files::hex(&raw))
}

/// Creates a token, stores its hash and returns the token itself.
pub fn create_token(store: &Store, role: Role, name: &str) -> Result<String, StoreError> {
    let token = format!("{PREFIX}{}", random_hex()?);
    add_token(store, &token, role, name)?;
    Ok(token)
}

/// Opens a browser session for a valid token; returns the session id for
/// the cookie. The session lasts as long as the token exists.
pub fn open_session(
    store: &Store,
    token: &str,
) -> Result<Option<(String, TokenRecord)>, StoreError> {
    let Some(rec) = lookup(store, token)? else {
        return Ok(None);
    };
    let id = random_hex()?;
    store.put_session(&sha256_hex(id.as_bytes()), &sha256_hex(token.as_bytes()))?;
    Ok(Some((id, rec)))
}

/// The token record behind a session cookie.
pub fn lookup_session(store: &Store, session: &str) -> Result<Option<TokenRecord>, StoreError> {
    if session.is_empty() || session.len() > 256 {
        return Ok(None);
    }
    match store.session(&sha256_hex(session.as_bytes()))? {
        Some(token_hash) => store.token(&token_hash),
        None => Ok(None),
    }
}

/// Ends a browser session.
pub fn close_session(store: &Store, session: &str) -> Result<(), StoreError> {
    store.remove_session(&sha256_hex(session.as_bytes()))
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
