// A fake UnifiedPush distributor endpoint (ntfy-like, HTTP/1.1 on
// 127.0.0.1): each `endpoint()` is a URL a device's distributor handed out,
// used as the pusher's pushkey. It checks the POST (405), a known endpoint
// (404), a JSON body of at most 4096 bytes (413) holding a `notification`
// object (400), then answers from the endpoint's script: "ok" by default.

import { Script, fakeHandle, startFakeServer } from "./common.mjs";

export const MAX_BODY_BYTES = 4096;

/** @type {Record<string, {status: number, headers?: Record<string, string>, body?: any}>} */
export const ANSWERS = {
  ok: { status: 200, body: { id: "msg1", event: "message" } },
  unauthorized: { status: 401 },
  paymentRequired: { status: 402 },
  forbidden: { status: 403 },
  notFound: { status: 404 },
  gone: { status: 410 },
  badRequest: { status: 400 },
  tooLarge: { status: 413 },
  tooMany: { status: 429, headers: { "retry-after": "0" } },
  unavailable: { status: 503 },
};

export async function startFakeUnifiedPush() {
  const script = new Script("ok");
  /** @type {string[]} */
  const violations = [];
  /** @type {Array<{id: string, headers: Record<string, string>, json: any, bodyLength: number}>} */
  const delivered = [];
  const known = new Set();
  let nextId = 1;

  const refuse = (status, why) => {
    violations.push(`${status}: ${why}`);
    return { status, body: { error: why } };
  };

  const server = await startFakeServer((req) => {
    if (req.method !== "POST") return refuse(405, req.method);
    const match = /^\/up([A-Za-z0-9]+)(?:\?up=1)?$/.exec(req.path);
    if (!match || !known.has(match[1])) return refuse(404, `unknown endpoint ${req.path}`);
    const id = match[1];
    if (req.body.length > MAX_BODY_BYTES) return refuse(413, `${req.body.length} bytes`);
    if (!req.json || typeof req.json.notification !== "object" || req.json.notification === null) {
      return refuse(400, "body is not {\"notification\": {...}}");
    }
    const answer = script.nextAnswer(id, ANSWERS);
    if (answer.status >= 200 && answer.status < 300) {
      delivered.push({ id, headers: req.headers, json: req.json, bodyLength: req.body.length });
    }
    return answer;
  });

  return {
    ...fakeHandle({ server, script, delivered, violations }),
    /** A new endpoint URL (the pushkey), with its id for scripting. */
    endpoint() {
      const id = `Ab${nextId++}Cd`;
      known.add(id);
      return { id, url: `${server.origin}/up${id}?up=1` };
    },
    requestsFor(id) {
      return server.requests.filter((r) => r.path.startsWith(`/up${id}`));
    },
  };
}
