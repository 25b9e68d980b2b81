// Token helpers for the tests, shared by clients/js (support/helpers.mjs) and the browser
// tests (tests/browser/harness.mjs). Only Node's own modules: each test suite installs
// its own packages (npm ci in its folder), so this file must need none of them.

import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/**
 * An HS256 JWT (RFC 7519) signed with `secret`, made here as an issuer would: base64url
 * of the header and the claims, and their HMAC-SHA256.
 */
export function signToken(secret, claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const signed = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${signed}.${createHmac('sha256', secret).update(signed).digest('base64url')}`;
}

/** A file holding `secret` (for --jwt-secret-file) in a fresh temporary folder: `{ file, remove() }`. */
export function secretFile(secret) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mioket-jwt-'));
  const file = path.join(dir, 'secret');
  writeFileSync(file, secret);
  return { file, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
