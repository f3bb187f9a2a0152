// Deferred delivery through Cloudflare Queues (Miniflare runs them locally):
// with DEFERRED_QUEUE bound, a device still failing after a notify's own
// tries is queued and the homeserver gets 200; the worker's queue consumer
// sends it again until it is delivered, the device turns out dead, or it is
// older than DEFERRED_MAX_AGE_SECS (then it goes to DEFERRED_DLQ).
//
// The fault proxy (tests/fakes/faults.mjs) makes APNs and FCM fail; the
// fakes behind it keep verifying every request that gets through. Delays and
// the age limit are a few seconds here (DEFERRED_* knobs), a batch waits at
// most 0.1 s. Figures are printed, never asserted: timing is not a test.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, beforeEach, describe, test } from "node:test";
import { generateApnsKey, hexToken, randomPushkey, startFakeApns } from "../fakes/apns.mjs";
import { forbidInLogs } from "../fakes/common.mjs";
import { FAULTS, closedOrigin, startFaultProxy } from "../fakes/faults.mjs";
import { generateServiceAccount, startFakeFcm } from "../fakes/fcm.mjs";
import { notification, startWorker } from "./harness.mjs";
import { findLeaks } from "./leaks.mjs";

const KEY_ID = "KEY1234567";
const TEAM_ID = "TEAM123456";
const PROJECT = "deferred-123";
/** Short everything: one in-request retry, a queue round every second. */
const KNOBS = {
  MAX_TRIES: "2",
  RETRY_BASE_MS: "1",
  SEND_TIMEOUT_MS: "1000",
  DEFERRED_RETRY_BASE_SECS: "1",
  DEFERRED_RETRY_MAX_SECS: "1",
  DEFERRED_MAX_AGE_SECS: "60",
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Wait until `done()` is true (polling), or `timeoutMs` passed; returns whether it became true. */
async function waitFor(done, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await done()) return true;
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
}

/** The worker's `"msg":"deferred"` lines (one per queue message handled), parsed. */
function consumerLines(worker) {
  return worker.logs
    .map((l) => ({ level: l.level, line: JSON.parse(l.message.startsWith("{") ? l.message : "{}") }))
    .filter(({ line }) => line.msg === "deferred")
    .map(({ level, line }) => ({ level, ...line }));
}

/** The device entries of the worker's notify lines. */
function notifyDevices(worker) {
  return worker.logs
    .map((l) => (l.message.startsWith("{") ? JSON.parse(l.message) : {}))
    .filter((line) => line.msg === "notify")
    .flatMap((line) => line.devices);
}

