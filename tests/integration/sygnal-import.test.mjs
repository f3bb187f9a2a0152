// The APPS that `edgepush-config import-sygnal` makes of tests/sygnal/sygnal.yaml
// (kept as tests/sygnal/expected-apps.json, checked by tests/config_cli.rs) is
// accepted by the worker itself: every app loads its keys and /health is ok.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { ROOT, startWorker } from "./harness.mjs";

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
