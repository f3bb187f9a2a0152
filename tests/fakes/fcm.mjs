// A fake Google OAuth token endpoint and a fake FCM HTTP v1 API (HTTP/1.1 on
// 127.0.0.1, one server for both), checking what Google checks so every FCM
// outcome can be driven from a test.
//
// Token endpoint, `POST /token` (the service account's `token_uri`):
//   form-encoded `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and
//   `assertion`, an RS256 JWS verified with the public key of the service
//   account its `iss` names (one of `accounts`), `scope` = firebase.messaging, `aud` = token_uri,
//   `iat` not in the future, `exp` after `iat` by at most an hour. A refusal is
//   Google's 400 `invalid_grant`. Issues `ya29.fake-<n>`, counted in
//   `tokenRequests`.
// FCM, `POST /v1/projects/<project>/messages:send`:
//   `authorization: Bearer <a token this fake issued and did not revoke>` (401
//   UNAUTHENTICATED), the project (404 NOT_FOUND), a JSON `message` with a string
//   `token` and no other target, `data` values strings only, no reserved key,
//   `notification` only `title`, `body` and `image` strings, data and
//   notification at most 4096 bytes together, `android.priority` high or normal,
//   `android.collapse_key` and `android.notification.tag` strings, `apns.headers`
//   strings with `apns-priority` 5 or 10 and an `apns-collapse-id` of at most 64
//   bytes, `apns.payload.aps` an object (400 INVALID_ARGUMENT, as Google answers).
// Every failed check is also kept in `violations`, so a test can assert that
// the worker's requests were all well-formed.
//
// Then the pushkey's script answers (see ANSWERS): "ok" by default.

import crypto from "node:crypto";
import { Script, decodeJwtPart, fakeHandle, forbidInLogs, startFakeServer } from "./common.mjs";

export const SCOPE = "https://www.googleapis.com/auth/firebase.messaging";
export const JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer";
export const MAX_DATA_BYTES = 4096;
const ASSERTION_MAX_LIFETIME_SECS = 3600;
const IAT_FUTURE_SKEW_SECS = 60;
const ACCESS_TOKEN_LIFETIME_SECS = 3599;
const FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError";
const BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest";

/** The fields of FCM's `Notification`. */
const NOTIFICATION_FIELDS = new Set(["title", "body", "image"]);

/** Why FCM would refuse `message.apns`, or undefined when it is well-formed. */
function checkApnsConfig(apns) {
  if (apns === undefined) return undefined;
  if (apns === null || typeof apns !== "object" || Array.isArray(apns)) return "message.apns is not an object";
  const headers = apns.headers ?? {};
  for (const [name, value] of Object.entries(headers)) {
    if (typeof value !== "string") return `Invalid value at 'message.apns.headers[${name}]' (TYPE_STRING)`;
  }
  if (headers["apns-priority"] !== undefined && !["5", "10"].includes(headers["apns-priority"])) {
    return `apns-priority ${headers["apns-priority"]}`;
  }
  const collapseId = headers["apns-collapse-id"];
  if (collapseId !== undefined && (collapseId === "" || Buffer.byteLength(collapseId) > 64)) {
    return `apns-collapse-id of ${Buffer.byteLength(collapseId)} bytes`;
  }
  const aps = apns.payload?.aps;
  if (apns.payload !== undefined && (aps === null || typeof aps !== "object" || Array.isArray(aps))) {
    return "message.apns.payload.aps is not an object";
  }
  return undefined;
}

/** A Google API error body. */
function googleError(code, status, message, details = []) {
  return { error: { code, message, status, details } };
}

/**
 * Named answers for pushkey scripts, in Google's real shapes. Any
 * `{status, body, headers}` works too.
 * @typedef {{status: number, body?: any, headers?: Record<string, string>}} FcmAnswer
 * @type {Record<string, FcmAnswer>}
 */
