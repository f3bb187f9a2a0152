// Providers that misbehave: 503 and 429 with Retry-After, connections reset
// or refused, answers slower than SEND_TIMEOUT_MS, truncated and non-JSON
// error bodies, a token endpoint that is down. Each fault, for APNs, FCM and
// UnifiedPush, ends as "delivered after a retry" (200) or "502 to the
// homeserver" (which retries): never a 200 without delivery, never a
// rejection of a device that did nothing wrong.
//
// The fault proxy (tests/fakes/faults.mjs) sits between the worker and each
// fake provider, which keeps verifying every request that gets through.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, afterEach, before, beforeEach, describe, test } from "node:test";
import { generateApnsKey, hexToken, randomPushkey, startFakeApns } from "../fakes/apns.mjs";
import { FAULTS, closedOrigin, startFaultProxy } from "../fakes/faults.mjs";
import { generateServiceAccount, startFakeFcm } from "../fakes/fcm.mjs";
import { startFakeUnifiedPush } from "../fakes/unifiedpush.mjs";
import { notification, startWorker } from "./harness.mjs";
import { findLeaks } from "./leaks.mjs";

const SEND_TIMEOUT_MS = 300;
const MAX_TRIES = 3;
const KEY_ID = "KEY1234567";
const TEAM_ID = "TEAM123456";
const PROJECT = "faults-123";
const LOCAL = ["http://127.0.0.1:*"];

const apnsKey = generateApnsKey();
const account = (name) => generateServiceAccount({ clientEmail: `${name}@${PROJECT}.iam.gserviceaccount.com`, projectId: PROJECT });
const sendAccount = account("sender");
/**
 * What the token endpoint answers, per case; each case has its own service
 * account, so no token or remembered failure carries over between cases.
 * All but "once" are served by the fault proxy (the assertion's `aud` names
 * it, so nothing it passes on could succeed).
 */
const TOKEN_FAULTS = {
  "answers 503 with Retry-After": { status: 503, headers: { "retry-after": "0" }, body: { error: "unavailable" } },
  "answers 429 with Retry-After": { status: 429, headers: { "retry-after": "0" }, body: { error: "rate_limit_exceeded" } },
  "answers 500 with an HTML page": { status: 500, headers: { "content-type": "text/html" }, body: "<html>Internal Server Error</html>" },
  "answers 200 with a body that is not JSON": { status: 200, headers: { "content-type": "text/html" }, body: "<html>captive portal</html>" },
  "answers 200 without an access_token": { status: 200, body: { token_type: "Bearer", expires_in: 3599 } },
  "answers 200 with an access_token that is not a bearer token": { status: 200, body: { access_token: "ya29 with spaces\n", expires_in: 3599 } },
  "resets the connection": FAULTS.reset,
  "answers slower than SEND_TIMEOUT_MS": { delayMs: 1200 },
  "cuts its answer mid-body": { truncate: { status: 200, body: JSON.stringify({ access_token: "ya29.cut-off-token", expires_in: 3599, token_type: "Bearer" }) } },
};
const tokenAccounts = Object.fromEntries(
  [...Object.keys(TOKEN_FAULTS), "once", "refused"].map((name, i) => [name, account(`token${i}`)]),
);

/** Every pushkey, APNs device token and provider token the tests used, for the log scan at the end. */
const pushkeys = new Set();
const tokens = new Set();

