// A fake Huawei OAuth token endpoint and a fake Push Kit Android server API
// (HTTP/1.1 on 127.0.0.1, one server for both), checking what Huawei checks
// so every HMS outcome can be driven from a test.
//
// Token endpoint, `POST /oauth2/v3/token`: form-encoded
//   `grant_type=client_credentials`, `client_id` (the app id) and
//   `client_secret` of an app it knows (`apps`). A refusal is HTTP 400 with
//   Huawei's numeric codes (`{"error": 1101, "sub_error": 20152, ...}`).
//   Issues base64 access tokens (with `+`, `/` and `=`, written with escaped
//   slashes as Huawei's JSON has them), `expires_in` per app (3600 by
//   default), counted in `tokenRequests`.
// Push Kit, `POST /v1/<app id>/messages:send`:
//   `authorization: Bearer <a token this fake issued for that app id>` (401
//   80200001 when it issued no such token or issued it to another app; 401
//   80200003 when it expired or was revoked), `content-type:
//   application/json`, a JSON body whose `message` is an object and whose
//   `validate_only` is a boolean (80100003), exactly one target: `token`, an
//   array of 1 to 1000 strings (80300010), `data` a string when present
//   (80100003), `android.urgency` HIGH or NORMAL, `android.category` an
//   upper-case word, `android.collapse_key` an integer from -1 to 100
//   (80100013), and the message without its token at most 4096 bytes
//   (80300008). HTTP statuses are the fake's choice; edgepush reads the code.
// Every failed check is also kept in `violations`, so a test can assert that
// the worker's requests were all well-formed.
//
// Then the first token's script answers (see ANSWERS, or `result(code)` for
// any code): "ok" by default.

import crypto from "node:crypto";
import { Script, fakeHandle, forbidInLogs, startFakeServer } from "./common.mjs";

export const TOKEN_PATH = "/oauth2/v3/token";
export const MAX_MESSAGE_BYTES = 4096;
export const MAX_TOKENS = 1000;
const DEFAULT_EXPIRES_IN = 3600;

/** Huawei's answer body for a result code. */
export function hmsAnswer(code, msg) {
  return { code, msg, requestId: `${Date.now()}${crypto.randomInt(1e9)}` };
}

/**
 * Any result code as a scripted answer: `result("80100016")`.
 * @param {string} code @param {{ status?: number, msg?: string, headers?: Record<string, string> }} [options]
 */
export function result(code, { status = 400, msg = `result ${code}`, headers } = {}) {
  return { status, headers, body: hmsAnswer(code, msg) };
}

/**
 * Named answers for token scripts. A function gets the token the message
 * was sent to (Huawei names failed tokens in `msg`).
 * @typedef {{status: number, body?: any, headers?: Record<string, string>}} HmsAnswer
 * @type {Record<string, HmsAnswer | ((token: string) => HmsAnswer)>}
 */
export const ANSWERS = {
  ok: { status: 200, body: hmsAnswer("80000000", "Success") },
  // 80100000 for a message to one token: the token that succeeded, or the one that failed.
  partial_ok: { status: 200, body: hmsAnswer("80100000", JSON.stringify({ success: 1, failure: 0, illegal_tokens: [] })) },
  partial_dead: (token) => ({
    status: 200,
    body: hmsAnswer("80100000", JSON.stringify({ success: 0, failure: 1, illegal_tokens: [token] })),
  }),
  invalid_token: { status: 400, body: hmsAnswer("80300007", "All the tokens are invalid") },
  invalid_token_listed: (token) => ({
    status: 400,
    body: hmsAnswer("80300007", JSON.stringify({ success: 0, failure: 1, illegal_tokens: [token] })),
  }),
  // The HarmonyOS API's form: failed tokens filed by reason.
  format_error: (token) => ({
    status: 400,
    body: hmsAnswer("80300007", JSON.stringify({ illegalTokens: { tokenFormatError: [token] }, failure: 1 })),
  }),
  // The token belongs to another app than the one in the URL: the device's, or our App ID.
  no_right: (token) => ({
    status: 400,
    body: hmsAnswer("80300007", JSON.stringify({ illegalTokens: { noRight: [token] }, failure: 1 })),
  }),
  bad_parameters: { status: 400, body: hmsAnswer("80100001", "Some request parameters are incorrect") },
  bad_structure: { status: 400, body: hmsAnswer("80100003", "Incorrect message structure") },
  too_large: { status: 400, body: hmsAnswer("80300008", "The message body size exceeds the default value") },
  no_permission: { status: 403, body: hmsAnswer("80300002", "No permission to send message to these tokens") },
  too_many_tokens: { status: 400, body: hmsAnswer("80300010", "The number of tokens in the message body exceeds the default value") },
  oauth_error: { status: 401, body: hmsAnswer("80200001", "Oauth authentication error") },
  oauth_expired: { status: 401, body: hmsAnswer("80200003", "Oauth Token expired") },
  flow_control: { status: 503, headers: { "retry-after": "0" }, body: hmsAnswer("80100017", "flow control") },
  flow_control_code: { status: 200, body: hmsAnswer("80300009", "flow control") },
  internal_error: { status: 500, body: hmsAnswer("81000001", "System inner error") },
  oauth_service_failed: { status: 500, body: hmsAnswer("80600003", "Request OAuth service failed") },
  unavailable: { status: 503, body: "" },
  throttled: { status: 429, headers: { "retry-after": "0" }, body: "" },
  unknown_code: { status: 400, body: hmsAnswer("80999999", "something new") },
};

