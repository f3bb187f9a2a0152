// Huawei Push Kit end to end: the built worker in workerd exchanges the app
// id and secret at a fake Huawei OAuth endpoint (client credentials) and
// sends data messages to a fake Push Kit that checks the bearer token it
// issued, that `data` is a string, the sizes and the required fields, and
// answers any result code per token, so every HMS outcome is driven here.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { after, before, beforeEach, describe, test } from "node:test";
import { forbidInLogs } from "../fakes/common.mjs";
import { MAX_MESSAGE_BYTES, generateHmsApp, result, startFakeHms } from "../fakes/hms.mjs";
import { ROOT, notification, startWorker, synapseFixture } from "./harness.mjs";
import { findLeaks } from "./leaks.mjs";

const HUAWEI = "com.example.app.huawei";
const main = generateHmsApp("104123456");
/** Apps of their own, so no token is cached for them when a test starts. */
const downApp = generateHmsApp("104000001");
const flakyApp = generateHmsApp("104000002");
const shortLivedApp = { ...generateHmsApp("104000003"), expiresIn: 2 };
const sharedApp = generateHmsApp("104000004");
const wrongSecret = forbidInLogs("secrets", crypto.randomBytes(32).toString("hex"));

/** An `hms` entry pointing at the fake; an `undefined` in `extra` leaves that field out. */
const hmsApp = (fake, extra = {}) => {
  const entry = {
    type: "hms", hms_app_id: main.appId, app_secret_secret: "HMS_APP_SECRET", category: "IM",
    url: fake.origin, token_url: fake.tokenUrl, ...extra,
  };
  return Object.fromEntries(Object.entries(entry).filter(([, value]) => value !== undefined));
};
const device = (pushkey, app_id = HUAWEI, data = {}) => ({ app_id, pushkey, data });
const now = () => Math.floor(Date.now() / 1000);

/** Every pushkey a test used: none may appear whole in the log. */
const usedPushkeys = new Set();
const pushkey = () => {
  // HMS tokens are long base64-like strings.
  const k = forbidInLogs("pushkeys", `IQAAAACy0${crypto.randomBytes(60).toString("base64url")}`);
  usedPushkeys.add(k);
  return k;
};

function assertStatus(response, status) {
  assert.equal(response.status, status, response.text);
}

function fcmGoldenData(name) {
  return JSON.parse(fs.readFileSync(path.join(ROOT, "tests/golden/fcm", name), "utf8")).message.data;
}

function startHmsWorker(fake, apps = {}, options = {}) {
  return startWorker({
    apps: { [HUAWEI]: hmsApp(fake), ...apps },
    secrets: {
      HMS_APP_SECRET: main.secret,
      HMS_DOWN_SECRET: downApp.secret,
      HMS_FLAKY_SECRET: flakyApp.secret,
      HMS_SHORT_SECRET: shortLivedApp.secret,
      HMS_SHARED_SECRET: sharedApp.secret,
      HMS_WRONG_SECRET: wrongSecret,
    },
    vars: { MAX_TRIES: "3", RETRY_BASE_MS: "1" },
    ...options,
  });
}

