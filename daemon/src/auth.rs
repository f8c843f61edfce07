//! Bearer tokens and roles. Tokens are random, shown once, and stored only
//! as their sha256, so a copy of the data directory does not leak them.

use crate::clock::now_ms;
use crate::core::model::{Role, TokenRecord};
use crate::factory::files::sha256_hex;
use crate::store::{SessionRecord, Store, StoreError};

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

/// A known caller: its token's hash (which names it in limits, without
/// keeping the token) and record.
#[derive(Debug, Clone)]
pub struct Identity {
    /// sha256 of the token.
    pub token_hash: String,
    /// The token's record.
    pub record: TokenRecord,
}

/// Opens a browser session for a valid token; returns the session id for
/// the cookie. The session ends when the token is revoked, when it is
/// signed out, or `lifetime_ms` after now (see [`lookup_session`]).
pub fn open_session(
    store: &Store,
    token: &str,
) -> Result<Option<(String, TokenRecord)>, StoreError> {
    let Some(rec) = lookup(store, token)? else {
        return Ok(None);
    };
    let id = random_hex()?;
    store.put_session_record(
        &sha256_hex(id.as_bytes()),
        &SessionRecord {
            token: sha256_hex(token.as_bytes()),
            created_ms: now_ms(),
        },
    )?;
    Ok(Some((id, rec)))
}

/// The caller behind a session cookie, if the session exists, its token
/// still does, and it was opened less than `lifetime_ms` before `now_ms`.
/// An expired session is removed, so the cookie's own `Max-Age` (which a
/// client can ignore) is not what ends it.
pub fn lookup_session(
    store: &Store,
    session: &str,
    lifetime_ms: u64,
    now_ms: u64,
) -> Result<Option<Identity>, StoreError> {
    if session.is_empty() || session.len() > 256 {
        return Ok(None);
    }
    let key = sha256_hex(session.as_bytes());
    let Some(rec) = store.session_record(&key)? else {
        return Ok(None);
    };
    if now_ms.saturating_sub(rec.created_ms) >= lifetime_ms {
        store.remove_session(&key)?;
        return Ok(None);
    }
    Ok(store.token(&rec.token)?.map(|record| Identity {
        token_hash: rec.token,
        record,
    }))
}

/// The caller behind a bearer token.
pub fn identify(store: &Store, token: &str) -> Result<Option<Identity>, StoreError> {
    let Some(token_hash) = token_hash(token) else {
        return Ok(None);
    };
    // Hashed once: every API request comes through here.
    Ok(store
        .token(&token_hash)?
        .map(|record| Identity { token_hash, record }))
}

/// A token as `token list` shows it: never the token, only a prefix of its
/// hash, which is enough to name it for `token revoke`.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// sha256 of the token.
    pub hash: String,
    /// Its record.
    pub record: TokenRecord,
}

/// Every token, oldest first.
pub fn list_tokens(store: &Store) -> Result<Vec<TokenInfo>, StoreError> {
    let mut all: Vec<TokenInfo> = store
        .tokens()?
        .into_iter()
        .map(|(hash, record)| TokenInfo { hash, record })
        .collect();
    all.sort_by_key(|t| t.record.created_ms);
    Ok(all)
}

/// Why `token revoke` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// Nothing matched.
    #[error(
        "no token is named '{0}' or has a hash starting with it; see 'microfactoryd token list'"
    )]
    NoMatch(String),
    /// More than one matched; revoking all of them by accident is worse.
    #[error("'{which}' matches {} tokens ({}); give a longer hash prefix", names.len(), names.join(", "))]
    Ambiguous { which: String, names: Vec<String> },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Revokes the one token whose name is `which`, or whose hash starts with
