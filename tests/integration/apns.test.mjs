// APNs end to end: the built worker in workerd sends to a fake APNs that
// checks what Apple checks (ES256 provider token, claims, headers, size) and
// answers per device token, so every outcome of docs/design.md §7 "APNs" is
// driven here.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, beforeEach, describe, test } from "node:test";
import { generateApnsKey, hexToken, randomPushkey, startFakeApns } from "../fakes/apns.mjs";
import { notification, startWorker, synapseFixture } from "./harness.mjs";

const KEY_ID = "KEY1234567";
const TEAM_ID = "TEAM123456";
const TOPIC = "com.example.app";
const IOS = "com.example.app.ios";
const key = generateApnsKey();
const otherKey = generateApnsKey();

const apnsApp = (url, extra = {}) => ({
  type: "apns", topic: TOPIC, team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY", url, ...extra,
});
const device = (pushkey, app_id = IOS, data = {}) => ({ app_id, pushkey, data });
const now = () => Math.floor(Date.now() / 1000);

/** Every whole pushkey a test used: none may appear in the log. */
const usedPushkeys = new Set();
const pushkey = () => {
  const k = randomPushkey();
  usedPushkeys.add(k);
  return k;
};

function assertStatus(response, status) {
  assert.equal(response.status, status, response.text);
}

