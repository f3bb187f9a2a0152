// A fake APNs (HTTP/1.1 on 127.0.0.1) that checks what Apple checks and
// answers per device token, so every APNs outcome can be driven from a test.
//
// Like Apple, it is two services: production (`origin`) and the sandbox
// (`sandboxOrigin`), each knowing its own device tokens. A token registered
// with `register(token, {environment, topic})` is valid on that host for that
// topic only: elsewhere it is 400 BadDeviceToken, and for another topic 400
// DeviceTokenNotForTopic, as Apple answers. A token never registered follows
// its script on either host, unless the fake was started with
// `registeredOnly: true`, where it is BadDeviceToken everywhere.
//
// Checks, in Apple's order, answering as Apple does when one fails:
//   POST only (405 MethodNotAllowed); path /3/device/<lowercase hex> (404 BadPath,
//   400 BadDeviceToken); `authorization: bearer <jwt>` present (403
//   MissingProviderToken), an ES256 JWS verified with the test key's public
//   half, `kid` = key id, `iss` = team id (403 InvalidProviderToken), `iat`
//   not in the future and not older than one hour (403 ExpiredProviderToken);
//   `apns-topic` (400 MissingTopic / BadTopic), `apns-push-type` (400
//   InvalidPushType), `apns-priority` in {5, 10} (400 BadPriority),
//   `apns-expiration` an integer (400 BadExpirationDate), `apns-collapse-id` at
//   most 64 bytes (400 BadCollapseId); a non-empty body (400 PayloadEmpty) of at
//   most 4096 bytes (413 PayloadTooLarge) holding a JSON object (400 BadPayload:
//   Apple documents no reason for this one).
// Then Apple's rules for what a push shows, from "Sending notification
// requests to APNs" and "Pushing background updates to your App": a
// background push goes at priority 5 (400 BadPriority) and its `aps` holds
// `content-available: 1` and no alert, sound or badge; an alert push at
// priority 10 "must trigger an alert, sound, or badge" (400 BadPriority).
// Apple names no reason for a background push that shows something; the fake
// answers 400 BadPayload so a test sees the mistake.
// Every failed check is also kept in `violations`, so a test can assert that
// the worker's requests were all well-formed.
//
// Then the token's registration (above), then its script (see ANSWERS): "ok"
// by default.

import crypto from "node:crypto";
import { Script, decodeJwtPart, fakeHandle, forbidInLogs, startFakeServer } from "./common.mjs";

export const MAX_PAYLOAD_BYTES = 4096;
export const MAX_COLLAPSE_ID_BYTES = 64;
const PUSH_TYPES = new Set([
  "alert", "background", "location", "voip", "complication", "fileprovider",
  "mdm", "liveactivity", "pushtotalk", "widgets", "controls",
]);
/** Apple allows a little clock skew for `iat` in the future. */
const IAT_FUTURE_SKEW_SECS = 60;
const TOKEN_MAX_AGE_SECS = 3600;

/**
 * Named answers for device-token scripts. Any `{status, reason, headers, delayMs}`
 * works too (`delayMs`: answer that much later, e.g. to outlast SEND_TIMEOUT_MS).
 * @typedef {{status: number, reason?: string, headers?: Record<string, string>, delayMs?: number}} ApnsAnswer
 * @type {Record<string, ApnsAnswer>}
 */
export const ANSWERS = {
  ok: { status: 200 },
  BadDeviceToken: { status: 400, reason: "BadDeviceToken" },
  DeviceTokenNotForTopic: { status: 400, reason: "DeviceTokenNotForTopic" },
  TopicDisallowed: { status: 400, reason: "TopicDisallowed" },
  // A refusal of our payload: our fault, never the device's.
  BadCollapseId: { status: 400, reason: "BadCollapseId" },
  ExpiredProviderToken: { status: 403, reason: "ExpiredProviderToken" },
  InvalidProviderToken: { status: 403, reason: "InvalidProviderToken" },
  Unregistered: { status: 410, reason: "Unregistered" },
  ExpiredToken: { status: 410, reason: "ExpiredToken" },
  TooManyRequests: { status: 429, reason: "TooManyRequests" },
  TooManyProviderTokenUpdates: { status: 429, reason: "TooManyProviderTokenUpdates" },
  InternalServerError: { status: 500, reason: "InternalServerError" },
  ServiceUnavailable: { status: 503, reason: "ServiceUnavailable", headers: { "retry-after": "0" } },
};

/**
 * A fresh P-256 key pair as APNs issues it: the private half as a `.p8`
 * (PKCS#8 PEM). Generated per test run: no key is committed.
 */
export function generateApnsKey() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  return {
    p8: forbidInLogs("secrets", /** @type {string} */ (privateKey.export({ type: "pkcs8", format: "pem" }))),
    publicKey,
  };
}

