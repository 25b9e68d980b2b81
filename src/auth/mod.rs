//! Who may do what: tokens (JWT), the permissions they grant, anonymous access, and
//! the limits per address, per user and per connection. Sans I/O: the caller brings
//! the upgrade request and the time (`now_unix`, seconds since 1970, for `exp` and
//! `nbf`; an `Instant` for the rate buckets), and gets decisions back.
//!
//! A client's permissions are a [`Grant`]: anonymous (one grant shared by every
//! anonymous client) or a user's (its `sub`, `info`, patterns and expiry), shared by
//! every connection that presents the same token (`Rc`), so an idle connection with a
//! token costs a pointer. Patterns are compiled once per token (`pattern`), and a
//! check at join or publish is a few comparisons; deliveries check nothing.

mod keys;
pub(crate) mod limits;
pub mod mint;
mod pattern;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::rc::Rc;

use serde::Deserialize;

use crate::config::Config;
use crate::handshake::UpgradeRequest;
pub(crate) use keys::{secret_bytes, Checks, Key};
pub(crate) use pattern::Patterns;

/// Longest token accepted, in bytes (claims with a 1 KiB `info` and a few dozen
/// patterns fit with room to spare). Longer ones are refused before any decoding.
pub const MAX_TOKEN: usize = 4096;
/// Longest `sub`, in bytes.
pub const MAX_SUB: usize = 128;
/// Largest `info` object, in bytes of compact JSON.
pub const MAX_INFO: usize = 1024;
/// Most patterns a token may carry (read and write together).
pub const MAX_PATTERNS: usize = 256;

/// Why a token was refused. `reason()` is the close reason (4401, or 4001 for
/// expiry) and the `error_description` of a 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// No token, where one is needed.
    Required,
    TooLarge,
    /// Not three base64url parts of JSON, or not UTF-8.
    Malformed,
    /// The header's `kid` names no configured key.
    UnknownKey,
    /// `alg: none`, an unknown `alg`, or one that no (named) key has.
    Algorithm,
    Signature,
    Audience,
    Issuer,
    /// A claim is missing or of the wrong shape (`sub`, `exp`, `rooms`, `info`).
    Claims,
    /// `exp` (plus the leeway) has passed.
    Expired,
    /// `nbf` (minus the leeway) is still ahead.
    NotYetValid,
}

impl TokenError {
    /// The text of the close reason and of a 401's `error_description`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            TokenError::Required => "token required",
            TokenError::TooLarge => "token too large",
            TokenError::Malformed => "malformed token",
            TokenError::UnknownKey => "unknown key",
            TokenError::Algorithm => "algorithm not allowed",
            TokenError::Signature => "bad signature",
            TokenError::Audience => "bad audience",
            TokenError::Issuer => "bad issuer",
            TokenError::Claims => "bad claims",
            TokenError::Expired | TokenError::NotYetValid => "token expired",
        }
    }

    /// 4001 for a token out of its time (the client may get a new one and come back),
    /// 4401 for everything else.
    pub(crate) fn close_code(self) -> u16 {
        match self {
            TokenError::Expired | TokenError::NotYetValid => 4001,
            _ => 4401,
        }
    }

    /// The metrics label: `expired` or `invalid_token`.
    pub(crate) fn metric(self) -> &'static str {
        match self.close_code() {
            4001 => "expired",
            _ => "invalid_token",
        }
    }

    fn from_library(kind: &jsonwebtoken::errors::ErrorKind) -> TokenError {
        use jsonwebtoken::errors::ErrorKind as K;
        match kind {
            K::InvalidSignature => TokenError::Signature,
            K::InvalidAudience => TokenError::Audience,
            K::InvalidIssuer => TokenError::Issuer,
            K::MissingRequiredClaim(c) if c == "aud" => TokenError::Audience,
            K::MissingRequiredClaim(c) if c == "iss" => TokenError::Issuer,
            K::InvalidAlgorithm | K::UnsupportedAlgorithm | K::InvalidAlgorithmName => TokenError::Algorithm,
            // The header parsed before: a JSON fault now is in the claims.
            K::MissingRequiredClaim(_) | K::InvalidClaimFormat(_) | K::Json(_) => TokenError::Claims,
            _ => TokenError::Malformed,
        }
    }
}