describe("APNs", () => {
  let fake;
  let worker;

  before(async () => {
    fake = await startFakeApns({ publicKey: key.publicKey, keyId: KEY_ID, teamId: TEAM_ID, topic: TOPIC });
    worker = await startWorker({
      apps: {
        [IOS]: apnsApp(fake.origin),
        "com.example.raw": apnsApp(fake.origin, { convert_device_token_to_hex: false }),
        "com.example.ttl": apnsApp(fake.origin, { ttl: 3600 }),
        "com.example.background": apnsApp(fake.origin, { push_type: "background" }),
        "com.example.voip": apnsApp(fake.origin, { push_type: "voip" }),
        "com.example.nobadge": apnsApp(fake.origin, { send_badge_counts: false }),
        "com.example.collapse": apnsApp(fake.origin, { collapse_per_room: true }),
        "com.example.wrongteam": apnsApp(fake.origin, { team_id: "OTHERTEAM1" }),
      },
      secrets: { APNS_KEY: key.p8 },
      vars: { MAX_TRIES: "3", RETRY_BASE_MS: "1" },
    });
  });
  after(async () => {
    await worker?.close();
    await fake?.close();
  });
  beforeEach(() => fake.reset());

  describe("Synapse's requests", () => {
    test("message-ios: a full alert with loc-key, loc-args, badge and sound", async () => {
      const body = synapseFixture("message-ios");
      const r = await worker.notify(body);
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
      assert.deepEqual(fake.violations, []);
      assert.equal(fake.delivered.length, 1);
      const sent = fake.delivered[0];
      assert.equal(sent.token, hexToken("abc123"), "the base64 pushkey is sent as lowercase hex");
      assert.equal(sent.headers["apns-topic"], TOPIC);
      assert.equal(sent.headers["apns-push-type"], "alert");
      assert.equal(sent.headers["apns-priority"], "10");
      assert.equal(sent.headers["apns-expiration"], undefined, "no ttl: no apns-expiration");
      const n = body.notification;
      assert.equal(sent.payload.aps.alert["loc-key"], "MSG_FROM_USER_IN_ROOM_WITH_CONTENT");
      assert.deepEqual(sent.payload.aps.alert["loc-args"], [n.sender_display_name, n.room_name, n.content.body]);
      assert.equal(sent.payload.aps.badge, 1);
      assert.equal(sent.payload.aps.sound, "default");
      assert.equal(sent.payload.room_id, n.room_id);
      assert.equal(sent.payload.event_id, n.event_id);
    });

    test("member-ios: an invite to a named room", async () => {
      const body = synapseFixture("member-ios");
      const r = await worker.notify(body);
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
      assert.deepEqual(fake.violations, []);
      const sent = fake.delivered[0];
      const n = body.notification;
      assert.equal(sent.payload.aps.alert["loc-key"], "USER_INVITE_TO_NAMED_ROOM");
      assert.deepEqual(sent.payload.aps.alert["loc-args"], [n.sender_display_name, n.room_name]);
      assert.equal(sent.payload.aps.badge, 1);
      assert.equal(sent.payload.room_id, n.room_id);
      assert.equal(sent.payload.event_id, n.event_id);
    });

    test("event_id_only (what Element and most clients register): ids, counts and default_payload only", async () => {
      const body = structuredClone(synapseFixture("event_id_only-android"));
      const defaultPayload = {
        aps: { "mutable-content": 1, alert: { "loc-key": "Notification", "loc-args": [] } },
        account_id: "acct-1",
      };
      Object.assign(body.notification.devices[0], {
        app_id: IOS,
        pushkey: "q83vEjRWeJA=",
        data: { format: "event_id_only", default_payload: defaultPayload },
      });
      const r = await worker.notify(body);
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
      assert.deepEqual(fake.violations, []);
      const { payload } = fake.delivered[0];
      assert.equal(payload.aps["mutable-content"], 1);
      assert.equal(payload.aps.alert["loc-key"], "Notification");
      assert.equal(payload.account_id, "acct-1", "top-level default_payload keys are kept");
      assert.equal(payload.room_id, body.notification.room_id);
      assert.equal(payload.event_id, body.notification.event_id);
      assert.equal(payload.unread_count, 1);
      assert.equal(typeof payload.unread_count, "number", "unread_count is an integer");
    });

    test("event_id_only carries nothing about the message", async () => {
      const n = notification([device("q83vEjRWeJA=", IOS, { format: "event_id_only" })], {
        sender_display_name: "Secret Sender", room_name: "Secret Room", content: { msgtype: "m.text", body: "secret text" },
      });
      assertStatus(await worker.notify(n), 200);
      const { raw } = fake.delivered[0];
      for (const secret of ["Secret Sender", "Secret Room", "secret text"]) {
        assert.ok(!raw.includes(secret), `${secret} leaked into ${raw}`);
      }
    });

    test("badge-only (no event_id, after a read receipt): aps.badge alone, no default_payload", async () => {
      const n = {
        notification: {
          counts: { unread: 3, missed_calls: 1 },
          devices: [device("q83vEjRWeJA=", IOS, { default_payload: { aps: { "mutable-content": 1 }, account_id: "x" } })],
        },
      };
      const r = await worker.notify(n);
      assertStatus(r, 200);
      assert.deepEqual(fake.violations, []);
      assert.deepEqual(fake.delivered[0].payload, { aps: { badge: 4 } });
    });
  });

  describe("the request", () => {
    test("the provider token: ES256, kid and iss, iat on the 30-minute mark, shared between sends", async () => {
      for (let i = 0; i < 3; i++) {
        assertStatus(await worker.notify(notification([device(pushkey()), device(pushkey())])), 200);
      }
      assert.deepEqual(fake.violations, []);
      assert.equal(fake.tokensSeen.length, 6);
      const { header, claims, jwt } = fake.tokensSeen[0];
      assert.equal(header.alg, "ES256");
      assert.equal(header.kid, KEY_ID);
      assert.equal(claims.iss, TEAM_ID);
      assert.equal(claims.iat % 1800, 0, `iat ${claims.iat} is floored to the 30-minute mark`);
      assert.ok(claims.iat <= now() && claims.iat > now() - 1800, `iat ${claims.iat} is the last mark`);
      assert.ok(fake.tokensSeen.every((t) => t.jwt === jwt), "one token for every send");
    });

    test("the token is cached in KV TOKENS with an expiration", async () => {
      assertStatus(await worker.notify(notification([device(pushkey())])), 200);
      const { keys } = await worker.tokens.list();
      assert.ok(keys.length >= 1, "a token entry is in TOKENS");
      const jwt = fake.tokensSeen[0].jwt;
      let found = false;
      for (const entry of keys) {
        assert.equal(typeof entry.expiration, "number", `${entry.name} has an expiration`);
        assert.ok(entry.expiration > now(), `${entry.name} expires in the future`);
        assert.ok(entry.expiration <= now() + 3600, `${entry.name} expires within the hour APNs accepts a token`);
        const value = await worker.tokens.get(entry.name);
        if (value?.includes(jwt)) found = true;
      }
      assert.ok(found, "the cached entry holds the token that was sent");
    });

    test("apns-expiration is now + ttl when the app sets ttl", async () => {
      const before = now();
      assertStatus(await worker.notify(notification([device(pushkey(), "com.example.ttl")])), 200);
      const expiration = Number(fake.delivered[0].headers["apns-expiration"]);
      assert.ok(expiration >= before + 3600 && expiration <= now() + 3600 + 1, `apns-expiration ${expiration}`);
    });

    test("apns-priority is 5 for a low-priority push, and for background pushes", async () => {
      assertStatus(await worker.notify(notification([device(pushkey())], { prio: "low" })), 200);
      assertStatus(await worker.notify(notification([device(pushkey(), "com.example.background")])), 200);
      assert.deepEqual(fake.violations, []);
      assert.deepEqual(fake.delivered.map((d) => d.headers["apns-priority"]), ["5", "5"]);
      assert.equal(fake.delivered[1].headers["apns-push-type"], "background");
    });

    test("convert_device_token_to_hex off: the pushkey is sent as is", async () => {
      const hex = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
      assertStatus(await worker.notify(notification([device(hex, "com.example.raw")])), 200);
      assert.equal(fake.delivered[0].token, hex);
    });

    test("base64 without padding is accepted", async () => {
      const padded = pushkey();
      const r = await worker.notify(notification([device(padded.replace(/=+$/, ""))]));
      assertStatus(r, 200);
      assert.equal(fake.delivered[0].token, hexToken(padded));
    });

    test("a long message is trimmed to 4096 bytes without splitting a character", async () => {
      const body = "€😀é".repeat(2000);
      const r = await worker.notify(notification([device(pushkey())], { content: { msgtype: "m.text", body } }));
      assertStatus(r, 200);
      assert.deepEqual(fake.violations, [], "the fake refuses payloads over 4096 bytes");
      const { raw, payload } = fake.delivered[0];
      assert.ok(Buffer.byteLength(raw) <= 4096, `${Buffer.byteLength(raw)} bytes`);
      const text = payload.aps.alert["loc-args"].at(-1);
      assert.ok(text.length > 100, "the text is trimmed, not dropped");
      assert.ok(!text.includes("\uFFFD"), "no character was split");
      assert.ok(body.startsWith(text.replace(/…$/, "")), "the kept text is a prefix of the message");
    });
  });

  describe("badge counts, quiet pushes and collapsing", () => {
    const eventIdOnly = { format: "event_id_only", default_payload: { aps: { "mutable-content": 1, alert: { "loc-key": "Notification" } }, cs: "c" } };
    const readReceipt = (dev) => ({ notification: { counts: { unread: 3, missed_calls: 1 }, devices: [dev] } });

    for (const [name, app, data] of [
      ["pusher data org.matrix.msc4076.disable_badge_count", IOS, { "org.matrix.msc4076.disable_badge_count": true }],
      ["pusher data disable_badge_count", IOS, { disable_badge_count: true }],
      ["the app's send_badge_counts: false", "com.example.nobadge", {}],
    ]) {
      test(`${name}: no count in any payload, and a push without an event is a background wake`, async () => {
        const devices = [device(pushkey(), app, data), device(pushkey(), app, { ...data, ...eventIdOnly })];
        const receipt = device(pushkey(), app, { ...data, ...eventIdOnly });
        assertStatus(await worker.notify(notification(devices, { counts: { unread: 2, missed_calls: 1 } })), 200);
        assertStatus(await worker.notify(readReceipt(receipt)), 200);
        assert.deepEqual(fake.violations, [], "the fake refuses background pushes that show something");
        assert.equal(fake.delivered.length, 3);
        const sent = (dev) => fake.delivered.find((d) => d.token === hexToken(dev.pushkey));
        const [full, eio, wake] = [sent(devices[0]), sent(devices[1]), sent(receipt)];
        assert.equal(full.payload.aps.badge, undefined);
        assert.equal(full.payload.aps.alert["loc-key"], "MSG_FROM_USER_WITH_CONTENT");
        assert.equal(full.headers["apns-priority"], "10");
        assert.equal(eio.payload.unread_count, undefined);
        assert.equal(eio.payload.missed_calls, undefined);
        assert.equal(eio.payload.event_id, "$event:example.org");
        assert.deepEqual(wake.payload, { aps: { "content-available": 1 } }, "nothing from default_payload");
        assert.equal(wake.headers["apns-push-type"], "background");
        assert.equal(wake.headers["apns-priority"], "5");
      });
    }

    test("counts on: the read receipt is still a badge update, as today", async () => {
      assertStatus(await worker.notify(readReceipt(device(pushkey(), IOS, { ...eventIdOnly, disable_badge_count: false }))), 200);
      assert.deepEqual(fake.violations, []);
      assert.deepEqual(fake.delivered[0].payload, { aps: { badge: 4 } });
      assert.equal(fake.delivered[0].headers["apns-push-type"], "alert");
    });

    test("a VoIP app with counts off gets no push without an event: nothing it could take", async () => {
      const r = await worker.notify(readReceipt(device(pushkey(), "com.example.voip", { disable_badge_count: true })));
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
      assert.equal(fake.requests.length, 0);
    });

    test("priority 10 only when the push shows an alert, sound or badge", async () => {
      const hidden = device(pushkey(), IOS, { format: "event_id_only", default_payload: { cs: "c" } });
      const shown = device(pushkey(), IOS, eventIdOnly);
      assertStatus(await worker.notify(notification([hidden, shown])), 200);
      assert.deepEqual(fake.violations, [], "the fake refuses priority 10 for a push that shows nothing");
      const byToken = Object.fromEntries(fake.delivered.map((d) => [d.token, d.headers["apns-priority"]]));
      assert.equal(byToken[hexToken(hidden.pushkey)], "5");
      assert.equal(byToken[hexToken(shown.pushkey)], "10");
    });

    test("a background app's pushes are background pushes: content-available, no alert, sound or badge", async () => {
      assertStatus(await worker.notify(notification([device(pushkey(), "com.example.background")])), 200);
      assertStatus(await worker.notify(readReceipt(device(pushkey(), "com.example.background"))), 200);
      assert.deepEqual(fake.violations, []);
      const [message, receipt] = fake.delivered;
      assert.deepEqual(message.payload.aps, { "content-available": 1 });
      assert.equal(message.payload.event_id, "$event:example.org");
      assert.deepEqual(receipt.payload, { aps: { "content-available": 1 }, unread_count: 3, missed_calls: 1 });
    });

    test("collapse_per_room: apns-collapse-id from the room id, at most 64 bytes, never for a ring", async () => {
      const longRoom = `!${"r".repeat(200)}:example.org`;
      const pushes = [
        notification([device(pushkey(), "com.example.collapse")]),
        notification([device(pushkey(), "com.example.collapse")], { room_id: longRoom }),
        notification([device(pushkey(), IOS, { only_last_per_room: true })]),
        notification([device(pushkey(), IOS)]),
        notification([device(pushkey(), "com.example.collapse")], { type: "m.call.invite", content: { offer: { sdp: "m=audio" } } }),
        notification([device(pushkey(), "com.example.collapse")], { type: "m.rtc.notification", content: {} }),
      ];
      for (const n of pushes) assertStatus(await worker.notify(n), 200);
      assert.deepEqual(fake.violations, [], "the fake refuses collapse ids over 64 bytes");
      const ids = pushes.map((n) => {
        const sent = fake.delivered.find((d) => d.token === hexToken(n.notification.devices[0].pushkey));
        return sent.headers["apns-collapse-id"];
      });
      assert.equal(ids[0], "!room:example.org");
      assert.ok(ids[1].length <= 64 && !ids[1].includes("rrr"), `hashed: ${ids[1]}`);
      assert.equal(ids[2], "!room:example.org", "the pusher's only_last_per_room asks for it too");
      assert.deepEqual(ids.slice(3), [undefined, undefined, undefined], "off by default, and never for a ring");
    });
  });

  describe("outcomes", () => {
    test("200: delivered, not rejected", async () => {
      const k = pushkey();
      const r = await worker.notify(notification([device(k)]));
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
    });

    // BadDeviceToken and DeviceTokenNotForTopic reject here because the
    // other device of the same app is delivered (tests/integration/
    // misconfigured.test.mjs has them without such evidence).
    for (const answer of ["Unregistered", "ExpiredToken", "BadDeviceToken", "DeviceTokenNotForTopic"]) {
      test(`${answer}: rejected, not retried`, async () => {
        const dead = pushkey();
        const alive = pushkey();
        fake.answer(hexToken(dead), answer);
        const r = await worker.notify(notification([device(dead), device(alive)]));
        assertStatus(r, 200);
        assert.deepEqual(r.json, { rejected: [dead] });
        assert.equal(fake.requestsFor(hexToken(dead)).length, 1);
      });
    }

    for (const answer of ["TooManyRequests", "TooManyProviderTokenUpdates", "ServiceUnavailable", "InternalServerError"]) {
      test(`${answer} every time: retried MAX_TRIES times, then 502 M_UNKNOWN`, async () => {
        const k = pushkey();
        fake.answer(hexToken(k), answer);
        const r = await worker.notify(notification([device(k)]));
        assertStatus(r, 502);
        assert.equal(r.json.errcode, "M_UNKNOWN");
        assert.equal(fake.requestsFor(hexToken(k)).length, 3);
      });

      test(`${answer} once: retried and delivered`, async () => {
        const k = pushkey();
        fake.answer(hexToken(k), [answer, "ok"]);
        const r = await worker.notify(notification([device(k)]));
        assertStatus(r, 200);
        assert.deepEqual(r.json, { rejected: [] });
        assert.equal(fake.requestsFor(hexToken(k)).length, 2);
      });
    }

    test("TooManyProviderTokenUpdates keeps the current token", async () => {
      const k = pushkey();
      fake.answer(hexToken(k), ["TooManyProviderTokenUpdates", "ok"]);
      assertStatus(await worker.notify(notification([device(k)])), 200);
      const [first, second] = fake.requestsFor(hexToken(k));
      assert.equal(second.headers.authorization, first.headers.authorization);
    });

    test("Retry-After is honoured", async () => {
      const k = pushkey();
      fake.answer(hexToken(k), [{ status: 503, reason: "ServiceUnavailable", headers: { "retry-after": "1" } }, "ok"]);
      const started = Date.now();
      assertStatus(await worker.notify(notification([device(k)])), 200);
      const [first, second] = fake.requestsFor(hexToken(k));
      assert.ok(second.at - first.at >= 900, `retried after ${second.at - first.at} ms, Retry-After said 1 s`);
      assert.ok(Date.now() - started < 5000);
    });

    // APNs tokens are signed deterministically: within its 30-minute window
    // a new mint is the very token APNs refused. Each test has an isolate of
    // its own, since the refusal is remembered for the app's key.
    for (const answer of ["ExpiredProviderToken", "InvalidProviderToken"]) {
      test(`${answer}: the same token is not sent again; 502 at once, and for the app's next device, never rejected`, async () => {
        const fresh = await startWorker({ apps: { [IOS]: apnsApp(fake.origin) }, secrets: { APNS_KEY: key.p8 }, vars: { MAX_TRIES: "3", RETRY_BASE_MS: "1" } });
        try {
          const k = pushkey();
          fake.answer(hexToken(k), [answer, "ok"]);
          const r = await fresh.notify(notification([device(k)]));
          assertStatus(r, 502);
          assert.equal(r.json.errcode, "M_UNKNOWN");
          assert.equal(fake.requestsFor(hexToken(k)).length, 1, "one send: the refused token is not sent again");
          const next = pushkey();
          assertStatus(await fresh.notify(notification([device(next)])), 502);
          assert.equal(fake.requestsFor(hexToken(next)).length, 0, "the refused credential is remembered");
          const log = await fresh.waitForLog((l) => l.message.includes("same as the refused one"));
          assert.ok(log, "the log says why");
        } finally {
          await fresh.close();
        }
      });
    }

    test("a wrong team id: 502, never rejected", async () => {
      const k = pushkey();
      const r = await worker.notify(notification([device(k, "com.example.wrongteam")]));
      assertStatus(r, 502);
      assert.match(fake.violations[0], /iss OTHERTEAM1/);
    });

    test("TopicDisallowed (our topic, not the device): 502, not retried, not rejected", async () => {
      const k = pushkey();
      const alive = pushkey();
      fake.answer(hexToken(k), "TopicDisallowed");
      const r = await worker.notify(notification([device(k), device(alive)]));
      assertStatus(r, 502);
      assert.equal(r.json.errcode, "M_UNKNOWN");
      assert.equal(fake.requestsFor(hexToken(k)).length, 1);
    });

    test("another 400 (a payload APNs refuses): 502, not retried, not rejected", async () => {
      const k = pushkey();
      fake.answer(hexToken(k), "BadCollapseId");
      const r = await worker.notify(notification([device(k)]));
      assertStatus(r, 502);
      assert.equal(r.json.errcode, "M_UNKNOWN");
      assert.equal(fake.requestsFor(hexToken(k)).length, 1);
    });

    test("another 4xx (413): 502, not retried", async () => {
      const k = pushkey();
      fake.answer(hexToken(k), { status: 413, reason: "PayloadTooLarge" });
      assertStatus(await worker.notify(notification([device(k)])), 502);
      assert.equal(fake.requestsFor(hexToken(k)).length, 1);
    });

    test("an undecodable pushkey: rejected without a request", async () => {
      for (const bad of ["not base64!", "a", "ab$cd="]) {
        const r = await worker.notify(notification([device(bad)]));
        assertStatus(r, 200);
        assert.deepEqual(r.json, { rejected: [bad] });
      }
      assert.equal(fake.requests.length, 0);
    });

    test("a transient failure next to a rejection: 502 (the homeserver retries)", async () => {
      const down = pushkey();
      const dead = pushkey();
      fake.answer(hexToken(down), "ServiceUnavailable");
      fake.answer(hexToken(dead), "Unregistered");
      const r = await worker.notify(notification([device(down), device(dead)]));
      assertStatus(r, 502);
    });
  });

  test("the log holds no whole pushkey, token or key", async () => {
    assertStatus(await worker.notify(notification([device(pushkey())])), 200);
    assert.ok(await worker.waitForNotifyLogs(), "every notify's log line arrived before the scan");
    const log = worker.logText();
    assert.ok(worker.logs.length > 0, "the worker logs each notify");
    for (const k of usedPushkeys) {
      assert.ok(!log.includes(k) && !log.includes(hexToken(k)), `pushkey ${k.slice(0, 6)}… is in the log`);
    }
    for (const { jwt } of fake.tokensSeen) {
      assert.ok(!log.includes(jwt.split(".")[2]), "a provider token is in the log");
    }
    assert.ok(!log.includes("PRIVATE KEY") && !log.includes(key.p8.split("\n")[1]), "the key is in the log");
  });
});