/** Named answers of the token endpoint, e.g. `tokenAnswer(["down", "ok"])`. */
export const TOKEN_ANSWERS = {
  ok: { status: 200 },
  down: { status: 503, body: { error: 1203, error_description: "system busy" } },
  throttled: { status: 429, headers: { "retry-after": "0" }, body: "" },
};

/** An app id and a fresh secret, as AppGallery Connect shows them. */
export function generateHmsApp(appId = String(100_000_000 + crypto.randomInt(1e8))) {
  return { appId, secret: forbidInLogs("secrets", crypto.randomBytes(32).toString("hex")) };
}

/**
 * @param {{ apps: Array<{ appId: string, secret: string, expiresIn?: number }>, now?: () => number }} options
 *   `apps`: the apps Huawei knows; `expiresIn`: their tokens' lifetime in seconds.
 *   `now`: the fake's clock in Unix seconds.
 */
export async function startFakeHms({ apps, now = () => Math.floor(Date.now() / 1000) }) {
  const known = new Map(apps.map((a) => [a.appId, a]));
  /** @type {Script<any>} */
  const script = new Script("ok");
  /** @type {Script<any>} */
  const tokenScript = new Script("ok");
  /** @type {string[]} */
  const violations = [];
  /** @type {Array<{ token: string, message: any, data: any, raw: string, accessToken: string, appId: string }>} */
  const delivered = [];
  /** Access tokens issued: to which app, until when, revoked or not. */
  const issued = new Map();
  /** @type {Array<{ clientId: string | null, grantType: string | null }>} */
  const grants = [];
  let tokenRequests = 0;

  const refuse = (answer, why) => {
    violations.push(`${answer.status} ${answer.body?.code ?? answer.body?.error ?? ""}: ${why}`);
    return answer;
  };
  const badClient = (why) =>
    refuse({ status: 400, body: { error: 1101, sub_error: 20152, error_description: "invalid client" } }, `token: ${why}`);
  const refuseSend = (code, status, why) => refuse({ status, body: hmsAnswer(code, why) }, `send: ${why}`);

  const exchange = (req) => {
    tokenRequests += 1;
    if (req.method !== "POST") return refuse({ status: 405 }, `token: ${req.method}`);
    if (!(req.headers["content-type"] ?? "").startsWith("application/x-www-form-urlencoded")) {
      return refuse({ status: 400, body: { error: 1102, error_description: "invalid request" } }, `token: content-type ${req.headers["content-type"]}`);
    }
    const form = new URLSearchParams(req.text);
    grants.push({ clientId: form.get("client_id"), grantType: form.get("grant_type") });
    if (form.get("grant_type") !== "client_credentials") {
      return refuse({ status: 400, body: { error: 1102, error_description: "unsupported grant_type" } }, `token: grant_type ${form.get("grant_type")}`);
    }
    const app = known.get(form.get("client_id") ?? "");
    if (!app) return badClient(`no app ${form.get("client_id")}`);
    const secret = form.get("client_secret") ?? "";
    const same = secret.length === app.secret.length && crypto.timingSafeEqual(Buffer.from(secret), Buffer.from(app.secret));
    if (!same) return badClient(`wrong secret for ${app.appId}`);

    const scripted = tokenScript.nextAnswer("token", TOKEN_ANSWERS);
    if (scripted.status !== 200) return scripted;
    const accessToken = forbidInLogs("tokens", crypto.randomBytes(60).toString("base64"));
    const expiresIn = app.expiresIn ?? DEFAULT_EXPIRES_IN;
    issued.set(accessToken, { appId: app.appId, expiresAt: now() + expiresIn, revoked: false });
    // Huawei's JSON escapes its slashes.
    const body = JSON.stringify({ access_token: accessToken, expires_in: expiresIn, token_type: "Bearer" }).replaceAll("/", "\\/");
    return { status: 200, headers: { "content-type": "application/json;charset=UTF-8" }, body };
  };

  const send = (req, appId) => {
    const auth = /^Bearer (\S+)$/.exec(req.headers["authorization"] ?? "");
    const grant = auth ? issued.get(auth[1]) : undefined;
    if (!grant || grant.appId !== appId) return refuseSend("80200001", 401, "Oauth authentication error");
    if (grant.revoked || grant.expiresAt <= now()) return refuseSend("80200003", 401, "Oauth Token expired");
    if (!(req.headers["content-type"] ?? "").startsWith("application/json")) {
      return refuseSend("80100003", 400, `content-type ${req.headers["content-type"]}`);
    }
    const body = req.json;
    if (body === null || typeof body !== "object" || Array.isArray(body)) return refuseSend("80100003", 400, "the body is not a JSON object");
    if ("validate_only" in body && typeof body.validate_only !== "boolean") return refuseSend("80100003", 400, "validate_only is not a boolean");
    const message = body.message;
    if (message === null || typeof message !== "object" || Array.isArray(message)) return refuseSend("80100003", 400, "no message object");
    const targets = ["token", "topic", "condition"].filter((t) => message[t] !== undefined);
    if (targets.length !== 1) return refuseSend("80100003", 400, `targets: ${targets.join(", ") || "none"}`);
    const tokens = message.token;
    if (!Array.isArray(tokens) || tokens.length === 0 || tokens.length > MAX_TOKENS || !tokens.every((t) => typeof t === "string")) {
      return refuseSend("80300010", 400, "token is not an array of 1 to 1000 strings");
    }
    if (message.data !== undefined && typeof message.data !== "string") return refuseSend("80100003", 400, "message.data is not a string");
    const android = message.android ?? {};
    if (typeof android !== "object" || Array.isArray(android)) return refuseSend("80100003", 400, "android is not an object");
    if (android.urgency !== undefined && !["HIGH", "NORMAL"].includes(android.urgency)) {
      return refuseSend("80100001", 400, `android.urgency ${android.urgency}`);
    }
    if (android.category !== undefined && (typeof android.category !== "string" || !/^[A-Z][A-Z0-9_]*$/.test(android.category))) {
      return refuseSend("80100001", 400, `android.category ${android.category}`);
    }
    if (android.collapse_key !== undefined && !(Number.isInteger(android.collapse_key) && android.collapse_key >= -1 && android.collapse_key <= 100)) {
      return refuseSend("80100013", 400, `android.collapse_key ${android.collapse_key}`);
    }
    const { token: _, ...withoutToken } = message;
    const size = Buffer.byteLength(JSON.stringify(withoutToken));
    if (size > MAX_MESSAGE_BYTES) return refuseSend("80300008", 400, `The message body size exceeds the default value (${size} bytes)`);

    const token = tokens[0];
    const scripted = script.nextAnswer(token, ANSWERS);
    const answer = typeof scripted === "function" ? scripted(token) : scripted;
    if (answer.body?.code === "80200003") grant.revoked = true;
    if (answer.status !== 200 || answer.body?.code !== "80000000") return answer;
    let data;
    try {
      data = message.data === undefined ? undefined : JSON.parse(message.data);
    } catch {
      data = undefined;
    }
    delivered.push({ token, message, data, raw: req.text, accessToken: auth?.[1] ?? "", appId });
    return answer;
  };

  const server = await startFakeServer(async (req) => {
    if (req.path === TOKEN_PATH) return exchange(req);
    const match = /^\/v1\/([^/]+)\/messages:send$/.exec(req.path);
    if (req.method === "POST" && match) return send(req, decodeURIComponent(match[1]));
    return refuse({ status: 404, body: hmsAnswer("80100003", "not found") }, `${req.method} ${req.path}`);
  });

  const forget = () => {
    tokenScript.reset();
    grants.length = 0;
    tokenRequests = 0;
  };
  return {
    // Scripts are per pushkey; `requests` includes the token exchanges.
    ...fakeHandle({ server, script, delivered, violations, forget }),
    /** What an app's `token_url` must be. */
    tokenUrl: `${server.origin}${TOKEN_PATH}`,
    /** The token requests' client ids and grant types. */
    grants,
    /** How many times the token endpoint was called. */
    get tokenRequests() {
      return tokenRequests;
    },
    /** Script the token endpoint: e.g. `tokenAnswer(["down", "ok"])`. */
    tokenAnswer(answers) {
      tokenScript.set("token", answers);
    },
    /** Expire every access token issued so far. */
    revokeAll() {
      for (const grant of issued.values()) grant.revoked = true;
    },
    /** Send requests (not token exchanges) that named this token. */
    sendsFor(token) {
      return server.requests.filter((r) => r.path !== TOKEN_PATH && Array.isArray(r.json?.message?.token) && r.json.message.token[0] === token);
    },
  };
}