/// `which` (at least 6 hex digits), and ends its sessions. Returns the
/// token and how many sessions ended.
pub fn revoke(store: &Store, which: &str) -> Result<(TokenInfo, usize), RevokeError> {
    let which_lc = which.to_ascii_lowercase();
    let by_hash = which.len() >= 6 && which.bytes().all(|b| b.is_ascii_hexdigit());
    let matches: Vec<TokenInfo> = list_tokens(store)?
        .into_iter()
        .filter(|t| t.record.name == which || (by_hash && t.hash.starts_with(&which_lc)))
        .collect();
    match matches.as_slice() {
        [] => Err(RevokeError::NoMatch(which.to_string())),
        [one] => {
            store.remove_token(&one.hash)?;
            let ended = store.remove_sessions_of(&one.hash)?;
            Ok((one.clone(), ended))
        }
        many => Err(RevokeError::Ambiguous {
            which: which.to_string(),
            names: many
                .iter()
                .map(|t| format!("'{}' {}", t.record.name, &t.hash[..12.min(t.hash.len())]))
                .collect(),
        }),
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
    match token_hash(token) {
        Some(hash) => store.token(&hash),
        None => Ok(None),
    }
}

/// The key a token is stored under; `None` for what cannot be a token.
fn token_hash(token: &str) -> Option<String> {
    (!token.is_empty() && token.len() <= 256).then(|| sha256_hex(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    fn store(tag: &str) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("mfd-auth-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&dir).expect("store"), dir)
    }

    #[test]
    fn a_session_expires_on_the_server_after_its_lifetime() {
        let (s, dir) = store("expiry");
        let token = create_token(&s, Role::Viewer, "v").expect("token");
        let (id, _) = open_session(&s, &token).expect("open").expect("known");
        let now = now_ms();
        let alive = lookup_session(&s, &id, 30 * DAY_MS, now + 29 * DAY_MS).expect("lookup");
        assert_eq!(alive.map(|i| i.record.name), Some("v".to_string()));
        assert!(
            lookup_session(&s, &id, 30 * DAY_MS, now + 31 * DAY_MS)
                .expect("lookup")
                .is_none()
        );
        // Expired means removed: even a longer lifetime cannot revive it.
        assert!(
            lookup_session(&s, &id, 300 * DAY_MS, now)
                .expect("lookup")
                .is_none()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_session_stored_without_a_time_counts_as_expired() {
        let (s, dir) = store("legacy");
        let token = create_token(&s, Role::Operator, "o").expect("token");
        s.put_session(&sha256_hex(b"old-session"), &sha256_hex(token.as_bytes()))
            .expect("legacy session");
        let found = lookup_session(&s, "old-session", 30 * DAY_MS, now_ms()).expect("lookup");
        assert!(found.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn revoking_by_name_or_hash_prefix_ends_the_tokens_sessions_only() {
        let (s, dir) = store("revoke");
        let a = create_token(&s, Role::Viewer, "alice").expect("a");
        let b = create_token(&s, Role::Viewer, "bob").expect("b");
        let (sa, _) = open_session(&s, &a).expect("open").expect("a");
        let (sb, _) = open_session(&s, &b).expect("open").expect("b");
        // Looked up first, so that the store has it at hand when revoked.
        assert!(lookup(&s, &a).expect("lookup").is_some());
        assert!(lookup(&s, &b).expect("lookup").is_some());
        let (gone, ended) = revoke(&s, "alice").expect("revoke by name");
        assert_eq!((gone.record.name.as_str(), ended), ("alice", 1));
        assert!(lookup(&s, &a).expect("lookup").is_none());
        let live = |id: &str| lookup_session(&s, id, DAY_MS, now_ms()).expect("session");
        assert!(live(&sa).is_none());
        assert!(live(&sb).is_some());
        let prefix = &sha256_hex(b.as_bytes())[..8];
        assert!(matches!(revoke(&s, "alice"), Err(RevokeError::NoMatch(_))));
        assert!(
            matches!(revoke(&s, "abc"), Err(RevokeError::NoMatch(_))),
            "too short a prefix"
        );
        revoke(&s, &prefix.to_uppercase()).expect("revoke by hash prefix");
        assert!(lookup(&s, &b).expect("lookup").is_none());
        assert!(live(&sb).is_none());
        assert!(list_tokens(&s).expect("list").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_tokens_of_one_name_are_not_revoked_together() {
        let (s, dir) = store("ambiguous");
        create_token(&s, Role::Viewer, "kiosk").expect("1");
        create_token(&s, Role::Viewer, "kiosk").expect("2");
        let e = revoke(&s, "kiosk").expect_err("ambiguous");
        assert!(e.to_string().contains("matches 2 tokens"), "{e}");
        assert_eq!(list_tokens(&s).expect("list").len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
