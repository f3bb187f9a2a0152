// What the worker logs: one structured JSON line per notify (request id,
// app ids, per-device outcome, provider status, tries, timings) with pushkeys
// shortened, and never a key, a token or a whole pushkey (docs/design.md §14.1
// "The log").
//
// One worker serves all four providers and is driven through every outcome:
// delivered, rejected, retried, failed, token mints and re-mints, a refused
// assertion, broken app entries whose secrets hold (broken) keys, and
// hostile bodies. Then everything it logged is scanned. (The other suites
// scan their own workers' logs with the same findLeaks.)

import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, test } from "node:test";
import { generateApnsKey, hexToken, randomPushkey, startFakeApns } from "../fakes/apns.mjs";
import { generateServiceAccount, startFakeFcm } from "../fakes/fcm.mjs";
import { startFakeUnifiedPush } from "../fakes/unifiedpush.mjs";
import { generateVapidKey, startFakePushService } from "../fakes/webpush.mjs";
import { notification, startWorker } from "./harness.mjs";
import { findLeaks, pemBodyLines } from "./leaks.mjs";

const KEY_ID = "KEY1234567";
const TEAM_ID = "TEAM123456";
const PROJECT = "logs-123";
const LOCAL = ["http://127.0.0.1:*"];

const apnsKey = generateApnsKey();
const otherApnsKey = generateApnsKey();
const account = generateServiceAccount({ clientEmail: `logs@${PROJECT}.iam.gserviceaccount.com`, projectId: PROJECT });
const unknownAccount = generateServiceAccount({ clientEmail: `stranger@${PROJECT}.iam.gserviceaccount.com`, projectId: PROJECT });
const vapid = generateVapidKey();
/** A per-user secret as Element X puts it in default_payload: not for logs either. */
const perUserSecret = `cs-${crypto.randomBytes(24).toString("base64url")}`;

/** A PEM whose base64 body is damaged halfway: parsing fails, the error must not quote it. */
function damagedPem(pem) {
  const lines = pem.split("\n");
  const middle = Math.floor(lines.length / 2);
  lines[middle] = `${lines[middle].slice(0, 20)}!!${lines[middle].slice(22)}`;
  return lines.join("\n");
}