export const ANSWERS = {
  ok: { status: 200 },
  invalid_token: {
    status: 400,
    body: googleError(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token", [
      { "@type": FCM_ERROR, errorCode: "INVALID_ARGUMENT" },
      { "@type": BAD_REQUEST, fieldViolations: [{ field: "message.token", description: "Invalid registration token" }] },
    ]),
  },
  // A refusal of our message, not of the token: never the device's fault.
  bad_request: {
    status: 400,
    body: googleError(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", [
      { "@type": FCM_ERROR, errorCode: "INVALID_ARGUMENT" },
    ]),
  },
  unauthenticated: {
    status: 401,
    body: googleError(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 access token.", [
      { "@type": FCM_ERROR, errorCode: "THIRD_PARTY_AUTH_ERROR" },
    ]),
  },
  sender_id_mismatch: {
    status: 403,
    body: googleError(403, "PERMISSION_DENIED", "SenderId mismatch", [{ "@type": FCM_ERROR, errorCode: "SENDER_ID_MISMATCH" }]),
  },
  unregistered: {
    status: 404,
    body: googleError(404, "NOT_FOUND", "Requested entity was not found.", [{ "@type": FCM_ERROR, errorCode: "UNREGISTERED" }]),
  },
  quota_exceeded: {
    status: 429,
    headers: { "retry-after": "0" },
    body: googleError(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", [{ "@type": FCM_ERROR, errorCode: "QUOTA_EXCEEDED" }]),
  },
  unavailable: {
    status: 503,
    body: googleError(503, "UNAVAILABLE", "The service is currently unavailable.", [{ "@type": FCM_ERROR, errorCode: "UNAVAILABLE" }]),
  },
};

/** Named answers of the token endpoint, e.g. `tokenAnswer(["down", "ok"])`. */
export const TOKEN_ANSWERS = {
  ok: { status: 200 },
  /** A token, after 1.5 s (a slow token endpoint). */
  slow: { status: 200, delayMs: 1500 },
  down: { status: 503, body: { error: "unavailable" } },
  invalid_grant: { status: 400, body: { error: "invalid_grant", error_description: "Invalid JWT Signature." } },
};

/**
 * A fresh service account: the key file JSON for the worker's secret (with
 * `token_uri` pointing at the fake) and the public key for the fake.
 * Generated per run: no key is committed for the integration tests.
 */
export function generateServiceAccount({ clientEmail = "edgepush@example-123.iam.gserviceaccount.com", projectId = "example-123" } = {}) {
  const { privateKey, publicKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });
  return {
    clientEmail,
    projectId,
    publicKey,
    /** The key file as Google hands it out, for a given token endpoint. */
    keyFile(tokenUri) {
      return JSON.stringify({
        type: "service_account",
        project_id: projectId,
        private_key_id: "0123456789abcdef",
        private_key: forbidInLogs("secrets", /** @type {string} */ (privateKey.export({ type: "pkcs8", format: "pem" }))),
        client_email: clientEmail,
        client_id: "100000000000000000000",
        auth_uri: "https://accounts.google.com/o/oauth2/auth",
        token_uri: tokenUri,
      });
    },
  };
}

/**
 * @param {{ accounts: Array<{ clientEmail: string, publicKey: crypto.KeyObject }>, projectId: string,
 *           now?: () => number }} options
 *   `accounts`: the service accounts Google knows (e.g. from generateServiceAccount).
 *   `now`: the fake's clock in Unix seconds.
 */
