//! The keys that check tokens, and the check itself: signatures, base64url, JSON and
//! the standard claims are jsonwebtoken's; which key checks which token is ours.
//!
//! The algorithm comes from the key, never from the token: each key has exactly one
//! algorithm (a secret HS256, an RSA key RS256, a P-256 key ES256, an Ed25519 key
//! EdDSA), and a token is checked only by keys of its header's `alg`. So `alg: none`
//! (no key has it), an HS256 token made with a public key as its secret (HS256 is the
//! secret's alone) and an `alg` that no key has are refused. A token whose header names
//! a `kid` is checked by the key of that name only (the file name without extension).

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use serde::Deserialize;

use super::TokenError;

/// One configured key.
pub(crate) struct Key {
    /// The file name without its extension (`kid`); `None` for a secret from the
    /// environment.
    name: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?}, {:?})", self.name, self.alg)
    }
}

impl Key {
    /// A HS256 secret: the bytes of a file without one trailing newline (`\n` or
    /// `\r\n`), or of `MIOKET_JWT_SECRET`.
    pub(crate) fn secret(name: Option<String>, secret: &[u8]) -> Result<Key, String> {
        let secret = secret_bytes(secret);
        if secret.is_empty() {
            return Err("the JWT secret is empty".into());
        }
        let key = DecodingKey::from_secret(secret).map_err(|e| format!("bad JWT secret: {e}"))?;
        Ok(Key { name, alg: Algorithm::HS256, key })
    }

    /// A PEM public key: RSA (RS256), P-256 (ES256) or Ed25519 (EdDSA).
    pub(crate) fn public(name: Option<String>, pem: &[u8]) -> Result<Key, String> {
        let key = |alg, key| Ok(Key { name: name.clone(), alg, key });
        // jsonwebtoken reads private keys too (their public half for RSA): a server
        // needs only public keys, and a private one here is a mistake worth saying.
        let public = |label: &[u8]| pem.windows(label.len()).any(|w| w == label);
        if !public(b"-----BEGIN PUBLIC KEY-----") && !public(b"-----BEGIN RSA PUBLIC KEY-----") {
            return Err("not a PEM public key (BEGIN PUBLIC KEY): RSA, P-256 or Ed25519".into());
        }
        if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            return key(Algorithm::EdDSA, k);
        }
        if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            // The public point, uncompressed: 65 bytes on P-256 (97 on P-384).
            return match k.kind() {
                DecodingKeyKind::SecretOrDer(point) if point.len() == 65 => key(Algorithm::ES256, k),
                _ => Err("only P-256 EC keys are supported (ES256)".into()),
            };
        }
        if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            // Short RSA keys can be factored (512 bits publicly, 1024 within reach):
            // a token signed by one proves nothing (RFC 7518 3.3: 2048 at least).
            let DecodingKeyKind::SecretOrDer(der) = k.kind() else { return Err("not an RSA public key".into()) };
            return match rsa_modulus_bits(der) {
                Some(bits) if bits >= 2048 => key(Algorithm::RS256, k),
                Some(bits) => Err(format!("an RSA key of {bits} bits: at least 2048 are needed")),
                None => Err("not an RSA public key".into()),
            };
        }
        Err("not a PEM public key (RSA, P-256 or Ed25519)".into())
    }

    /// Reads a `--jwt-key` file; its name without extension names the key.
    pub(crate) fn load_public(path: &Path) -> Result<Key, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Key::public(file_stem(path), &pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads a `--jwt-secret-file`.
    pub(crate) fn load_secret(path: &Path) -> Result<Key, String> {
        let secret = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Key::secret(file_stem(path), &secret).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub(crate) fn alg(&self) -> Algorithm {
        self.alg
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

/// The size of an RSA public key (PKCS#1 `RSAPublicKey`, DER) in bits.
fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    use pkcs1::der::{asn1::UintRef, Decode};
    let key = pkcs1::RsaPublicKey::<UintRef<'_>>::from_der(der).ok()?;
    let modulus = key.modulus.as_bytes();
    let first = *modulus.first()?;
    Some(modulus.len() * 8 - first.leading_zeros() as usize)
}

fn file_stem(path: &Path) -> Option<String> {
    path.file_stem().map(|s| s.to_string_lossy().into_owned())
}

/// A secret file's bytes without one trailing newline (as `echo secret > file` writes).
pub(crate) fn secret_bytes(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

/// The checks every token passes, the same for every key but the algorithm.
pub(crate) struct Checks {
    pub(crate) audience: Option<String>,
    pub(crate) issuer: Option<String>,
}

/// What a header must say for us to pick keys.
#[derive(Deserialize)]
struct PeekHeader {
    #[serde(rename = "alg")]
    _alg: serde::de::IgnoredAny,
}

/// Checks the signature of `token` with the right key and returns its claims (as
/// `T`, deserialized by jsonwebtoken); `exp` and `nbf` are left to the caller, who
/// knows the time (the application runs in virtual time in its tests).
pub(crate) fn verify<T: serde::de::DeserializeOwned>(keys: &[(Key, Validation)], token: &str) -> Result<T, TokenError> {
    let header = match jsonwebtoken::decode_header(token) {
        Ok(header) => header,
        Err(_) => return Err(bad_header(token)),
    };
    let named = |(key, _): &&(Key, Validation)| match header.kid.as_deref() {
        Some(kid) => key.name() == Some(kid),
        None => true,
    };
    let mut candidates = keys.iter().filter(named).peekable();
    if candidates.peek().is_none() {
        return Err(TokenError::UnknownKey);
    }
    let mut candidates = candidates.filter(|(k, _)| k.alg == header.alg).peekable();
    if candidates.peek().is_none() {
        return Err(TokenError::Algorithm);
    }
    let mut last = TokenError::Signature;
    for (key, validation) in candidates {
        match jsonwebtoken::decode::<T>(token, &key.key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => {
                last = TokenError::from_library(e.kind());
                // Only a bad signature makes the next key (rotation) worth a try.
                if last != TokenError::Signature {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

/// Why a header did not parse: an `alg` that jsonwebtoken does not know (`none`
/// among them) is an algorithm refusal, anything else a malformed token.
#[cold]
fn bad_header(token: &str) -> TokenError {
    use base64::Engine;
    let head = token.split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head).unwrap_or_default();
    match serde_json::from_slice::<PeekHeader>(&json) {
        Ok(_) => TokenError::Algorithm,
        Err(_) => TokenError::Malformed,
    }
}

/// jsonwebtoken's checks for a key of `alg`.
pub(crate) fn validation(alg: Algorithm, checks: &Checks) -> Validation {
    let mut v = Validation::new(alg);
    // exp and nbf: ours (`super::Verifier`), against the caller's clock.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    let mut required = vec!["exp", "sub"];
    if let Some(aud) = &checks.audience {
        v.set_audience(&[aud]);
        required.push("aud");
    } else {
        // A token meant for some audience is not refused for naming one we do not check.
        v.validate_aud = false;
    }
    if let Some(iss) = &checks.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}
