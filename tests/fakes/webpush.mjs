// A fake WebPush service (HTTP/1.1 on 127.0.0.1) with browser-style
// subscriptions: it checks what push services check and decrypts each body
// with the subscription's private key, as the browser would.
//
// Checks, answering as Mozilla's autopush / FCM's WebPush endpoint do:
//   POST only (405); path /push/<id> of a known subscription (404);
//   `authorization: vapid t=<jws>, k=<key>` (401), `k` = the key the
//   subscription was made with (403, like a mismatched applicationServerKey),
//   an ES256 JWS verified with `k`, `aud` = this service's origin, `exp` in the
//   future and at most 24 h away, `sub` a mailto:/https: URI (401/403);
//   `ttl` an integer (400); `urgency`, when sent, one of RFC 8030's (400);
//   `topic`, when sent, ≤ 32 base64url characters (400);
//   `content-encoding: aes128gcm` (400); a body of at most 4096 bytes (413)
//   that decrypts as one RFC 8291 record (400).
// Every failed check is also kept in `violations`.
//
// Then the subscription's script answers (see ANSWERS): "ok" by default.

import crypto from "node:crypto";
import { Script, decodeJwtPart, fakeHandle, forbidInLogs, parseJson, startFakeServer } from "./common.mjs";

export const MAX_BODY_BYTES = 4096;
const URGENCIES = new Set(["very-low", "low", "normal", "high"]);
const MAX_EXP_SECS = 24 * 3600;

/** @type {Record<string, {status: number, headers?: Record<string, string>, body?: any}>} */
export const ANSWERS = {
  ok: { status: 201, headers: { location: "/message/1" } },
  okPlain: { status: 200 },
  accepted: { status: 202 },
  notFound: { status: 404, body: { errno: 102, message: "Request did not validate invalid token" } },
  gone: { status: 410, body: { errno: 106, message: "Request did not validate expired subscription" } },
  unauthorized: { status: 401, body: { errno: 109, message: "Request did not validate missing authorization token" } },
  forbidden: { status: 403, body: { reason: "the key in the authorization header does not correspond to the sender" } },
  tooLarge: { status: 413, body: { errno: 104, message: "Request did not validate payload too large" } },
  badRequest: { status: 400, body: { errno: 110, message: "invalid encryption" } },
  tooMany: { status: 429, headers: { "retry-after": "0" } },
  unavailable: { status: 503, headers: { "retry-after": "0" } },
  redirect: { status: 301, headers: { location: "http://127.0.0.1:9/elsewhere" } },
};

const b64u = (buf) => Buffer.from(buf).toString("base64url");

/**
 * A VAPID key pair, in the forms an operator may store it: the raw 32-byte
 * scalar (base64url) and PKCS#8 PEM. Generated per test run.
 */
export function generateVapidKey() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const jwk = privateKey.export({ format: "jwk" });
  const publicRaw = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x, "base64url"), Buffer.from(jwk.y, "base64url")]);
  return {
    raw: forbidInLogs("secrets", /** @type {string} */ (jwk.d)),
    pkcs8: forbidInLogs("secrets", /** @type {string} */ (privateKey.export({ type: "pkcs8", format: "pem" }))),
    sec1: forbidInLogs("secrets", /** @type {string} */ (privateKey.export({ type: "sec1", format: "pem" }))),
    publicKey,
    /** The applicationServerKey a web client subscribes with. */
    publicB64: b64u(publicRaw),
  };
}

/**
 * RFC 8291 decryption, the user agent's half.
 * @param {Buffer} body @param {crypto.ECDH} uaKey @param {Buffer} authSecret
 */
export function decryptAes128gcm(body, uaKey, authSecret) {
  if (body.length < 86 + 17) throw new Error(`body of ${body.length} bytes is too short`);
  const salt = body.subarray(0, 16);
  const recordSize = body.readUInt32BE(16);
  const idLen = body[20];
  if (idLen !== 65) throw new Error(`key id of ${idLen} bytes, expected a 65-byte P-256 key`);
  const asPublic = body.subarray(21, 21 + idLen);
  const ciphertext = body.subarray(21 + idLen);
  if (ciphertext.length > recordSize) throw new Error(`more than one record (${ciphertext.length} > rs ${recordSize})`);
  const shared = uaKey.computeSecret(asPublic);
  const keyInfo = Buffer.concat([Buffer.from("WebPush: info\0"), uaKey.getPublicKey(), asPublic]);
  const ikm = Buffer.from(crypto.hkdfSync("sha256", shared, authSecret, keyInfo, 32));
  const cek = Buffer.from(crypto.hkdfSync("sha256", ikm, salt, Buffer.from("Content-Encoding: aes128gcm\0"), 16));
  const nonce = Buffer.from(crypto.hkdfSync("sha256", ikm, salt, Buffer.from("Content-Encoding: nonce\0"), 12));
  const decipher = crypto.createDecipheriv("aes-128-gcm", cek, nonce);
  decipher.setAuthTag(ciphertext.subarray(ciphertext.length - 16));
  const record = Buffer.concat([decipher.update(ciphertext.subarray(0, ciphertext.length - 16)), decipher.final()]);
  let end = record.length;
  while (end > 0 && record[end - 1] === 0) end -= 1;
  if (end === 0 || record[end - 1] !== 2) throw new Error("the record lacks the last-record delimiter 0x02");
  return record.subarray(0, end - 1);
}