describe("deferred delivery", () => {
  const apnsKey = generateApnsKey();
  const account = generateServiceAccount({ clientEmail: `deferred@${PROJECT}.iam.gserviceaccount.com`, projectId: PROJECT });
  let apns;
  let fcm;
  let apnsProxy;
  let fcmProxy;
  let worker;
  const pushkeys = [];

  const apps = () => ({
    "app.ios": { type: "apns", topic: "com.example", team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY", url: apnsProxy.origin },
    "app.android": { type: "fcm", project_id: PROJECT, service_account_secret: "FCM", url: fcmProxy.origin },
    "app.android.shown": { type: "fcm", project_id: PROJECT, service_account_secret: "FCM", url: fcmProxy.origin, fcm_notification: true },
  });
  const secrets = () => ({ APNS_KEY: apnsKey.p8, FCM: account.keyFile(fcm.tokenUri) });
  const start = (vars = {}, deferred = {}) => startWorker({ apps: apps(), secrets: secrets(), vars: { ...KNOBS, ...vars }, deferred });
  const iosDevice = () => {
    const pushkey = randomPushkey();
    pushkeys.push(pushkey, hexToken(pushkey));
    return { key: hexToken(pushkey), device: { app_id: "app.ios", pushkey } };
  };
  const androidDevice = (appId = "app.android") => {
    const pushkey = forbidInLogs("pushkeys", `fcm-${crypto.randomBytes(16).toString("base64url")}`);
    pushkeys.push(pushkey);
    return { key: pushkey, device: { app_id: appId, pushkey } };
  };

  before(async () => {
    apns = await startFakeApns({ publicKey: apnsKey.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
    fcm = await startFakeFcm({ accounts: [account], projectId: PROJECT });
    apnsProxy = await startFaultProxy({ upstream: apns.origin, keyOf: (req) => req.path.split("/").pop() ?? "" });
    fcmProxy = await startFaultProxy({ upstream: fcm.origin, keyOf: (req) => req.json?.message?.token ?? req.path });
  });

  beforeEach(() => {
    for (const fake of [apns, fcm, apnsProxy, fcmProxy]) fake.reset();
  });

  after(async () => {
    await worker?.close();
    for (const fake of [apnsProxy, fcmProxy, apns, fcm]) await fake?.close();
  });

  const closeWorker = async () => {
    assert.ok(await worker.waitForNotifyLogs(), "every notify's log line arrived before the scan");
    const leaks = findLeaks(worker.logs, {
      secrets: [apnsKey.p8, account.keyFile(fcm.tokenUri)],
      tokens: [...apns.tokensSeen.map((t) => t.jwt), ...fcm.delivered.map((d) => d.accessToken)],
      pushkeys,
    });
    await worker.close();
    worker = undefined;
    assert.deepEqual(leaks, [], "nothing secret in the log");
    assert.deepEqual(apns.violations, []);
    assert.deepEqual(fcm.violations, []);
  };

  test("an outage of APNs and FCM: the homeserver gets 200 at once, every push arrives after recovery, none shows twice", async () => {
    worker = await start();
    let outage = true;
    const failing = () => (outage ? FAULTS.unavailable : "pass");
    apnsProxy.setChooser(failing);
    fcmProxy.setChooser(failing);
    fcm.tokenAnswer(["down"]);

    const devices = [
      ...Array.from({ length: 10 }, iosDevice),
      ...Array.from({ length: 5 }, () => androidDevice()),
      ...Array.from({ length: 5 }, () => androidDevice("app.android.shown")),
    ];
    const outageStarted = Date.now();
    const answers = await Promise.all(
      devices.map((d, i) => worker.notify(notification([d.device], { event_id: `$outage${i}:example.org` }))),
    );
    for (const r of answers) assert.deepEqual([r.status, r.json], [200, { rejected: [] }], "settled for the homeserver");
    const outcomes = notifyDevices(worker).map((d) => d.outcome);
    assert.deepEqual([...new Set(outcomes)], ["deferred"], "every device was deferred");

    // Let the consumer fail two rounds per device during the outage (FCM's
    // fail at the token endpoint, before a send).
    const triedAgain = await waitFor(
      () => consumerLines(worker).filter((l) => l.result === "retrying").length >= 2 * devices.length,
      15_000,
    );
    assert.ok(triedAgain, "the queue retried every device during the outage");
    assert.equal(apns.delivered.length + fcm.delivered.length, 0, "nothing got through the outage");

    // Recovery; the first send of some devices is delivered but its answer is
    // lost, so the consumer sends that push twice.
    const twice = [devices[0], devices[1], devices[10], devices[15]];
    for (const d of twice) (d.device.app_id === "app.ios" ? apnsProxy : fcmProxy).inject(d.key, [FAULTS.deliverThenReset, "pass"]);
    fcm.tokenAnswer(["ok"]);
    outage = false;
    const recoveredAt = Date.now();

    const deliveredTo = (d) =>
      d.device.app_id === "app.ios" ? apns.delivered.filter((x) => x.token === d.key) : fcm.delivered.filter((x) => x.pushkey === d.key);
    const allDelivered = await waitFor(() => devices.every((d) => deliveredTo(d).length >= 1), 30_000);
    assert.ok(allDelivered, "every deferred push was delivered after recovery");
    // Let the copies whose answers were lost arrive too.
    await waitFor(() => twice.every((d) => deliveredTo(d).length >= 2), 10_000);
    await sleep(1500);

    const firstDelivery = devices.map((d) => {
      const proxy = d.device.app_id === "app.ios" ? apnsProxy : fcmProxy;
      const through = proxy.seen(d.key).filter((l) => l.at >= recoveredAt && l.fault !== "503");
      return Math.min(...through.map((l) => l.at)) - recoveredAt;
    });
    let duplicates = 0;
    for (const d of devices) {
      const copies = deliveredTo(d);
      duplicates += copies.length - 1;
      if (d.device.app_id === "app.ios") {
        const ids = new Set(copies.map((c) => c.headers["apns-collapse-id"]));
        assert.equal(ids.size, 1, "every copy carries one apns-collapse-id: the device shows one notification");
        assert.match([...ids][0] ?? "", /^[A-Za-z0-9_-]{22}$/);
      } else if (d.device.app_id === "app.android") {
        const events = new Set(copies.map((c) => c.message.data.event_id));
        assert.equal(events.size, 1, "every copy carries the same event_id: the app shows one notification");
      } else {
        const tags = new Set(copies.map((c) => c.message.android?.notification?.tag));
        assert.equal(tags.size, 1, "every copy of a shown notification carries one tag: Android replaces it");
        const [tag] = tags;
        assert.match(tag ?? "", /^[A-Za-z0-9_-]{22}$/);
        assert.ok(copies.every((c) => c.message.apns?.headers?.["apns-collapse-id"] === tag), "and iOS through FCM");
      }
    }
    assert.ok(duplicates >= twice.length, `the lost answers were sent again (${duplicates} copies)`);
    const collapseIds = new Set(apns.delivered.map((c) => c.headers["apns-collapse-id"]));
    assert.equal(collapseIds.size, 10, "one identity per push: pushes to different devices never replace each other");

    const delivered = consumerLines(worker).filter((l) => l.result === "delivered");
    assert.ok(delivered.length >= devices.length, "the consumer logged every delivery");
    const retrying = consumerLines(worker).filter((l) => l.result === "retrying");
    assert.ok(retrying.some((l) => l.provider === "apns" && l.next_in_s === 1 && l.status === 503), "APNs rounds logged");
    assert.ok(retrying.some((l) => l.provider === "fcm" && /token/.test(l.reason)), "FCM rounds failed at the token endpoint");
    process.stdout.write(
      `deferred: ${devices.length} pushes deferred during a ${recoveredAt - outageStarted} ms outage; `
      + `first delivery after recovery: median ${median(firstDelivery)} ms, slowest ${Math.max(...firstDelivery)} ms `
      + `(DEFERRED_RETRY_MAX_SECS 1, batch timeout 0.1 s); ${duplicates} copies sent twice, each collapsed to one\n`,
    );
    await closeWorker();
  });

  test("a push still failing at DEFERRED_MAX_AGE_SECS is given up: nothing is sent after it, it goes to the dead-letter queue", async () => {
    worker = await start({ DEFERRED_MAX_AGE_SECS: "3" });
    const d = iosDevice();
    apns.answer(d.key, ["ServiceUnavailable"]);
    const r = await worker.notify(notification([d.device], { event_id: "$old:example.org" }));
    const answeredAt = Date.now();
    assert.deepEqual([r.status, r.json], [200, { rejected: [] }]);

    const expired = await waitFor(() => consumerLines(worker).some((l) => l.result === "expired"), 10_000);
    assert.ok(expired, "given up");
    const dead = await waitFor(async () => (await worker.deadLetters()).length === 1, 5000);
    assert.ok(dead, "it reached the dead-letter queue");
    await sleep(2000);

    const sends = apns.requestsFor(d.key);
    assert.ok(sends.length >= 3, `tried in the request and from the queue (${sends.length} sends)`);
    for (const s of sends) assert.ok(s.at <= answeredAt + 3000, "no send after the age limit");
    const line = consumerLines(worker).find((l) => l.result === "expired");
    assert.equal(line.level, "error");
    assert.equal(line.dead_letter, true);
    assert.match(line.reason, /DEFERRED_MAX_AGE_SECS/);
    assert.equal(consumerLines(worker).filter((l) => l.result === "expired").length, 1, "given up once");

    const [letter] = await worker.deadLetters();
    assert.equal(letter.app_id, "app.ios");
    assert.match(letter.given_up, /DEFERRED_MAX_AGE_SECS/);
    assert.equal(letter.headers.find(([name]) => name === "apns-collapse-id")?.[1], sends[0].headers["apns-collapse-id"]);
    assert.ok(!letter.headers.some(([name]) => name === "authorization"), "no credential on the queue");
    const text = JSON.stringify(letter);
    for (const t of apns.tokensSeen) assert.ok(!text.includes(t.jwt), "no provider token on the queue");
    await closeWorker();
  });

  test("a device found dead by a deferred try is logged and counted, and not tried again", async () => {
    worker = await start();
    const d = iosDevice();
    apns.answer(d.key, ["ServiceUnavailable", "ServiceUnavailable", "ServiceUnavailable", "Unregistered"]);
    const r = await worker.notify(notification([d.device], { event_id: "$gone:example.org" }));
    assert.deepEqual([r.status, r.json], [200, { rejected: [] }]);
    const rejected = await waitFor(() => consumerLines(worker).some((l) => l.result === "rejected"), 10_000);
    assert.ok(rejected, "the consumer saw the device's end");
    const line = consumerLines(worker).find((l) => l.result === "rejected");
    assert.equal(line.level, "warn");
    assert.equal(line.status, 410);
    const sends = apns.requestsFor(d.key).length;
    await sleep(2500);
    assert.equal(apns.requestsFor(d.key).length, sends, "not tried again");
    assert.deepEqual(await worker.deadLetters(), []);
    await closeWorker();
  });

  test("our own failure stays 502, and nothing is queued", async () => {
    worker = await start();
    const d = iosDevice();
    apns.answer(d.key, ["InvalidProviderToken"]);
    const r = await worker.notify(notification([d.device]));
    assert.equal(r.status, 502);
    assert.equal(notifyDevices(worker)[0].outcome, "failed");
    await sleep(2000);
    assert.deepEqual(consumerLines(worker), [], "the queue never saw it");
    await closeWorker();
  });

  test("a push the queue refuses (over its 128 KB message limit) is answered 502, as without a queue", async () => {
    const closed = await closedOrigin();
    worker = await startWorker({
      apps: { "app.android": { type: "fcm", project_id: PROJECT, service_account_secret: "FCM", url: closed } },
      secrets: secrets(),
      vars: { ...KNOBS, MAX_BODY_BYTES: "400000" },
      deferred: {},
    });
    // FCM carries the pushkey in the message, so the queued push is too big.
    const pushkey = `fcm-${"x".repeat(140_000)}`;
    const r = await worker.notify(notification([{ app_id: "app.android", pushkey }]));
    assert.equal(r.status, 502);
    const [device] = notifyDevices(worker);
    assert.equal(device.outcome, "transient");
    assert.match(device.reason, /not deferred/);
    await closeWorker();
  });

  test("without DEFERRED_QUEUE nothing changes: a device still failing makes the answer 502", async () => {
    worker = await startWorker({ apps: apps(), secrets: secrets(), vars: KNOBS });
    const d = iosDevice();
    apns.answer(d.key, ["ServiceUnavailable"]);
    const r = await worker.notify(notification([d.device]));
    assert.equal(r.status, 502);
    assert.equal(notifyDevices(worker)[0].outcome, "transient");
    assert.equal(apns.requestsFor(d.key)[0].headers["apns-collapse-id"], undefined, "the request is as before");
    await closeWorker();
  });
});

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}
