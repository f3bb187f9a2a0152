// What must never be in a worker's log: key material, tokens and whole
// pushkeys (docs/design.md §14.1 "The log": never a key, a token, a secret's
// content or a whole pushkey). Shortened pushkeys (a prefix and "…") are fine.

/** Shorter fragments than this could match by chance. */
const MIN_FRAGMENT = 12;

/** The base64 lines of every PEM block in `text` (a PEM or a JSON holding one). */
export function pemBodyLines(text) {
  const unescaped = text.replace(/\\n/g, "\n");
  const lines = [];
  for (const block of unescaped.matchAll(/-----BEGIN [A-Z ]+-----([\s\S]*?)-----END [A-Z ]+-----/g)) {
    for (const line of block[1].split(/\s+/)) if (line.length >= MIN_FRAGMENT) lines.push(line);
  }
  return lines;
}

/**
 * Fragments of secrets, tokens and pushkeys found in `logs`, each described
 * without repeating the whole secret; empty when the log is clean.
 * @param {Array<{level: string, message: string}> | string} logs
 * @param {{ secrets?: string[], tokens?: string[], pushkeys?: string[] }} forbidden
 *   `secrets`: key material (PEMs, service-account JSON, raw keys): every PEM
 *     line, and the whole value when it holds no PEM.
 *   `tokens`: JWTs and access tokens: the whole token, and a JWT's signature.
 *   `pushkeys`: whole pushkeys (and APNs device tokens in hex).
 */
export function findLeaks(logs, { secrets = [], tokens = [], pushkeys = [] }) {
  const text = typeof logs === "string" ? logs : logs.map((l) => `${l.level}: ${l.message}`).join("\n");
  /** @type {string[]} */
  const found = [];
  const look = (what, fragment) => {
    if (fragment.length < MIN_FRAGMENT) return;
    const escaped = JSON.stringify(fragment).slice(1, -1);
    if (text.includes(fragment) || text.includes(escaped)) found.push(`${what} ${fragment.slice(0, 6)}… (${fragment.length} chars)`);
  };
  for (const secret of secrets) {
    const lines = pemBodyLines(secret);
    if (lines.length === 0) look("secret", secret);
    for (const line of lines) look("PEM line", line);
  }
  for (const token of tokens) {
    look("token", token);
    const parts = token.split(".");
    if (parts.length === 3) look("JWT signature", parts[2]);
  }
  for (const pushkey of pushkeys) look("pushkey", pushkey);
  return [...new Set(found)];
}