describe("APNs with a key Apple does not know", () => {
  // Apps sharing a team and key id share one token, so the wrong key gets a
  // worker of its own.
  test("the signature fails: 502 after one send (a re-mint is the same token), never rejected", async () => {
    const fake = await startFakeApns({ publicKey: key.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
    const worker = await startWorker({ apps: { [IOS]: apnsApp(fake.origin) }, secrets: { APNS_KEY: otherKey.p8 } });
    try {
      const k = randomPushkey();
      const r = await worker.notify(notification([device(k)]));
      assertStatus(r, 502);
      assert.equal(r.json.errcode, "M_UNKNOWN");
      assert.equal(fake.requestsFor(hexToken(k)).length, 1);
      assert.match(fake.violations[0], /InvalidProviderToken: ES256 signature/);
    } finally {
      await worker.close();
      await fake.close();
    }
  });
});

describe("APNs timeouts", () => {
  test("a send slower than SEND_TIMEOUT_MS is transient: retried, then 502", async () => {
    const fake = await startFakeApns({ publicKey: key.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
    const worker = await startWorker({
      apps: { [IOS]: apnsApp(fake.origin) },
      secrets: { APNS_KEY: key.p8 },
      vars: { SEND_TIMEOUT_MS: "200", MAX_TRIES: "2" },
    });
    try {
      const k = randomPushkey();
      fake.answer(hexToken(k), { status: 200, delayMs: 1500 });
      const started = Date.now();
      const r = await worker.notify(notification([device(k)]));
      assertStatus(r, 502);
      assert.equal(fake.requestsFor(hexToken(k)).length, 2);
      assert.ok(Date.now() - started < 1500, "each send is cut at SEND_TIMEOUT_MS");
    } finally {
      await worker.close();
      await fake.close();
    }
  });

  test("a topic written with a trailing newline in APPS is sent trimmed, as fetch trims header values", async () => {
    const fake = await startFakeApns({ publicKey: key.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
    const app = apnsApp(fake.origin);
    const worker = await startWorker({ apps: { [IOS]: { ...app, topic: `${app.topic}\n` } }, secrets: { APNS_KEY: key.p8 } });
    try {
      const k = randomPushkey();
      const r = await worker.notify(notification([device(k)]));
      assertStatus(r, 200);
      const [sent] = fake.requestsFor(hexToken(k));
      assert.equal(sent.headers["apns-topic"], app.topic);
    } finally {
      await worker.close();
      await fake.close();
    }
  });

  test("an APNs that is down (connection refused) is transient: 502", async () => {
    const fake = await startFakeApns({ publicKey: key.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
    const origin = fake.origin;
    await fake.close();
    const worker = await startWorker({ apps: { [IOS]: apnsApp(origin) }, secrets: { APNS_KEY: key.p8 } });
    try {
      const r = await worker.notify(notification([device(randomPushkey())]));
      assertStatus(r, 502);
      assert.equal(r.json.errcode, "M_UNKNOWN");
    } finally {
      await worker.close();
    }
  });
});

describe("the fake APNs refuses what Apple refuses", () => {
  /** A provider token signed with the test key, as the worker mints it. */
  function providerToken() {
    const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
    const signed = `${part({ alg: "ES256", kid: KEY_ID })}.${part({ iss: TEAM_ID, iat: now() })}`;
    const signature = crypto.sign("sha256", Buffer.from(signed), { key: key.p8, dsaEncoding: "ieee-p1363" });
    return `${signed}.${signature.toString("base64url")}`;
  }

  test("a collapse id over 64 bytes, a background push that shows something, priority 10 that shows nothing", async () => {
    const fake = await startFakeApns({ publicKey: key.publicKey, keyId: KEY_ID, teamId: TEAM_ID, topic: TOPIC });
    try {
      const send = (headers, payload) =>
        fetch(`${fake.origin}/3/device/${hexToken(randomPushkey())}`, {
          method: "POST",
          headers: { authorization: `bearer ${providerToken()}`, "apns-topic": TOPIC, "apns-push-type": "alert", "apns-priority": "10", ...headers },
          body: JSON.stringify(payload),
        }).then(async (r) => [r.status, (await r.json().catch(() => ({}))).reason]);
      const alert = { aps: { alert: { body: "hi" } } };
      assert.deepEqual(await send({ "apns-collapse-id": "x".repeat(64) }, alert), [200, undefined]);
      assert.deepEqual(await send({ "apns-collapse-id": "x".repeat(65) }, alert), [400, "BadCollapseId"]);
      const background = { "apns-push-type": "background", "apns-priority": "5" };
      assert.deepEqual(await send(background, { aps: { "content-available": 1 } }), [200, undefined]);
      assert.deepEqual(await send(background, { aps: { "content-available": 1, badge: 1 } }), [400, "BadPayload"]);
      assert.deepEqual(await send(background, { aps: {} }), [400, "BadPayload"]);
      assert.deepEqual(await send({ "apns-push-type": "background" }, { aps: { "content-available": 1 } }), [400, "BadPriority"]);
      assert.deepEqual(await send({}, { aps: { "content-available": 1 }, event_id: "$e" }), [400, "BadPriority"]);
      assert.deepEqual(await send({ "apns-priority": "5" }, { event_id: "$e" }), [200, undefined]);
    } finally {
      await fake.close();
    }
  });
});
