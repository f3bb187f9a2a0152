// The APPS that `edgepush-config import-sygnal` makes of tests/sygnal/sygnal.yaml
// (kept as tests/sygnal/expected-apps.json, checked by tests/config_cli.rs) is
// accepted by the worker itself: every app loads its keys and /health is ok,
// and the settings carried over behave in workerd as they did in Sygnal.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { startFakeFcm } from "../fakes/fcm.mjs";
import { ROOT, notification, startWorker } from "./harness.mjs";

const read = (file) => fs.readFileSync(path.join(ROOT, file), "utf8");

// The secret commands import-sygnal prints for that file, as name → key file.
const SECRETS = {
  APNS_KEY_COM_EXAMPLE_CHAT_IOS: "tests/sygnal/keys/test-only-apns-key.p8",
  FCM_SERVICE_ACCOUNT_COM_EXAMPLE_CHAT_ANDROID: "tests/sygnal/keys/test-only-chat-service-account.json",
  FCM_SERVICE_ACCOUNT_CHAT_FLUFFY_FLUFFYCHAT: "tests/sygnal/keys/test-only-fluffychat-service-account.json",
  VAPID_KEY_COM_EXAMPLE_CHAT_WEB: "tests/sygnal/keys/test-only-vapid-key.pem",
};

for (const form of ["a [vars] table", "a JSON string"]) {
  test(`the APPS converted from sygnal.yaml loads in workerd, given as ${form}`, async () => {
    const apps = JSON.parse(read("tests/sygnal/expected-apps.json"));
    const secrets = Object.fromEntries(Object.entries(SECRETS).map(([name, file]) => [name, read(file)]));
    const worker = await startWorker({ apps, appsAsString: form === "a JSON string", secrets });
    try {
      const r = await worker.request("/health");
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.status, "ok");
      assert.deepEqual(Object.keys(r.json.apps).sort(), Object.keys(apps).sort());
      for (const [app, status] of Object.entries(r.json.apps)) assert.equal(status, "ok", `${app}: ${status}`);

      // Without its secrets the same APPS is degraded, naming each app's secret.
      const bare = await startWorker({ apps });
      try {
        const degraded = await bare.request("/health");
        assert.equal(degraded.status, 503);
        for (const name of Object.keys(SECRETS)) assert.match(JSON.stringify(degraded.json.apps), new RegExp(name));
      } finally {
        await bare.close();
      }
    } finally {
      await worker.close();
    }
  });
}

test("send_badge_counts: false, carried over from sygnal.yaml, keeps the counts out of the app's pushes", async () => {
  const apps = JSON.parse(read("tests/sygnal/expected-apps.json"));
  const app = "com.example.chat.android";
  assert.equal(apps[app].send_badge_counts, false);
  // The converted entry as is, pointed at a fake FCM that knows the test-only account.
  const keyFile = JSON.parse(read(SECRETS.FCM_SERVICE_ACCOUNT_COM_EXAMPLE_CHAT_ANDROID));
  const account = { clientEmail: keyFile.client_email, publicKey: crypto.createPublicKey(keyFile.private_key) };
  const fake = await startFakeFcm({ accounts: [account], projectId: apps[app].project_id });
  const worker = await startWorker({
    apps: { [app]: { ...apps[app], url: fake.origin } },
    secrets: { FCM_SERVICE_ACCOUNT_COM_EXAMPLE_CHAT_ANDROID: JSON.stringify({ ...keyFile, token_uri: fake.tokenUri }) },
  });
  try {
    const message = notification([{ app_id: app, pushkey: "fcm-token-1", data: {} }], { counts: { unread: 5, missed_calls: 1 } });
    const receipt = { notification: { counts: { unread: 4 }, devices: [{ app_id: app, pushkey: "fcm-token-2", data: {} }] } };
    assert.equal((await worker.notify(message)).status, 200);
    assert.equal((await worker.notify(receipt)).status, 200);
    assert.deepEqual(fake.violations, []);
    const [sent, wake] = fake.delivered.map((d) => d.message);
    assert.equal(sent.data.event_id, "$event:example.org");
    assert.equal(sent.data.unread, undefined);
    assert.equal(sent.data.missed_calls, undefined);
    assert.deepEqual(wake, { token: "fcm-token-2", data: { prio: "high" }, android: { priority: "normal", ttl: "86400s" }, apns: apps[app].fcm_options.apns });
  } finally {
    await worker.close();
    await fake.close();
  }
});
