// The HTTP surface of docs/design.md §2 "HTTP surface", row by row, against the
// built worker in workerd.

import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import { generateApnsKey, hexToken, randomPushkey, startFakeApns } from "../fakes/apns.mjs";
import { NOTIFY, notification, startWorker } from "./harness.mjs";

const KEY_ID = "KEY1234567";
const TEAM_ID = "TEAM123456";
const TOPIC = "com.example.app";
const key = generateApnsKey();

/** An APNs app entry pointed at the fake. */
const apnsApp = (url, extra = {}) => ({
  type: "apns", topic: TOPIC, team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY", url, ...extra,
});

const apnsDevice = (pushkey = randomPushkey(), app_id = "com.example.ios") => ({ app_id, pushkey, data: {} });

/** Assert a Matrix error answer. */
function assertError(response, status, errcode, message) {
  assert.equal(response.status, status, `${message ?? ""} ${response.text}`);
  assert.equal(response.json?.errcode, errcode, `${message ?? ""} ${response.text}`);
}

describe("a worker with good, broken and glob apps", () => {
  let fake;
  let worker;

  before(async () => {
    fake = await startFakeApns({ publicKey: key.publicKey, keyId: KEY_ID, teamId: TEAM_ID, topic: TOPIC });
    worker = await startWorker({
      apps: {
        "com.example.ios": apnsApp(fake.origin),
        "amb.*": apnsApp(fake.origin),
        "*.amb": apnsApp(fake.origin),
        "amb.exact.amb": apnsApp(fake.origin),
        "chat.fluffy.fluffychat.*": apnsApp(fake.origin),
        "com.example.broken": apnsApp(fake.origin, { key_secret: "MISSING_KEY" }),
        "com.example.weird": { type: "carrier-pigeon" },
      },
      secrets: { APNS_KEY: key.p8 },
      // Every answer below also writes its Analytics Engine points.
      metrics: true,
    });
  });
  after(async () => {
    // No answer of this suite failed to write its counters.
    assert.deepEqual(worker.logs.filter((l) => l.message.includes("METRICS write failed")), []);
    await worker?.close();
    await fake?.close();
  });

  test("valid notify: 200 with the rejected pushkeys", async () => {
    fake.reset();
    const alive = randomPushkey();
    const dead = randomPushkey();
    fake.answer(hexToken(dead), "Unregistered");
    const r = await worker.notify(notification([apnsDevice(alive), apnsDevice(dead)]));
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { rejected: [dead] });
    assert.equal(fake.delivered.length, 1);
    assert.equal(fake.delivered[0].token, hexToken(alive));
    assert.deepEqual(fake.violations, []);
  });

  test("a client's minimal test push (no counts, prio or room_id): 200 with a rejected array", async () => {
    fake.reset();
    const r = await worker.notify({ notification: { devices: [apnsDevice()] } });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { rejected: [] });
  });

  test("body not JSON: 400 M_NOT_JSON", async () => {
    for (const body of ["not json", "{", "", new Uint8Array([0xff, 0xfe, 0x7b])]) {
      const r = await worker.notify(body);
      assertError(r, 400, "M_NOT_JSON", JSON.stringify(String(body)));
      assert.equal(typeof r.json.error, "string");
    }
  });

  const device = { app_id: "com.example.ios", pushkey: "q83vEjRWeJA=" };
  const badJsonCases = [
    ["a JSON array", [], "JSON object"],
    ["no notification", {}, "notification"],
    ["notification not an object", { notification: "hi" }, "notification"],
    ["devices missing", { notification: {} }, "notification.devices"],
    ["devices not a list", { notification: { devices: device } }, "notification.devices"],
    ["devices empty", { notification: { devices: [] } }, "notification.devices"],
    ["a device not an object", { notification: { devices: ["x"] } }, "notification.devices[0]"],
    ["a device without app_id", { notification: { devices: [{ pushkey: "k" }] } }, "notification.devices[0].app_id"],
    ["app_id not a string", { notification: { devices: [{ app_id: 7, pushkey: "k" }] } }, "notification.devices[0].app_id"],
    ["a device without pushkey", { notification: { devices: [{ app_id: "a" }] } }, "notification.devices[0].pushkey"],
    ["pushkey not a string", { notification: { devices: [{ app_id: "a", pushkey: null }] } }, "notification.devices[0].pushkey"],
    ["the second device broken", { notification: { devices: [device, { app_id: "a", pushkey: 1 }] } }, "notification.devices[1].pushkey"],
    ["counts not an object", { notification: { devices: [device], counts: 3 } }, "notification.counts"],
    ["counts.unread a string", { notification: { devices: [device], counts: { unread: "1" } } }, "notification.counts.unread"],
    ["counts.missed_calls negative", { notification: { devices: [device], counts: { missed_calls: -1 } } }, "notification.counts.missed_calls"],
    ["prio not a string", { notification: { devices: [device], prio: 10 } }, "notification.prio"],
    ["tweaks not an object", { notification: { devices: [{ ...device, tweaks: "loud" }] } }, "notification.devices[0].tweaks"],
    ["data not an object", { notification: { devices: [{ ...device, data: "x" }] } }, "notification.devices[0].data"],
  ];
  for (const [name, body, field] of badJsonCases) {
    test(`not a valid notification (${name}): 400 M_BAD_JSON naming ${field}`, async () => {
      fake.reset();
      const r = await worker.notify(body);
      assertError(r, 400, "M_BAD_JSON", name);
      assert.ok(r.json.error.includes(field), `error ${JSON.stringify(r.json.error)} should name ${field}`);
      assert.equal(fake.requests.length, 0, "nothing is sent for a bad request");
    });
  }

  test("body over the default MAX_BODY_BYTES (65536): 413 M_TOO_LARGE; exactly the limit is accepted", async () => {
    fake.reset();
    const json = JSON.stringify(notification([apnsDevice()]));
    const atLimit = json + " ".repeat(65536 - Buffer.byteLength(json));
    const ok = await worker.notify(atLimit);
    assert.equal(ok.status, 200, ok.text);
    const over = await worker.notify(`${atLimit} `);
    assertError(over, 413, "M_TOO_LARGE");
  });

  test("more devices than the default MAX_DEVICES (20): 413 M_TOO_LARGE, nothing sent", async () => {
    fake.reset();
    const devices = Array.from({ length: 21 }, () => apnsDevice());
    assertError(await worker.notify(notification(devices)), 413, "M_TOO_LARGE");
    assert.equal(fake.requests.length, 0);
    const twenty = await worker.notify(notification(devices.slice(0, 20)));
    assert.equal(twenty.status, 200, twenty.text);
    assert.equal(fake.delivered.length, 20);
  });

  test("GET notify: the UnifiedPush discovery answer", async () => {
    const r = await worker.request(NOTIFY);
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, { gateway: "matrix", unifiedpush: { gateway: "matrix" } });
  });

  test("GET /health with a broken app: 503 degraded, naming each broken app and its field", async () => {
    const r = await worker.request("/health");
    assert.equal(r.status, 503, r.text);
    assert.equal(r.json.status, "degraded");
    assert.equal(r.json.apps["com.example.ios"], "ok");
    assert.equal(r.json.apps["amb.*"], "ok");
    assert.match(r.json.apps["com.example.broken"], /MISSING_KEY/, "names the missing secret");
    assert.match(r.json.apps["com.example.weird"], /type/, "names the field");
    assert.match(r.json.apps["com.example.weird"], /carrier-pigeon/);
    assert.ok(!r.text.includes("BEGIN PRIVATE KEY"), "never shows a key");
  });

  test("a broken app entry is logged naming the app", async () => {
    await worker.request("/health");
    const line = await worker.waitForLog((l) => l.message.includes("com.example.broken"));
    assert.ok(line, `no log line names the broken app; logs:\n${worker.logText()}`);
  });

  test("unknown path: 404 M_UNRECOGNIZED", async () => {
    for (const [method, path] of [["GET", "/"], ["POST", "/_matrix/push/v1/notifyx"], ["GET", "/_matrix/push/v2/notify"], ["POST", "/foo"]]) {
      const r = await worker.request(path, { method, body: method === "POST" ? "{}" : undefined });
      assertError(r, 404, "M_UNRECOGNIZED", `${method} ${path}`);
    }
  });

  test("wrong method on a known path: 405 M_UNRECOGNIZED", async () => {
    for (const [method, path] of [["PUT", NOTIFY], ["DELETE", NOTIFY], ["POST", "/health"], ["PATCH", "/health"]]) {
      const r = await worker.request(path, { method, body: ["PUT", "POST", "PATCH"].includes(method) ? "{}" : undefined });
      assertError(r, 405, "M_UNRECOGNIZED", `${method} ${path}`);
    }
  });

  test("unknown app id: rejected without a send", async () => {
    fake.reset();
    const pushkey = randomPushkey();
    const r = await worker.notify(notification([{ app_id: "com.unknown.app", pushkey }]));
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { rejected: [pushkey] });
    assert.equal(fake.requests.length, 0);
  });

  test("an app id matching two globs: a configuration error, 502 without a send, never rejected", async () => {
    fake.reset();
    const pushkey = randomPushkey();
    const r = await worker.notify(notification([apnsDevice(pushkey, "amb.x.amb")]));
    assertError(r, 502, "M_UNKNOWN");
    assert.equal(fake.requests.length, 0);
    const health = await worker.request("/health");
    assert.match(health.json.glob_overlaps.join("\n"), /globs "\*\.amb" and "amb\.\*" overlap/, health.text);
  });

  test("an exact app id wins over matching globs; one matching glob routes", async () => {
    fake.reset();
    const exact = randomPushkey();
    const globbed = randomPushkey();
    const r = await worker.notify(notification([
      apnsDevice(exact, "amb.exact.amb"),
      apnsDevice(globbed, "chat.fluffy.fluffychat.device1"),
    ]));
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { rejected: [] });
    assert.deepEqual(fake.delivered.map((d) => d.token).sort(), [hexToken(exact), hexToken(globbed)].sort());
  });

  test("globs are case-sensitive and match the whole id", async () => {
    fake.reset();
    const upper = randomPushkey();
    const prefix = randomPushkey();
    const r = await worker.notify(notification([
      apnsDevice(upper, "CHAT.fluffy.fluffychat.x"),
      apnsDevice(prefix, "xchat.fluffy.fluffychat.x"),
    ]));
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.rejected.sort(), [upper, prefix].sort());
    assert.equal(fake.requests.length, 0);
  });

  test("a device of a broken app: 502 M_UNKNOWN, never rejected", async () => {
    fake.reset();
    for (const appId of ["com.example.broken", "com.example.weird"]) {
      const pushkey = randomPushkey();
      const r = await worker.notify(notification([apnsDevice(pushkey, appId)]));
      assertError(r, 502, "M_UNKNOWN", appId);
      assert.ok(!r.text.includes(pushkey), "the pushkey is not rejected (nor echoed whole)");
    }
    assert.equal(fake.requests.length, 0);
  });

  test("a good device next to a broken app's device: the good one is sent, the answer is 502", async () => {
    fake.reset();
    const good = randomPushkey();
    const r = await worker.notify(notification([apnsDevice(good), apnsDevice(randomPushkey(), "com.example.broken")]));
    assertError(r, 502, "M_UNKNOWN");
    assert.deepEqual(fake.delivered.map((d) => d.token), [hexToken(good)]);
  });

  test("devices are dispatched concurrently", async () => {
    fake.reset();
    const pushkeys = Array.from({ length: 4 }, () => randomPushkey());
    for (const k of pushkeys) fake.answer(hexToken(k), { status: 200, delayMs: 600 });
    const started = Date.now();
    const r = await worker.notify(notification(pushkeys.map((k) => apnsDevice(k))));
    const elapsed = Date.now() - started;
    assert.equal(r.status, 200, r.text);
    assert.equal(fake.delivered.length, 4);
    assert.ok(elapsed < 4 * 600 - 200, `4 sends of 600 ms took ${elapsed} ms: not concurrent`);
  });
});