/// A token's claims as JSON has them (mioket's own: `rooms` and `info`).
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: f64,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    rooms: RoomClaims,
    #[serde(default)]
    info: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Default, Deserialize)]
struct RoomClaims {
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

/// A user: the token's `sub` and its `info` (compact JSON, shown in presence).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub(crate) struct User {
    pub(crate) sub: Box<str>,
    pub(crate) info: Option<Box<str>>,
}

/// What one client may do: read (join, receive, history, resume, presence) the rooms
/// of `read`, publish in those of `write`, until `expires`; plus what an anonymous
/// client may (`Auth::may_read`).
/// (Part of a binary upgrade's snapshot: a change here is a format change, src/upgrade/.)
#[derive(Clone, Debug, serde::Serialize, Deserialize)]
pub(crate) struct Grant {
    /// `None`: anonymous.
    pub(crate) user: Option<User>,
    read: Patterns,
    write: Patterns,
    /// Seconds since 1970 after which the grant is void (`exp` plus the leeway).
    pub(crate) expires: Option<u64>,
    /// Seconds since 1970 before which it is not valid yet (`nbf` minus the leeway).
    not_before: u64,
    /// Its key in the grant cache (a hash of the token).
    cache_key: u64,
}

impl Grant {
    /// The `sub` of a user's grant.
    pub(crate) fn sub(&self) -> Option<&str> {
        self.user.as_ref().map(|u| &*u.sub)
    }

    /// Seconds left at `now_unix` (0 when past), for a user's grant.
    pub(crate) fn expires_in(&self, now_unix: u64) -> Option<u64> {
        self.expires.map(|e| e.saturating_sub(now_unix))
    }

    fn check_time(&self, now_unix: u64) -> Result<(), TokenError> {
        match self.expires {
            Some(expires) if now_unix >= expires => Err(TokenError::Expired),
            _ if now_unix < self.not_before => Err(TokenError::NotYetValid),
            _ => Ok(()),
        }
    }
}

/// The token checker: the keys, the claims checks and the leeway.
pub(crate) struct Verifier {
    /// Each key with the jsonwebtoken checks for its algorithm (made once).
    keys: Vec<(Key, jsonwebtoken::Validation)>,
    leeway: u64,
}

impl Verifier {
    pub(crate) fn new(keys: Vec<Key>, checks: Checks, leeway: u64) -> Verifier {
        let keys = keys.into_iter().map(|k| (keys::validation(k.alg(), &checks), k)).map(|(v, k)| (k, v));
        Verifier { keys: keys.collect(), leeway }
    }

    /// The grant of a token at `now_unix`, its time checked.
    fn grant(&self, token: &str, now_unix: u64, cache_key: u64) -> Result<Grant, TokenError> {
        let claims: Claims = keys::verify(&self.keys, token)?;
        if claims.sub.is_empty() || claims.sub.len() > MAX_SUB {
            return Err(TokenError::Claims);
        }
        if claims.rooms.read.len() + claims.rooms.write.len() > MAX_PATTERNS {
            return Err(TokenError::Claims);
        }
        let info = match claims.info {
            Some(map) => {
                let text = serde_json::Value::Object(map).to_string();
                if text.len() > MAX_INFO {
                    return Err(TokenError::Claims);
                }
                Some(text.into_boxed_str())
            }
            None => None,
        };
        let (exp, nbf) = (unix_secs(claims.exp)?, claims.nbf.map(unix_secs).transpose()?);
        let sub = Some(claims.sub.as_str());
        let grant = Grant {
            read: Patterns::compile(claims.rooms.read.iter().map(String::as_str), sub),
            write: Patterns::compile(claims.rooms.write.iter().map(String::as_str), sub),
            expires: Some(exp.saturating_add(self.leeway).saturating_add(1)),
            not_before: nbf.map_or(0, |n| n.saturating_sub(self.leeway)),
            user: Some(User { sub: claims.sub.into_boxed_str(), info }),
            cache_key,
        };
        grant.check_time(now_unix)?;
        Ok(grant)
    }
}