export async function startFakeFcm({ accounts, projectId, now = () => Math.floor(Date.now() / 1000) }) {
  const publicKeys = new Map(accounts.map((a) => [a.clientEmail, a.publicKey]));
  /** @type {Script<string | FcmAnswer>} */
  const script = new Script("ok");
  /** @type {Script<string | FcmAnswer>} */
  const tokenScript = new Script("ok");
  /** @type {string[]} */
  const violations = [];
  /** @type {Array<{ pushkey: string, message: any, raw: string, accessToken: string }>} */
  const delivered = [];
  /** @type {Array<{ header: any, claims: any }>} */
  const assertions = [];
  /** Access tokens issued and still honoured. */
  const issued = new Set();
  let tokenRequests = 0;
  let serial = 0;
  let tokenUri = "";

  const refuse = (answer, why) => {
    violations.push(`${answer.status}: ${why}`);
    return answer;
  };
  const badGrant = (why) =>
    refuse({ status: 400, body: { error: "invalid_grant", error_description: why } }, `token: ${why}`);
  const invalidArgument = (why, field) =>
    refuse(
      {
        status: 400,
        body: googleError(400, "INVALID_ARGUMENT", why, [
          { "@type": FCM_ERROR, errorCode: "INVALID_ARGUMENT" },
          ...(field ? [{ "@type": BAD_REQUEST, fieldViolations: [{ field, description: why }] }] : []),
        ]),
      },
      `send: ${why}`,
    );

  const exchange = async (req) => {
    tokenRequests += 1;
    if (req.method !== "POST") return refuse({ status: 405 }, `token: ${req.method}`);
    if (!(req.headers["content-type"] ?? "").startsWith("application/x-www-form-urlencoded")) {
      return refuse({ status: 400, body: { error: "invalid_request" } }, `token: content-type ${req.headers["content-type"]}`);
    }
    const form = new URLSearchParams(req.text);
    if (form.get("grant_type") !== JWT_BEARER) {
      return refuse({ status: 400, body: { error: "unsupported_grant_type" } }, `token: grant_type ${form.get("grant_type")}`);
    }
    const parts = /^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$/.exec(form.get("assertion") ?? "");
    if (!parts) return badGrant("Invalid JWT: the assertion is not a JWS");
    const [, headerPart, claimsPart, signaturePart] = parts;
    const header = decodeJwtPart(headerPart);
    const claims = decodeJwtPart(claimsPart);
    if (!header || !claims) return badGrant("Invalid JWT: undecodable");
    if (header.alg !== "RS256") return badGrant(`Invalid JWT: alg ${header.alg}`);
    const publicKey = publicKeys.get(claims.iss);
    if (!publicKey) return badGrant(`Invalid JWT: no service account ${claims.iss}`);
    const signatureOk = crypto.verify(
      "sha256",
      Buffer.from(`${headerPart}.${claimsPart}`),
      publicKey,
      Buffer.from(signaturePart, "base64url"),
    );
    if (!signatureOk) return badGrant("Invalid JWT Signature.");
    if (claims.scope !== SCOPE) return badGrant(`Invalid JWT: scope ${claims.scope}`);
    if (claims.aud !== tokenUri) return badGrant(`Invalid JWT: aud ${claims.aud}`);
    const t = now();
    if (!Number.isInteger(claims.iat) || !Number.isInteger(claims.exp)) return badGrant("Invalid JWT: iat / exp");
    if (claims.iat > t + IAT_FUTURE_SKEW_SECS || claims.exp <= t || claims.exp <= claims.iat
      || claims.exp - claims.iat > ASSERTION_MAX_LIFETIME_SECS) {
      return badGrant("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.");
    }
    assertions.push({ header, claims });

    const answer = tokenScript.nextAnswer("token", TOKEN_ANSWERS);
    if (answer.delayMs) await new Promise((resolve) => setTimeout(resolve, answer.delayMs));
    if (answer.status !== 200) return answer;
    serial += 1;
    const accessToken = forbidInLogs("tokens", `ya29.fake-${serial}-${crypto.randomBytes(8).toString("hex")}`);
    issued.add(accessToken);
    return { status: 200, body: { access_token: accessToken, expires_in: ACCESS_TOKEN_LIFETIME_SECS, token_type: "Bearer" } };
  };

  const send = async (req, project) => {
    if (project !== projectId) {
      return refuse({ status: 404, body: googleError(404, "NOT_FOUND", "Requested entity was not found.") }, `send: project ${project}`);
    }
    const auth = /^Bearer (\S+)$/.exec(req.headers["authorization"] ?? "");
    if (!auth || !issued.has(auth[1])) return refuse(ANSWERS.unauthenticated, "send: no access token this fake issued");
    if (!(req.headers["content-type"] ?? "").startsWith("application/json")) {
      return invalidArgument(`content-type ${req.headers["content-type"]}`);
    }
    const message = req.json?.message;
    if (message === null || typeof message !== "object") return invalidArgument("no message object");
    if (typeof message.token !== "string") return invalidArgument("message.token is not a string", "message.token");
    if ("topic" in message || "condition" in message) return invalidArgument("more than one target");
    const data = message.data ?? {};
    let size = 0;
    let index = 0;
    for (const [key, value] of Object.entries(data)) {
      if (typeof value !== "string") {
        return invalidArgument(`Invalid value at 'message.data[${index}].value' (TYPE_STRING), ${JSON.stringify(value)}`, `message.data[${index}].value`);
      }
      if (/^(from|message_type|notification)$/i.test(key) || /^(google|gcm)/i.test(key)) {
        return invalidArgument(`Invalid data payload key: ${key}`, "message.data");
      }
      size += Buffer.byteLength(key) + Buffer.byteLength(value);
      index += 1;
    }
    const shown = message.notification;
    if (shown !== undefined) {
      if (shown === null || typeof shown !== "object" || Array.isArray(shown)) return invalidArgument("message.notification is not an object", "message.notification");
      for (const [key, value] of Object.entries(shown)) {
        if (!NOTIFICATION_FIELDS.has(key)) {
          return invalidArgument(`Invalid JSON payload received. Unknown name "${key}" at 'message.notification'`, "message.notification");
        }
        if (typeof value !== "string") return invalidArgument(`Invalid value at 'message.notification.${key}' (TYPE_STRING)`, `message.notification.${key}`);
        size += Buffer.byteLength(key) + Buffer.byteLength(value);
      }
    }
    if (size > MAX_DATA_BYTES) return invalidArgument(`Android message is too big (${size} bytes of data and notification)`);
    const android = message.android ?? {};
    const priority = android.priority;
    if (priority !== undefined && !/^(high|normal)$/i.test(priority)) {
      return invalidArgument(`Invalid value at 'message.android.priority', ${priority}`, "message.android.priority");
    }
    if (android.collapse_key !== undefined && typeof android.collapse_key !== "string") {
      return invalidArgument("Invalid value at 'message.android.collapse_key' (TYPE_STRING)", "message.android.collapse_key");
    }
    const androidNotification = android.notification;
    if (androidNotification !== undefined) {
      if (androidNotification === null || typeof androidNotification !== "object" || Array.isArray(androidNotification)) {
        return invalidArgument("Invalid value at 'message.android.notification' (type.googleapis.com/google.firebase.fcm.v1.AndroidNotification)", "message.android.notification");
      }
      // FCM accepts a notification without a tag; one given must be a string.
      if (androidNotification.tag !== undefined && typeof androidNotification.tag !== "string") {
        return invalidArgument("Invalid value at 'message.android.notification.tag' (TYPE_STRING)", "message.android.notification.tag");
      }
    }
    const apnsProblem = checkApnsConfig(message.apns);
    if (apnsProblem) return invalidArgument(apnsProblem, "message.apns");

    const answer = script.nextAnswer(message.token, ANSWERS);
    if (answer.status === 401) issued.delete(auth[1]);
    if (answer.status !== 200) return answer;
    delivered.push({ pushkey: message.token, message, raw: req.text, accessToken: auth[1] });
    serial += 1;
    return { status: 200, body: { name: `projects/${projectId}/messages/0:${serial}` } };
  };

  const server = await startFakeServer(async (req) => {
    if (req.path === "/token") return exchange(req);
    const match = /^\/v1\/projects\/([^/]+)\/messages:send$/.exec(req.path);
    if (req.method === "POST" && match) return send(req, match[1]);
    return refuse({ status: 404, body: googleError(404, "NOT_FOUND", "not found") }, `${req.method} ${req.path}`);
  });
  tokenUri = `${server.origin}/token`;

  const forget = () => {
    tokenScript.reset();
    assertions.length = 0;
    tokenRequests = 0;
  };
  return {
    // Scripts are per pushkey; `requests` includes the token exchanges.
    ...fakeHandle({ server, script, delivered, violations, forget }),
    /** What the service account's `token_uri` must be. */
    tokenUri,
    /** Decoded assertions that verified. */
    assertions,
    /** How many times the token endpoint was called. */
    get tokenRequests() {
      return tokenRequests;
    },
    /** Script the token endpoint: e.g. `tokenAnswer(["down", "ok"])`. */
    tokenAnswer(answers) {
      tokenScript.set("token", answers);
    },
    /** Stop honouring every access token issued so far (as if they expired). */
    revokeAll() {
      issued.clear();
    },
    /** Send requests (not token exchanges) that named this pushkey. */
    sendsFor(pushkey) {
      return server.requests.filter((r) => r.path !== "/token" && r.json?.message?.token === pushkey);
    },
  };
}
