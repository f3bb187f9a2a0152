// A scripted HTTP server on 127.0.0.1 for the worker to talk to in tests.
//
// Each request is recorded (method, path, headers, body) and answered by the
// handler the test gives. `answers` scripts what a key (a path, a device
// token) gets: a list consumed one per request whose last entry repeats, so
// `["fail", "ok"]` fails once and then succeeds.
//
// Also the pieces every local server here shares (the fakes, the fault
// proxy, the Synapse relay, the bench's providers): listening on a free
// port, reading a body, the handle a provider fake gives its test.

import fs from "node:fs";
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
  const server = http.createServer(async (req, res) => {
    const { body, text, json } = await readBody(req);
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
  const { origin, port, close } = await listenLocally(server, "fake server");
  return {
    origin,
    port,
    requests,
    /** Forget what was recorded (between tests sharing one server). */
    clear() {
      requests.length = 0;
    },
    close,
  };
}

/**
 * Listen on 127.0.0.1 at a free port. `close()` also cuts kept-alive
 * connections, which would otherwise hold the server (and the test) open.
 * @param {http.Server} server
 * @param {string} name for the error when it gets no port
 */
export async function listenLocally(server, name) {
  const sockets = new Set();
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(undefined));
  });
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error(`${name} has no port`);
  return {
    origin: `http://127.0.0.1:${address.port}`,
    port: address.port,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(() => resolve(undefined)));
    },
  };
}

/**
 * Read a request's whole body, also as UTF-8 text and as JSON.
 * @param {http.IncomingMessage} req
 * @returns {Promise<{ body: Buffer, text: string, json: any }>}
 */
export async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = Buffer.concat(chunks);
  const text = body.toString("utf8");
  return { body, text, json: parseJson(text) };
}

/** The JSON value `text` holds, or undefined when it is not JSON. */
export function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
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

  /**
   * The next answer for `key`, where a script may name one of `named`'s
   * answers (`"ok"` for `named.ok`) instead of giving it.
   * @param {string} key @param {Record<string, any>} named
   */
  nextAnswer(key, named) {
    const scripted = this.next(key);
    const answer = typeof scripted === "string" ? named[scripted] : scripted;
    if (!answer) throw new Error(`unknown scripted answer ${scripted}`);
    return answer;
  }

  reset() {
    this.queues.clear();
  }
}

/**
 * What every provider fake hands its test, besides its own helpers: what it
 * received, delivered and refused, scripting per key, and `reset()` between
 * tests sharing the fake (`forget` clears the fake's own extra state).
 * @param {{ server: Awaited<ReturnType<typeof startFakeServer>>, script: Script<any>,
 *           delivered: any[], violations: string[], forget?: () => void }} parts
 */
export function fakeHandle({ server, script, delivered, violations, forget = () => {} }) {
  return {
    origin: server.origin,
    /** Every request received, well-formed or not. */
    requests: server.requests,
    /** Requests answered with success. */
    delivered,
    /** Why requests failed the fake's checks (empty when all were well-formed). */
    violations,
    /** Script the answers for one key: e.g. `answer(key, ["unavailable", "ok"])`. */
    answer(key, answers) {
      script.set(key, answers);
    },
    reset() {
      script.reset();
      server.clear();
      violations.length = 0;
      delivered.length = 0;
      forget();
    },
    close: () => server.close(),
  };
}

/** Decode a base64url JWT segment to JSON, or undefined. */
export function decodeJwtPart(part) {
  return parseJson(Buffer.from(part, "base64url").toString("utf8"));
}

/**
 * Notes a value that must never appear in a worker's log (key material, a
 * token, a whole pushkey) for the suite-wide scan (tests/scan-all-logs.mjs),
 * when scripts/test set EDGEPUSH_FORBIDDEN_FILE. Returns the value.
 * @template {string} T
 * @param {"secrets" | "tokens" | "pushkeys"} kind
 * @param {T} value
 * @returns {T}
 */
export function forbidInLogs(kind, value) {
  const file = process.env.EDGEPUSH_FORBIDDEN_FILE;
  if (file && value) fs.appendFileSync(file, `${JSON.stringify({ kind, value })}\n`);
  return value;
}