/**
 * @param {{ vapidPublicB64: string, now?: () => number }} options
 *   `vapidPublicB64`: the applicationServerKey subscriptions are made with.
 */
export async function startFakePushService({ vapidPublicB64, now = () => Math.floor(Date.now() / 1000) }) {
  /** @type {Map<string, {ecdh: crypto.ECDH, auth: Buffer}>} */
  const subscriptions = new Map();
  const script = new Script("ok");
  /** @type {string[]} */
  const violations = [];
  /** @type {Array<{id: string, headers: Record<string, string>, payload: any, plaintext: Buffer, bodyLength: number, jwt: string, claims: any}>} */
  const delivered = [];
  let nextId = 1;
  let origin = "";

  const refuse = (status, why) => {
    violations.push(`${status}: ${why}`);
    return { status, body: { message: why } };
  };

  const server = await startFakeServer(async (req) => {
    if (req.method !== "POST") return refuse(405, req.method);
    const match = /^\/push\/([A-Za-z0-9_-]+)$/.exec(req.path);
    const subscription = match && subscriptions.get(match[1]);
    if (!match || !subscription) return refuse(404, `no subscription at ${req.path}`);
    const id = match[1];
    const h = req.headers;

    const auth = /^vapid t=([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+), ?k=([A-Za-z0-9_-]+)$/.exec(h.authorization ?? "");
    if (!auth) return refuse(401, `authorization is not \`vapid t=…, k=…\`: ${(h.authorization ?? "").slice(0, 12)}`);
    const [, headerPart, claimsPart, signaturePart, k] = auth;
    forbidInLogs("tokens", `${headerPart}.${claimsPart}.${signaturePart}`);
    if (k !== vapidPublicB64) return refuse(403, "k is not the key this subscription was made with");
    const header = decodeJwtPart(headerPart);
    const claims = decodeJwtPart(claimsPart);
    if (!header || !claims) return refuse(401, "undecodable JWT");
    const raw = Buffer.from(k, "base64url");
    const key = crypto.createPublicKey({
      format: "jwk",
      key: { kty: "EC", crv: "P-256", x: b64u(raw.subarray(1, 33)), y: b64u(raw.subarray(33, 65)) },
    });
    const signatureOk = crypto.verify(
      "sha256",
      Buffer.from(`${headerPart}.${claimsPart}`),
      { key, dsaEncoding: "ieee-p1363" },
      Buffer.from(signaturePart, "base64url"),
    );
    if (!signatureOk) return refuse(401, "VAPID signature does not verify with k");
    if (header.alg !== "ES256") return refuse(401, `alg ${header.alg}`);
    if (claims.aud !== origin) return refuse(403, `aud ${claims.aud} is not ${origin}`);
    const t = now();
    if (!Number.isInteger(claims.exp) || claims.exp <= t) return refuse(403, `exp ${claims.exp} is not in the future`);
    if (claims.exp > t + MAX_EXP_SECS) return refuse(403, `exp ${claims.exp} is more than 24 h away`);
    if (!/^(mailto|https):/.test(claims.sub ?? "")) return refuse(403, `sub ${claims.sub}`);

    if (!/^\d+$/.test(h.ttl ?? "")) return refuse(400, `ttl ${h.ttl}`);
    if (h.urgency !== undefined && !URGENCIES.has(h.urgency)) return refuse(400, `urgency ${h.urgency}`);
    if (h.topic !== undefined && !/^[A-Za-z0-9_-]{1,32}$/.test(h.topic)) return refuse(400, `topic ${h.topic}`);
    if (h["content-encoding"] !== "aes128gcm") return refuse(400, `content-encoding ${h["content-encoding"]}`);
    if (req.body.length > MAX_BODY_BYTES) return refuse(413, `${req.body.length} bytes`);
    let plaintext;
    try {
      plaintext = decryptAes128gcm(req.body, subscription.ecdh, subscription.auth);
    } catch (err) {
      return refuse(400, `does not decrypt: ${err}`);
    }
    const payload = parseJson(plaintext.toString("utf8"));

    const answer = script.nextAnswer(id, ANSWERS);
    if (answer.status >= 200 && answer.status < 300) {
      delivered.push({ id, headers: h, payload, plaintext, bodyLength: req.body.length, jwt: `${headerPart}.${claimsPart}.${signaturePart}`, claims });
    }
    return answer;
  });
  origin = server.origin;

  return {
    ...fakeHandle({ server, script, delivered, violations }),
    /**
     * A browser-style subscription: fresh P-256 keys and auth secret. Returns
     * the pusher's `pushkey` (p256dh) and `data` ({endpoint, auth}).
     */
    subscribe() {
      const id = `sub${nextId++}`;
      const ecdh = crypto.createECDH("prime256v1");
      ecdh.generateKeys();
      const auth = crypto.randomBytes(16);
      subscriptions.set(id, { ecdh, auth });
      return {
        id,
        endpoint: `${origin}/push/${id}`,
        pushkey: forbidInLogs("pushkeys", b64u(ecdh.getPublicKey())),
        auth: forbidInLogs("secrets", b64u(auth)),
      };
    },
    requestsFor(id) {
      return server.requests.filter((r) => r.path === `/push/${id}`);
    },
  };
}