describe("HMS", () => {
  let fake;
  let worker;

  before(async () => {
    fake = await startFakeHms({ apps: [main, downApp, flakyApp, shortLivedApp, sharedApp] });
    worker = await startHmsWorker(fake, {
      "com.example.uncategorized": hmsApp(fake, { category: undefined }),
      "com.example.grouped": hmsApp(fake, { collapse_key: 3 }),
    });
  });
  after(async () => {
    await worker?.close();
    await fake?.close();
  });
  beforeEach(() => fake.reset());

  describe("the message", () => {
    test("Synapse's message: data is a JSON string holding FCM's data fields, urgency HIGH with the category", async () => {
      const body = structuredClone(synapseFixture("message-ios"));
      const k = pushkey();
      body.notification.devices = [device(k)];
      const r = await worker.notify(body);
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
      assert.deepEqual(fake.violations, []);
      const { message, data } = fake.delivered[0];
      assert.equal(typeof message.data, "string");
      assert.deepEqual(data, fcmGoldenData("message-android.json"), "the same data as FCM's golden message");
      assert.deepEqual(message.android, { urgency: "HIGH", category: "IM" });
      assert.deepEqual(message.token, [k]);
      assert.equal(JSON.parse(fake.sendsFor(k)[0].text).validate_only, false);
    });

    test("event_id_only: ids, counts and prio only, as FCM", async () => {
      const body = structuredClone(synapseFixture("event_id_only-android"));
      body.notification.devices = [device(pushkey(), HUAWEI, { format: "event_id_only" })];
      assertStatus(await worker.notify(body), 200);
      assert.deepEqual(fake.delivered[0].data, fcmGoldenData("event_id_only-android.json"));
    });

    test("Element X's default_payload is flattened into data, and nothing of the message leaks", async () => {
      const n = notification([device(pushkey(), HUAWEI, { format: "event_id_only", default_payload: { cs: "secret-1", n: 5 } })], {
        content: { msgtype: "m.text", body: "secret text" },
      });
      assertStatus(await worker.notify(n), 200);
      const { data, raw } = fake.delivered[0];
      assert.deepEqual(data, {
        event_id: n.notification.event_id, room_id: n.notification.room_id, unread: "2", prio: "high", cs: "secret-1", n: "5",
      });
      assert.ok(!raw.includes("secret text") && !raw.includes("Alice"));
    });

    test("urgency: NORMAL for prio low, for pushes without an event, and without a category", async () => {
      assertStatus(await worker.notify(notification([device(pushkey())], { prio: "low" })), 200);
      assert.deepEqual(fake.delivered[0].message.android, { urgency: "NORMAL" });
      assert.equal(fake.delivered[0].data.prio, "low");
      assertStatus(await worker.notify({ notification: { counts: { unread: 3 }, devices: [device(pushkey())] } }), 200);
      assert.deepEqual(fake.delivered[1].message.android, { urgency: "NORMAL" });
      assert.deepEqual(fake.delivered[1].data, { unread: "3", prio: "high" });
      assertStatus(await worker.notify(notification([device(pushkey(), "com.example.uncategorized")])), 200);
      assert.deepEqual(fake.delivered[2].message.android, { urgency: "NORMAL" });
      assertStatus(await worker.notify(notification([device(pushkey(), "com.example.grouped")])), 200);
      assert.deepEqual(fake.delivered[3].message.android, { urgency: "HIGH", category: "IM", collapse_key: 3 });
      assert.deepEqual(fake.violations, []);
    });

    test("the token exchange and the send: client credentials for the app id, its bearer token, its URL", async () => {
      fake.revokeAll();
      const k = pushkey();
      assertStatus(await worker.notify(notification([device(k)])), 200);
      assert.deepEqual(fake.grants.at(-1), { clientId: main.appId, grantType: "client_credentials" });
      const exchange = fake.requests.find((r) => r.path === "/oauth2/v3/token");
      assert.equal(exchange.headers["content-type"], "application/x-www-form-urlencoded");
      const send = fake.sendsFor(k).at(-1);
      assert.equal(send.path, `/v1/${main.appId}/messages:send`);
      assert.match(send.headers.authorization, /^Bearer [A-Za-z0-9+/=]+$/);
      assert.equal(send.headers["content-type"], "application/json");
    });

    test("the pushkey is opaque: sent as is", async () => {
      const odd = forbidInLogs("pushkeys", `odd:${crypto.randomBytes(16).toString("hex")}/+==?`);
      assertStatus(await worker.notify(notification([device(odd)])), 200);
      assert.deepEqual(fake.delivered[0].token, odd);
    });

    test("a long message full of quotes, escapes and multibyte text fits Huawei's 4096 bytes", async () => {
      const text = "\"quoted\" \\ tab\t ünï 😀 €".repeat(400);
      const k = pushkey();
      const r = await worker.notify(
        notification([device(k)], { room_name: text, sender_display_name: text, content: { msgtype: "m.text", body: text, formatted_body: text } }),
      );
      assertStatus(r, 200);
      assert.deepEqual(fake.violations, [], "the fake refuses a message over 4096 bytes without its token");
      const { message, data } = fake.delivered[0];
      const { token: _, ...withoutToken } = message;
      const size = Buffer.byteLength(JSON.stringify(withoutToken));
      assert.ok(size <= MAX_MESSAGE_BYTES && size > MAX_MESSAGE_BYTES - 300, `${size} bytes`);
      assert.equal(data.event_id, "$event:example.org", "ids are kept");
      for (const [key, value] of Object.entries(data)) assert.ok(!value.includes("\uFFFD"), `data.${key}: a character was split`);
    });
  });

  describe("outcomes", () => {
    test("80000000: delivered", async () => {
      const r = await worker.notify(notification([device(pushkey())]));
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
    });

    test("80100000 naming the other tokens (ours succeeded): delivered", async () => {
      const k = pushkey();
      fake.answer(k, "partial_ok");
      assert.deepEqual((await worker.notify(notification([device(k)]))).json, { rejected: [] });
    });

    for (const answer of ["invalid_token", "invalid_token_listed", "partial_dead", "no_right", "format_error"]) {
      test(`${answer} beside a delivered device of the app: that device is rejected, not retried`, async () => {
        const dead = pushkey();
        const alive = pushkey();
        fake.answer(dead, answer);
        const r = await worker.notify(notification([device(dead), device(alive)]));
        assertStatus(r, 200);
        assert.deepEqual(r.json, { rejected: [dead] });
        assert.equal(fake.sendsFor(dead).length, 1);
        assert.equal(fake.delivered.length, 1);
        assert.equal(fake.delivered[0].token, alive);
      });
    }

    const ours = {
      bad_parameters: "80100001",
      bad_structure: "80100003",
      too_large: "80300008",
      no_permission: "80300002",
      too_many_tokens: "80300010",
      unknown_code: "an unknown code",
    };
    for (const [answer, what] of Object.entries(ours)) {
      test(`${what}: 502, not retried, never rejected`, async () => {
        const k = pushkey();
        fake.answer(k, answer);
        const r = await worker.notify(notification([device(k)]));
        assertStatus(r, 502);
        assert.equal(r.json.errcode, "M_UNKNOWN");
        assert.equal(fake.sendsFor(k).length, 1);
      });
    }

    test("80100004, 80100013, 80100016 and 80300011: 502, never rejected", async () => {
      for (const code of ["80100004", "80100013", "80100016", "80300011"]) {
        const k = pushkey();
        fake.answer(k, result(code));
        const r = await worker.notify(notification([device(k)]));
        assertStatus(r, 502);
        assert.equal(fake.sendsFor(k).length, 1, code);
      }
    });

    const busy = {
      flow_control: "80100017 (HTTP 503)",
      flow_control_code: "80300009 (HTTP 200)",
      internal_error: "81000001",
      oauth_service_failed: "80600003",
      unavailable: "503 without a code",
      throttled: "429",
    };
    for (const [answer, what] of Object.entries(busy)) {
      test(`${what} every time: retried MAX_TRIES times, then 502`, async () => {
        const k = pushkey();
        fake.answer(k, answer);
        const r = await worker.notify(notification([device(k)]));
        assertStatus(r, 502);
        assert.equal(fake.sendsFor(k).length, 3);
      });
    }

    test("flow control once: retried and delivered", async () => {
      const k = pushkey();
      fake.answer(k, ["flow_control_code", "ok"]);
      assertStatus(await worker.notify(notification([device(k)])), 200);
      assert.equal(fake.sendsFor(k).length, 2);
    });

    test("Retry-After is honoured", async () => {
      const k = pushkey();
      fake.answer(k, [result("81000001", { status: 503, headers: { "retry-after": "1" } }), "ok"]);
      assertStatus(await worker.notify(notification([device(k)])), 200);
      const [first, second] = fake.sendsFor(k);
      assert.ok(second.at - first.at >= 900, `retried after ${second.at - first.at} ms, Retry-After said 1 s`);
    });

    test("80200003 (token expired) once: a new access token, the push delivered", async () => {
      const k = pushkey();
      assertStatus(await worker.notify(notification([device(pushkey())])), 200);
      const before = fake.tokenRequests;
      fake.answer(k, ["oauth_expired", "ok"]);
      assertStatus(await worker.notify(notification([device(k)])), 200);
      const [first, second] = fake.sendsFor(k);
      assert.notEqual(second.headers.authorization, first.headers.authorization, "a new access token");
      assert.equal(fake.tokenRequests, before + 1);
    });

    test("an access token Huawei no longer honours: one new token, delivered", async () => {
      assertStatus(await worker.notify(notification([device(pushkey())])), 200);
      fake.revokeAll();
      fake.reset();
      const k = pushkey();
      assertStatus(await worker.notify(notification([device(k)])), 200);
      assert.equal(fake.sendsFor(k).length, 2);
      assert.equal(fake.tokenRequests, 1);
      assert.match(fake.violations[0], /80200003/);
    });

    test("80200001 twice: one new token, then 502, never rejected", async () => {
      assertStatus(await worker.notify(notification([device(pushkey())])), 200);
      const before = fake.tokenRequests;
      const k = pushkey();
      fake.answer(k, "oauth_error");
      const r = await worker.notify(notification([device(k)]));
      assertStatus(r, 502);
      assert.equal(fake.sendsFor(k).length, 2);
      assert.equal(fake.tokenRequests, before + 1);
    });

    test("an app that has delivered nothing: 80300007 and noRight are 502, the app suspect on /health; a malformed token is rejected", async () => {
      const w = await startHmsWorker(fake);
      try {
        const devices = Array.from({ length: 6 }, () => pushkey());
        devices.forEach((k, i) => fake.answer(k, ["invalid_token", "invalid_token_listed", "no_right"][i % 3]));
        const malformed = pushkey();
        fake.answer(malformed, "format_error");
        const r = await w.notify(notification([...devices, malformed].map((k) => device(k))));
        assertStatus(r, 502);
        const health = await w.request("/health");
        assertStatus(health, 503);
        assert.match(health.json.apps[HUAWEI], /suspect: 0 delivered, .*80300007 token invalid.*noRight.*check hms_app_id/, health.json.apps[HUAWEI]);
        const line = await w.waitForLog((l) => l.message.includes('"status":502'));
        const logged = JSON.parse(line.message).devices;
        assert.deepEqual(logged.map((d) => d.outcome), [...devices.map(() => "failed"), "rejected"]);

        // Once the app delivers, its refused devices are rejected.
        const alive = pushkey();
        const again = await w.notify(notification([device(devices[0]), device(alive)]));
        assertStatus(again, 200);
        assert.deepEqual(again.json, { rejected: [devices[0]] });
        assertStatus(await w.request("/health"), 200);
      } finally {
        await w.close();
      }
    });

    test("a default_payload that is not an object: rejected without a send", async () => {
      const k = pushkey();
      const r = await worker.notify(notification([device(k, HUAWEI, { default_payload: "nope" })]));
      assert.deepEqual(r.json, { rejected: [k] });
      assert.equal(fake.sendsFor(k).length, 0);
    });
  });

  describe("the token endpoint", () => {
    test("it refuses the secret: 502 naming Huawei's error, no send, not retried, never rejected", async () => {
      const k = pushkey();
      const w = await startHmsWorker(fake, { [HUAWEI]: hmsApp(fake, { app_secret_secret: "HMS_WRONG_SECRET" }) });
      try {
        const r = await w.notify(notification([device(k)]));
        assertStatus(r, 502);
        assert.equal(fake.sendsFor(k).length, 0);
        assert.equal(fake.tokenRequests, 1, "a refusal is not retried");
        assert.match(fake.violations[0], /wrong secret/);
        assert.ok(await w.waitForLog((l) => l.message.includes("1101") && l.message.includes("invalid client")), w.logText());
      } finally {
        await w.close();
      }
    });

    test("it is down: retried MAX_TRIES times, then 502, no send", async () => {
      fake.tokenAnswer("down");
      const k = pushkey();
      const w = await startHmsWorker(fake, { [HUAWEI]: hmsApp(fake, { hms_app_id: downApp.appId, app_secret_secret: "HMS_DOWN_SECRET" }) });
      try {
        assertStatus(await w.notify(notification([device(k)])), 502);
        assert.equal(fake.tokenRequests, 3);
        assert.equal(fake.sendsFor(k).length, 0);
      } finally {
        await w.close();
      }
    });

    test("it is down once: retried and delivered", async () => {
      fake.tokenAnswer(["throttled", "ok"]);
      const w = await startHmsWorker(fake, { [HUAWEI]: hmsApp(fake, { hms_app_id: flakyApp.appId, app_secret_secret: "HMS_FLAKY_SECRET" }) });
      try {
        assertStatus(await w.notify(notification([device(pushkey())])), 200);
        assert.equal(fake.tokenRequests, 2);
        assert.equal(fake.delivered.length, 1);
      } finally {
        await w.close();
      }
    });

    test("one token per isolate: shared by concurrent devices and by apps of the same app id, reused by the next notify, cached in KV", async () => {
      const shared = (extra = {}) => hmsApp(fake, { hms_app_id: sharedApp.appId, app_secret_secret: "HMS_SHARED_SECRET", ...extra });
      const w = await startHmsWorker(fake, { [HUAWEI]: shared(), "com.example.huawei.beta": shared({ category: "VOIP" }) });
      try {
        const first = await w.notify(notification([device(pushkey()), device(pushkey()), device(pushkey(), "com.example.huawei.beta")]));
        assertStatus(first, 200);
        assert.equal(fake.tokenRequests, 1, "concurrent devices share one token fetch");
        assertStatus(await w.notify(notification([device(pushkey())])), 200);
        assert.equal(fake.tokenRequests, 1, "the second notify reuses the cached token");
        assert.equal(new Set(fake.delivered.map((d) => d.accessToken)).size, 1);
        assert.deepEqual([...new Set(fake.delivered.map((d) => d.appId))], [sharedApp.appId]);

        const { keys } = await w.tokens.list();
        const accessToken = fake.delivered[0].accessToken;
        let found = false;
        for (const entry of keys) {
          assert.equal(typeof entry.expiration, "number", `${entry.name} has an expiration`);
          assert.ok(entry.expiration <= now() + 3600, `${entry.name} expires before the access token does`);
          assert.ok(!entry.name.includes(sharedApp.secret), "no secret in a KV key");
          if ((await w.tokens.get(entry.name))?.includes(accessToken)) found = true;
        }
        assert.ok(found, "the access token is cached in TOKENS");
      } finally {
        await w.close();
      }
    });

    test("a token is renewed once it is about to expire, not used past it", async () => {
      const w = await startHmsWorker(fake, {
        [HUAWEI]: hmsApp(fake, { hms_app_id: shortLivedApp.appId, app_secret_secret: "HMS_SHORT_SECRET" }),
      });
      try {
        assertStatus(await w.notify(notification([device(pushkey())])), 200);
        assert.equal(fake.tokenRequests, 1);
        await new Promise((resolve) => setTimeout(resolve, 2200));
        assertStatus(await w.notify(notification([device(pushkey())])), 200);
        assert.equal(fake.tokenRequests, 2, "a new token once the first (expires_in 2 s) ran out");
        assert.deepEqual(fake.violations, [], "no send went out with an expired token");
      } finally {
        await w.close();
      }
    });
  });

  test("a broken app entry: named on /health and in the log, its devices 502 and never rejected, the others delivered", async () => {
    const w = await startHmsWorker(fake, {
      "broken.nosecret": hmsApp(fake, { app_secret_secret: "HMS_MISSING" }),
      "broken.appid": hmsApp(fake, { hms_app_id: "104/123" }),
      "broken.category": hmsApp(fake, { category: "instant messages" }),
      "broken.field": hmsApp(fake, { project_id: "p" }),
      "broken.noappid": { type: "hms", app_secret_secret: "HMS_APP_SECRET" },
    }, { metrics: true });
    try {
      const health = await w.request("/health");
      assertStatus(health, 503);
      assert.equal(health.json.apps[HUAWEI], "ok");
      const expected = {
        "broken.nosecret": "HMS_MISSING",
        "broken.appid": "hms_app_id",
        "broken.category": "category",
        "broken.field": "project_id",
        "broken.noappid": "hms_app_id",
      };
      for (const [app, needle] of Object.entries(expected)) {
        assert.ok(health.json.apps[app].includes(needle), `${app}: ${health.json.apps[app]}`);
      }
      const good = pushkey();
      const broken = Object.keys(expected).map((app) => device(pushkey(), app));
      const r = await w.notify(notification([device(good), ...broken]));
      assertStatus(r, 502);
      assert.equal(fake.delivered.length, 1);
      assert.equal(fake.delivered[0].token, good);
      assert.ok(await w.waitForLog((l) => l.message.includes("app misconfigured") && l.message.includes("broken.appid")), w.logText());
      assert.ok(!w.logText().includes("METRICS write failed"), "metrics are written for hms devices");
    } finally {
      await w.close();
    }
  });

  test("the log: one line per notify with provider hms, and no whole pushkey, access token or app secret", async () => {
    const k = pushkey();
    fake.answer(k, "invalid_token_listed");
    assertStatus(await worker.notify(notification([device(k), device(pushkey())])), 200);
    const line = await worker.waitForLog((l) => l.message.includes("80300007"));
    assert.ok(line, worker.logText());
    const logged = JSON.parse(line.message);
    assert.deepEqual(logged.devices.map((d) => [d.provider, d.outcome]), [["hms", "rejected"], ["hms", "delivered"]]);
    const tokens = [...new Set(fake.requests.map((r) => /^Bearer (\S+)$/.exec(r.headers.authorization ?? "")?.[1]).filter(Boolean))];
    assert.ok(tokens.length > 0);
    assert.ok(await worker.waitForNotifyLogs(), "every notify's log line arrived before the scan");
    const leaks = findLeaks(worker.logs, { secrets: [main.secret], tokens, pushkeys: [...usedPushkeys] });
    assert.deepEqual(leaks, []);
  });
});
