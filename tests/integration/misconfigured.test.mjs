// A misconfigured app never deletes pushers. The built worker in workerd
// against a fake APNs that, like Apple, is two services (production and the
// sandbox) each knowing its own device tokens and the topic each belongs to:
// a wrong `topic` or `platform` gets every device refused, and edgepush must
// answer 502 (the homeserver keeps the pushers and retries) and say why on
// /health, while a dead token of a healthy app is still rejected at once.

import assert from "node:assert/strict";
import { after, before, beforeEach, describe, test } from "node:test";
import { generateApnsKey, hexToken, randomPushkey, startFakeApns } from "../fakes/apns.mjs";
import { notification, startWorker } from "./harness.mjs";

const KEY_ID = "KEY1234567";
const TEAM_ID = "TEAM123456";
const TOPIC = "com.example.app";
const IOS = "com.example.app.ios";
const key = generateApnsKey();

const device = (pushkey, app_id = IOS) => ({ app_id, pushkey, data: {} });

function assertStatus(response, status) {
  assert.equal(response.status, status, response.text);
}

/** `count` new pushkeys whose tokens an app build registered with APNs. */
function registeredPushkeys(fake, count, where) {
  return Array.from({ length: count }, () => {
    const k = randomPushkey();
    fake.register(hexToken(k), where);
    return k;
  });
}

