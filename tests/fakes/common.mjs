// A scripted HTTP server on 127.0.0.1 for the worker to talk to in tests.
//
// Each request is recorded (method, path, headers, body) and answered by the
// handler the test gives. `answers` scripts what a key (a path, a device
// token) gets: a list consumed one per request whose last entry repeats, so
// `["fail", "ok"]` fails once and then succeeds.

import http from "node:http";

/**
 * @typedef {{ method: string, path: string, headers: Record<string, string>,
 *             body: Buffer, text: string, json: any, at: number }} Recorded
 * @typedef {{ status: number, headers?: Record<string, string>, body?: any }} Answer
 */

/**
 * Start a server; `handle(recorded)` returns the answer (or a promise of it).
 * @param {(req: Recorded) => Answer | Promise<Answer>} handle
 */
export async function startFakeServer(handle) {
  /** @type {Recorded[]} */
  const requests = [];
  const sockets = new Set();
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks);
    const text = body.toString("utf8");
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    /** @type {Recorded} */
    const recorded = {
      method: req.method ?? "",
      path: req.url ?? "",
      headers: /** @type {Record<string, string>} */ (req.headers),
      body,
      text,
      json,
      at: Date.now(),
    };
    requests.push(recorded);
    let answer;
    try {
      answer = await handle(recorded);
    } catch (err) {
      answer = { status: 500, body: { fake_error: String(err) } };
    }
    const payload =
      answer.body === undefined ? "" : typeof answer.body === "string" ? answer.body : JSON.stringify(answer.body);
    const headers = { ...(answer.headers ?? {}) };
    if (payload && !Object.keys(headers).some((h) => h.toLowerCase() === "content-type")) {
      headers["content-type"] = "application/json";
    }
    res.writeHead(answer.status, headers);
    res.end(payload);
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(undefined));
  });
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("fake server has no port");
  const origin = `http://127.0.0.1:${address.port}`;
  return {
    origin,
    port: address.port,
    requests,
    /** Forget what was recorded (between tests sharing one server). */
    clear() {
      requests.length = 0;
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(() => resolve(undefined)));
    },
  };
}

/**
 * Per-key scripts of answers: `set(key, [a, b])` answers `a` once, then `b`
 * for ever. Keys without a script get `fallback`.
 * @template T
 */
export class Script {
  /** @param {T} fallback */
  constructor(fallback) {
    this.fallback = fallback;
    /** @type {Map<string, T[]>} */
    this.queues = new Map();
  }

  /** @param {string} key @param {T | T[]} answers */
  set(key, answers) {
    const list = Array.isArray(answers) ? [...answers] : [answers];
    if (list.length === 0) throw new Error("a script needs at least one answer");
    this.queues.set(key, list);
  }

  /** @param {string} key @returns {T} */
  next(key) {
    const queue = this.queues.get(key);
    if (!queue) return this.fallback;
    return queue.length > 1 ? /** @type {T} */ (queue.shift()) : /** @type {T} */ (queue[0]);
  }

  reset() {
    this.queues.clear();
  }
}

/** Decode a base64url JWT segment to JSON, or undefined. */
export function decodeJwtPart(part) {
  try {
    return JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
  } catch {
    return undefined;
  }
}
