// Runs the built worker (build/index.js + its wasm, from scripts/build) in
// workerd through Miniflare's JS API, with a test `APPS`, secrets and knobs.
//
//   const worker = await startWorker({ apps: {...}, secrets: { APNS_KEY: p8 } });
//   const { status, json } = await worker.notify(body);
//   await worker.close();
//
// `worker.logs` collects the worker's console output ({level, message});
// `await worker.waitForNotifyLogs()` before scanning it.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare, convertV4MiniflareOptions } from "miniflare";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const NOTIFY = "/_matrix/push/v1/notify";
/** Keep in step with wrangler.toml (the pinned workerd supports dates up to 2026-11-17). */
export const COMPATIBILITY_DATE = "2026-11-17";
const SCRIPT = path.join(ROOT, "build/index.js");

/** The deferred-delivery queues of a worker started with `deferred`. */
export const DEFERRED_QUEUE = "edgepush-deferred";
export const DEFERRED_DLQ = "edgepush-deferred-dead";

/** Knobs every test worker gets unless a test overrides them: fast retries. */
export const TEST_KNOBS = { RETRY_BASE_MS: "1", MAX_TRIES: "3", SEND_TIMEOUT_MS: "5000" };

/**
 * @param {{ apps?: any, appsAsString?: boolean, secrets?: Record<string, string>,
 *           vars?: Record<string, string>, kv?: boolean }} options
 *   `apps`: the APPS object (omit it to leave APPS unset).
 *   `appsAsString`: pass APPS as a JSON string (as .dev.vars and secrets do)
 *     instead of a [vars] table.
 *   `vars`: knobs, merged over TEST_KNOBS.
 *   `kv`: bind the TOKENS namespace (default true).
 *   `metrics`: bind an Analytics Engine dataset as METRICS (default false).
 *   `miniflare`: more Miniflare options, e.g. `{ ratelimits: {...} }`.
 *   `deferred`: bind DEFERRED_QUEUE and consume it (deferred delivery), as
 *     wrangler.toml's commented example does: `{ batchTimeoutSecs, maxRetries,
 *     deadLetter }`. With `deadLetter` (default true) DEFERRED_DLQ is bound
 *     too, and a second worker drains that queue into `worker.deadLetters()`.
 */
export async function startWorker({
  apps, appsAsString = false, secrets = {}, vars = {}, kv = true, metrics = false, miniflare = {}, deferred,
} = {}) {
  if (!fs.existsSync(SCRIPT)) {
    throw new Error(`${path.relative(ROOT, SCRIPT)} is missing: run scripts/build first (scripts/test does)`);
  }
  /** @type {Record<string, unknown>} */
  const bindings = { ...TEST_KNOBS, ...vars, ...secrets };
  if (apps !== undefined) bindings.APPS = appsAsString ? JSON.stringify(apps) : apps;

  /** @type {Array<{level: string, message: string}>} */
  const logs = [];
  /** @type {Record<string, any>} */
  const main = {
    modules: [
      { type: "ESModule", path: SCRIPT },
      { type: "CompiledWasm", path: path.join(ROOT, "build/index_bg.wasm") },
    ],
    modulesRoot: ROOT,
    compatibilityDate: COMPATIBILITY_DATE,
    kvNamespaces: kv ? ["TOKENS"] : [],
    // Miniflare's local Analytics Engine accepts data points and drops them.
    ...(metrics ? { analyticsEngineDatasets: { METRICS: { dataset: "edgepush" } } } : {}),
    ...miniflare,
    bindings,
    ...(deferred ? deferredQueues(deferred) : {}),
  };
  const deadLetter = deferred !== undefined && deferred.deadLetter !== false;
  const shared = {
    handleStructuredLogs: ({ level, message }) => {
      logs.push({ level, message });
      // Everything the suite's workers log, for tests/scan-all-logs.mjs.
      if (process.env.EDGEPUSH_WORKER_LOG_FILE) {
        fs.appendFileSync(process.env.EDGEPUSH_WORKER_LOG_FILE, `${JSON.stringify({ level, message })}\n`);
      }
    },
  };
  // Miniflare 5 takes a new shape of options; the v4 shape converts to it.
  const mf = new Miniflare(convertV4MiniflareOptions(
    deadLetter ? { ...shared, workers: [{ name: "edgepush", ...main }, deadLetterSink()] } : { ...shared, ...main },
  ));
  await mf.ready;
  const tokens = kv ? await mf.getKVNamespace("TOKENS") : undefined;

  // Every POST /notify the worker answered: each writes exactly one log line.
  let notifiesAnswered = 0;
  /** Miniflare's dispatchFetch, counting the notifies answered. @param {string} urlPath @param {RequestInit} [init] */
  const dispatchFetch = async (urlPath, init) => {
    const response = await mf.dispatchFetch(`http://edgepush.test${urlPath}`, init);
    const { pathname } = new URL(urlPath, "http://edgepush.test");
    if ((init?.method ?? "GET").toUpperCase() === "POST" && pathname === NOTIFY) notifiesAnswered += 1;
    return response;
  };

  /** @param {string} urlPath @param {RequestInit} [init] */
  const request = async (urlPath, init) => {
    const response = await dispatchFetch(urlPath, init);
    const text = await response.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: response.status, headers: response.headers, text, json };
  };

  return {
    mf,
    logs,
    /** The TOKENS KV namespace, for inspection (undefined with `kv: false`). */
    tokens,
    /** The message texts that reached DEFERRED_DLQ so far, parsed where they are JSON. */
    async deadLetters() {
      if (!deadLetter) return [];
      const dead = await mf.getKVNamespace("DEAD", "dead-letters");
      const { keys } = await dead.list();
      const texts = await Promise.all(keys.map((k) => dead.get(k.name)));
      return texts.map((t) => {
        try {
          return JSON.parse(t ?? "");
        } catch {
          return t;
        }
      });
    },
    request,
    /** POST a notify body: an object (sent as JSON) or a raw string/bytes. */
    notify(body, init = {}) {
      const raw = typeof body === "string" || body instanceof Uint8Array ? body : JSON.stringify(body);
      return request(NOTIFY, {
        method: "POST",
        headers: { "content-type": "application/json", ...(init.headers ?? {}) },
        body: raw,
        ...init,
      });
    },
    /** All console output so far, one line per entry. */
    logText() {
      return logs.map((l) => `${l.level}: ${l.message}`).join("\n");
    },
    /** Wait until a log line satisfies `predicate` (logs arrive asynchronously). */
    async waitForLog(predicate, timeoutMs = 2000) {
      return waitUntil(() => logs.find(predicate), timeoutMs);
    },
    dispatchFetch,
    /** A notify answered on a path the harness does not see (a raw socket). */
    noteNotifyAnswered() {
      notifiesAnswered += 1;
    },
    /** How many notifies the worker answered through the harness. */
    get notifiesAnswered() {
      return notifiesAnswered;
    },
    /**
     * Wait until every notify answered so far has written its log line, so a
     * scan of `logs` sees them all. False after `timeoutMs`.
     */
    async waitForNotifyLogs(timeoutMs = 5000) {
      const written = () => logs.filter((l) => l.message.includes('"msg":"notify"')).length;
      return (await waitUntil(() => written() >= notifiesAnswered, timeoutMs)) === true;
    },
    close: () => mf.dispose(),
  };
}