describe("provider faults", () => {
  let apns;
  let fcm;
  let up;
  let apnsProxy;
  let fcmProxy;
  let upProxy;
  let tokenProxy;
  let refused;
  let worker;

  before(async () => {
    apns = await startFakeApns({ publicKey: apnsKey.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
    fcm = await startFakeFcm({ accounts: [sendAccount, ...Object.values(tokenAccounts)], projectId: PROJECT });
    up = await startFakeUnifiedPush();
    apnsProxy = await startFaultProxy({ upstream: apns.origin, keyOf: (req) => req.path.split("/").pop() ?? "" });
    fcmProxy = await startFaultProxy({ upstream: fcm.origin, keyOf: (req) => req.json?.message?.token ?? req.path });
    upProxy = await startFaultProxy({ upstream: up.origin, keyOf: (req) => req.path.replace(/^\/up|\?.*$/g, "") });
    // The assertion's `aud` is the token_uri, so a proxied token endpoint can
    // only fail (the fake would refuse the audience): enough for faults that
    // never end.
    tokenProxy = await startFaultProxy({
      upstream: fcm.origin,
      keyOf: (req) => JSON.parse(Buffer.from(new URLSearchParams(req.text).get("assertion")?.split(".")[1] ?? "", "base64url").toString() || "{}").iss ?? "",
    });
    refused = await closedOrigin();

    const fcmApp = (secret, url = fcmProxy.origin) => ({ type: "fcm", project_id: PROJECT, service_account_secret: secret, url });
    const apnsApp = (url) => ({ type: "apns", topic: "com.example", team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY", url });
    const secrets = { APNS_KEY: apnsKey.p8, FCM_SENDER: sendAccount.keyFile(fcm.tokenUri) };
    const apps = {
      "faults.ios": apnsApp(apnsProxy.origin),
      "faults.android": fcmApp("FCM_SENDER"),
      "faults.up": { type: "unifiedpush", allowed_endpoints: LOCAL },
      "refused.ios": apnsApp(refused),
      "refused.android": fcmApp("FCM_SENDER", refused),
    };
    Object.values(tokenAccounts).forEach((acc, i) => {
      const tokenUri = acc === tokenAccounts.once ? fcm.tokenUri : acc === tokenAccounts.refused ? `${refused}/token` : `${tokenProxy.origin}/token`;
      secrets[`FCM_TOKEN${i}`] = acc.keyFile(tokenUri);
      apps[`token${i}.android`] = fcmApp(`FCM_TOKEN${i}`, fcm.origin);
    });
    worker = await startWorker({
      apps,
      secrets,
      vars: { SEND_TIMEOUT_MS: String(SEND_TIMEOUT_MS), MAX_TRIES: String(MAX_TRIES), RETRY_BASE_MS: "1" },
    });
  });

  after(async () => {
    await worker?.close();
    for (const s of [apnsProxy, fcmProxy, upProxy, tokenProxy, apns, fcm, up]) await s?.close();
  });

  beforeEach(() => {
    for (const s of [apnsProxy, fcmProxy, upProxy, tokenProxy, apns, fcm, up]) s.reset();
  });
  afterEach(() => {
    for (const t of apns.tokensSeen) tokens.add(t.jwt);
    for (const d of apns.delivered) pushkeys.add(d.token);
    for (const d of fcm.delivered) tokens.add(d.accessToken);
  });

  /**
   * One provider behind the fault proxy: a fresh device, the proxy's key for
   * it, and how many times the fake provider took it.
   */
  const targets = {
    APNs: () => {
      const pushkey = randomPushkey();
      const key = hexToken(pushkey);
      pushkeys.add(key);
      return { device: { app_id: "faults.ios", pushkey }, key, proxy: apnsProxy, delivered: () => apns.delivered.filter((d) => d.token === key).length };
    },
    FCM: () => {
      const pushkey = `fcm-${crypto.randomBytes(24).toString("base64url")}`;
      return { device: { app_id: "faults.android", pushkey }, key: pushkey, proxy: fcmProxy, delivered: () => fcm.delivered.filter((d) => d.pushkey === pushkey).length };
    },
    UnifiedPush: () => {
      const { id } = up.endpoint();
      const pushkey = `${upProxy.origin}/up${id}?up=1`;
      return { device: { app_id: "faults.up", pushkey }, key: id, proxy: upProxy, delivered: () => up.delivered.filter((d) => d.id === id).length };
    },
  };

  /** Notify one device; whatever the answer, it must not be a silent 200. */
  async function notifyOne(target) {
    pushkeys.add(target.device.pushkey);
    const r = await worker.notify(notification([target.device]));
    assertNotSilent(r, [target]);
    return r;
  }

  /** A 200 names every device either delivered or rejected; anything else is a 5xx. */
  function assertNotSilent(r, targetsSent) {
    if (r.status === 200) {
      for (const t of targetsSent) {
        const rejected = r.json.rejected.includes(t.device.pushkey);
        assert.ok(rejected || t.delivered() >= 1, `200 but ${t.device.app_id} was neither delivered nor rejected: ${r.text}`);
      }
    } else {
      assert.ok(r.status >= 500 && r.status <= 599, `${r.status} ${r.text}`);
    }
  }

  const transientFaults = {
    "503 with Retry-After": { status: 503, headers: { "retry-after": "0" }, body: { error: "unavailable" } },
    "429 with Retry-After": { status: 429, headers: { "retry-after": "0" }, body: { error: "slow down" } },
    "a connection reset without an answer": FAULTS.reset,
    "an answer slower than SEND_TIMEOUT_MS": { delayMs: SEND_TIMEOUT_MS * 4, then: "pass" },
    "a truncated 500 body (the connection dies mid-body)": FAULTS.truncated,
    "a non-JSON 502 body (an HTML error page)": FAULTS.htmlError,
    "a 503 with an empty body and no content-type": { status: 503 },
    // SEND_TIMEOUT_MS covers the body too: 3 tries must not wait 3 x 5 s.
    "headers at once, then a body stalled past SEND_TIMEOUT_MS": { stallBody: { status: 503, ms: 5000 } },
  };

  for (const [provider, make] of Object.entries(targets)) {
    describe(provider, () => {
      for (const [name, fault] of Object.entries(transientFaults)) {
        test(`${name} once: retried and delivered (200)`, async () => {
          const target = make();
          target.proxy.inject(target.key, [fault, "pass"]);
          const r = await notifyOne(target);
          assert.equal(r.status, 200, r.text);
          assert.deepEqual(r.json.rejected, [], "a transient fault never rejects the device");
          assert.equal(target.delivered(), 1);
          assert.equal(target.proxy.seen(target.key).length, 2);
        });

        test(`${name} every time: MAX_TRIES tries, then 502 M_UNKNOWN`, async () => {
          const target = make();
          target.proxy.inject(target.key, [fault]);
          const started = Date.now();
          const r = await notifyOne(target);
          assert.equal(r.status, 502, r.text);
          assert.equal(r.json.errcode, "M_UNKNOWN");
          assert.equal(target.delivered(), 0);
          assert.equal(target.proxy.seen(target.key).length, MAX_TRIES);
          assert.ok(Date.now() - started < 4000, `every try ends within SEND_TIMEOUT_MS: took ${Date.now() - started} ms`);
        });
      }

      test("the provider took it but the connection died before its answer: retried, delivered at least once, 200", async () => {
        const target = make();
        target.proxy.inject(target.key, [FAULTS.deliverThenReset, "pass"]);
        const r = await notifyOne(target);
        assert.equal(r.status, 200, r.text);
        assert.ok(target.delivered() >= 1);
      });

      test("the provider takes it every time but the answer never arrives: 502 (the homeserver retries; a duplicate, never a loss)", async () => {
        const target = make();
        target.proxy.inject(target.key, [FAULTS.deliverThenReset]);
        const r = await notifyOne(target);
        assert.equal(r.status, 502, r.text);
        assert.equal(target.delivered(), MAX_TRIES);
      });

      test("a faulty device next to a healthy one: the healthy one is delivered, the answer is 502", async () => {
        const bad = make();
        const good = make();
        bad.proxy.inject(bad.key, [FAULTS.unavailable]);
        pushkeys.add(bad.device.pushkey);
        pushkeys.add(good.device.pushkey);
        const r = await worker.notify(notification([bad.device, good.device]));
        assertNotSilent(r, [bad, good]);
        assert.equal(r.status, 502, r.text);
        assert.equal(good.delivered(), 1);
      });
    });
  }

  test("MAX_DEVICES devices all failing: retries stop at the Free plan's 50 subrequests, 502", async () => {
    const many = Array.from({ length: 20 }, () => targets.APNs());
    for (const t of many) t.proxy.inject(t.key, [FAULTS.unavailable]);
    for (const t of many) pushkeys.add(t.device.pushkey);
    const r = await worker.notify(notification(many.map((t) => t.device)));
    assertNotSilent(r, many);
    assert.equal(r.status, 502, r.text);
    const sent = many.reduce((sum, t) => sum + t.proxy.seen(t.key).length, 0);
    assert.equal(sent, 50, "20 devices x 3 tries would be 60 subrequests; MAX_SUBREQUESTS (50) stops them");
  });

  describe("errors that are not the device's fault, with unreadable bodies: 502, not retried, never rejected", () => {
    const cases = [
      ["APNs", "400 with a truncated JSON reason", { truncate: { status: 400, body: JSON.stringify({ reason: "BadDeviceToken" }) } }],
      ["APNs", "400 with an HTML body", { status: 400, headers: { "content-type": "text/html" }, body: "<h1>Bad Request</h1>" }],
      ["APNs", "403 with a non-JSON body", { status: 403, body: "forbidden" }],
      ["FCM", "404 with a truncated error (UNREGISTERED cut off)", {
        truncate: { status: 404, body: JSON.stringify({ error: { code: 404, status: "NOT_FOUND", details: [{ errorCode: "UNREGISTERED" }] } }) },
      }],
      ["FCM", "400 with an HTML body", { status: 400, headers: { "content-type": "text/html" }, body: "<h1>Bad Request</h1>" }],
      ["FCM", "403 with binary garbage", { status: 403, headers: { "content-type": "application/octet-stream" }, body: Buffer.from([0xff, 0xfe, 0x00, 0x81]) }],
    ];
    for (const [provider, name, fault] of cases) {
      test(`${provider}: ${name}`, async () => {
        const target = targets[provider]();
        target.proxy.inject(target.key, [fault]);
        const r = await notifyOne(target);
        assert.equal(r.status, 502, r.text);
        assert.deepEqual(target.proxy.seen(target.key).length, 1, "not retried");
      });
    }
  });

  describe("Retry-After", () => {
    test("APNs 503 Retry-After: 1 once: the retry waits about a second", async () => {
      const target = targets.APNs();
      target.proxy.inject(target.key, [{ status: 503, headers: { "retry-after": "1" }, body: { reason: "ServiceUnavailable" } }, "pass"]);
      const r = await notifyOne(target);
      assert.equal(r.status, 200, r.text);
      const [first, second] = target.proxy.seen(target.key);
      assert.ok(second.at - first.at >= 950, `${second.at - first.at} ms`);
    });

    test("FCM 429 Retry-After: 1 once: the retry waits about a second", async () => {
      const target = targets.FCM();
      target.proxy.inject(target.key, [{ status: 429, headers: { "retry-after": "1" }, body: { error: { code: 429, status: "RESOURCE_EXHAUSTED" } } }, "pass"]);
      const r = await notifyOne(target);
      assert.equal(r.status, 200, r.text);
      const [first, second] = target.proxy.seen(target.key);
      assert.ok(second.at - first.at >= 950, `${second.at - first.at} ms`);
    });

    test("a Retry-After of an hour is capped: the retry comes within a few seconds", async () => {
      const target = targets.UnifiedPush();
      target.proxy.inject(target.key, [{ status: 503, headers: { "retry-after": "3600" } }, "pass"]);
      const started = Date.now();
      const r = await notifyOne(target);
      assert.equal(r.status, 200, r.text);
      const [first, second] = target.proxy.seen(target.key);
      assert.ok(second.at - first.at <= 3500, `${second.at - first.at} ms`);
      assert.ok(Date.now() - started < 5000);
    });
  });

  describe("connection refused (nothing listens)", () => {
    test("APNs: 502, and the homeserver's later retry is delivered once the provider is back", async () => {
      const pushkey = randomPushkey();
      pushkeys.add(pushkey);
      const r = await worker.notify(notification([{ app_id: "refused.ios", pushkey }]));
      assert.equal(r.status, 502, r.text);
      const again = await worker.notify(notification([{ app_id: "faults.ios", pushkey }]));
      assert.equal(again.status, 200, again.text);
      assert.equal(apns.delivered.filter((d) => d.token === hexToken(pushkey)).length, 1);
    });

    test("FCM: 502", async () => {
      const pushkey = `fcm-${crypto.randomBytes(24).toString("base64url")}`;
      pushkeys.add(pushkey);
      const r = await worker.notify(notification([{ app_id: "refused.android", pushkey }]));
      assert.equal(r.status, 502, r.text);
      assert.equal(fcm.delivered.length, 0);
    });

    test("UnifiedPush: an endpoint nobody listens on is 502, never rejected", async () => {
      const pushkey = `${refused}/upGone?up=1`;
      const r = await worker.notify(notification([{ app_id: "faults.up", pushkey }]));
      assert.equal(r.status, 502, r.text);
    });
  });

  describe("FCM token endpoint faults: 502 and no send, or delivered after a retry", () => {
    const device = (name) => {
      const pushkey = `fcm-${crypto.randomBytes(24).toString("base64url")}`;
      pushkeys.add(pushkey);
      const i = Object.keys(tokenAccounts).indexOf(name);
      return { app_id: `token${i}.android`, pushkey };
    };
    const sendsFor = (pushkey) => fcm.sendsFor(pushkey).length;

    for (const [name, fault] of Object.entries(TOKEN_FAULTS)) {
      test(`it ${name} every time: 502, no send`, async () => {
        const email = tokenAccounts[name].clientEmail;
        tokenProxy.inject(email, [fault]);
        const d = device(name);
        const r = await worker.notify(notification([d]));
        assert.equal(r.status, 502, r.text);
        assert.equal(r.json.errcode, "M_UNKNOWN");
        assert.equal(sendsFor(d.pushkey), 0);
        const exchanges = tokenProxy.seen(email).length;
        assert.ok(exchanges >= 1 && exchanges <= MAX_TRIES, `${exchanges} token requests`);
      });
    }

    test("it is down once (503 with Retry-After): retried and delivered", async () => {
      fcm.tokenAnswer([TOKEN_FAULTS["answers 503 with Retry-After"], "ok"]);
      const d = device("once");
      const r = await worker.notify(notification([d]));
      assert.equal(r.status, 200, r.text);
      assert.equal(fcm.tokenRequests, 2);
      assert.equal(fcm.delivered.filter((x) => x.pushkey === d.pushkey).length, 1);
    });

    test("it refuses connections: 502, no send", async () => {
      const d = device("refused");
      const r = await worker.notify(notification([d]));
      assert.equal(r.status, 502, r.text);
      assert.equal(sendsFor(d.pushkey), 0);
    });
  });

  test("the log holds no key, token or whole pushkey", async () => {
    assert.ok(tokens.size >= 2, "tokens were collected");
    assert.ok(await worker.waitForNotifyLogs(), "every notify's log line arrived before the scan");
    const leaks = findLeaks(worker.logs, {
      secrets: [apnsKey.p8, sendAccount.keyFile(fcm.tokenUri), ...Object.values(tokenAccounts).map((a) => a.keyFile(fcm.tokenUri))],
      tokens: [...tokens, "ya29.cut-off-token", "ya29 with spaces"],
      pushkeys: [...pushkeys],
    });
    assert.deepEqual(leaks, []);
  });
});
