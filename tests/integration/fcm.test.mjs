// FCM HTTP v1 end to end: the built worker in workerd exchanges an RS256
// service-account assertion at a fake Google token endpoint (which verifies it
// with the account's public key) and sends to a fake FCM that checks the
// bearer token it issued and refuses what Google refuses (non-string or
// oversized `data`), answering per pushkey, so every outcome of docs/design.md
// §8 "FCM" is driven here.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { after, before, beforeEach, describe, test } from "node:test";
import { SCOPE, generateServiceAccount, startFakeFcm } from "../fakes/fcm.mjs";
import { ROOT, notification, startWorker, synapseFixture } from "./harness.mjs";

const PROJECT = "example-123";
const ANDROID = "com.example.app.android";
/** The account every app but the token-endpoint ones uses. */
const account = generateServiceAccount({ clientEmail: `edgepush@${PROJECT}.iam.gserviceaccount.com`, projectId: PROJECT });
/** Same email, a key Google does not know: the assertion's signature fails. */
const impostor = generateServiceAccount({ clientEmail: account.clientEmail, projectId: PROJECT });
/** Accounts of their own, so no token is cached for them when a test starts. */
const downAccount = generateServiceAccount({ clientEmail: `down@${PROJECT}.iam.gserviceaccount.com`, projectId: PROJECT });
const flakyAccount = generateServiceAccount({ clientEmail: `flaky@${PROJECT}.iam.gserviceaccount.com`, projectId: PROJECT });

const fcmApp = (url, extra = {}) => ({
  type: "fcm", project_id: PROJECT, service_account_secret: "FCM_SERVICE_ACCOUNT", url, ...extra,
});
const device = (pushkey, app_id = ANDROID, data = {}) => ({ app_id, pushkey, data });
const now = () => Math.floor(Date.now() / 1000);

/** Every pushkey a test used: none may appear whole in the log. */
const usedPushkeys = new Set();
const pushkey = () => {
  const k = `fcm:${crypto.randomBytes(24).toString("base64url")}`;
  usedPushkeys.add(k);
  return k;
};

function assertStatus(response, status) {
  assert.equal(response.status, status, response.text);
}

function golden(name) {
  return JSON.parse(fs.readFileSync(path.join(ROOT, "tests/golden/fcm", name), "utf8"));
}

async function startFake() {
  return startFakeFcm({ accounts: [account, downAccount, flakyAccount], projectId: PROJECT });
}

function startFcmWorker(fake, apps = {}) {
  return startWorker({
    apps: { [ANDROID]: fcmApp(fake.origin), ...apps },
    secrets: {
      FCM_SERVICE_ACCOUNT: account.keyFile(fake.tokenUri),
      IMPOSTOR_ACCOUNT: impostor.keyFile(fake.tokenUri),
      DOWN_ACCOUNT: downAccount.keyFile(fake.tokenUri),
      FLAKY_ACCOUNT: flakyAccount.keyFile(fake.tokenUri),
    },
    vars: { MAX_TRIES: "3", RETRY_BASE_MS: "1" },
  });
}