/** Queue bindings and consumer settings of deferred delivery (see wrangler.toml). */
function deferredQueues({ batchTimeoutSecs = 0.1, maxRetries = 3, deadLetter = true } = {}) {
  return {
    queueProducers: { DEFERRED_QUEUE: DEFERRED_QUEUE, ...(deadLetter ? { DEFERRED_DLQ: DEFERRED_DLQ } : {}) },
    queueConsumers: {
      [DEFERRED_QUEUE]: {
        maxBatchSize: 10,
        maxBatchTimeout: batchTimeoutSecs,
        maxRetries,
        ...(deadLetter ? { deadLetterQueue: DEFERRED_DLQ } : {}),
      },
    },
  };
}

/** A worker that drains DEFERRED_DLQ into its KV namespace DEAD, for the tests to read. */
function deadLetterSink() {
  return {
    name: "dead-letters",
    modules: true,
    compatibilityDate: COMPATIBILITY_DATE,
    kvNamespaces: ["DEAD"],
    queueConsumers: { [DEFERRED_DLQ]: { maxBatchTimeout: 0.1 } },
    script: `export default {
      async queue(batch, env) {
        for (const m of batch.messages) {
          await env.DEAD.put(m.id, typeof m.body === "string" ? m.body : JSON.stringify(m.body));
        }
        batch.ackAll();
      },
    };`,
  };
}

/** `condition()`'s first truthy value, polled every 20 ms; undefined after `timeoutMs`. */
export async function waitUntil(condition, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = condition();
    if (value) return value;
    if (Date.now() > deadline) return undefined;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The /notify body of a captured Synapse request in tests/fixtures/synapse/. */
export function synapseFixture(name) {
  const file = path.join(ROOT, "tests/fixtures/synapse", name.endsWith(".json") ? name : `${name}.json`);
  return JSON.parse(fs.readFileSync(file, "utf8")).body;
}

/** A minimal valid notification for `devices`. */
export function notification(devices, extra = {}) {
  return {
    notification: {
      event_id: "$event:example.org",
      room_id: "!room:example.org",
      type: "m.room.message",
      sender: "@alice:example.org",
      sender_display_name: "Alice",
      content: { msgtype: "m.text", body: "Hello" },
      counts: { unread: 2 },
      prio: "high",
      ...extra,
      devices,
    },
  };
}