describe("a worker with small limits", () => {
  let fake;
  let worker;

  before(async () => {
    fake = await startFakeApns({ publicKey: key.publicKey, keyId: KEY_ID, teamId: TEAM_ID });
    worker = await startWorker({
      apps: { "com.example.ios": apnsApp(fake.origin) },
      secrets: { APNS_KEY: key.p8 },
      vars: { MAX_BODY_BYTES: "1024", MAX_DEVICES: "2" },
    });
  });
  after(async () => {
    await worker?.close();
    await fake?.close();
  });

  const padded = (bytes) => {
    const json = JSON.stringify(notification([apnsDevice("q83vEjRWeJA=")]));
    return json + " ".repeat(bytes - Buffer.byteLength(json));
  };

  test("MAX_BODY_BYTES: over it is 413 M_TOO_LARGE, at it is accepted", async () => {
    assert.equal((await worker.notify(padded(1024))).status, 200);
    assertError(await worker.notify(padded(1025)), 413, "M_TOO_LARGE");
  });

  test("MAX_BODY_BYTES holds without a content-length (chunked body)", async () => {
    // On a raw socket: the worker answers and cancels the upload once it is
    // over the limit, which a fetch client still writing may see as EPIPE
    // instead of the answer.
    const body = padded(4096);
    const chunks = [];
    for (let i = 0; i < body.length; i += 512) {
      const piece = body.slice(i, i + 512);
      chunks.push(`${Buffer.byteLength(piece).toString(16)}\r\n${piece}\r\n`);
    }
    const url = new URL(await worker.mf.ready);
    const answer = await rawHttp(url.port, [
      `POST ${NOTIFY} HTTP/1.1`, `host: ${url.host}`, "content-type: application/json",
      "transfer-encoding: chunked", "", `${chunks.join("")}0\r\n\r\n`,
    ].join("\r\n"));
    assert.match(answer, /^HTTP\/1\.1 413/, answer);
    assert.match(answer, /M_TOO_LARGE/);
  });

  test("a content-length over MAX_BODY_BYTES is refused without reading the body", async () => {
    const url = new URL(await worker.mf.ready);
    const answer = await rawHttp(url.port, [
      `POST ${NOTIFY} HTTP/1.1`, `host: ${url.host}`, "content-type: application/json",
      "content-length: 10000000", "", "{\"notification\":",
    ].join("\r\n"));
    assert.match(answer, /^HTTP\/1\.1 413/, answer);
    assert.match(answer, /M_TOO_LARGE/);
  });

  test("a content-length that lies low does not let a bigger body through", async () => {
    const url = new URL(await worker.mf.ready);
    const body = padded(4096);
    const answer = await rawHttp(url.port, [
      `POST ${NOTIFY} HTTP/1.1`, `host: ${url.host}`, "content-type: application/json",
      "transfer-encoding: chunked", "content-length: 10", "",
      `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`,
    ].join("\r\n"));
    // Either the runtime refuses the contradictory framing (400) or the
    // worker counts the bytes (413); never a 200.
    assert.match(answer, /^HTTP\/1\.1 (413|400)/, answer);
  });

  test("MAX_DEVICES: more devices is 413 M_TOO_LARGE, as many is accepted", async () => {
    fake.reset();
    const two = [apnsDevice(), apnsDevice()];
    assert.equal((await worker.notify(notification(two))).status, 200);
    assertError(await worker.notify(notification([...two, apnsDevice()])), 413, "M_TOO_LARGE");
    assert.equal(fake.delivered.length, 2);
  });
});