/// A NumericDate (RFC 7519: seconds, maybe fractional) as whole seconds.
fn unix_secs(value: f64) -> Result<u64, TokenError> {
    match value.is_finite() && value >= 0.0 {
        true => Ok(value as u64),
        false => Err(TokenError::Claims),
    }
}

/// Why an upgrade, a join or a publish is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Denied {
    /// 401, or 101 then 4401/4001.
    Token(TokenError),
    /// 403, or 101 then 4403 `forbidden`.
    Forbidden,
    /// 429, or 101 then 4429 `too many connections`.
    TooManyConnections,
}

/// Authentication and permissions as configured, with the grant cache.
pub(crate) struct Auth {
    /// `None` when no key is configured: tokens are ignored (the open server).
    verifier: Option<Verifier>,
    anonymous: Rc<Grant>,
    /// Grants by token, shared by every connection that presents the token; an entry
    /// goes when its last connection does (`release`).
    cache: HashMap<u64, (Box<str>, Rc<Grant>)>,
    hasher: RandomState,
}

impl Auth {
    /// The configuration's keys (read from their files) and anonymous patterns.
    pub(crate) fn from_config(config: &Config) -> Result<Auth, String> {
        let mut keys = Vec::new();
        if let Some(path) = &config.jwt_secret_file {
            keys.push(Key::load_secret(path)?);
        } else if let Some(secret) = &config.jwt_secret {
            keys.push(Key::secret(None, secret.as_bytes())?);
        }
        for path in &config.jwt_keys {
            keys.push(Key::load_public(path)?);
        }
        let checks = Checks { audience: config.jwt_audience.clone(), issuer: config.jwt_issuer.clone() };
        let leeway = config.jwt_leeway.as_secs();
        Ok(Auth::new(keys, checks, leeway, &config.anonymous_read, &config.anonymous_write))
    }