describe("a misconfigured APNs app", () => {
  let fake;
  /** @type {Array<{close: () => Promise<void>}>} */
  const workers = [];

  /** A worker with one APNs app: the fake's two hosts, and `settings` over a correct entry. */
  const workerWith = async (settings) => {
    const worker = await startWorker({
      apps: {
        [IOS]: {
          type: "apns", topic: TOPIC, team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY",
          url: fake.origin, sandbox_url: fake.sandboxOrigin, ...settings,
        },
      },
      secrets: { APNS_KEY: key.p8 },
    });
    workers.push(worker);
    return worker;
  };

  before(async () => {
    fake = await startFakeApns({ publicKey: key.publicKey, keyId: KEY_ID, teamId: TEAM_ID, registeredOnly: true });
  });
  after(async () => {
    for (const worker of workers) await worker.close();
    await fake?.close();
  });
  beforeEach(() => fake.reset());

  test("wrong topic, 20 devices: none rejected, 502, /health names the app and the cause; fixed, all delivered", async () => {
    const pushkeys = registeredPushkeys(fake, 20, { environment: "production", topic: TOPIC });
    const wrong = await workerWith({ topic: "com.example.wrong", platform: "production" });
    // As Synapse sends them: one notify per pusher, all at once.
    const answers = await Promise.all(pushkeys.map((k) => wrong.notify(notification([device(k)]))));
    for (const r of answers) {
      assertStatus(r, 502);
      assert.equal(r.json.errcode, "M_UNKNOWN");
      assert.equal(r.json.rejected, undefined, "a 502 rejects nothing");
    }
    assert.equal(fake.requests.length, 20, "one request per device, not retried");
    assert.deepEqual(fake.violations, [], "the requests themselves were well-formed");
    assert.equal(fake.delivered.length, 0);

    // The homeserver's retry gets the same answer: still nothing rejected.
    assertStatus(await wrong.notify(notification([device(pushkeys[0])])), 502);

    const health = await wrong.request("/health");
    assertStatus(health, 503);
    assert.equal(health.json.status, "degraded");
    const status = health.json.apps[IOS];
    assert.match(status, /^suspect: 0 delivered, 21 DeviceTokenNotForTopic in the last 10 minutes/, status);
    assert.match(status, /check topic$/, status);

    // The operator fixes APPS: a new deployment, and the same pushers work.
    fake.reset();
    for (const k of pushkeys) fake.register(hexToken(k), { environment: "production", topic: TOPIC });
    const fixed = await workerWith({ platform: "production" });
    const r = await fixed.notify(notification(pushkeys.map((k) => device(k))));
    assertStatus(r, 200);
    assert.deepEqual(r.json, { rejected: [] });
    assert.equal(fake.delivered.length, 20);
    assertStatus(await fixed.request("/health"), 200);
  });

  test("wrong platform, 20 devices: none rejected, 502, /health names the app and the cause; fixed, all delivered", async () => {
    const pushkeys = registeredPushkeys(fake, 20, { environment: "sandbox", topic: TOPIC });
    const wrong = await workerWith({ platform: "production" });
    const r = await wrong.notify(notification(pushkeys.map((k) => device(k))));
    assertStatus(r, 502);
    assert.equal(r.json.errcode, "M_UNKNOWN");
    assert.equal(fake.requests.length, 20);
    assert.ok(fake.requests.every((q) => q.environment === "production"), "a fixed platform never tries the other host");

    const health = await wrong.request("/health");
    assertStatus(health, 503);
    const status = health.json.apps[IOS];
    assert.match(status, /^suspect: 0 delivered, 20 BadDeviceToken in the last 10 minutes/, status);
    assert.match(status, /check platform/, status);

    const log = await wrong.waitForLog((l) => l.message.includes('"msg":"notify"'));
    assert.ok(log, "the notify is logged");
    const devices = JSON.parse(log.message).devices;
    assert.ok(devices.every((d) => d.outcome === "failed" && /not rejected/.test(d.reason)), log.message);

    fake.reset();
    for (const k of pushkeys) fake.register(hexToken(k), { environment: "sandbox", topic: TOPIC });
    const fixed = await workerWith({ platform: "sandbox" });
    const ok = await fixed.notify(notification(pushkeys.map((k) => device(k))));
    assertStatus(ok, 200);
    assert.deepEqual(ok.json, { rejected: [] });
    assert.equal(fake.delivered.length, 20);
    assert.ok(fake.delivered.every((d) => d.environment === "sandbox"));
  });

  test("a healthy app with dead tokens among live ones: the dead ones are rejected in the same answer", async () => {
    const live = registeredPushkeys(fake, 3, { environment: "production", topic: TOPIC });
    // The live devices answer late, so the refusals come back first.
    for (const k of live) fake.answer(hexToken(k), { status: 200, delayMs: 300 });
    const dead = randomPushkey(); // APNs knows it nowhere: BadDeviceToken.
    const [otherApp] = registeredPushkeys(fake, 1, { environment: "production", topic: "com.example.other" });
    const worker = await workerWith({ platform: "production" }); // a fresh isolate: no evidence yet
    const r = await worker.notify(notification([device(live[0]), device(dead), device(live[1]), device(otherApp), device(live[2])]));
    assertStatus(r, 200);
    assert.deepEqual(r.json.rejected.sort(), [dead, otherApp].sort());
    assert.equal(fake.delivered.length, 3);
    const log = await worker.waitForLog((l) => l.message.includes('"msg":"notify"'));
    const reasons = JSON.parse(log.message).devices.filter((d) => d.outcome === "rejected").map((d) => d.reason);
    assert.equal(reasons.length, 2);
    for (const reason of reasons) assert.match(reason, /the app delivered to another device of this notify/);
    assertStatus(await worker.request("/health"), 200);

    // Later, in the same isolate, a dead token alone is rejected too: the
    // app delivered minutes ago.
    const alone = randomPushkey();
    const later = await worker.notify(notification([device(alone)]));
    assertStatus(later, 200);
    assert.deepEqual(later.json, { rejected: [alone] });
  });

  test("a glob over two builds: the production build's deliveries are no evidence for the development build", async () => {
    const [prod] = registeredPushkeys(fake, 1, { environment: "production", topic: TOPIC });
    const [dev] = registeredPushkeys(fake, 1, { environment: "sandbox", topic: TOPIC });
    const PROD = "com.example.app.ios.prod";
    const DEV = "com.example.app.ios.dev";
    const worker = await startWorker({
      apps: {
        "com.example.app.ios.*": {
          type: "apns", topic: TOPIC, team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY",
          url: fake.origin, sandbox_url: fake.sandboxOrigin, platform: "production",
        },
      },
      secrets: { APNS_KEY: key.p8 },
    });
    workers.push(worker);
    const r = await worker.notify(notification([device(prod, PROD), device(dev, DEV)]));
    assertStatus(r, 502);
    assert.equal(r.json.rejected, undefined, "the development build's pusher is kept");
    assert.equal(fake.delivered.length, 1);
    const again = await worker.notify(notification([device(dev, DEV)]));
    assertStatus(again, 502);

    const health = await worker.request("/health");
    assertStatus(health, 503);
    const status = health.json.apps["com.example.app.ios.*"];
    assert.match(status, /^suspect: "com\.example\.app\.ios\.dev": 0 delivered, 2 BadDeviceToken in the last 10 minutes/, status);
    assert.ok(!status.includes(PROD), status);

    // The production build's own dead token is still rejected.
    const dead = randomPushkey();
    const gone = await worker.notify(notification([device(dead, PROD)]));
    assertStatus(gone, 200);
    assert.deepEqual(gone.json, { rejected: [dead] });
  });

  test("410 needs no evidence: an unregistered token is rejected even by a fresh isolate", async () => {
    const [k] = registeredPushkeys(fake, 1, { environment: "production", topic: TOPIC });
    fake.answer(hexToken(k), "Unregistered");
    const worker = await workerWith({ platform: "production" });
    const r = await worker.notify(notification([device(k)]));
    assertStatus(r, 200);
    assert.deepEqual(r.json, { rejected: [k] });
  });

  test('platform "auto": a sandbox-only device is delivered, and the next push goes straight to the sandbox', async () => {
    const [sandboxOnly] = registeredPushkeys(fake, 1, { environment: "sandbox", topic: TOPIC });
    const [productionOnly] = registeredPushkeys(fake, 1, { environment: "production", topic: TOPIC });
    const worker = await workerWith({ platform: "auto" });

    const first = await worker.notify(notification([device(sandboxOnly)]));
    assertStatus(first, 200);
    assert.deepEqual(first.json, { rejected: [] });
    assert.deepEqual(fake.requestsFor(hexToken(sandboxOnly)).map((q) => q.environment), ["production", "sandbox"]);
    assert.equal(fake.delivered[0].environment, "sandbox");

    const second = await worker.notify(notification([device(sandboxOnly)]));
    assertStatus(second, 200);
    assert.deepEqual(
      fake.requestsFor(hexToken(sandboxOnly)).map((q) => q.environment),
      ["production", "sandbox", "sandbox"],
      "one request, to the sandbox",
    );

    const prod = await worker.notify(notification([device(productionOnly)]));
    assertStatus(prod, 200);
    assert.deepEqual(fake.requestsFor(hexToken(productionOnly)).map((q) => q.environment), ["production"]);
    assert.deepEqual(fake.violations, []);
  });

  test('platform "auto": a token neither environment knows is rejected, next to a delivered device', async () => {
    const [alive] = registeredPushkeys(fake, 1, { environment: "sandbox", topic: TOPIC });
    const dead = randomPushkey();
    const worker = await workerWith({ platform: "auto" });
    const alone = await worker.notify(notification([device(dead)]));
    assertStatus(alone, 502); // no delivery from the app yet: no evidence
    assert.deepEqual(fake.requestsFor(hexToken(dead)).map((q) => q.environment), ["production", "sandbox"]);

    const r = await worker.notify(notification([device(alive), device(dead)]));
    assertStatus(r, 200);
    assert.deepEqual(r.json, { rejected: [dead] });
  });

  test("TopicDisallowed: 502, never rejected", async () => {
    const [k] = registeredPushkeys(fake, 1, { environment: "production", topic: TOPIC });
    const [other] = registeredPushkeys(fake, 1, { environment: "production", topic: TOPIC });
    fake.answer(hexToken(k), "TopicDisallowed");
    const worker = await workerWith({ platform: "production" });
    const r = await worker.notify(notification([device(k), device(other)]));
    assertStatus(r, 502);
    assert.equal(fake.requestsFor(hexToken(k)).length, 1, "not retried");
  });
});