describe("GET /health", () => {
  test("200 ok when every app is fine (APPS as a [vars] table)", async () => {
    const worker = await startWorker({
      apps: { "com.example.ios": apnsApp("http://127.0.0.1:9"), "*.up": { type: "unifiedpush" } },
      secrets: { APNS_KEY: key.p8 },
    });
    try {
      const r = await worker.request("/health");
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.status, "ok");
      assert.deepEqual(r.json.apps, { "com.example.ios": "ok", "*.up": "ok" });
    } finally {
      await worker.close();
    }
  });

  test("200 ok with APPS as a JSON string (.dev.vars / secret)", async () => {
    const worker = await startWorker({
      apps: { "com.example.ios": apnsApp("http://127.0.0.1:9") },
      appsAsString: true,
      secrets: { APNS_KEY: key.p8 },
    });
    try {
      const r = await worker.request("/health");
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.status, "ok");
      assert.deepEqual(r.json.apps, { "com.example.ios": "ok" });
    } finally {
      await worker.close();
    }
  });

  test("without the TOKENS binding, /health says tokens are cached in memory only", async () => {
    const worker = await startWorker({
      apps: { "com.example.ios": apnsApp("http://127.0.0.1:9") },
      secrets: { APNS_KEY: key.p8 },
      kv: false,
    });
    try {
      const r = await worker.request("/health");
      assert.match(r.text, /memory/, r.text);
      assert.deepEqual(r.json.apps, { "com.example.ios": "ok" });
    } finally {
      await worker.close();
    }
  });

  test("a key given as one line with literal \\n (as .dev.vars keeps it) works", async () => {
    const worker = await startWorker({
      apps: { "com.example.ios": apnsApp("http://127.0.0.1:9") },
      secrets: { APNS_KEY: key.p8.trim().replaceAll("\n", "\\n") },
    });
    try {
      const r = await worker.request("/health");
      assert.equal(r.status, 200, r.text);
    } finally {
      await worker.close();
    }
  });

  test("503 degraded when APPS is unset or not JSON, and notify answers 502 without rejecting", async () => {
    for (const apps of [undefined, "{not json"]) {
      const worker = await startWorker({ apps, vars: {} });
      try {
        const r = await worker.request("/health");
        assert.equal(r.status, 503, r.text);
        assert.equal(r.json.status, "degraded");
        assert.equal(typeof r.json.apps, "object");
        // Rejecting would make the homeserver delete every pusher over our own
        // configuration: the devices are Failed, answered 502.
        const n = await worker.notify(notification([apnsDevice()]));
        assertError(n, 502, "M_UNKNOWN", `APPS=${apps}`);
      } finally {
        await worker.close();
      }
    }
  });

  test("a bad key in the secret: 503 naming the app", async () => {
    const worker = await startWorker({
      apps: { "com.example.ios": apnsApp("http://127.0.0.1:9") },
      secrets: { APNS_KEY: "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----" },
    });
    try {
      const r = await worker.request("/health");
      assert.equal(r.status, 503, r.text);
      assert.notEqual(r.json.apps["com.example.ios"], "ok");
      assert.ok(!r.text.includes("not a key"), "never echoes the secret");
    } finally {
      await worker.close();
    }
  });
});

/** Send raw bytes to 127.0.0.1:port and return what comes back within a few seconds. */
function rawHttp(port, request) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), "127.0.0.1");
    let answer = "";
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(answer || "<no answer within 5 s>");
    }, 5000);
    socket.on("data", (chunk) => {
      answer += chunk.toString("utf8");
      if (/\r\n\r\n/.test(answer)) {
        // Headers are in; give the (small) body a moment.
        setTimeout(() => {
          clearTimeout(timer);
          socket.destroy();
          resolve(answer);
        }, 100);
      }
    });
    socket.on("error", (err) => {
      clearTimeout(timer);
      if (answer) resolve(answer);
      else reject(err);
    });
    socket.write(request);
  });
}
