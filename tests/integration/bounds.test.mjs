// Bounded under attack and at scale, in workerd:
// - endpoints that answer with an endless body or a 100 MB body cost the
//   isolate nothing (the body is cancelled unread, or read to 8 KiB): the
//   notify is answered within SEND_TIMEOUT_MS, the other devices in it are
//   delivered, later notifies succeed and workerd's memory stays flat;
// - an upload refused as too large is cancelled and the worker keeps serving;
// - two isolates that share nothing (separate workerd, separate KV) mint the
//   same APNs provider token string;
// - pushes to hundreds of distinct WebPush origins write nothing to KV;
// - the optional PUSH_LIMITER rate limit (Miniflare's local implementation);
// - a UnifiedPush endpoint's 429 leaves it alone for its Retry-After, and an
//   endpoint over 1000 bytes is refused.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import { generateApnsKey, hexToken, randomPushkey, startFakeApns } from "../fakes/apns.mjs";
import { listenLocally } from "../fakes/common.mjs";
import { generateServiceAccount, startFakeFcm } from "../fakes/fcm.mjs";
import { startFakeUnifiedPush } from "../fakes/unifiedpush.mjs";
import { generateVapidKey, startFakePushService } from "../fakes/webpush.mjs";
import { NOTIFY, notification, startWorker } from "./harness.mjs";

const SEND_TIMEOUT_MS = 3000;
const KEY_ID = "KEY1234567";
const TEAM_ID = "TEAM123456";
const LOCAL = ["http://127.0.0.1:*"];
const HUGE_BYTES = 100 * 1024 * 1024;

const apnsKey = generateApnsKey();
const vapid = generateVapidKey();

/** workerd processes this test process started (one per Miniflare instance). */
function workerdPids() {
  const pids = [];
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
      const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === process.pid && comm.startsWith("workerd")) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

function rssMiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
}

/**
 * An endpoint that answers hostile bodies: `/<kind>/endless` streams for as
 * long as the connection lives, `/<kind>/huge` declares and streams 100 MB;
 * APNs requests get a 503 of 100 MB.
 * It records how many body bytes each answer got out before the worker let
 * go of the connection.
 */
async function startHostileEndpoint() {
  /** @type {Array<{path: string, sent: number, closed: boolean}>} */
  const answers = [];
  const chunk = Buffer.alloc(64 * 1024, 0x78);
  const server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      const record = { path: req.url ?? "", sent: 0, closed: false };
      answers.push(record);
      // APNs requests (/3/device/<token>) get a 100 MB 503.
      const [, kind, size] = (req.url ?? "").startsWith("/3/device/") ? [, "apns", "huge"] : /^\/(\w+)\/(endless|huge)/.exec(req.url ?? "") ?? [];
      const status = kind === "apns" ? 503 : kind === "push" ? 201 : 200;
      const huge = size === "huge";
      res.writeHead(status, { "content-type": "application/json", ...(huge ? { "content-length": String(HUGE_BYTES) } : {}) });
      // An APNs-like error whose reason comes first, as the real one's does.
      const first = kind === "apns" ? Buffer.from('{"reason":"ServiceUnavailable","pad":"') : Buffer.alloc(0);
      res.write(first);
      record.sent += first.length;
      const pump = () => {
        while (!res.destroyed && (!huge || record.sent < HUGE_BYTES)) {
          const piece = huge ? chunk.subarray(0, Math.min(chunk.length, HUGE_BYTES - record.sent)) : chunk;
          record.sent += piece.length;
          if (!res.write(piece)) return res.once("drain", pump);
        }
        if (!res.destroyed) res.end();
      };
      res.on("close", () => {
        record.closed = true;
      });
      pump();
    });
  });
  const { origin, close } = await listenLocally(server, "hostile endpoint");
  return { origin, answers, close };
}

