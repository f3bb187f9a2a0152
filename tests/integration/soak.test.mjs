// A bounded soak: many notifies at once against APNs, FCM and UnifiedPush
// fakes behind fault proxies that misbehave on ~10% of requests (503, 429,
// HTML errors, truncated bodies, resets, answers lost after delivery, answers
// slower than SEND_TIMEOUT_MS). It stops by itself and counts: every notify
// answered 200 had each device delivered at least once, every other one got
// a 5xx; anything else is lost. Prints "lost: 0".
//
// It runs twice: as the homeserver sees edgepush by default (a device still
// failing makes the answer 5xx), and with deferred delivery (DEFERRED_QUEUE
// bound, one try per request so a tenth of the devices go through the
// queue): there a 200 may come before the delivery, so the count waits for
// the queue to drain, and every copy of a push sent twice must carry the
// same identity.
//
//   EDGEPUSH_SOAK_NOTIFIES         how many notifies (default 5000)
//   EDGEPUSH_SOAK_QUEUE_NOTIFIES   how many in the run with the queue (default 1000)
//   EDGEPUSH_SOAK_CONCURRENCY      how many in flight (default 32)
//   EDGEPUSH_SOAK_FAULT_RATE       share of provider requests that fail (default 0.1)
//   EDGEPUSH_SOAK_SEED             the random seed (default 1), printed to replay a run

import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, test } from "node:test";
import { generateApnsKey, hexToken, startFakeApns } from "../fakes/apns.mjs";
import { FAULTS, startFaultProxy } from "../fakes/faults.mjs";
import { generateServiceAccount, startFakeFcm } from "../fakes/fcm.mjs";
import { startFakeUnifiedPush } from "../fakes/unifiedpush.mjs";
import { notification, startWorker } from "./harness.mjs";
import { findLeaks } from "./leaks.mjs";

const NOTIFIES = Number(process.env.EDGEPUSH_SOAK_NOTIFIES ?? 5000);
const QUEUE_NOTIFIES = Number(process.env.EDGEPUSH_SOAK_QUEUE_NOTIFIES ?? 1000);
const CONCURRENCY = Number(process.env.EDGEPUSH_SOAK_CONCURRENCY ?? 32);
const FAULT_RATE = Number(process.env.EDGEPUSH_SOAK_FAULT_RATE ?? 0.1);
const SEED = Number(process.env.EDGEPUSH_SOAK_SEED ?? 1);
const SEND_TIMEOUT_MS = 250;
const KEY_ID = "KEY1234567";
const TEAM_ID = "TEAM123456";
const PROJECT = "soak-123";

/** mulberry32: a small seeded PRNG, so a failing run can be replayed. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const FAULT_MENU = [
  FAULTS.unavailable, FAULTS.tooMany, FAULTS.htmlError, FAULTS.truncated, FAULTS.reset,
  FAULTS.deliverThenReset, { delayMs: SEND_TIMEOUT_MS * 2, then: "pass" },
];

/** How long the queued run waits for the queue to drain after the last answer. */
const DRAIN_MS = 60_000;

soak("soak", { notifies: NOTIFIES, vars: { MAX_TRIES: "3" } });
soak("soak with deferred delivery", {
  notifies: QUEUE_NOTIFIES,
  vars: { MAX_TRIES: "1", DEFERRED_RETRY_BASE_SECS: "1", DEFERRED_RETRY_MAX_SECS: "1", DEFERRED_MAX_AGE_SECS: "120" },
  deferred: { batchTimeoutSecs: 0.1 },
});

/**
 * @param {string} name
 * @param {{ notifies: number, vars: Record<string, string>, deferred?: object }} options
 */
