// WebPush and UnifiedPush end to end: the built worker in workerd sends to a
// fake push service that verifies the VAPID signature and decrypts each body
// with the browser-style subscription's private key, and to a fake
// UnifiedPush endpoint. Every outcome of docs/design.md §9 "WebPush" and §10
// "UnifiedPush", and the `allowed_endpoints` rule (§6 "Endpoints a device
// names"), is driven here.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, beforeEach, describe, test } from "node:test";
import { startFakeUnifiedPush } from "../fakes/unifiedpush.mjs";
import { generateVapidKey, startFakePushService } from "../fakes/webpush.mjs";
import { notification, startWorker, synapseFixture } from "./harness.mjs";

const WEB = "com.example.web";
const LOCAL = ["http://127.0.0.1:*"];
const vapid = generateVapidKey();
const otherVapid = generateVapidKey();

const webApp = (extra = {}) =>
  Object.fromEntries(
    Object.entries({
      type: "webpush",
      vapid_private_key_secret: "VAPID_KEY",
      vapid_contact: "mailto:ops@example.com",
      allowed_endpoints: LOCAL,
      ...extra,
    }).filter(([, v]) => v !== undefined),
  );

function assertStatus(response, status) {
  assert.equal(response.status, status, response.text);
}

/** A pusher for a subscription: pushkey = p256dh, data = {endpoint, auth}. */
const webDevice = (sub, data = {}, app_id = WEB) => ({
  app_id,
  pushkey: sub.pushkey,
  data: { endpoint: sub.endpoint, auth: sub.auth, ...data },
});