describe("FCM", () => {
  let fake;
  let worker;

  before(async () => {
    fake = await startFake();
    worker = await startFcmWorker(fake, {
      "com.example.options": fcmApp(fake.origin, {
        fcm_options: { android: { priority: "normal", ttl: "3600s", collapse_key: "room" }, data: { app: "edgepush" } },
      }),
      "com.example.wrongproject": fcmApp(fake.origin, { project_id: "other-project" }),
      "com.example.nobadge": fcmApp(fake.origin, { send_badge_counts: false }),
      "com.example.collapse": fcmApp(fake.origin, { collapse_per_room: true }),
      "com.example.visible": fcmApp(fake.origin, { fcm_notification: true, collapse_per_room: true }),
      "com.example.icon": fcmApp(fake.origin, { fcm_options: { android: { notification: { icon: "ic_stat_push", color: "#00aa00" } } } }),
    });
  });
  after(async () => {
    await worker?.close();
    await fake?.close();
  });
  beforeEach(() => fake.reset());

  describe("Synapse's requests", () => {
    test("event_id_only-android: the golden message, with a verified token", async () => {
      const r = await worker.notify(synapseFixture("event_id_only-android"));
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
      assert.deepEqual(fake.violations, []);
      assert.equal(fake.delivered.length, 1);
      assert.deepEqual(fake.delivered[0].message, golden("event_id_only-android.json").message);
    });

    test("message: the golden full message, every data value a string", async () => {
      const body = structuredClone(synapseFixture("message-ios"));
      body.notification.devices = [device("fcmtoken1")];
      const r = await worker.notify(body);
      assertStatus(r, 200);
      assert.deepEqual(fake.violations, [], "the fake refuses non-string data values");
      assert.deepEqual(fake.delivered[0].message, golden("message-android.json").message);
    });

    test("member: an invite, membership and content fields", async () => {
      const body = structuredClone(synapseFixture("member-ios"));
      body.notification.devices = [device("fcmtoken1")];
      assertStatus(await worker.notify(body), 200);
      assert.deepEqual(fake.violations, []);
      assert.deepEqual(fake.delivered[0].message, golden("member-android.json").message);
    });

    test("event_id_only with Element X's default_payload: its keys flattened into data as strings", async () => {
      const k = pushkey();
      const n = notification([device(k, ANDROID, { format: "event_id_only", default_payload: { cs: "secret-1", n: 5 } })], {
        content: { msgtype: "m.text", body: "secret text" },
      });
      assertStatus(await worker.notify(n), 200);
      assert.deepEqual(fake.violations, []);
      const { message, raw } = fake.delivered[0];
      assert.deepEqual(message.data, {
        event_id: n.notification.event_id, room_id: n.notification.room_id, unread: "2", prio: "high", cs: "secret-1", n: "5",
      });
      assert.ok(!raw.includes("secret text") && !raw.includes("Alice"), "nothing about the message");
    });

    test("badge-only (no event_id): only the counts, at normal priority (nothing is shown)", async () => {
      const k = pushkey();
      const r = await worker.notify({
        notification: { counts: { unread: 3, missed_calls: 1 }, devices: [device(k, ANDROID, { default_payload: { cs: "x" } })] },
      });
      assertStatus(r, 200);
      assert.deepEqual(fake.delivered[0].message, {
        token: k, data: { unread: "3", missed_calls: "1", prio: "high" }, android: { priority: "normal" },
      });
    });

    test("a client's minimal test push: 200 with a rejected array", async () => {
      const k = pushkey();
      const r = await worker.notify({ notification: { devices: [{ app_id: ANDROID, pushkey: k }] } });
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
      assert.deepEqual(fake.delivered[0].message.data, { prio: "high" });
    });
  });

  describe("the request", () => {
    test("the assertion: RS256 JWT, iss, scope, aud = token_uri, exp within the hour", async () => {
      fake.revokeAll();
      const k = pushkey();
      assertStatus(await worker.notify(notification([device(k)])), 200);
      assert.deepEqual(fake.violations.filter((v) => !v.startsWith("401")), []);
      const { header, claims } = fake.assertions.at(-1);
      assert.equal(header.alg, "RS256");
      assert.equal(header.typ, "JWT");
      assert.equal(claims.iss, account.clientEmail);
      assert.equal(claims.scope, SCOPE);
      assert.equal(claims.aud, fake.tokenUri);
      assert.ok(Math.abs(claims.iat - now()) <= 5, `iat ${claims.iat}`);
      assert.ok(claims.exp > claims.iat && claims.exp - claims.iat <= 3600, `exp ${claims.exp}`);
      const send = fake.sendsFor(k).at(-1);
      assert.equal(send.path, `/v1/projects/${PROJECT}/messages:send`);
      assert.match(send.headers.authorization, /^Bearer ya29\.fake-/);
      assert.equal(send.headers["content-type"], "application/json");
    });

    test("prio low: android.priority normal, data.prio low", async () => {
      assertStatus(await worker.notify(notification([device(pushkey())], { prio: "low" })), 200);
      assert.equal(fake.delivered[0].message.android.priority, "normal");
      assert.equal(fake.delivered[0].message.data.prio, "low");
    });

    test("fcm_options are the base and our fields win", async () => {
      assertStatus(await worker.notify(notification([device(pushkey(), "com.example.options")])), 200);
      assert.deepEqual(fake.violations, []);
      const { message } = fake.delivered[0];
      assert.deepEqual(message.android, { priority: "high", ttl: "3600s", collapse_key: "room" });
      assert.equal(message.data.app, "edgepush");
      assert.equal(message.data.event_id, "$event:example.org");
    });

    test("fcm_options may give android.notification without a tag (FCM accepts it)", async () => {
      assertStatus(await worker.notify(notification([device(pushkey(), "com.example.icon")])), 200);
      assert.deepEqual(fake.violations, []);
      const { message } = fake.delivered[0];
      assert.deepEqual(message.android.notification, { icon: "ic_stat_push", color: "#00aa00" });
    });

    test("the pushkey is opaque: sent as is", async () => {
      const odd = "not:a/real+token==?";
      assertStatus(await worker.notify(notification([device(odd)])), 200);
      assert.equal(fake.delivered[0].pushkey, odd);
    });

    test("a long multibyte message fits FCM's 4096 bytes of data without splitting a character", async () => {
      const body = "€😀é".repeat(2000);
      const k = pushkey();
      const r = await worker.notify(
        notification([device(k)], { room_name: "ü".repeat(3000), content: { msgtype: "m.text", body, formatted_body: body } }),
      );
      assertStatus(r, 200);
      assert.deepEqual(fake.violations, [], "the fake refuses data over 4096 bytes");
      const { data } = fake.delivered[0].message;
      const size = Object.entries(data).reduce((n, [key, v]) => n + Buffer.byteLength(key) + Buffer.byteLength(v), 0);
      assert.ok(size <= 4096, `${size} bytes`);
      for (const [key, value] of Object.entries(data)) {
        assert.ok(Buffer.byteLength(value) <= 1024, `data.${key} has ${Buffer.byteLength(value)} bytes`);
        assert.ok(!value.includes("\uFFFD"), `data.${key}: a character was split`);
      }
      assert.equal(data.event_id, "$event:example.org", "ids are kept");
      if (data.content_body) assert.ok(body.startsWith(data.content_body.replace(/…$/, "")));
    });
  });

  describe("badge counts, quiet pushes, collapsing and visible notifications", () => {
    const readReceipt = (dev) => ({ notification: { counts: { unread: 3, missed_calls: 1 }, prio: "high", devices: [dev] } });

    for (const [name, app, data] of [
      ["pusher data org.matrix.msc4076.disable_badge_count", ANDROID, { "org.matrix.msc4076.disable_badge_count": true }],
      ["pusher data disable_badge_count", ANDROID, { disable_badge_count: true }],
      ["the app's send_badge_counts: false", "com.example.nobadge", {}],
    ]) {
      test(`${name}: no unread or missed_calls, and a push without an event is a data message at normal priority`, async () => {
        const message = pushkey();
        const receipt = pushkey();
        const n = notification([device(message, app, { ...data, format: "event_id_only", default_payload: { cs: "c" } })], {
          counts: { unread: 2, missed_calls: 1 },
        });
        assertStatus(await worker.notify(n), 200);
        assertStatus(await worker.notify(readReceipt(device(receipt, app, { ...data, default_payload: { cs: "c" } }))), 200);
        assert.deepEqual(fake.violations, []);
        const sent = (k) => fake.delivered.find((d) => d.pushkey === k).message;
        assert.deepEqual(sent(message).data, { event_id: "$event:example.org", room_id: "!room:example.org", prio: "high", cs: "c" });
        assert.equal(sent(message).android.priority, "high");
        assert.deepEqual(sent(receipt), { token: receipt, data: { prio: "high" }, android: { priority: "normal" } });
      });
    }

    test("collapse_per_room: android.collapse_key from the room id, never for a ring", async () => {
      const keys = [pushkey(), pushkey(), pushkey(), pushkey()];
      const longRoom = `!${"r".repeat(200)}:example.org`;
      assertStatus(await worker.notify(notification([device(keys[0], "com.example.collapse")])), 200);
      assertStatus(await worker.notify(notification([device(keys[1], ANDROID, { only_last_per_room: true })], { room_id: longRoom })), 200);
      assertStatus(await worker.notify(notification([device(keys[2], "com.example.collapse")], { type: "m.call.invite", content: {} })), 200);
      assertStatus(await worker.notify(notification([device(keys[3], "com.example.collapse")], { type: "m.rtc.notification", content: {} })), 200);
      assert.deepEqual(fake.violations, []);
      const sent = (k) => fake.delivered.find((d) => d.pushkey === k).message;
      assert.equal(sent(keys[0]).android.collapse_key, "!room:example.org");
      const hashed = sent(keys[1]).android.collapse_key;
      assert.ok(hashed.length <= 64 && !hashed.includes("rrr"), hashed);
      assert.equal(sent(keys[2]).android.collapse_key, undefined);
      assert.equal(sent(keys[3]).android.collapse_key, undefined);
    });

    test("fcm_notification: notification title and body, an apns block with mutable-content, the same data", async () => {
      const visible = pushkey();
      const plain = pushkey();
      const body = structuredClone(synapseFixture("message-ios"));
      body.notification.devices = [device(visible, "com.example.visible"), device(plain)];
      assertStatus(await worker.notify(body), 200);
      assert.deepEqual(fake.violations, [], "the fake checks the notification's fields and size");
      const sent = (k) => fake.delivered.find((d) => d.pushkey === k).message;
      const message = sent(visible);
      assert.deepEqual(message.notification, { title: "Push test room", body: "Hello Bob, message 0" });
      const room = body.notification.room_id;
      assert.deepEqual(message.apns, { headers: { "apns-priority": "10", "apns-collapse-id": room }, payload: { aps: { "mutable-content": 1 } } });
      assert.deepEqual(message.android, { priority: "high", collapse_key: room, notification: { tag: room } });
      assert.deepEqual(message.data, sent(plain).data, "the data keys stay as they are");
      assert.equal(sent(plain).notification, undefined);
    });

    test("fcm_notification shows no more than the pusher's format, and the pusher's own texts win", async () => {
      const eio = pushkey();
      const own = pushkey();
      const encrypted = pushkey();
      const n = notification([
        device(eio, "com.example.visible", { format: "event_id_only" }),
        device(own, "com.example.visible", { format: "event_id_only", default_payload: { notification: { title: "Element", body: "Nachricht" } } }),
      ], { room_name: "Secret Room", content: { msgtype: "m.text", body: "secret text" } });
      assertStatus(await worker.notify(n), 200);
      assertStatus(await worker.notify(notification([device(encrypted, "com.example.visible")], {
        type: "m.room.encrypted", room_name: "Team", content: { algorithm: "m.megolm.v1.aes-sha2", ciphertext: "x" },
      })), 200);
      assert.deepEqual(fake.violations, []);
      const sent = (k) => fake.delivered.find((d) => d.pushkey === k);
      assert.deepEqual(sent(eio).message.notification, { body: "New message" });
      assert.ok(!sent(eio).raw.includes("secret text") && !sent(eio).raw.includes("Secret Room"), sent(eio).raw);
      assert.deepEqual(sent(own).message.notification, { title: "Element", body: "Nachricht" });
      assert.deepEqual(sent(encrypted).message.notification, { title: "Team", body: "New message" });
    });

    test("fcm_notification: a push without an event shows nothing, at normal priority", async () => {
      const k = pushkey();
      assertStatus(await worker.notify(readReceipt(device(k, "com.example.visible"))), 200);
      assert.deepEqual(fake.delivered[0].message, {
        token: k, data: { unread: "3", missed_calls: "1", prio: "high" }, android: { priority: "normal" },
      });
    });
  });

  describe("outcomes", () => {
    test("200: delivered, not rejected", async () => {
      const r = await worker.notify(notification([device(pushkey())]));
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
    });

    for (const answer of ["unregistered", "invalid_token"]) {
      test(`${answer}: rejected, not retried`, async () => {
        const dead = pushkey();
        const alive = pushkey();
        fake.answer(dead, answer);
        const r = await worker.notify(notification([device(dead), device(alive)]));
        assertStatus(r, 200);
        assert.deepEqual(r.json, { rejected: [dead] });
        assert.equal(fake.sendsFor(dead).length, 1);
        assert.equal(fake.delivered.length, 1);
      });
    }

    for (const answer of ["bad_request", "sender_id_mismatch"]) {
      test(`${answer}: 502, not retried, never rejected`, async () => {
        const k = pushkey();
        fake.answer(k, answer);
        const r = await worker.notify(notification([device(k)]));
        assertStatus(r, 502);
        assert.equal(r.json.errcode, "M_UNKNOWN");
        assert.equal(fake.sendsFor(k).length, 1);
      });
    }

    test("404 without UNREGISTERED (a wrong project): 502, never rejected", async () => {
      const k = pushkey();
      const r = await worker.notify(notification([device(k, "com.example.wrongproject")]));
      assertStatus(r, 502);
      assert.match(fake.violations[0], /project other-project/);
    });

    for (const answer of ["unavailable", "quota_exceeded"]) {
      test(`${answer} every time: retried MAX_TRIES times, then 502`, async () => {
        const k = pushkey();
        fake.answer(k, answer);
        const r = await worker.notify(notification([device(k)]));
        assertStatus(r, 502);
        assert.equal(r.json.errcode, "M_UNKNOWN");
        assert.equal(fake.sendsFor(k).length, 3);
      });

      test(`${answer} once: retried and delivered`, async () => {
        const k = pushkey();
        fake.answer(k, [answer, "ok"]);
        const r = await worker.notify(notification([device(k)]));
        assertStatus(r, 200);
        assert.deepEqual(r.json, { rejected: [] });
        assert.equal(fake.sendsFor(k).length, 2);
      });
    }

    test("Retry-After is honoured", async () => {
      const k = pushkey();
      fake.answer(k, [{ status: 503, headers: { "retry-after": "1" }, body: {} }, "ok"]);
      assertStatus(await worker.notify(notification([device(k)])), 200);
      const [first, second] = fake.sendsFor(k);
      assert.ok(second.at - first.at >= 900, `retried after ${second.at - first.at} ms, Retry-After said 1 s`);
    });

    test("401 once: the access token is dropped, a new one fetched, the push delivered", async () => {
      const k = pushkey();
      fake.answer(k, ["unauthenticated", "ok"]);
      const r = await worker.notify(notification([device(k)]));
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
      const [first, second] = fake.sendsFor(k);
      assert.notEqual(second.headers.authorization, first.headers.authorization, "a new access token");
      assert.equal(fake.tokenRequests, 1);
    });

    test("401 twice: one new token, then 502, never rejected", async () => {
      const k = pushkey();
      fake.answer(k, "unauthenticated");
      const r = await worker.notify(notification([device(k)]));
      assertStatus(r, 502);
      assert.equal(fake.sendsFor(k).length, 2);
      assert.equal(fake.tokenRequests, 1);
    });

    test("a default_payload that is not an object: rejected without a send", async () => {
      const k = pushkey();
      const r = await worker.notify(notification([device(k, ANDROID, { default_payload: "nope" })]));
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [k] });
      assert.equal(fake.sendsFor(k).length, 0);
    });

    test("a transient failure next to a rejection: 502 (the homeserver retries)", async () => {
      const down = pushkey();
      const dead = pushkey();
      fake.answer(down, "unavailable");
      fake.answer(dead, "unregistered");
      assertStatus(await worker.notify(notification([device(down), device(dead)])), 502);
    });
  });

  describe("the token endpoint", () => {
    test("it refuses the assertion (invalid_grant): 502 naming invalid_grant, no send, never rejected", async () => {
      const k = pushkey();
      const w = await startFcmWorker(fake, { [ANDROID]: fcmApp(fake.origin, { service_account_secret: "IMPOSTOR_ACCOUNT" }) });
      try {
        const r = await w.notify(notification([device(k)]));
        assertStatus(r, 502);
        assert.equal(fake.sendsFor(k).length, 0);
        assert.equal(fake.tokenRequests, 1, "a refusal is not retried");
        assert.match(fake.violations[0], /Invalid JWT Signature/);
        assert.ok(await w.waitForLog((l) => l.message.includes("invalid_grant")), `no log line names invalid_grant:\n${w.logText()}`);
      } finally {
        await w.close();
      }
    });

    test("it is down: retried MAX_TRIES times, then 502, no send", async () => {
      fake.tokenAnswer("down");
      const k = pushkey();
      const w = await startFcmWorker(fake, { [ANDROID]: fcmApp(fake.origin, { service_account_secret: "DOWN_ACCOUNT" }) });
      try {
        const r = await w.notify(notification([device(k)]));
        assertStatus(r, 502);
        assert.equal(fake.tokenRequests, 3);
        assert.equal(fake.sendsFor(k).length, 0);
        assert.ok(await w.waitForLog((l) => l.message.includes("token endpoint")), `no log line names the token endpoint:\n${w.logText()}`);
      } finally {
        await w.close();
      }
    });

    test("it is down once: retried and delivered", async () => {
      fake.tokenAnswer(["down", "ok"]);
      const k = pushkey();
      const w = await startFcmWorker(fake, { [ANDROID]: fcmApp(fake.origin, { service_account_secret: "FLAKY_ACCOUNT" }) });
      try {
        assertStatus(await w.notify(notification([device(k)])), 200);
        assert.equal(fake.tokenRequests, 2);
        assert.equal(fake.delivered.length, 1);
      } finally {
        await w.close();
      }
    });

    test("one token fetch per isolate: shared by concurrent devices and reused by the next notify, cached in KV", async () => {
      const w = await startFcmWorker(fake);
      try {
        const first = await w.notify(notification([device(pushkey()), device(pushkey()), device(pushkey())]));
        assertStatus(first, 200);
        assert.equal(fake.tokenRequests, 1, "concurrent devices share one token fetch");
        assertStatus(await w.notify(notification([device(pushkey())])), 200);
        assert.equal(fake.tokenRequests, 1, "the second notify reuses the cached token");
        assert.equal(new Set(fake.delivered.map((d) => d.accessToken)).size, 1);

        const { keys } = await w.tokens.list();
        const accessToken = fake.delivered[0].accessToken;
        let found = false;
        for (const entry of keys) {
          assert.equal(typeof entry.expiration, "number", `${entry.name} has an expiration`);
          assert.ok(entry.expiration <= now() + 3599, `${entry.name} expires before the access token does`);
          if ((await w.tokens.get(entry.name))?.includes(accessToken)) found = true;
        }
        assert.ok(found, "the access token is cached in TOKENS");
      } finally {
        await w.close();
      }
    });
  });

  test("the log holds no whole pushkey, access token, assertion or key", async () => {
    assertStatus(await worker.notify(notification([device(pushkey())])), 200);
    assert.ok(await worker.waitForNotifyLogs(), "every notify's log line arrived before the scan");
    const log = worker.logText();
    assert.ok(worker.logs.length > 0, "the worker logs each notify");
    for (const k of usedPushkeys) {
      assert.ok(!log.includes(k), `pushkey ${k.slice(0, 8)}… is in the log`);
    }
    assert.ok(!/ya29\.fake-/.test(log), "an access token is in the log");
    assert.ok(!log.includes("PRIVATE KEY") && !log.includes("eyJ"), "a key or an assertion is in the log");
  });
});
