//! `mioket token`: prints a signed HS256 token, for trying tokens out (as
//! `centrifugo gentoken` does). It reads the secret file exactly as the server does.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::{secret_bytes, MAX_SUB};
use crate::config::TokenArgs;

/// The claims a token made here carries.
#[derive(Serialize)]
struct Minted<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    rooms: MintedRooms<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
}

#[derive(Serialize)]
struct MintedRooms<'a> {
    read: &'a [String],
    write: &'a [String],
}

/// The token `mioket token ARGS` prints.
pub fn token(args: &TokenArgs) -> Result<String, String> {
    if args.sub.is_empty() || args.sub.len() > MAX_SUB {
        return Err(format!("--sub must be 1 to {MAX_SUB} bytes"));
    }
    let info: Option<serde_json::Value> = match &args.info {
        Some(text) => match serde_json::from_str(text) {
            Ok(value @ serde_json::Value::Object(_)) => Some(value),
            _ => return Err("--info must be a JSON object".into()),
        },
        None => None,
    };
    let secret = std::fs::read(&args.secret_file).map_err(|e| format!("{}: {e}", args.secret_file.display()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = Minted {
        sub: &args.sub,
        exp: now.saturating_add(args.ttl.as_secs()),
        iat: now,
        rooms: MintedRooms { read: &args.read, write: &args.write },
        info: info.as_ref(),
        aud: args.aud.as_deref(),
        iss: args.iss.as_deref(),
    };
    hs256(&secret, args.kid.as_deref(), &claims)
}

/// Signs `claims` with the secret (a secret file's bytes, one trailing newline dropped).
fn hs256(secret_file_bytes: &[u8], kid: Option<&str>, claims: &Minted<'_>) -> Result<String, String> {
    let secret = secret_bytes(secret_file_bytes);
    if secret.is_empty() {
        return Err("the secret is empty".into());
    }
    let key = EncodingKey::from_secret(secret).map_err(|e| e.to_string())?;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| e.to_string())
}