    /// With no key, anonymous patterns default to `*` (everything); with one, to nothing.
    pub(crate) fn new(keys: Vec<Key>, checks: Checks, leeway: u64, read: &[String], write: &[String]) -> Auth {
        let all = ["*".to_string()];
        let default: &[String] = if keys.is_empty() { &all } else { &[] };
        let pick = |given: &'_ [String]| -> Patterns {
            let given = if given.is_empty() { default } else { given };
            Patterns::compile(given.iter().map(String::as_str), None)
        };
        let anonymous =
            Grant { user: None, read: pick(read), write: pick(write), expires: None, not_before: 0, cache_key: 0 };
        Auth {
            verifier: (!keys.is_empty()).then(|| Verifier::new(keys, checks, leeway)),
            anonymous: Rc::new(anonymous),
            cache: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    /// Whether tokens are checked at all (some key is configured).
    pub(crate) fn has_keys(&self) -> bool {
        self.verifier.is_some()
    }

    /// The grant of an upgrade: the token's, or the anonymous one when there is none
    /// (or no key to check it with).
    pub(crate) fn grant(&mut self, token: Option<&[u8]>, now_unix: u64) -> Result<Rc<Grant>, TokenError> {
        let (Some(verifier), Some(token)) = (&self.verifier, token) else {
            return Ok(self.anonymous.clone());
        };
        if token.len() > MAX_TOKEN {
            return Err(TokenError::TooLarge);
        }
        let token = std::str::from_utf8(token).map_err(|_| TokenError::Malformed)?;
        let key = self.cache_key(token);
        if let Some((cached, grant)) = self.cache.get(&key) {
            if **cached == *token {
                grant.check_time(now_unix)?;
                return Ok(grant.clone());
            }
        }
        let grant = Rc::new(verifier.grant(token, now_unix, key)?);
        if let Entry::Vacant(slot) = self.cache.entry(key) {
            slot.insert((token.into(), grant.clone()));
        }
        Ok(grant)
    }

    /// A token's key in the cache: a hash of its last bytes, which are its
    /// signature's (only verified tokens are cached, and a hit compares the whole
    /// token: a collision costs a verification, nothing else).
    fn cache_key(&self, token: &str) -> u64 {
        let tail = &token.as_bytes()[token.len().saturating_sub(16)..];
        self.hasher.hash_one(tail)
    }

    /// A connection is done with `grant`: the cache forgets it with its last user.
    pub(crate) fn release(&mut self, grant: &Rc<Grant>) {
        if grant.user.is_none() {
            return;
        }
        if let Entry::Occupied(entry) = self.cache.entry(grant.cache_key) {
            // The cache's reference and the caller's.
            if Rc::ptr_eq(&entry.get().1, grant) && Rc::strong_count(grant) <= 2 {
                entry.remove();
            }
        }
    }

    /// The anonymous grant.
    pub(crate) fn anonymous(&self) -> &Rc<Grant> {
        &self.anonymous
    }

    /// Whether `grant` may join, receive from, and read the history and presence of `room`.
    pub(crate) fn may_read(&self, grant: &Grant, room: &str) -> bool {
        grant.read.matches(room) || (grant.user.is_some() && self.anonymous.read.matches(room))
    }

    /// Whether `grant` may publish in `room`.
    pub(crate) fn may_write(&self, grant: &Grant, room: &str) -> bool {
        grant.write.matches(room) || (grant.user.is_some() && self.anonymous.write.matches(room))
    }

    /// Whether every client may publish everywhere and no token is looked at (the
    /// open server of old: no key, `--anonymous-write` all).
    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        self.verifier.is_none() && self.anonymous.write.is_all()
    }

    /// Whether `grant` may publish everywhere (the open server: no name to look up).
    #[inline]
    pub(crate) fn may_write_all(&self, grant: &Grant) -> bool {
        self.anonymous.write.is_all() || grant.write.is_all()
    }

    /// Grants held in the cache (distinct tokens of open connections).
    #[cfg(test)]
    pub(crate) fn cached_grants(&self) -> usize {
        self.cache.len()
    }
}

/// The token an upgrade request carries, in this order of precedence:
/// `Authorization: Bearer JWT`, a `mioket.token.JWT` subprotocol entry, `?token=JWT`.
pub(crate) fn token_of(request: &UpgradeRequest) -> Option<Cow<'_, [u8]>> {
    if let Some(token) = request.authorization().and_then(bearer) {
        return Some(Cow::Borrowed(token));
    }
    if let Some(token) = request.subprotocols().find_map(|p| p.strip_prefix(TOKEN_PROTOCOL.as_bytes())) {
        return Some(Cow::Borrowed(token));
    }
    query_token(request.query())
}

/// The subprotocol prefix that carries a token (browsers cannot set headers).
pub const TOKEN_PROTOCOL: &str = "mioket.token.";

/// `Bearer TOKEN` (the scheme in any case, RFC 6750).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    (scheme.eq_ignore_ascii_case(b"bearer") && rest.first() == Some(&b' ')).then(|| rest.trim_ascii())
}

/// `token=JWT` among the query's pairs (percent-decoded; a JWT needs no escapes,
/// and one without is borrowed as it is).
fn query_token(query: &str) -> Option<Cow<'_, [u8]>> {
    let value = query.split('&').find_map(|pair| pair.strip_prefix("token="))?;
    match value.contains('%') {
        true => Some(percent_encoding::percent_decode_str(value).into()),
        false => Some(Cow::Borrowed(value.as_bytes())),
    }
}