/** APNs device token (hex) for a base64 pushkey, as the worker converts it. */
export function hexToken(pushkey) {
  return Buffer.from(pushkey, "base64").toString("hex");
}

/** A pushkey (standard base64) of `bytes` random bytes; `hexToken` gives its device token. */
export function randomPushkey(bytes = 32) {
  const pushkey = forbidInLogs("pushkeys", crypto.randomBytes(bytes).toString("base64"));
  forbidInLogs("pushkeys", hexToken(pushkey));
  return pushkey;
}

/**
 * @param {{ publicKey: crypto.KeyObject, keyId: string, teamId: string,
 *           topic?: string, now?: () => number, registeredOnly?: boolean }} options
 *   `topic`: when set, any other `apns-topic` is 400 BadTopic.
 *   `now`: the fake's clock in Unix seconds.
 *   `registeredOnly`: only registered tokens are valid (as on Apple's hosts).
 */
export async function startFakeApns({
  publicKey, keyId, teamId, topic, now = () => Math.floor(Date.now() / 1000), registeredOnly = false,
}) {
  /** @type {Script<string | ApnsAnswer>} */
  const script = new Script("ok");
  /** @type {string[]} */
  const violations = [];
  /** @type {Array<{ token: string, environment: string, headers: Record<string, string>, payload: any, jwt: {header: any, claims: any}, raw: string }>} */
  const delivered = [];
  /** Registered device tokens (hex): where each is valid, and for which topic. */
  /** @type {Map<string, {environment: "production" | "sandbox", topic: string}>} */
  const registered = new Map();
  /** Every request to either host, each tagged with its `environment`. */
  /** @type {Array<import("./common.mjs").Recorded & {environment: string}>} */
  const requests = [];
  /** @type {Array<{header: any, claims: any, jwt: string}>} */
  const tokensSeen = [];

  const refuse = (status, reason, why) => {
    violations.push(`${status} ${reason}: ${why}`);
    return apnsAnswer(status, reason);
  };

  /** @param {any} req @param {"production" | "sandbox"} environment */
  const handle = async (req, environment) => {
    req.environment = environment;
    requests.push(req);
    if (req.method !== "POST") return refuse(405, "MethodNotAllowed", req.method);
    const match = /^\/3\/device\/([^/?]+)$/.exec(req.path);
    if (!match) return refuse(404, "BadPath", req.path);
    const token = match[1];
    if (!/^(?:[0-9a-f]{2})+$/.test(token)) return refuse(400, "BadDeviceToken", `token ${token.slice(0, 8)}… is not lowercase hex`);

    const auth = req.headers["authorization"];
    if (!auth) return refuse(403, "MissingProviderToken", "no authorization header");
    const jwtMatch = /^bearer ([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$/.exec(auth);
    if (!jwtMatch) return refuse(403, "InvalidProviderToken", "authorization is not `bearer <jws>`");
    const [, headerPart, claimsPart, signaturePart] = jwtMatch;
    const header = decodeJwtPart(headerPart);
    const claims = decodeJwtPart(claimsPart);
    if (!header || !claims) return refuse(403, "InvalidProviderToken", "undecodable JWT");
    const signatureOk = crypto.verify(
      "sha256",
      Buffer.from(`${headerPart}.${claimsPart}`),
      { key: publicKey, dsaEncoding: "ieee-p1363" },
      Buffer.from(signaturePart, "base64url"),
    );
    if (!signatureOk) return refuse(403, "InvalidProviderToken", "ES256 signature does not verify");
    if (header.alg !== "ES256") return refuse(403, "InvalidProviderToken", `alg ${header.alg}`);
    if (header.kid !== keyId) return refuse(403, "InvalidProviderToken", `kid ${header.kid}`);
    if (claims.iss !== teamId) return refuse(403, "InvalidProviderToken", `iss ${claims.iss}`);
    if (!Number.isInteger(claims.iat)) return refuse(403, "InvalidProviderToken", `iat ${claims.iat}`);
    const t = now();
    if (claims.iat > t + IAT_FUTURE_SKEW_SECS) return refuse(403, "InvalidProviderToken", `iat ${claims.iat} is in the future (now ${t})`);
    if (claims.iat < t - TOKEN_MAX_AGE_SECS) return refuse(403, "ExpiredProviderToken", `iat ${claims.iat} older than 1 h`);
    tokensSeen.push({ header, claims, jwt: forbidInLogs("tokens", auth.slice("bearer ".length)) });

    const h = req.headers;
    if (!h["apns-topic"]) return refuse(400, "MissingTopic", "no apns-topic");
    if (topic !== undefined && h["apns-topic"] !== topic) return refuse(400, "BadTopic", `apns-topic ${h["apns-topic"]}`);
    if (!PUSH_TYPES.has(h["apns-push-type"] ?? "")) return refuse(400, "InvalidPushType", `apns-push-type ${h["apns-push-type"]}`);
    if (!["5", "10"].includes(h["apns-priority"] ?? "")) return refuse(400, "BadPriority", `apns-priority ${h["apns-priority"]}`);
    if (h["apns-push-type"] === "background" && h["apns-priority"] !== "5") {
      return refuse(400, "BadPriority", "background pushes must have priority 5");
    }
    if (h["apns-expiration"] !== undefined && !/^\d+$/.test(h["apns-expiration"])) {
      return refuse(400, "BadExpirationDate", `apns-expiration ${h["apns-expiration"]}`);
    }
    const collapseId = h["apns-collapse-id"];
    if (collapseId !== undefined && (collapseId === "" || Buffer.byteLength(collapseId) > MAX_COLLAPSE_ID_BYTES)) {
      return refuse(400, "BadCollapseId", `apns-collapse-id of ${Buffer.byteLength(collapseId)} bytes`);
    }
    if (req.body.length === 0) return refuse(400, "PayloadEmpty", "empty body");
    if (req.body.length > MAX_PAYLOAD_BYTES) return refuse(413, "PayloadTooLarge", `${req.body.length} bytes`);
    if (req.json === null || typeof req.json !== "object" || Array.isArray(req.json)) {
      return refuse(400, "BadPayload", "body is not a JSON object");
    }
    const aps = req.json.aps !== null && typeof req.json.aps === "object" ? req.json.aps : {};
    const shown = ["alert", "sound", "badge"].filter((key) => key in aps);
    if (h["apns-push-type"] === "background") {
      if (aps["content-available"] !== 1) return refuse(400, "BadPayload", "a background push without aps.content-available 1");
      if (shown.length > 0) return refuse(400, "BadPayload", `a background push with aps.${shown.join(", aps.")}`);
    }
    if (h["apns-push-type"] === "alert" && h["apns-priority"] === "10" && shown.length === 0) {
      return refuse(400, "BadPriority", "priority 10 for a push with no alert, sound or badge");
    }

    // Not errors of the request: what Apple knows of the token.
    const device = registered.get(token);
    if (device ? device.environment !== environment : registeredOnly) return apnsAnswer(400, "BadDeviceToken");
    if (device && device.topic !== h["apns-topic"]) return apnsAnswer(400, "DeviceTokenNotForTopic");

    const answer = script.nextAnswer(token, ANSWERS);
    if (answer.delayMs) await new Promise((resolve) => setTimeout(resolve, answer.delayMs));
    if (answer.status === 200) {
      delivered.push({ token, environment, headers: h, payload: req.json, jwt: { header, claims }, raw: req.text });
    }
    return apnsAnswer(answer.status, answer.reason, answer.headers);
  };

  const production = await startFakeServer((req) => handle(req, "production"));
  const sandbox = await startFakeServer((req) => handle(req, "sandbox"));
  // Both hosts as one server for the shared handle.
  const both = {
    origin: production.origin,
    requests,
    clear() {
      production.clear();
      sandbox.clear();
      requests.length = 0;
    },
    async close() {
      await Promise.all([production.close(), sandbox.close()]);
    },
  };
  const forget = () => {
    tokensSeen.length = 0;
    registered.clear();
  };

  return {
    // Scripts are per device token (hex): e.g. `answer(t, ["ServiceUnavailable", "ok"])`.
    ...fakeHandle({ server: /** @type {any} */ (both), script, delivered, violations, forget }),
    /** The sandbox host (api.sandbox.push.apple.com); `origin` is production's. */
    sandboxOrigin: sandbox.origin,
    /** Decoded provider tokens of requests whose JWT verified. */
    tokensSeen,
    /**
     * Make a device token (hex) valid on one host for one topic, as an app
     * build registering with APNs does. Cleared by `reset()`.
     * @param {string} token
     * @param {{ environment?: "production" | "sandbox", topic: string }} where
     */
    register(token, { environment = "production", topic: registeredTopic }) {
      registered.set(token, { environment, topic: registeredTopic });
    },
    /** Requests to either host that reached this device token's path (each has `environment`). */
    requestsFor(token) {
      return requests.filter((r) => r.path === `/3/device/${token}`);
    },
  };
}

function apnsAnswer(status, reason, headers = {}) {
  const apnsId = crypto.randomUUID().toUpperCase();
  if (status === 200) return { status, headers: { "apns-id": apnsId, ...headers } };
  const body = status === 410 ? { reason, timestamp: Date.now() } : { reason };
  return { status, headers: { "apns-id": apnsId, ...headers }, body };
}