function soak(name, { notifies: notifyCount, vars, deferred }) {
  describe(name, { timeout: 10 * 60 * 1000 }, () => {
    const random = prng(SEED);
    const chooser = () => (random() < FAULT_RATE ? FAULT_MENU[Math.floor(random() * FAULT_MENU.length)] : "pass");
    const apnsKey = generateApnsKey();
    const account = generateServiceAccount({ clientEmail: `soak@${PROJECT}.iam.gserviceaccount.com`, projectId: PROJECT });
    let apns;
    let fcm;
    let up;
    let proxies;
    let worker;

    before(async () => {
      apns = await startFakeApns({ publicKey: apnsKey.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
      fcm = await startFakeFcm({ accounts: [account], projectId: PROJECT });
      up = await startFakeUnifiedPush();
      proxies = {
        apns: await startFaultProxy({ upstream: apns.origin, chooser }),
        fcm: await startFaultProxy({ upstream: fcm.origin, chooser }),
        up: await startFaultProxy({ upstream: up.origin, chooser }),
      };
      worker = await startWorker({
        apps: {
          "soak.ios": { type: "apns", topic: "com.example", team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY", url: proxies.apns.origin },
          "soak.android": { type: "fcm", project_id: PROJECT, service_account_secret: "FCM_SERVICE_ACCOUNT", url: proxies.fcm.origin },
          "soak.up": { type: "unifiedpush", allowed_endpoints: ["http://127.0.0.1:*"] },
        },
        secrets: { APNS_KEY: apnsKey.p8, FCM_SERVICE_ACCOUNT: account.keyFile(fcm.tokenUri) },
        vars: { SEND_TIMEOUT_MS: String(SEND_TIMEOUT_MS), RETRY_BASE_MS: "5", ...vars },
        deferred,
      });
    });

    after(async () => {
      await worker?.close();
      for (const p of Object.values(proxies ?? {})) await p.close();
      await apns?.close();
      await fcm?.close();
      await up?.close();
    });

    test(`${notifyCount} notifies at concurrency ${CONCURRENCY} with ${FAULT_RATE * 100}% faults: nothing lost`, async () => {
      /** Delivery counts per device, filled from the fakes at the end. */
      const newDevice = (i) => {
        const kind = i % 10 < 5 ? "apns" : i % 10 < 8 ? "fcm" : "up";
        if (kind === "apns") {
          const pushkey = crypto.randomBytes(32).toString("base64");
          return { kind, key: hexToken(pushkey), device: { app_id: "soak.ios", pushkey } };
        }
        if (kind === "fcm") {
          const pushkey = `soak-${crypto.randomBytes(24).toString("base64url")}`;
          return { kind, key: pushkey, device: { app_id: "soak.android", pushkey } };
        }
        const { id } = up.endpoint();
        return { kind, key: id, device: { app_id: "soak.up", pushkey: `${proxies.up.origin}/up${id}?up=1` } };
      };
      /** @type {Array<{ devices: ReturnType<typeof newDevice>[], status?: number, rejected?: string[] }>} */
      const notifies = Array.from({ length: notifyCount }, (_, i) => ({
        devices: i % 10 === 9 ? [newDevice(i), newDevice(i + 3)] : [newDevice(i)],
      }));

      const started = Date.now();
      let next = 0;
      const runOne = async () => {
        for (;;) {
          const i = next++;
          if (i >= notifies.length) return;
          const n = notifies[i];
          const r = await worker.notify(notification(n.devices.map((d) => d.device), { event_id: `$soak${i}:example.org` }));
          n.status = r.status;
          n.rejected = r.json?.rejected;
        }
      };
      await Promise.all(Array.from({ length: CONCURRENCY }, runOne));
      const seconds = (Date.now() - started) / 1000;

      const deliveries = new Map();
      const countDeliveries = () => {
        deliveries.clear();
        const count = (key) => deliveries.set(key, (deliveries.get(key) ?? 0) + 1);
        for (const d of apns.delivered) count(d.token);
        for (const d of fcm.delivered) count(d.pushkey);
        for (const d of up.delivered) count(d.id);
      };
      countDeliveries();
      let drainSeconds = 0;
      if (deferred) {
        // A 200 may have come before the delivery: wait for the queue to drain.
        const waiting = () => notifies.filter((n) => n.status === 200).flatMap((n) => n.devices).filter((d) => !deliveries.has(d.key));
        const drainStarted = Date.now();
        while (waiting().length > 0 && Date.now() - drainStarted < DRAIN_MS) {
          await new Promise((resolve) => setTimeout(resolve, 200));
          countDeliveries();
        }
        // Copies whose answers were lost may still be on their way.
        await new Promise((resolve) => setTimeout(resolve, 1500));
        countDeliveries();
        drainSeconds = (Date.now() - drainStarted) / 1000;
      }

      let ok = 0;
      let retryLater = 0;
      let lost = 0;
      let wrongStatus = 0;
      let rejected = 0;
      let duplicates = 0;
      const examples = [];
      for (const n of notifies) {
        for (const d of n.devices) if ((deliveries.get(d.key) ?? 0) > 1) duplicates += 1;
        if (n.status === 200) {
          ok += 1;
          rejected += n.rejected?.length ?? 0;
          const missing = n.devices.filter((d) => !(deliveries.get(d.key) >= 1) && !n.rejected?.includes(d.device.pushkey));
          if (missing.length) {
            lost += 1;
            if (examples.length < 5) examples.push(`200 but not delivered: ${missing.map((d) => d.kind).join(", ")}`);
          }
        } else if (n.status !== undefined && n.status >= 500 && n.status <= 599) {
          retryLater += 1;
        } else {
          wrongStatus += 1;
          if (examples.length < 5) examples.push(`answered ${n.status}`);
        }
      }
      const faults = Object.values(proxies).flatMap((p) => p.log).filter((l) => l.fault !== "pass").length;
      const requests = Object.values(proxies).reduce((sum, p) => sum + p.log.length, 0);
      const lines = worker.logs.map((l) => (l.message.startsWith("{") ? JSON.parse(l.message) : {}));
      const deferredDevices = lines.filter((l) => l.msg === "notify").flatMap((l) => l.devices).filter((d) => d.outcome === "deferred").length;
      const rounds = lines.filter((l) => l.msg === "deferred");
      const queueText = deferred
        ? `; deferred devices: ${deferredDevices}, queue rounds: ${rounds.length} `
          + `(delivered ${rounds.filter((l) => l.result === "delivered").length}, `
          + `retried ${rounds.filter((l) => l.result === "retrying").length}, `
          + `expired ${rounds.filter((l) => l.result === "expired").length}), drained in ${drainSeconds.toFixed(1)} s`
        : "";
      process.stdout.write(
        `${name}: ${notifyCount} notifies (seed ${SEED}) in ${seconds.toFixed(1)} s, ${(notifyCount / seconds).toFixed(0)}/s; `
        + `${requests} provider requests, ${faults} faults injected; `
        + `200: ${ok}, 5xx: ${retryLater}, rejected devices: ${rejected}, devices delivered more than once: ${duplicates}${queueText}\n`
        + `lost: ${lost + wrongStatus}\n`,
      );
      assert.deepEqual(examples, []);
      assert.equal(lost, 0, "every notify answered 200 was delivered");
      assert.equal(wrongStatus, 0, "every other notify got a 5xx");
      assert.equal(rejected, 0, "no fault ever rejects a device");
      assert.ok(faults > 0, "faults were injected");
      assert.deepEqual(apns.violations, []);
      assert.deepEqual(fcm.violations, []);
      assert.deepEqual(up.violations, []);
      if (deferred) {
        assert.ok(deferredDevices > 0, "devices went through the queue");
        assert.equal(rounds.filter((l) => l.result === "expired" || l.result === "unreadable").length, 0, "none given up");
        // A push delivered twice carries one identity, so it shows once.
        const identities = new Map();
        const note = (key, id) => identities.set(key, new Set([...(identities.get(key) ?? []), id]));
        for (const d of apns.delivered) note(d.token, d.headers["apns-collapse-id"]);
        for (const d of fcm.delivered) note(d.pushkey, d.message.data.event_id);
        for (const d of up.delivered) note(d.id, d.json?.notification?.event_id);
        const split = [...identities.values()].filter((ids) => ids.size !== 1 || ids.has(undefined)).length;
        assert.equal(split, 0, "every copy of a push carries the same identity");
      }

      assert.ok(await worker.waitForNotifyLogs(30_000), "every notify's log line arrived before the scan");
      const leaks = findLeaks(worker.logs, {
        secrets: [apnsKey.p8, account.keyFile(fcm.tokenUri)],
        tokens: [...new Set([...apns.tokensSeen.map((t) => t.jwt), ...fcm.delivered.map((d) => d.accessToken)])],
        pushkeys: notifies.slice(0, 500).flatMap((n) => n.devices.flatMap((d) => [d.device.pushkey, d.key])),
      });
      assert.deepEqual(leaks, []);
    });
  });
}