describe("logs", () => {
  let apns;
  let fcm;
  let up;
  let push;
  let worker;
  const pushkeys = new Set();
  const secrets = [];
  let notifies = 0;

  before(async () => {
    apns = await startFakeApns({ publicKey: apnsKey.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
    fcm = await startFakeFcm({ accounts: [account], projectId: PROJECT });
    up = await startFakeUnifiedPush();
    push = await startFakePushService({ vapidPublicB64: vapid.publicB64 });
    const brokenServiceAccount = JSON.parse(account.keyFile(fcm.tokenUri));
    brokenServiceAccount.private_key = damagedPem(brokenServiceAccount.private_key);
    const apnsApp = (secret, keyId = KEY_ID) => ({ type: "apns", topic: "com.example", team_id: TEAM_ID, key_id: keyId, key_secret: secret, url: apns.origin });
    const fcmApp = (secret) => ({ type: "fcm", project_id: PROJECT, service_account_secret: secret, url: fcm.origin });
    const secretValues = {
      APNS_KEY: apnsKey.p8,
      APNS_OTHER: otherApnsKey.p8,
      APNS_DAMAGED: damagedPem(apnsKey.p8),
      FCM_SERVICE_ACCOUNT: account.keyFile(fcm.tokenUri),
      FCM_UNKNOWN: unknownAccount.keyFile(fcm.tokenUri),
      FCM_DAMAGED: JSON.stringify(brokenServiceAccount),
      VAPID_KEY: vapid.raw,
      VAPID_DAMAGED: damagedPem(vapid.pkcs8),
    };
    secrets.push(...Object.values(secretValues), apnsKey.p8, vapid.pkcs8, vapid.sec1, perUserSecret);
    worker = await startWorker({
      apps: {
        "logs.ios": apnsApp("APNS_KEY"),
        // Tokens are shared per team and key id: another key needs its own id.
        "logs.ios.wrongkey": apnsApp("APNS_OTHER", "OTHERKEY01"),
        "logs.ios.damaged": apnsApp("APNS_DAMAGED"),
        "logs.android": fcmApp("FCM_SERVICE_ACCOUNT"),
        "logs.android.stranger": fcmApp("FCM_UNKNOWN"),
        "logs.android.damaged": fcmApp("FCM_DAMAGED"),
        "logs.web": { type: "webpush", vapid_private_key_secret: "VAPID_KEY", vapid_contact: "mailto:ops@example.com", allowed_endpoints: LOCAL },
        "logs.web.damaged": { type: "webpush", vapid_private_key_secret: "VAPID_DAMAGED", vapid_contact: "mailto:ops@example.com", allowed_endpoints: LOCAL },
        "logs.up": { type: "unifiedpush", allowed_endpoints: LOCAL },
        // Hosts fetch refuses as URLs (127.0.0.999): its error quotes the URL.
        "logs.up.badhost": { type: "unifiedpush", allowed_endpoints: ["http://127.0.0.*:*"] },
      },
      secrets: secretValues,
      vars: { MAX_TRIES: "2", RETRY_BASE_MS: "1" },
    });
  });

  after(async () => {
    await worker?.close();
    for (const s of [apns, fcm, up, push]) await s?.close();
  });

  const ios = (app_id = "logs.ios", data = {}) => {
    const pushkey = randomPushkey();
    pushkeys.add(pushkey);
    pushkeys.add(hexToken(pushkey));
    return { app_id, pushkey, data };
  };
  const android = (app_id = "logs.android", data = {}) => {
    const pushkey = `fcm-${crypto.randomBytes(40).toString("base64url")}`;
    pushkeys.add(pushkey);
    return { app_id, pushkey, data };
  };
  const web = (app_id = "logs.web") => {
    const sub = push.subscribe();
    pushkeys.add(sub.pushkey);
    secrets.push(sub.auth);
    return { app_id, pushkey: sub.pushkey, data: { endpoint: sub.endpoint, auth: sub.auth }, sub };
  };
  const unified = () => {
    const { id, url } = up.endpoint();
    pushkeys.add(url);
    return { app_id: "logs.up", pushkey: url, id };
  };
  const send = (body) => {
    notifies += 1;
    return worker.notify(body);
  };

  test("a workload through every provider and outcome", async () => {
    const elementX = { default_payload: { cs: perUserSecret }, format: "event_id_only" };
    // Delivered, with event_id_only and a secret in default_payload.
    assert.equal((await send(notification([ios("logs.ios", elementX), android("logs.android", elementX), web(), unified()]))).status, 200);
    // Rejected by each provider.
    const deadIos = ios();
    apns.answer(hexToken(deadIos.pushkey), "Unregistered");
    const deadAndroid = android();
    fcm.answer(deadAndroid.pushkey, "unregistered");
    const deadWeb = web();
    push.answer(deadWeb.sub.id, "gone");
    const deadUp = unified();
    up.answer(deadUp.id, "gone");
    const r = await send(notification([deadIos, deadAndroid, { ...deadWeb, sub: undefined }, deadUp]));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.rejected.length, 4);
    // Transient, then delivered; and transient to the end.
    const flaky = ios();
    apns.answer(hexToken(flaky.pushkey), ["ServiceUnavailable", "ok"]);
    const down = android();
    fcm.answer(down.pushkey, "unavailable");
    assert.equal((await send(notification([flaky, down]))).status, 502);
    // Stale credentials: FCM fetches a new access token; APNs's new token
    // would be the refused one (the same all window), so it is not sent again.
    const unauth = android();
    fcm.answer(unauth.pushkey, ["unauthenticated", "ok"]);
    assert.equal((await send(notification([unauth]))).status, 200);
    const stale = ios();
    apns.answer(hexToken(stale.pushkey), ["ExpiredProviderToken", "ok"]);
    assert.equal((await send(notification([stale]))).status, 502);
    // Our side is wrong: a key Apple does not know, an account Google refuses, broken entries.
    const failing = [ios("logs.ios.wrongkey"), android("logs.android.stranger"), ios("logs.ios.damaged"), android("logs.android.damaged"), web("logs.web.damaged")];
    assert.equal((await send(notification(failing.map(({ sub, ...d }) => d)))).status, 502);
    // Unknown app and an undecodable APNs pushkey: rejected without a send.
    assert.equal((await send(notification([android("nobody.android"), { app_id: "logs.ios", pushkey: `not base64 ${crypto.randomBytes(20).toString("hex")}` }]))).status, 200);
    // Hostile bodies that quote pushkeys in the wrong places.
    const quoted = android();
    for (const body of [
      { notification: { devices: [{ app_id: "logs.android", pushkey: quoted.pushkey, tweaks: 5 }] } },
      { notification: { devices: [{ app_id: quoted.pushkey, pushkey: 7 }] } },
      { notification: { counts: { unread: quoted.pushkey }, devices: [quoted] } },
      `{"notification": {"devices": [{"app_id": "x", "pushkey": "${quoted.pushkey}"`,
    ]) {
      const answer = await send(body);
      assert.ok(answer.status >= 400 && answer.status < 500, `${answer.status} ${answer.text}`);
      assert.ok(!answer.text.includes(quoted.pushkey), `the answer echoes the pushkey: ${answer.text}`);
    }
    assert.deepEqual(apns.violations.filter((v) => !v.includes("InvalidProviderToken")), []);
  });

  test("a network error that quotes the URL is logged with the endpoint's origin only", async () => {
    const path = `/up${crypto.randomBytes(20).toString("hex")}`;
    const pushkey = `http://127.0.0.999:9${path}?up=1`;
    pushkeys.add(pushkey);
    pushkeys.add(path);
    const r = await send(notification([{ app_id: "logs.up.badhost", pushkey }]));
    assert.equal(r.status, 502, r.text);
    const logged = await worker.waitForLog((l) => l.message.includes('"app_id":"logs.up.badhost"'));
    const device = JSON.parse(logged.message).devices[0];
    assert.equal(device.outcome, "transient", logged.message);
    assert.match(device.reason, /^network: .*http:\/\/127\.0\.0\.999:9/, "the origin is kept");
    assert.ok(!device.reason.includes("/up"), device.reason);
  });

  test("one JSON line per notify: request id, status, time, and per device app id, outcome, status, tries", async () => {
    // Logs arrive asynchronously.
    assert.ok(await worker.waitForNotifyLogs(), "every notify's log line arrived");
    assert.equal(worker.notifiesAnswered, notifies);
    const lines = worker.logs
      .map((l) => { try { return JSON.parse(l.message); } catch { return undefined; } })
      .filter((line) => line?.msg === "notify");
    assert.equal(lines.length, notifies);
    assert.equal(new Set(lines.map((l) => l.request_id)).size, notifies, "request ids are distinct");
    for (const line of lines) {
      assert.equal(typeof line.request_id, "string");
      assert.ok(Number.isInteger(line.status) && Number.isInteger(line.ms), JSON.stringify(line));
      if (line.status !== 200) assert.equal(typeof line.error, "string");
      for (const d of line.devices) {
        assert.equal(typeof d.app_id, "string");
        assert.ok(["delivered", "rejected", "transient", "failed"].includes(d.outcome), JSON.stringify(d));
        assert.ok(Number.isInteger(d.tries) && Number.isInteger(d.ms), JSON.stringify(d));
        assert.ok(d.pushkey.endsWith("…") && d.pushkey.length <= 7, `pushkey shortened: ${d.pushkey}`);
        if (d.outcome !== "delivered") assert.ok(d.reason, `a reason for ${d.outcome}: ${JSON.stringify(d)}`);
      }
    }
    const outcomes = new Set(lines.flatMap((l) => l.devices.map((d) => `${d.provider}:${d.outcome}`)));
    for (const expected of ["apns:delivered", "fcm:delivered", "webpush:delivered", "unifiedpush:delivered",
      "apns:rejected", "fcm:rejected", "webpush:rejected", "unifiedpush:rejected",
      "apns:failed", "fcm:failed", "fcm:transient"]) {
      assert.ok(outcomes.has(expected), `${expected} in ${[...outcomes].join(", ")}`);
    }
    const retried = lines.flatMap((l) => l.devices).find((d) => d.provider === "apns" && d.tries === 2 && d.outcome === "delivered");
    assert.ok(retried, "a retried device shows its tries");
    assert.ok(lines.flatMap((l) => l.devices).some((d) => d.token === "minted"), "token source logged");
  });

  test("nothing logged holds a key, a token, a per-user secret or a whole pushkey", async () => {
    const tokens = [
      ...apns.tokensSeen.map((t) => t.jwt),
      ...fcm.delivered.map((d) => d.accessToken),
      ...push.delivered.map((d) => d.jwt),
    ];
    assert.ok(tokens.length >= 3, "tokens were collected");
    assert.ok(secrets.some((s) => pemBodyLines(s).length > 0), "PEM keys are among the secrets");
    const leaks = findLeaks(worker.logs, { secrets, tokens, pushkeys: [...pushkeys] });
    assert.deepEqual(leaks, [], worker.logText().slice(0, 2000));
  });

  test("the scanner itself finds what it looks for", () => {
    const pem = apnsKey.p8;
    const line = pemBodyLines(pem)[1];
    const jwt = apns.tokensSeen[0]?.jwt ?? "a.b.signature-part-long-enough";
    const key = [...pushkeys][0];
    assert.equal(findLeaks([{ level: "log", message: `key ${line}` }], { secrets: [pem] }).length, 1);
    assert.equal(findLeaks(`x ${JSON.stringify(pem)} y`, { secrets: [pem] }).length > 0, true);
    assert.equal(findLeaks(`bearer ${jwt}`, { tokens: [jwt] }).length > 0, true);
    assert.equal(findLeaks(`{"pushkey":"${key}"}`, { pushkeys: [key] }).length, 1);
    assert.deepEqual(findLeaks(`{"pushkey":"${key.slice(0, 6)}…"}`, { pushkeys: [key] }), [], "a shortened pushkey is fine");
  });
});

// LOG_NOTIFIES=problems: a notify answered 200 whose every device was
// delivered at its first try writes no line; anything else still does.
describe("LOG_NOTIFIES=problems", () => {
  let apns;
  let worker;

  before(async () => {
    apns = await startFakeApns({ publicKey: apnsKey.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
    worker = await startWorker({
      apps: { "quiet.ios": { type: "apns", topic: "com.example", team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY", url: apns.origin } },
      secrets: { APNS_KEY: apnsKey.p8 },
      vars: { LOG_NOTIFIES: "problems", MAX_TRIES: "2", RETRY_BASE_MS: "1" },
    });
  });

  after(async () => {
    await worker?.close();
    await apns?.close();
  });

  const device = () => ({ app_id: "quiet.ios", pushkey: randomPushkey() });
  const notifyLines = () => worker.logs.filter((l) => l.message.includes('"msg":"notify"')).map((l) => JSON.parse(l.message));

  test("clean deliveries write no line; a rejection, a retry and an error answer do", async () => {
    for (let i = 0; i < 3; i++) assert.equal((await worker.notify(notification([device(), device()]))).status, 200);
    assert.equal(apns.delivered.length, 6, "the quiet notifies were delivered");

    const dead = device();
    apns.answer(hexToken(dead.pushkey), "Unregistered");
    const rejected = await worker.notify(notification([device(), dead]));
    assert.deepEqual(rejected.json.rejected, [dead.pushkey]);

    const flaky = device();
    apns.answer(hexToken(flaky.pushkey), ["ServiceUnavailable", "ok"]);
    assert.equal((await worker.notify(notification([flaky]))).status, 200);

    const bad = await worker.notify({ notification: { devices: "none" } });
    assert.equal(bad.status, 400);

    assert.ok(await worker.waitForLog((l) => l.message.includes('"status":400')), worker.logText());
    const lines = notifyLines();
    assert.deepEqual(lines.map((l) => l.status), [200, 200, 400], worker.logText());
    assert.ok(lines[0].devices.some((d) => d.outcome === "rejected"), JSON.stringify(lines[0]));
    assert.ok(lines[1].devices.some((d) => d.tries === 2 && d.outcome === "delivered"), JSON.stringify(lines[1]));
  });
});
