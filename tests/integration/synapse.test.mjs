// A real homeserver end to end: Synapse (from PyPI, cached) pushes through
// edgepush in workerd to the fake APNs and FCM, which verify the tokens the
// worker signs. Alice invites Bob to a room, Bob joins, Alice writes messages
// and an encrypted-style event; Bob's pushers are an APNs app (full format),
// an FCM app asking for `event_id_only`, and an APNs device Apple has
// forgotten (410), which Synapse must delete because edgepush rejected it.
//
// Skips only when the Python package index is unreachable (Synapse cannot be
// installed); any other failure fails.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, test } from "node:test";
import { generateApnsKey, hexToken, randomPushkey, startFakeApns } from "../fakes/apns.mjs";
import { generateServiceAccount, startFakeFcm } from "../fakes/fcm.mjs";
import { exposeWorker } from "../synapse/expose.mjs";
import { ensureSynapse, eventually, startSynapse } from "../synapse/synapse.mjs";
import { startWorker } from "./harness.mjs";
import { findLeaks } from "./leaks.mjs";

const KEY_ID = "KEY1234567";
const TEAM_ID = "TEAM123456";
const TOPIC = "org.example.synapse-e2e";
const PROJECT = "synapse-e2e";
const IOS = "org.example.app.ios";
const ANDROID = "org.example.app.android";
const ROOM_NAME = "Push test room";
const PUSH_TIMEOUT_MS = 30_000;

const apnsKey = generateApnsKey();
const account = generateServiceAccount({ clientEmail: `edgepush@${PROJECT}.iam.gserviceaccount.com`, projectId: PROJECT });

const install = await ensureSynapse();
const skip = "skip" in install ? install.skip : false;
if (skip) process.stderr.write(`synapse e2e skipped: ${skip}\n`);