describe("overlapping globs", () => {
  test("/health names both globs; an app id matching both is 502, never rejected, with no send", async () => {
    const fake = await startFakeApns({ publicKey: key.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
    const app = { type: "apns", topic: TOPIC, team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY", url: fake.origin };
    const worker = await startWorker({ apps: { "chat.*": app, "*.ios": app, "chat.exact.ios": app }, secrets: { APNS_KEY: key.p8 } });
    try {
      const health = await worker.request("/health");
      assertStatus(health, 503);
      assert.equal(health.json.status, "degraded");
      assert.equal(health.json.glob_overlaps.length, 1);
      const overlap = health.json.glob_overlaps[0];
      assert.ok(overlap.includes('"chat.*"') && overlap.includes('"*.ios"') && overlap.includes("overlap"), overlap);
      assert.deepEqual(health.json.apps, { "chat.*": "ok", "*.ios": "ok", "chat.exact.ios": "ok" });
      const logged = await worker.waitForLog((l) => l.message.includes("globs overlap"));
      assert.ok(logged, `the overlap is logged when APPS loads:\n${worker.logText()}`);

      const ambiguous = randomPushkey();
      const exact = randomPushkey();
      const r = await worker.notify(notification([device(ambiguous, "chat.x.ios")]));
      assertStatus(r, 502);
      assert.equal(fake.requests.length, 0);
      const settled = await worker.notify(notification([device(exact, "chat.exact.ios")]));
      assertStatus(settled, 200);
      assert.deepEqual(settled.json, { rejected: [] }, "an entry of its own settles an id");
    } finally {
      await worker.close();
      await fake.close();
    }
  });
});