describe("WebPush and UnifiedPush", () => {
  let push;
  let up;
  let worker;

  before(async () => {
    push = await startFakePushService({ vapidPublicB64: vapid.publicB64 });
    up = await startFakeUnifiedPush();
    worker = await startWorker({
      apps: {
        [WEB]: webApp(),
        "com.example.web.pem": webApp({ vapid_private_key_secret: "VAPID_PEM" }),
        "com.example.web.sec1": webApp({ vapid_private_key_secret: "VAPID_SEC1", ttl: 60 }),
        "com.example.web.wrongkey": webApp({ vapid_private_key_secret: "OTHER_VAPID" }),
        "com.example.web.strict": webApp({ allowed_endpoints: ["*.push.example.net"] }),
        "com.example.web.open": webApp({ allowed_endpoints: undefined }),
        "com.example.web.nobadge": webApp({ send_badge_counts: false }),
        "com.example.web.collapse": webApp({ collapse_per_room: true }),
        "*.up": { type: "unifiedpush", allowed_endpoints: LOCAL },
        "im.nobadge.app": { type: "unifiedpush", allowed_endpoints: LOCAL, send_badge_counts: false },
        "im.open.up": { type: "unifiedpush" },
      },
      secrets: {
        VAPID_KEY: vapid.raw,
        // As .dev.vars keeps a PEM: one line with literal \n.
        VAPID_PEM: vapid.pkcs8.replace(/\n/g, "\\n"),
        VAPID_SEC1: vapid.sec1,
        OTHER_VAPID: otherVapid.raw,
      },
      vars: { MAX_TRIES: "3", RETRY_BASE_MS: "1" },
    });
  });
  after(async () => {
    await worker?.close();
    await push?.close();
    await up?.close();
  });
  beforeEach(() => {
    push.reset();
    up.reset();
  });

  describe("WebPush payloads", () => {
    test("a browser-style subscription receives a payload it can decrypt", async () => {
      const sub = push.subscribe();
      const body = structuredClone(synapseFixture("message-ios"));
      body.notification.devices = [webDevice(sub, { default_payload: { session_id: "s-1" } })];
      const r = await worker.notify(body);
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
      assert.deepEqual(push.violations, []);
      assert.equal(push.delivered.length, 1);
      const n = body.notification;
      assert.deepEqual(push.delivered[0].payload, {
        session_id: "s-1",
        room_id: n.room_id,
        event_id: n.event_id,
        type: n.type,
        sender: n.sender,
        sender_display_name: n.sender_display_name,
        room_name: n.room_name,
        content: n.content,
        unread: 1,
        prio: "high",
      });
    });

    test("headers: TTL 900 by default, Urgency from what the user sees, aes128gcm, no Topic unless asked", async () => {
      const sub = push.subscribe();
      assertStatus(await worker.notify(notification([webDevice(sub)])), 200);
      const { headers } = push.delivered[0];
      assert.equal(headers.ttl, "900");
      assert.equal(headers.urgency, "high");
      assert.equal(headers["content-encoding"], "aes128gcm");
      assert.equal(headers.topic, undefined);

      push.reset();
      const low = notification([webDevice(sub, { only_last_per_room: true }, "com.example.web.sec1")], { prio: "low" });
      assertStatus(await worker.notify(low), 200);
      const h = push.delivered[0].headers;
      assert.equal(h.ttl, "60");
      assert.equal(h.urgency, "normal", "a low-priority message is still shown: RFC 8030's chat message");
      const expectedTopic = crypto.createHash("sha256").update("!room:example.org").digest("base64url").slice(0, 32);
      assert.equal(h.topic, expectedTopic);
    });

    test("badge counts off: no unread or missed_calls; a push without an event goes at Urgency low", async () => {
      const byDevice = push.subscribe();
      const byApp = push.subscribe();
      const receipt = push.subscribe();
      const counts = { counts: { unread: 2, missed_calls: 1 } };
      assertStatus(await worker.notify(notification([webDevice(byDevice, { "org.matrix.msc4076.disable_badge_count": true })], counts)), 200);
      assertStatus(await worker.notify(notification([webDevice(byApp, {}, "com.example.web.nobadge")], counts)), 200);
      assertStatus(await worker.notify({ notification: { counts: { unread: 3 }, devices: [
        webDevice(receipt, { disable_badge_count: true, default_payload: { session_id: "s-1" } }),
      ] } }), 200);
      assert.deepEqual(push.violations, []);
      const sent = (sub) => push.delivered.find((d) => d.id === sub.id);
      for (const sub of [byDevice, byApp]) {
        assert.equal(sent(sub).payload.unread, undefined);
        assert.equal(sent(sub).payload.missed_calls, undefined);
        assert.equal(sent(sub).payload.event_id, "$event:example.org");
        assert.equal(sent(sub).headers.urgency, "high");
      }
      assert.deepEqual(sent(receipt).payload, { session_id: "s-1", prio: "high" });
      assert.equal(sent(receipt).headers.urgency, "low", "RFC 8030: may wait for power or Wi-Fi");
    });

    test("collapse_per_room: a Topic per room (32 base64url characters), never for a ring or a badge update", async () => {
      const message = push.subscribe();
      const ring = push.subscribe();
      const badge = push.subscribe();
      const app = "com.example.web.collapse";
      const longRoom = `!${"r".repeat(200)}:example.org`;
      assertStatus(await worker.notify(notification([webDevice(message, {}, app)], { room_id: longRoom })), 200);
      assertStatus(await worker.notify(notification([webDevice(ring, {}, app)], { type: "m.call.invite", content: {} })), 200);
      assertStatus(await worker.notify({ notification: { room_id: "!room:example.org", counts: { unread: 1 }, devices: [webDevice(badge, {}, app)] } }), 200);
      assert.deepEqual(push.violations, [], "the fake refuses a Topic over 32 characters or outside base64url");
      const sent = (sub) => push.delivered.find((d) => d.id === sub.id);
      assert.equal(sent(message).headers.topic, crypto.createHash("sha256").update(longRoom).digest("base64url").slice(0, 32));
      assert.equal(sent(ring).headers.topic, undefined);
      assert.equal(sent(badge).headers.topic, undefined);
    });

    test("the VAPID token: aud = the push service's origin, exp ≤ 24 h, sub = vapid_contact, reused per origin", async () => {
      const a = push.subscribe();
      const b = push.subscribe();
      assertStatus(await worker.notify(notification([webDevice(a)])), 200);
      assertStatus(await worker.notify(notification([webDevice(b)])), 200);
      assert.deepEqual(push.violations, []);
      const [first, second] = push.delivered;
      assert.equal(first.claims.aud, push.origin);
      assert.equal(first.claims.sub, "mailto:ops@example.com");
      const now = Math.floor(Date.now() / 1000);
      assert.ok(first.claims.exp > now + 12 * 3600 && first.claims.exp <= now + 24 * 3600, `exp ${first.claims.exp}`);
      assert.equal(second.jwt, first.jwt, "one token per origin, shared between sends");
      assert.match(first.headers.authorization, new RegExp(`, k=${vapid.publicB64}$`));
    });

    test("the VAPID key may be PKCS#8 or SEC1 PEM as well as the raw scalar", async () => {
      const sub = push.subscribe();
      for (const app of ["com.example.web.pem", "com.example.web.sec1"]) {
        const r = await worker.notify(notification([webDevice(sub, {}, app)]));
        assertStatus(r, 200);
      }
      assert.deepEqual(push.violations, []);
      assert.equal(push.delivered.length, 2);
    });

    test("event_id_only: ids, counts, prio and default_payload only", async () => {
      const sub = push.subscribe();
      const body = structuredClone(synapseFixture("event_id_only-android"));
      body.notification.devices = [webDevice(sub, { format: "event_id_only", default_payload: { cs: "c" } })];
      assertStatus(await worker.notify(body), 200);
      const n = body.notification;
      assert.deepEqual(push.delivered[0].payload, {
        cs: "c", room_id: n.room_id, event_id: n.event_id, unread: 1, prio: "high",
      });
    });

    test("a long message is trimmed so the encrypted record fits 4096 bytes", async () => {
      const sub = push.subscribe();
      const text = "€😀é".repeat(2000);
      const r = await worker.notify(notification([webDevice(sub)], { content: { msgtype: "m.text", body: text } }));
      assertStatus(r, 200);
      assert.deepEqual(push.violations, [], "the fake refuses bodies over 4096 bytes");
      const sent = push.delivered[0];
      assert.ok(sent.bodyLength <= 4096, `${sent.bodyLength} bytes`);
      const kept = sent.payload.content.body;
      assert.ok(kept.length > 100 && !kept.includes("\uFFFD"));
      assert.ok(text.startsWith(kept.replace(/…$/, "")));
    });

    test("events_only: a push without event_id is skipped, with no request", async () => {
      const sub = push.subscribe();
      const badge = { notification: { counts: { unread: 0 }, devices: [webDevice(sub, { events_only: true })] } };
      const r = await worker.notify(badge);
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
      assert.equal(push.requests.length, 0);
    });
  });

  describe("WebPush outcomes", () => {
    for (const answer of ["ok", "okPlain", "accepted"]) {
      test(`${answer}: delivered`, async () => {
        const sub = push.subscribe();
        push.answer(sub.id, answer);
        const r = await worker.notify(notification([webDevice(sub)]));
        assertStatus(r, 200);
        assert.deepEqual(r.json, { rejected: [] });
      });
    }

    for (const answer of ["notFound", "gone"]) {
      test(`${answer}: rejected, not retried`, async () => {
        const dead = push.subscribe();
        const alive = push.subscribe();
        push.answer(dead.id, answer);
        const r = await worker.notify(notification([webDevice(dead), webDevice(alive)]));
        assertStatus(r, 200);
        assert.deepEqual(r.json, { rejected: [dead.pushkey] });
        assert.equal(push.requestsFor(dead.id).length, 1);
      });
    }

    for (const answer of ["unauthorized", "forbidden", "tooLarge", "badRequest"]) {
      test(`${answer}: 502 (our side), not retried, never rejected`, async () => {
        const sub = push.subscribe();
        push.answer(sub.id, answer);
        const r = await worker.notify(notification([webDevice(sub)]));
        assertStatus(r, 502);
        assert.equal(r.json.errcode, "M_UNKNOWN");
        assert.equal(push.requestsFor(sub.id).length, 1);
      });
    }

    test("a VAPID key the push service does not know: 502, never rejected", async () => {
      const sub = push.subscribe();
      const r = await worker.notify(notification([webDevice(sub, {}, "com.example.web.wrongkey")]));
      assertStatus(r, 502);
      assert.match(push.violations[0], /^403: k is not the key/);
    });

    for (const answer of ["tooMany", "unavailable"]) {
      test(`${answer} every time: retried MAX_TRIES times, then 502`, async () => {
        const sub = push.subscribe();
        push.answer(sub.id, answer);
        const r = await worker.notify(notification([webDevice(sub)]));
        assertStatus(r, 502);
        assert.equal(push.requestsFor(sub.id).length, 3);
      });

      test(`${answer} once: retried and delivered, the same bytes each time`, async () => {
        const sub = push.subscribe();
        push.answer(sub.id, [answer, "ok"]);
        const r = await worker.notify(notification([webDevice(sub)]));
        assertStatus(r, 200);
        const [first, second] = push.requestsFor(sub.id);
        assert.ok(second && first.body.equals(second.body));
      });
    }

    test("a redirect is not followed: 502, one request", async () => {
      const sub = push.subscribe();
      push.answer(sub.id, "redirect");
      const r = await worker.notify(notification([webDevice(sub)]));
      assertStatus(r, 502);
      assert.equal(push.requests.length, 1);
    });

    test("unusable subscription data: rejected without a request", async () => {
      const sub = push.subscribe();
      const broken = [
        { app_id: WEB, pushkey: sub.pushkey, data: { auth: sub.auth } },
        { app_id: WEB, pushkey: "p256dh-not-a-key", data: { endpoint: sub.endpoint, auth: sub.auth } },
        { app_id: WEB, pushkey: `${sub.pushkey}x`, data: { endpoint: sub.endpoint } },
        { app_id: WEB, pushkey: `${sub.pushkey}y`, data: { endpoint: sub.endpoint, auth: "short" } },
        { app_id: WEB, pushkey: `${sub.pushkey}z`, data: { endpoint: sub.endpoint, auth: sub.auth, default_payload: 3 } },
      ];
      const r = await worker.notify(notification(broken));
      assertStatus(r, 200);
      assert.deepEqual(r.json.rejected.sort(), broken.map((d) => d.pushkey).sort());
      assert.equal(push.requests.length, 0);
    });
  });

  describe("allowed_endpoints", () => {
    test("an endpoint outside the app's list is rejected with no request", async () => {
      const sub = push.subscribe();
      const r = await worker.notify(notification([webDevice(sub, {}, "com.example.web.strict")]));
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [sub.pushkey] });
      assert.equal(push.requests.length, 0);
    });

    test("without a list, http and IP-literal endpoints are rejected with no request", async () => {
      const sub = push.subscribe();
      const endpoints = [
        sub.endpoint,
        sub.endpoint.replace("http://", "https://"),
        `https://localhost:${new URL(sub.endpoint).port}/push/${sub.id}`,
        "https://[::1]/push/x",
      ];
      const devices = endpoints.map((endpoint, i) => ({
        app_id: "com.example.web.open", pushkey: `${sub.pushkey}${i}`, data: { endpoint, auth: sub.auth },
      }));
      const r = await worker.notify(notification(devices));
      assertStatus(r, 200);
      assert.deepEqual(r.json.rejected.sort(), devices.map((d) => d.pushkey).sort());
      assert.equal(push.requests.length, 0);
    });

    test("UnifiedPush: disallowed endpoints are rejected with no request", async () => {
      const { url } = up.endpoint();
      const devices = [
        { app_id: "im.open.up", pushkey: url },
        { app_id: "im.open.up", pushkey: url.replace("http://127.0.0.1", "https://127.0.0.1") },
        { app_id: "im.app.up", pushkey: url.replace("http://127.0.0.1", "http://localhost") },
        { app_id: "im.app.up", pushkey: "not a url" },
      ];
      const r = await worker.notify(notification(devices));
      assertStatus(r, 200);
      assert.deepEqual(r.json.rejected.sort(), devices.map((d) => d.pushkey).sort());
      assert.equal(up.requests.length, 0);
    });

    test("the log names the origin at most, never a whole pushkey or endpoint path", async () => {
      const sub = push.subscribe();
      const { url } = up.endpoint();
      await worker.notify(notification([
        webDevice(sub, {}, "com.example.web.strict"),
        { app_id: "im.open.up", pushkey: url },
      ]));
      const line = await worker.waitForLog((l) => l.message.includes("com.example.web.strict"));
      assert.ok(line, "one log line per notify");
      assert.match(line.message, /data\.endpoint: http:\/\/127\.0\.0\.1:\d+ is not in allowed_endpoints/);
      const logs = worker.logText();
      assert.ok(!logs.includes(sub.pushkey), "a whole p256dh in the log");
      assert.ok(!logs.includes(url) && !logs.includes(new URL(url).pathname), "an endpoint path in the log");
    });
  });

  describe("UnifiedPush", () => {
    test("the endpoint receives the notification without devices", async () => {
      const { id, url } = up.endpoint();
      const body = structuredClone(synapseFixture("message-ios"));
      body.notification.devices = [{ app_id: "im.app.up", pushkey: url, data: {} }];
      const r = await worker.notify(body);
      assertStatus(r, 200);
      assert.deepEqual(r.json, { rejected: [] });
      assert.deepEqual(up.violations, []);
      const [sent] = up.delivered;
      assert.equal(sent.id, id);
      const { devices: _devices, ...expected } = body.notification;
      assert.deepEqual(sent.json, { notification: expected });
      assert.match(sent.headers["content-type"], /^application\/json/);
    });

    test("event_id_only: ids, counts and prio", async () => {
      const { url } = up.endpoint();
      const body = structuredClone(synapseFixture("message-ios"));
      body.notification.devices = [{ app_id: "im.app.up", pushkey: url, data: { format: "event_id_only" } }];
      assertStatus(await worker.notify(body), 200);
      const n = body.notification;
      assert.deepEqual(up.delivered[0].json, {
        notification: { event_id: n.event_id, room_id: n.room_id, counts: n.counts, prio: n.prio },
      });
    });

    test("badge counts off (app or pusher): the notification goes without counts", async () => {
      const byApp = up.endpoint();
      const byDevice = up.endpoint();
      const body = structuredClone(synapseFixture("message-ios"));
      body.notification.devices = [
        { app_id: "im.nobadge.app", pushkey: byApp.url, data: {} },
        { app_id: "im.app.up", pushkey: byDevice.url, data: { format: "event_id_only", "org.matrix.msc4076.disable_badge_count": true } },
      ];
      assertStatus(await worker.notify(body), 200);
      assert.deepEqual(up.violations, []);
      const n = body.notification;
      const sent = (endpoint) => up.delivered.find((d) => d.id === endpoint.id).json.notification;
      const { devices: _devices, counts: _counts, ...withoutCounts } = n;
      assert.deepEqual(sent(byApp), withoutCounts);
      assert.deepEqual(sent(byDevice), { event_id: n.event_id, room_id: n.room_id, prio: n.prio });
    });

    test("a long message is trimmed to 4096 bytes", async () => {
      const { url } = up.endpoint();
      const text = "ü€".repeat(3000);
      const r = await worker.notify(notification([{ app_id: "im.app.up", pushkey: url }], { content: { msgtype: "m.text", body: text } }));
      assertStatus(r, 200);
      assert.deepEqual(up.violations, []);
      const sent = up.delivered[0];
      assert.ok(sent.bodyLength <= 4096, `${sent.bodyLength} bytes`);
      assert.ok(text.startsWith(sent.json.notification.content.body.replace(/…$/, "")));
    });

    for (const answer of ["unauthorized", "paymentRequired", "forbidden", "notFound", "gone"]) {
      test(`${answer}: rejected, not retried`, async () => {
        const dead = up.endpoint();
        const alive = up.endpoint();
        up.answer(dead.id, answer);
        const r = await worker.notify(notification([
          { app_id: "im.app.up", pushkey: dead.url },
          { app_id: "im.app.up", pushkey: alive.url },
        ]));
        assertStatus(r, 200);
        assert.deepEqual(r.json, { rejected: [dead.url] });
        assert.equal(up.requestsFor(dead.id).length, 1);
      });
    }

    for (const answer of ["badRequest", "tooLarge"]) {
      test(`${answer}: 502, not retried, never rejected`, async () => {
        const e = up.endpoint();
        up.answer(e.id, answer);
        const r = await worker.notify(notification([{ app_id: "im.app.up", pushkey: e.url }]));
        assertStatus(r, 502);
        assert.equal(up.requestsFor(e.id).length, 1);
      });
    }

    for (const answer of ["tooMany", "unavailable"]) {
      test(`${answer} every time: retried MAX_TRIES times, then 502`, async () => {
        const e = up.endpoint();
        up.answer(e.id, answer);
        const r = await worker.notify(notification([{ app_id: "im.app.up", pushkey: e.url }]));
        assertStatus(r, 502);
        assert.equal(up.requestsFor(e.id).length, 3);
      });

      test(`${answer} once: retried and delivered`, async () => {
        const e = up.endpoint();
        up.answer(e.id, [answer, "ok"]);
        const r = await worker.notify(notification([{ app_id: "im.app.up", pushkey: e.url }]));
        assertStatus(r, 200);
        assert.equal(up.requestsFor(e.id).length, 2);
      });
    }

    test("a network error (nothing listening): transient, then 502", async () => {
      const r = await worker.notify(notification([{ app_id: "im.app.up", pushkey: "http://127.0.0.1:9/upGone" }]));
      assertStatus(r, 502);
    });
  });
});