describe("Synapse end to end", { skip, timeout: 5 * 60 * 1000 }, () => {
  /** @type {Awaited<ReturnType<typeof startFakeApns>>} */ let apns;
  /** @type {Awaited<ReturnType<typeof startFakeFcm>>} */ let fcm;
  /** @type {Awaited<ReturnType<typeof startWorker>>} */ let worker;
  /** @type {Awaited<ReturnType<typeof exposeWorker>>} */ let gateway;
  /** @type {Awaited<ReturnType<typeof startSynapse>>} */ let hs;
  let alice;
  let bob;
  let roomId;
  const iosPushkey = randomPushkey();
  const deadPushkey = randomPushkey();
  const fcmPushkey = `fcm-${crypto.randomBytes(48).toString("base64url")}`;
  /** Events Alice sent, by what they are. */
  const sent = {};

  before(async () => {
    apns = await startFakeApns({ publicKey: apnsKey.publicKey, keyId: KEY_ID, teamId: TEAM_ID, topic: TOPIC });
    fcm = await startFakeFcm({ accounts: [account], projectId: PROJECT });
    apns.answer(hexToken(deadPushkey), "Unregistered");
    worker = await startWorker({
      apps: {
        [IOS]: { type: "apns", topic: TOPIC, team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY", url: apns.origin },
        [ANDROID]: { type: "fcm", project_id: PROJECT, service_account_secret: "FCM_SERVICE_ACCOUNT", url: fcm.origin },
      },
      secrets: { APNS_KEY: apnsKey.p8, FCM_SERVICE_ACCOUNT: account.keyFile(fcm.tokenUri) },
    });
    gateway = await exposeWorker(worker);
    hs = await startSynapse(/** @type {{python: string}} */ (install).python);
    alice = await hs.register("alice", "Alice");
    bob = await hs.register("bob", "Bob");

    const pusher = (app_id, pushkey, data) => hs.api(bob, "POST", "/_matrix/client/v3/pushers/set", {
      kind: "http", app_id, pushkey, app_display_name: "edgepush e2e", device_display_name: app_id,
      lang: "en", data: { url: gateway.notifyUrl, ...data },
    });
    await pusher(IOS, iosPushkey, { default_payload: { aps: { "mutable-content": 1 } } });
    await pusher(ANDROID, fcmPushkey, { format: "event_id_only", default_payload: { cs: "per-user-secret" } });
    await pusher(IOS, deadPushkey, {});

    ({ room_id: roomId } = await hs.api(alice, "POST", "/_matrix/client/v3/createRoom", { name: ROOM_NAME, preset: "private_chat" }));
    await hs.api(alice, "POST", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/invite`, { user_id: bob.userId });
    await hs.api(bob, "POST", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/join`, {});
    const send = (type, content) => hs.api(
      alice, "PUT",
      `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/${type}/${crypto.randomUUID()}`,
      content,
    );
    sent.first = (await send("m.room.message", { msgtype: "m.text", body: "Hello Bob" })).event_id;
    sent.second = (await send("m.room.message", { msgtype: "m.text", body: "Are you there? ✨" })).event_id;
    sent.encrypted = (await send("m.room.encrypted", {
      algorithm: "m.megolm.v1.aes-sha2",
      ciphertext: crypto.randomBytes(96).toString("base64"),
      sender_key: crypto.randomBytes(32).toString("base64").replace(/=+$/, ""),
      session_id: crypto.randomBytes(32).toString("base64").replace(/=+$/, ""),
      device_id: "ALICEDEVICE",
    })).event_id;
  });

  after(async () => {
    await hs?.stop();
    await gateway?.close();
    await worker?.close();
    await apns?.close();
    await fcm?.close();
  });

  /** The APNs payload delivered to the live iOS device for `eventId`. */
  const apnsPush = (eventId) => eventually(`the APNs push of ${eventId}`, () =>
    apns.delivered.find((d) => d.token === hexToken(iosPushkey) && d.payload.event_id === eventId), PUSH_TIMEOUT_MS);
  const fcmPush = (eventId) => eventually(`the FCM push of ${eventId}`, () =>
    fcm.delivered.find((d) => d.pushkey === fcmPushkey && d.message.data.event_id === eventId), PUSH_TIMEOUT_MS);

  test("the invite reaches APNs as USER_INVITE_TO_NAMED_ROOM", async () => {
    const invite = await eventually("the APNs invite push", () =>
      apns.delivered.find((d) => d.token === hexToken(iosPushkey) && d.payload.aps?.alert?.["loc-key"]?.startsWith("USER_INVITE")),
    PUSH_TIMEOUT_MS);
    assert.equal(invite.payload.aps.alert["loc-key"], "USER_INVITE_TO_NAMED_ROOM");
    assert.deepEqual(invite.payload.aps.alert["loc-args"], ["Alice", ROOM_NAME]);
    assert.equal(invite.payload.room_id, roomId);
    assert.equal(invite.payload.aps["mutable-content"], 1, "the pusher's default_payload is merged");
  });

  test("messages reach APNs with loc-key, loc-args, badge, ids and the default_payload", async () => {
    for (const [eventId, body] of [[sent.first, "Hello Bob"], [sent.second, "Are you there? ✨"]]) {
      const push = await apnsPush(eventId);
      assert.equal(push.payload.aps.alert["loc-key"], "MSG_FROM_USER_IN_ROOM_WITH_CONTENT");
      assert.deepEqual(push.payload.aps.alert["loc-args"], ["Alice", ROOM_NAME, body]);
      assert.equal(push.payload.room_id, roomId);
      assert.ok(Number.isInteger(push.payload.aps.badge) && push.payload.aps.badge >= 1, JSON.stringify(push.payload));
      assert.equal(push.payload.aps["mutable-content"], 1);
      assert.equal(push.headers["apns-topic"], TOPIC);
      assert.equal(push.headers["apns-push-type"], "alert");
    }
  });

  test("the encrypted event reaches APNs without its ciphertext, as high priority", async () => {
    const push = await apnsPush(sent.encrypted);
    assert.equal(push.payload.aps.alert["loc-key"], "MSG_FROM_USER_IN_ROOM");
    assert.deepEqual(push.payload.aps.alert["loc-args"], ["Alice", ROOM_NAME]);
    assert.equal(push.headers["apns-priority"], "10", "Synapse sends encrypted events as prio high");
    assert.ok(!push.raw.includes("ciphertext"), push.raw);
  });

  test("every APNs request carried a provider token the fake verified", async () => {
    await apnsPush(sent.encrypted);
    assert.deepEqual(apns.violations, []);
    assert.ok(apns.tokensSeen.length >= apns.requests.length, "every request's ES256 JWT verified");
    for (const t of apns.tokensSeen) {
      assert.equal(t.header.kid, KEY_ID);
      assert.equal(t.claims.iss, TEAM_ID);
    }
  });

  test("the FCM pusher asked for event_id_only and got ids, counts and its default_payload only", async () => {
    const pushes = [];
    for (const eventId of [sent.first, sent.second, sent.encrypted]) pushes.push(await fcmPush(eventId));
    for (const push of pushes) {
      const data = push.message.data;
      assert.equal(data.room_id, roomId);
      assert.match(data.unread, /^\d+$/, "unread as a decimal string");
      assert.equal(data.cs, "per-user-secret", "default_payload keys flattened into data");
      for (const key of ["sender", "sender_display_name", "room_name", "type", "content_body", "content_msgtype"]) {
        assert.ok(!(key in data), `event_id_only carries no ${key}: ${JSON.stringify(data)}`);
      }
      assert.ok(Object.values(data).every((v) => typeof v === "string"));
      assert.equal(push.message.token, fcmPushkey, "the pushkey is sent as is");
    }
    const encrypted = pushes[2];
    assert.equal(encrypted.message.data.prio, "high");
    assert.equal(encrypted.message.android.priority, "high");
  });

  test("every FCM send used an access token the fake issued for a verified assertion", async () => {
    await fcmPush(sent.encrypted);
    assert.deepEqual(fcm.violations, []);
    assert.ok(fcm.assertions.length >= 1);
    for (const a of fcm.assertions) assert.equal(a.claims.iss, account.clientEmail);
    assert.ok(fcm.delivered.every((d) => d.accessToken.startsWith("ya29.fake-")));
  });

  test("the dead APNs device was rejected and Synapse deleted its pusher", async () => {
    const answered = await eventually("edgepush rejecting the dead pushkey", () =>
      gateway.requests.find((r) => r.status === 200 && JSON.parse(r.answer).rejected?.includes(deadPushkey)), PUSH_TIMEOUT_MS);
    assert.ok(answered);
    const pushers = await eventually("Synapse deleting the dead pusher", async () => {
      const { pushers: list } = await hs.api(bob, "GET", "/_matrix/client/v3/pushers");
      return list.some((p) => p.pushkey === deadPushkey) ? undefined : list;
    }, PUSH_TIMEOUT_MS, 250);
    assert.deepEqual(pushers.map((p) => p.pushkey).sort(), [fcmPushkey, iosPushkey].sort(), "the live pushers stay");
    assert.equal(apns.requestsFor(hexToken(deadPushkey)).length >= 1, true);
  });

  test("Bob's read receipt: Synapse's badge-only push (type null, sender \"\") becomes aps.badge alone", async () => {
    await apnsPush(sent.encrypted);
    await fcmPush(sent.encrypted);
    await hs.api(bob, "POST",
      `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/receipt/m.read/${encodeURIComponent(sent.encrypted)}`, {});
    const badge = await eventually("the APNs badge-only push", () =>
      apns.delivered.find((d) => d.token === hexToken(iosPushkey) && d.payload.event_id === undefined), PUSH_TIMEOUT_MS);
    assert.deepEqual(badge.payload, { aps: { badge: 0 } }, "no default_payload, no ids: no ghost alert");
    const fcmBadge = await eventually("the FCM badge-only push", () =>
      fcm.delivered.find((d) => d.pushkey === fcmPushkey && d.message.data.event_id === undefined), PUSH_TIMEOUT_MS);
    assert.equal(fcmBadge.message.data.unread, "0");
    assert.ok(!("cs" in fcmBadge.message.data), "badge-only carries no default_payload");
  });

  test("no push answered 200 without the provider taking it; nothing was retried by Synapse", async () => {
    await fcmPush(sent.encrypted);
    await apnsPush(sent.encrypted);
    const notifies = gateway.requests.filter((r) => r.path === "/_matrix/push/v1/notify");
    assert.ok(notifies.length >= 7, `${notifies.length} notifies`);
    assert.deepEqual(notifies.filter((r) => r.status !== 200).map((r) => `${r.status} ${r.answer}`), []);
  });

  test("the worker's log holds no key, token or whole pushkey", async () => {
    await fcmPush(sent.encrypted);
    assert.ok(await worker.waitForNotifyLogs(), "every notify's log line arrived before the scan");
    const leaks = findLeaks(worker.logs, {
      secrets: [apnsKey.p8, account.keyFile(fcm.tokenUri)],
      tokens: [...apns.tokensSeen.map((t) => t.jwt), ...fcm.delivered.map((d) => d.accessToken)],
      pushkeys: [iosPushkey, deadPushkey, fcmPushkey],
    });
    assert.deepEqual(leaks, []);
  });
});
