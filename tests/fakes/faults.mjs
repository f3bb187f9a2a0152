// A provider that misbehaves on command: an HTTP proxy on 127.0.0.1 in front
// of one of the other fakes (which keeps checking and recording what it is
// sent). Each request is keyed (by default its path; a test passes `keyOf`,
// e.g. the FCM token in the body) and either passed to the fake or answered
// with a fault instead:
//
//   "pass"                       forward to the fake, relay its answer
//   { status, headers?, body? }  answer this, the fake never sees it
//   { delayMs, then? }           wait, then do `then` (default: 503), e.g. to
//                                outlast SEND_TIMEOUT_MS
//   { truncate: { status, body, headers? } }
//                                declare the whole body's length, send half of
//                                it, then cut the connection
//   "reset"                      cut the connection without an answer
//   "deliver-then-reset"         forward to the fake (it delivers), then cut
//                                the connection instead of answering
//
// `inject(key, [fault, ..., "pass"])` scripts one key like the fakes'
// scripts (the last entry repeats); `chooser` decides for unscripted keys
// (default "pass"), e.g. random faults for a soak test.
//
// `closedOrigin()` gives an origin nobody listens on: connection refused.

import http from "node:http";
import net from "node:net";
import { Script, listenLocally, readBody } from "./common.mjs";

/** Faults by name, as the soak test draws them. */
export const FAULTS = {
  unavailable: { status: 503, headers: { "retry-after": "0" }, body: { reason: "ServiceUnavailable" } },
  tooMany: { status: 429, headers: { "retry-after": "0" }, body: { reason: "TooManyRequests" } },
  htmlError: { status: 502, headers: { "content-type": "text/html" }, body: "<html><body><h1>502 Bad Gateway</h1></body></html>" },
  truncated: { truncate: { status: 500, body: JSON.stringify({ reason: "InternalServerError", detail: "x".repeat(200) }) } },
  reset: "reset",
  deliverThenReset: "deliver-then-reset",
};

/**
 * @typedef {"pass" | "reset" | "deliver-then-reset"
 *   | { status: number, headers?: Record<string, string>, body?: any }
 *   | { delayMs: number, then?: Fault }
 *   | { truncate: { status: number, body: string, headers?: Record<string, string> } }
 *   | { stallBody: { status: number, ms: number } }} Fault
 * @typedef {{ method: string, path: string, headers: Record<string, string | string[] | undefined>, body: Buffer, text: string, json: any }} ProxiedRequest
 */

/**
 * @param {{ upstream: string, keyOf?: (req: ProxiedRequest) => string,
 *           chooser?: (req: ProxiedRequest, key: string) => Fault }} options
 *   `upstream`: the fake's origin (http://127.0.0.1:port).
 */
export async function startFaultProxy({ upstream, keyOf = (req) => req.path, chooser = () => "pass" }) {
  const target = new URL(upstream);
  /** @type {Script<Fault | null>} */
  const script = new Script(null);
  /** Every request and the fault it got, in order. */
  const log = /** @type {Array<{ key: string, fault: string, at: number }>} */ ([]);
  let choose = chooser;

  const forward = (req, body) => new Promise((resolve, reject) => {
    const headers = { ...req.headers, host: target.host };
    const out = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 502, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on("error", reject);
      },
    );
    out.on("error", reject);
    out.end(body);
  });

  const answer = (res, { status, headers = {}, body }) => {
    const payload = body === undefined ? "" : typeof body === "string" || Buffer.isBuffer(body) ? body : JSON.stringify(body);
    const h = { ...headers };
    if (payload.length && !Object.keys(h).some((k) => k.toLowerCase() === "content-type")) h["content-type"] = "application/json";
    res.writeHead(status, h);
    res.end(payload);
  };

  const apply = async (fault, req, res, body) => {
    if (fault === "pass") {
      const r = await forward(req, body);
      const headers = { ...r.headers };
      delete headers["transfer-encoding"];
      delete headers["connection"];
      delete headers["keep-alive"];
      headers["content-length"] = String(r.body.length);
      res.writeHead(r.status, headers);
      res.end(r.body);
    } else if (fault === "reset") {
      req.socket.destroy();
    } else if (fault === "deliver-then-reset") {
      await forward(req, body);
      req.socket.destroy();
    } else if ("delayMs" in fault) {
      await new Promise((resolve) => setTimeout(resolve, fault.delayMs));
      if (req.socket.destroyed) return;
      await apply(fault.then ?? FAULTS.unavailable, req, res, body);
    } else if ("stallBody" in fault) {
      // Headers at once, then half the body, then nothing for `ms`.
      const full = Buffer.from(JSON.stringify({ reason: "ServiceUnavailable", detail: "x".repeat(200) }));
      res.writeHead(fault.stallBody.status, { "content-type": "application/json", "content-length": String(full.length) });
      res.write(full.subarray(0, Math.floor(full.length / 2)));
      await new Promise((resolve) => setTimeout(resolve, fault.stallBody.ms));
      if (!req.socket.destroyed) res.end(full.subarray(Math.floor(full.length / 2)));
    } else if ("truncate" in fault) {
      const full = Buffer.from(fault.truncate.body);
      res.writeHead(fault.truncate.status, {
        "content-type": "application/json",
        ...(fault.truncate.headers ?? {}),
        "content-length": String(full.length),
      });
      res.write(full.subarray(0, Math.floor(full.length / 2)));
      // Let the half reach the worker before the connection dies.
      setTimeout(() => req.socket.destroy(), 20);
    } else {
      answer(res, fault);
    }
  };

  const server = http.createServer(async (req, res) => {
    const { body, text, json } = await readBody(req);
    /** @type {ProxiedRequest} */
    const proxied = { method: req.method ?? "", path: req.url ?? "", headers: req.headers, body, text, json };
    const key = keyOf(proxied);
    const fault = script.next(key) ?? choose(proxied, key);
    log.push({ key, fault: describe(fault), at: Date.now() });
    try {
      await apply(fault, req, res, body);
    } catch (err) {
      if (!res.headersSent) answer(res, { status: 599, body: { proxy_error: String(err) } });
      else req.socket.destroy();
    }
  });
  const { origin, close } = await listenLocally(server, "fault proxy");

  return {
    origin,
    log,
    /** Script the faults for one key, e.g. `inject(k, [FAULTS.unavailable, "pass"])`. */
    inject(key, faults) {
      script.set(key, faults);
    },
    /** Requests the proxy saw for `key`. */
    seen(key) {
      return log.filter((l) => l.key === key);
    },
    /** Decide for unscripted keys from now on. */
    setChooser(next) {
      choose = next;
    },
    reset() {
      script.reset();
      log.length = 0;
      choose = chooser;
    },
    close,
  };
}

function describe(fault) {
  if (typeof fault === "string") return fault;
  if ("stallBody" in fault) return `${fault.stallBody.status}, body stalled ${fault.stallBody.ms} ms`;
  if ("delayMs" in fault) return `delay ${fault.delayMs} ms, then ${describe(fault.then ?? FAULTS.unavailable)}`;
  if ("truncate" in fault) return `truncated ${fault.truncate.status}`;
  return String(fault.status);
}

/** An origin on 127.0.0.1 where nothing listens: every connection is refused. */
export async function closedOrigin() {
  const port = await new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      const p = typeof address === "object" && address ? address.port : 0;
      probe.close(() => resolve(p));
    });
  });
  return `http://127.0.0.1:${port}`;
}