describe("bounds", () => {
  let apns;
  let up;
  let push;
  let hostile;
  let worker;

  before(async () => {
    apns = await startFakeApns({ publicKey: apnsKey.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
    up = await startFakeUnifiedPush();
    push = await startFakePushService({ vapidPublicB64: vapid.publicB64 });
    hostile = await startHostileEndpoint();
    worker = await startWorker({
      apps: {
        "bounds.ios": { type: "apns", topic: "com.example", team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY", url: apns.origin },
        "hostile.ios": { type: "apns", topic: "com.example", team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY", url: hostile.origin },
        "bounds.up": { type: "unifiedpush", allowed_endpoints: LOCAL },
        "bounds.web": { type: "webpush", vapid_private_key_secret: "VAPID_KEY", vapid_contact: "mailto:ops@example.com", allowed_endpoints: LOCAL },
      },
      secrets: { APNS_KEY: apnsKey.p8, VAPID_KEY: vapid.raw },
      vars: { SEND_TIMEOUT_MS: String(SEND_TIMEOUT_MS), MAX_TRIES: "3", RETRY_BASE_MS: "1" },
    });
  });

  after(async () => {
    await worker?.close();
    for (const s of [apns, up, push, hostile]) await s?.close();
  });

  const healthy = () => {
    const pushkey = randomPushkey();
    const e = up.endpoint();
    const sub = push.subscribe();
    return {
      devices: [
        { app_id: "bounds.ios", pushkey },
        { app_id: "bounds.up", pushkey: e.url },
        { app_id: "bounds.web", pushkey: sub.pushkey, data: { endpoint: sub.endpoint, auth: sub.auth } },
      ],
      delivered: () =>
        apns.delivered.filter((d) => d.token === hexToken(pushkey)).length +
        up.delivered.filter((d) => d.id === e.id).length +
        push.delivered.filter((d) => d.id === sub.id).length,
    };
  };

  describe("hostile answer bodies", () => {
    const hostileDevice = {
      "UnifiedPush endpoint, endless body": () => ({ app_id: "bounds.up", pushkey: `${hostile.origin}/up/endless?id=${crypto.randomUUID()}` }),
      "UnifiedPush endpoint, 100 MB body": () => ({ app_id: "bounds.up", pushkey: `${hostile.origin}/up/huge?id=${crypto.randomUUID()}` }),
      "WebPush endpoint, endless body": () => {
        const sub = push.subscribe();
        return { app_id: "bounds.web", pushkey: sub.pushkey, data: { endpoint: `${hostile.origin}/push/endless`, auth: sub.auth } };
      },
      "WebPush endpoint, 100 MB body": () => {
        const sub = push.subscribe();
        return { app_id: "bounds.web", pushkey: sub.pushkey, data: { endpoint: `${hostile.origin}/push/huge`, auth: sub.auth } };
      },
    };

    let rssBefore;
    let pid;
    before(async () => {
      // Warm the isolate (tokens, code) so only the hostile answers remain to measure.
      const warm = healthy();
      const r = await worker.notify(notification(warm.devices));
      assert.equal(r.status, 200, r.text);
      [pid] = workerdPids();
      assert.ok(pid, "the worker's workerd process");
      rssBefore = rssMiB(pid);
    });

    for (const [name, make] of Object.entries(hostileDevice)) {
      test(`${name}: answered within SEND_TIMEOUT_MS, delivered, the others too`, async () => {
        const others = healthy();
        const answered = hostile.answers.length;
        const started = Date.now();
        const r = await worker.notify(notification([make(), ...others.devices]));
        const took = Date.now() - started;
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(r.json.rejected, []);
        assert.ok(took < SEND_TIMEOUT_MS, `took ${took} ms`);
        assert.equal(others.delivered(), 3, "the other devices are delivered");
        const mine = hostile.answers.slice(answered);
        assert.equal(mine.length, 1, "one request, no retry: the status was a success");
        // The worker let go of the connection instead of reading it to the end.
        for (let i = 0; i < 50 && !mine[0].closed; i++) await new Promise((resolve) => setTimeout(resolve, 20));
        assert.ok(mine[0].closed, "the connection was dropped");
        assert.ok(mine[0].sent < HUGE_BYTES / 2, `${mine[0].sent} bytes left the endpoint`);
      });
    }

    test("an APNs-like 503 with a 100 MB body: 8 KiB read per try, 502 within the tries' time, the others delivered", async () => {
      const others = healthy();
      const answered = hostile.answers.length;
      const started = Date.now();
      const r = await worker.notify(notification([{ app_id: "hostile.ios", pushkey: randomPushkey() }, ...others.devices]));
      const took = Date.now() - started;
      assert.equal(r.status, 502, r.text);
      assert.ok(took < SEND_TIMEOUT_MS, `3 tries took ${took} ms`);
      assert.equal(others.delivered(), 3);
      const mine = hostile.answers.slice(answered);
      assert.equal(mine.length, 3, "a transient status, retried");
      for (let i = 0; i < 50 && !mine.every((a) => a.closed); i++) await new Promise((resolve) => setTimeout(resolve, 20));
      assert.ok(mine.every((a) => a.closed && a.sent < HUGE_BYTES / 2), JSON.stringify(mine));
    });

    test("the isolate keeps serving and workerd's memory stays flat", async () => {
      for (let i = 0; i < 3; i++) {
        const r = await worker.notify(notification([hostileDevice["UnifiedPush endpoint, 100 MB body"](), hostileDevice["WebPush endpoint, 100 MB body"]()]));
        assert.equal(r.status, 200, r.text);
      }
      const after = healthy();
      const r = await worker.notify(notification(after.devices));
      assert.equal(r.status, 200, r.text);
      assert.equal(after.delivered(), 3);
      const grown = rssMiB(pid) - rssBefore;
      // 10 hostile answers of 100 MB each went by; reading any whole would
      // have grown workerd (and the wasm memory, which never shrinks) by 100 MB.
      assert.ok(grown < 64, `workerd grew by ${grown.toFixed(1)} MiB`);
    });
  });

  test("an upload refused as too large is cancelled; the worker keeps serving", async () => {
    const url = new URL(await worker.mf.ready);
    // 7 MB streamed (chunked): refused past MAX_BODY_BYTES, mid-upload.
    const socket = net.connect(Number(url.port), "127.0.0.1");
    await new Promise((resolve) => socket.once("connect", resolve));
    const chunks = [];
    socket.on("data", (c) => chunks.push(c));
    socket.on("error", () => {});
    const closed = new Promise((resolve) => socket.on("close", resolve));
    socket.write(["POST " + NOTIFY + " HTTP/1.1", `host: ${url.host}`, "content-type: application/json", "transfer-encoding: chunked", "connection: close", "", ""].join("\r\n"));
    const piece = Buffer.alloc(64 * 1024, 0x20);
    for (let sent = 0; sent < 7 * 1024 * 1024 && chunks.length === 0 && !socket.destroyed; sent += piece.length) {
      socket.write(`${piece.length.toString(16)}\r\n`);
      socket.write(piece);
      socket.write("\r\n");
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 5000))]);
    socket.destroy();
    await closed;
    assert.match(Buffer.concat(chunks).toString("utf8"), /^HTTP\/1\.1 413 /);
    const ok = healthy();
    const r = await worker.notify(notification(ok.devices));
    assert.equal(r.status, 200, r.text);
    assert.equal(ok.delivered(), 3);
  });

  describe("UnifiedPush endpoint rules", () => {
    test("after a 429 the endpoint is left alone until its Retry-After; others are not", async () => {
      const e = up.endpoint();
      const other = up.endpoint();
      up.answer(e.id, [{ status: 429, headers: { "retry-after": "4" } }, "ok"]);
      const first = await worker.notify(notification([{ app_id: "bounds.up", pushkey: e.url }]));
      assert.equal(first.status, 502, first.text);
      assert.equal(up.requestsFor(e.id).length, 1, "not retried within the request: it asked for 4 s");
      const meanwhile = await worker.notify(notification([{ app_id: "bounds.up", pushkey: e.url }, { app_id: "bounds.up", pushkey: other.url }]));
      assert.equal(meanwhile.status, 502, "transient, so the homeserver retries: never rejected");
      assert.equal(up.requestsFor(e.id).length, 1, "no request during its Retry-After");
      assert.equal(up.requestsFor(other.id).length, 1, "another endpoint on the same host is sent to");
      await new Promise((resolve) => setTimeout(resolve, 4100));
      const later = await worker.notify(notification([{ app_id: "bounds.up", pushkey: e.url }]));
      assert.equal(later.status, 200, later.text);
      assert.equal(up.delivered.filter((d) => d.id === e.id).length, 1);
    });

    test("an endpoint over 1000 bytes is rejected without a request; 1000 bytes is fine", async () => {
      const e = up.endpoint();
      const base = `${e.url}&pad=`;
      const exact = base + "p".repeat(1000 - base.length);
      const over = `${exact}p`;
      const sent = up.requests.length;
      const r = await worker.notify(notification([{ app_id: "bounds.up", pushkey: over }, { app_id: "bounds.up", pushkey: exact }]));
      assert.equal(r.status, 200, r.text);
      assert.ok(r.json.rejected.includes(over), r.text);
      // The fake knows no `pad` parameter (404, so rejected too), but it was asked.
      assert.equal(up.requests.length, sent + 1, "only the 1000-byte endpoint was sent to");
      assert.equal(`${up.origin}${up.requests.at(-1).path}`, exact);
    });
  });
});

describe("APNs provider tokens: one string per key and window, in every isolate", () => {
  test("two workerd processes with separate KV mint the same token string", async () => {
    const apns = await startFakeApns({ publicKey: apnsKey.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
    const app = { type: "apns", topic: "com.example", team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY", url: apns.origin };
    const start = () => startWorker({ apps: { "same.ios": app }, secrets: { APNS_KEY: apnsKey.p8 } });
    const [a, b] = [await start(), await start()];
    try {
      for (let attempt = 0; ; attempt++) {
        apns.reset();
        for (const worker of [a, b]) {
          const r = await worker.notify(notification([{ app_id: "same.ios", pushkey: randomPushkey() }]));
          assert.equal(r.status, 200, r.text);
        }
        const [ta, tb] = apns.tokensSeen;
        // Minted on either side of a 30-minute mark: try again in the new window.
        if (ta.claims.iat !== tb.claims.iat && attempt === 0) continue;
        assert.equal(ta.claims.iat, tb.claims.iat);
        assert.equal(ta.jwt, tb.jwt, "byte-identical tokens from two isolates that share nothing");
        assert.deepEqual((await a.tokens.list()).keys.length, 1);
        assert.deepEqual((await b.tokens.list()).keys.length, 1, "each minted on its own: its KV was empty");
        break;
      }
      assert.deepEqual(apns.violations, []);
    } finally {
      await a.close();
      await b.close();
      await apns.close();
    }
  });
});

describe("one mint per token key across concurrent requests", () => {
  test("12 concurrent notifies in a cold isolate, a token endpoint that takes 1.5 s: one exchange, all delivered", async () => {
    const project = "flight-123";
    const account = generateServiceAccount({ clientEmail: `flight@${project}.iam.gserviceaccount.com`, projectId: project });
    const fcm = await startFakeFcm({ accounts: [account], projectId: project });
    fcm.tokenAnswer(["slow", "ok"]);
    const worker = await startWorker({
      apps: { "flight.android": { type: "fcm", project_id: project, service_account_secret: "FCM", url: fcm.origin } },
      secrets: { FCM: account.keyFile(fcm.tokenUri) },
    });
    try {
      const pushkeys = Array.from({ length: 24 }, () => `fcm-${crypto.randomBytes(16).toString("base64url")}`);
      const answers = await Promise.all(
        Array.from({ length: 12 }, (_, i) =>
          worker.notify(notification(pushkeys.slice(2 * i, 2 * i + 2).map((pushkey) => ({ app_id: "flight.android", pushkey })))),
        ),
      );
      for (const r of answers) assert.equal(r.status, 200, r.text);
      assert.equal(fcm.tokenRequests, 1, "the requests that found the mint under way waited for it");
      assert.deepEqual(new Set(fcm.delivered.map((d) => d.pushkey)), new Set(pushkeys));
      assert.equal(new Set(fcm.delivered.map((d) => d.accessToken)).size, 1);
      // The first request answered long ago: the waiters' sends were theirs,
      // not the minting request's (whose I/O would have ended with it).
      const r = await worker.notify(notification([{ app_id: "flight.android", pushkey: pushkeys[0] }]));
      assert.equal(r.status, 200, r.text);
    } finally {
      await worker.close();
      await fcm.close();
    }
  });
});

describe("VAPID tokens stay in isolate memory", () => {
  const ORIGINS = 300;
  test(`pushes to ${ORIGINS} distinct WebPush origins: delivered, zero KV writes, tokens reused from memory`, async () => {
    const services = [];
    for (let i = 0; i < ORIGINS; i++) services.push(await startFakePushService({ vapidPublicB64: vapid.publicB64 }));
    const worker = await startWorker({
      apps: { "many.web": { type: "webpush", vapid_private_key_secret: "VAPID_KEY", vapid_contact: "mailto:ops@example.com", allowed_endpoints: LOCAL } },
      secrets: { VAPID_KEY: vapid.raw },
    });
    try {
      const subs = services.map((s) => ({ service: s, sub: s.subscribe() }));
      for (let round = 0; round < 2; round++) {
        for (let i = 0; i < subs.length; i += 20) {
          const devices = subs.slice(i, i + 20).map(({ sub }) => ({ app_id: "many.web", pushkey: sub.pushkey, data: { endpoint: sub.endpoint, auth: sub.auth } }));
          const r = await worker.notify(notification(devices));
          assert.equal(r.status, 200, r.text);
        }
      }
      for (const { service } of subs) {
        assert.deepEqual(service.violations, []);
        assert.equal(service.delivered.length, 2);
        const [first, second] = service.delivered;
        assert.equal(first.jwt, second.jwt, "the second push reused the origin's token from memory");
      }
      assert.deepEqual((await worker.tokens.list()).keys, [], "no KV write for any origin");
    } finally {
      await worker.close();
      for (const s of services) await s.close();
    }
  });
});

describe("optional per-pushkey rate limit (PUSH_LIMITER)", () => {
  let apns;
  let worker;
  before(async () => {
    apns = await startFakeApns({ publicKey: apnsKey.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
    worker = await startWorker({
      apps: { "limited.ios": { type: "apns", topic: "com.example", team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY", url: apns.origin } },
      secrets: { APNS_KEY: apnsKey.p8 },
      miniflare: { ratelimits: { PUSH_LIMITER: { namespace_id: "1001", simple: { limit: 2, period: 60 } } } },
    });
  });
  after(async () => {
    await worker?.close();
    await apns?.close();
  });

  test("a device over its limit is not sent to; a notify of only such devices is 429 M_LIMIT_EXCEEDED with Retry-After", async () => {
    const pushkey = randomPushkey();
    const device = { app_id: "limited.ios", pushkey };
    for (let i = 0; i < 2; i++) {
      const r = await worker.notify(notification([device]));
      assert.equal(r.status, 200, r.text);
    }
    const sent = () => apns.delivered.filter((d) => d.token === hexToken(pushkey)).length;
    assert.equal(sent(), 2);
    const over = await worker.notify(notification([device]));
    assert.equal(over.status, 429, over.text);
    assert.equal(over.json.errcode, "M_LIMIT_EXCEEDED");
    assert.equal(over.json.retry_after_ms, 60_000);
    assert.equal(over.headers.get("retry-after"), "60");
    assert.equal(sent(), 2, "not sent");

    // Beside a device within its limit: that one is delivered, the answer
    // is 502 so the homeserver retries the limited one later.
    const fresh = randomPushkey();
    const mixed = await worker.notify(notification([device, { app_id: "limited.ios", pushkey: fresh }]));
    assert.equal(mixed.status, 502, mixed.text);
    assert.equal(apns.delivered.filter((d) => d.token === hexToken(fresh)).length, 1);
    assert.equal(sent(), 2);
    const line = worker.logs.map((l) => l.message).find((m) => m.includes('"rate_limited":true'));
    assert.ok(line, "the log names the limited device");
  });
});
