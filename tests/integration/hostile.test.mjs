// Hostile input at the door: a corpus of malformed /notify bodies (wrong
// types at every field, deep nesting, huge strings, invalid UTF-8, duplicate
// keys, 1 MiB bodies, thousands of devices) posted to the worker. Each is a
// 4xx Matrix error (`{"errcode": "M_…", "error": …}`), never a 5xx.
//
// Bodies that are valid notifications but carry hostile *content* (huge or
// oddly typed device data, texts over every provider limit) reach the fake
// providers, which refuse what the real ones refuse: those must end 200,
// delivered within the limits or rejected as the device's own fault, never
// 5xx (a 502 would make the homeserver retry a request that can never work).

import assert from "node:assert/strict";
import crypto from "node:crypto";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import { generateApnsKey, randomPushkey, startFakeApns } from "../fakes/apns.mjs";
import { parseJson } from "../fakes/common.mjs";
import { generateServiceAccount, startFakeFcm } from "../fakes/fcm.mjs";
import { startFakeUnifiedPush } from "../fakes/unifiedpush.mjs";
import { generateVapidKey, startFakePushService } from "../fakes/webpush.mjs";
import { startWorker } from "./harness.mjs";
import { findLeaks } from "./leaks.mjs";

const KEY_ID = "KEY1234567";
const TEAM_ID = "TEAM123456";
const PROJECT = "hostile-123";
const MAX_BODY_BYTES = 65536;
const MAX_DEVICES = 20;

const apnsKey = generateApnsKey();
const account = generateServiceAccount({ clientEmail: `hostile@${PROJECT}.iam.gserviceaccount.com`, projectId: PROJECT });
const vapid = generateVapidKey();

/** A valid notification with one device of each provider. */
function base(devices) {
  return {
    notification: {
      event_id: "$e:example.org",
      room_id: "!r:example.org",
      type: "m.room.message",
      sender: "@mallory:example.org",
      sender_display_name: "Mallory",
      room_name: "Room",
      room_alias: "#room:example.org",
      membership: "join",
      user_is_target: false,
      prio: "high",
      content: { msgtype: "m.text", body: "hi" },
      counts: { unread: 1, missed_calls: 0 },
      devices,
    },
  };
}

/** Values of every JSON type but `keep` (the type the field must have). */
function wrongTypes(keep) {
  const all = {
    null: null, true: true, number: 7, negative: -1, float: 1.5, huge: 1e300, string: "x", empty: "",
    array: [], arrayOfStrings: ["a"], object: {}, objectWithKey: { a: 1 },
  };
  const keepTypes = {
    string: ["string", "empty"], object: ["object", "objectWithKey"], array: ["array", "arrayOfStrings"],
    bool: ["true"], uint: ["number"], int: ["number", "negative"],
  };
  return Object.entries(all).filter(([name]) => name !== "null" && !keepTypes[keep].includes(name));
}

/** Set `path` (dot-separated; numbers index arrays) in a deep copy of `body`. */
function withField(body, path, value) {
  const copy = structuredClone(body);
  const keys = path.split(".");
  let at = copy;
  for (const k of keys.slice(0, -1)) at = at[k];
  at[keys[keys.length - 1]] = value;
  return copy;
}

/** Fields the notify parser validates, and the type each must have (docs/design.md §2.1 "What a valid notification is"). */
const TYPED_FIELDS = {
  notification: "object",
  "notification.devices": "array",
  "notification.event_id": "string",
  "notification.room_id": "string",
  "notification.type": "string",
  "notification.sender": "string",
  "notification.sender_display_name": "string",
  "notification.room_name": "string",
  "notification.room_alias": "string",
  "notification.membership": "string",
  "notification.user_is_target": "bool",
  "notification.prio": "string",
  "notification.content": "object",
  "notification.counts": "object",
  "notification.counts.unread": "uint",
  "notification.counts.missed_calls": "uint",
  "notification.devices.0": "object",
  "notification.devices.0.app_id": "string",
  "notification.devices.0.pushkey": "string",
  "notification.devices.0.pushkey_ts": "int",
  "notification.devices.0.data": "object",
  "notification.devices.0.tweaks": "object",
  "notification.devices.0.tweaks.sound": "string",
  "notification.devices.0.tweaks.highlight": "bool",
};

function nested(depth, open = "[", close = "]") {
  return `${open.repeat(depth)}${close.repeat(depth)}`;
}

describe("hostile input", () => {
  let apns;
  let fcm;
  let up;
  let push;
  let worker;
  const pushkeys = new Set();

  before(async () => {
    apns = await startFakeApns({ publicKey: apnsKey.publicKey, keyId: KEY_ID, teamId: TEAM_ID, topic: "com.example" });
    fcm = await startFakeFcm({ accounts: [account], projectId: PROJECT });
    up = await startFakeUnifiedPush();
    push = await startFakePushService({ vapidPublicB64: vapid.publicB64 });
    worker = await startWorker({
      apps: {
        "hostile.ios": { type: "apns", topic: "com.example", team_id: TEAM_ID, key_id: KEY_ID, key_secret: "APNS_KEY", url: apns.origin },
        "hostile.android": { type: "fcm", project_id: PROJECT, service_account_secret: "FCM_SERVICE_ACCOUNT", url: fcm.origin },
        "hostile.up": { type: "unifiedpush", allowed_endpoints: ["http://127.0.0.1:*"] },
        "hostile.web": { type: "webpush", vapid_private_key_secret: "VAPID_KEY", vapid_contact: "mailto:ops@example.com", allowed_endpoints: ["http://127.0.0.1:*"] },
      },
      secrets: { APNS_KEY: apnsKey.p8, FCM_SERVICE_ACCOUNT: account.keyFile(fcm.tokenUri), VAPID_KEY: vapid.raw },
      vars: { MAX_TRIES: "2" },
    });
  });

  after(async () => {
    await worker?.close();
    await apns?.close();
    await fcm?.close();
    await up?.close();
    await push?.close();
  });

  const devices = () => {
    const ios = randomPushkey();
    const android = `fcm-${crypto.randomBytes(24).toString("base64url")}`;
    const upUrl = up.endpoint().url;
    const sub = push.subscribe();
    for (const k of [ios, android, upUrl, sub.pushkey]) pushkeys.add(k);
    return [
      { app_id: "hostile.ios", pushkey: ios, data: {}, tweaks: { sound: "default", highlight: true } },
      { app_id: "hostile.android", pushkey: android, data: {} },
      { app_id: "hostile.up", pushkey: upUrl, data: {} },
      { app_id: "hostile.web", pushkey: sub.pushkey, data: { endpoint: sub.endpoint, auth: sub.auth } },
    ];
  };

  /**
   * POST raw bytes or a JSON value; returns the harness's answer. Bodies over
   * MAX_BODY_BYTES go over a raw socket (see rawPost).
   */
  const post = (body, headers = {}) => {
    const raw = typeof body === "string" || body instanceof Uint8Array ? body : JSON.stringify(body);
    if (Buffer.byteLength(raw) > MAX_BODY_BYTES) return rawPost(raw);
    return worker.notify(raw, { headers });
  };

  /**
   * POST an oversized body over a raw socket, declaring its length or (with
   * `chunked`) not. The worker answers 413 before taking the whole body; bytes
   * it never reads would turn its close into a reset that can drop the
   * answer (and make fetch report a failure), so this sends only the head
   * when the length is declared, and stops just past MAX_BODY_BYTES when not.
   */
  async function rawPost(body, options = {}) {
    // The reset race can still eat an answer now and then: a worker that
    // never answers fails all three tries.
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await rawPostOnce(body, options);
      } catch (err) {
        if (attempt === 3) throw err;
      }
    }
  }

  async function rawPostOnce(body, { chunked = false } = {}) {
    const url = new URL(await worker.mf.ready);
    const bytes = Buffer.from(body);
    const head = [
      "POST /_matrix/push/v1/notify HTTP/1.1", `host: ${url.host}`, "content-type: application/json",
      chunked ? "transfer-encoding: chunked" : `content-length: ${bytes.length}`, "connection: close", "", "",
    ].join("\r\n");
    const socket = net.connect(Number(url.port), "127.0.0.1");
    const chunks = [];
    const closed = new Promise((resolve) => {
      const timer = setTimeout(() => socket.destroy(), 10_000);
      socket.on("error", () => {});
      socket.on("close", () => {
        clearTimeout(timer);
        resolve(undefined);
      });
    });
    socket.on("data", (c) => chunks.push(c));
    await new Promise((resolve) => socket.once("connect", resolve));
    socket.write(head);
    if (chunked) {
      const piece = 8 * 1024;
      for (let sent = 0; sent <= MAX_BODY_BYTES && chunks.length === 0; sent += piece) {
        const part = bytes.subarray(sent, sent + piece);
        socket.write(`${part.length.toString(16)}\r\n`);
        socket.write(part);
        socket.write("\r\n");
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    }
    await closed;
    if (chunks.length === 0) throw new Error("no answer");
    const answer = Buffer.concat(chunks).toString("utf8");
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0);
    let text = answer.slice(answer.indexOf("\r\n\r\n") + 4);
    if (/\r\ntransfer-encoding: chunked/i.test(answer.slice(0, answer.indexOf("\r\n\r\n")))) {
      let out = "";
      for (let rest = text; ;) {
        const eol = rest.indexOf("\r\n");
        const size = parseInt(rest.slice(0, eol), 16);
        if (!size) break;
        out += rest.slice(eol + 2, eol + 2 + size);
        rest = rest.slice(eol + 2 + size + 2);
      }
      text = out;
    }
    if (status) worker.noteNotifyAnswered();
    return { status, text, json: parseJson(text) };
  }

  function assertMatrixError(r, status, errcode, what) {
    assert.equal(r.status, status, `${what}: ${r.status} ${r.text.slice(0, 300)}`);
    assert.equal(typeof r.json?.errcode, "string", `${what}: not a Matrix error: ${r.text.slice(0, 300)}`);
    if (errcode) assert.equal(r.json.errcode, errcode, `${what}: ${r.text.slice(0, 300)}`);
    assert.equal(typeof r.json.error, "string", what);
  }

  test("the base body is a valid notification, delivered to every provider", async () => {
    const r = await post(base(devices()));
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.rejected, []);
  });

  describe("wrong types at every field: 400 M_BAD_JSON naming the field", () => {
    for (const [field, type] of Object.entries(TYPED_FIELDS)) {
      test(field, async () => {
        const valid = base(devices());
        for (const [name, value] of wrongTypes(type)) {
          const r = await post(withField(valid, field, value));
          if (field === "notification.devices" && name === "array") {
            assertMatrixError(r, 400, "M_BAD_JSON", `${field} = []`);
            continue;
          }
          assertMatrixError(r, 400, "M_BAD_JSON", `${field} = ${name}`);
          const shown = field.replace(/\.(\d+)(?=\.|$)/g, "[$1]");
          assert.ok(r.json.error.includes(shown), `${field} = ${name}: the error names the field: ${r.json.error}`);
        }
      });
    }

    test("missing required fields", async () => {
      for (const field of ["notification", "notification.devices", "notification.devices.0.app_id", "notification.devices.0.pushkey"]) {
        const body = base(devices());
        const keys = field.split(".");
        let at = body;
        for (const k of keys.slice(0, -1)) at = at[k];
        delete at[keys[keys.length - 1]];
        assertMatrixError(await post(body), 400, "M_BAD_JSON", `without ${field}`);
      }
    });

    test("the body is not an object", async () => {
      for (const body of ["[]", "null", "7", "\"notification\"", "true", "[{\"notification\":{}}]"]) {
        const r = await post(body);
        assert.ok(r.status === 400 && /^M_(BAD|NOT)_JSON$/.test(r.json?.errcode), `${body}: ${r.status} ${r.text}`);
      }
    });
  });

  describe("not JSON: 400 M_NOT_JSON", () => {
    const cases = {
      "empty body": "",
      "whitespace": "   \n ",
      "truncated": JSON.stringify(base([])).slice(0, 40),
      "trailing garbage": `${JSON.stringify(base([{ app_id: "a", pushkey: "b" }]))}xyz`,
      "two documents": `{"notification":{}} {"notification":{}}`,
      "single quotes": "{'notification': {}}",
      "comments": "{/* hi */ \"notification\": {}}",
      "NaN": "{\"notification\": {\"counts\": {\"unread\": NaN}, \"devices\": [{\"app_id\": \"a\", \"pushkey\": \"b\"}]}}",
      "unescaped control character": "{\"notification\": {\"room_name\": \"a\u0001b\", \"devices\": [{\"app_id\": \"a\", \"pushkey\": \"b\"}]}}",
      "lone surrogate escape": "{\"notification\": {\"room_name\": \"\\ud800\", \"devices\": [{\"app_id\": \"a\", \"pushkey\": \"b\"}]}}",
      "number out of range": "{\"notification\": {\"counts\": {\"unread\": 1e400}, \"devices\": [{\"app_id\": \"a\", \"pushkey\": \"b\"}]}}",
    };
    for (const [name, body] of Object.entries(cases)) {
      test(name, async () => {
        const r = await post(body);
        assert.ok(r.status === 400 && /^M_(NOT|BAD)_JSON$/.test(r.json?.errcode), `${name}: ${r.status} ${r.text.slice(0, 300)}`);
      });
    }

    test("invalid UTF-8, at the start, inside a string and in a key", async () => {
      const valid = Buffer.from(JSON.stringify(base([{ app_id: "hostile.ios", pushkey: "AAAA" }])));
      const bodies = [
        Buffer.concat([Buffer.from([0xff, 0xfe]), valid]),
        Buffer.concat([Buffer.from("{\"notification\": {\"room_name\": \""), Buffer.from([0xc3, 0x28]), Buffer.from("\", \"devices\": [{\"app_id\": \"a\", \"pushkey\": \"b\"}]}}")]),
        Buffer.concat([Buffer.from("{\"notification\": {\"r"), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from("\": 1, \"devices\": [{\"app_id\": \"a\", \"pushkey\": \"b\"}]}}")]),
        Buffer.concat([Buffer.from("{\"notification\": {\"devices\": [{\"app_id\": \"a\", \"pushkey\": \"b"), Buffer.from([0xf8, 0x88, 0x80, 0x80, 0x80]), Buffer.from("\"}]}}")]),
      ];
      for (const [i, body] of bodies.entries()) {
        const r = await post(new Uint8Array(body));
        assertMatrixError(r, 400, "M_NOT_JSON", `invalid UTF-8 #${i}`);
      }
    });
  });

  describe("deep nesting", () => {
    test("nesting past the parser's depth limit: 400, not a crash", async () => {
      for (const [open, close] of [["[", "]"], ["{\"a\":", "}"]]) {
        const depth = open === "[" ? 20_000 : 8_000;
        const deep = `{"notification": {"devices": [{"app_id": "hostile.ios", "pushkey": "AAAA", "data": {"default_payload": ${nested(depth, open, close).replace(/\{"a":\}/, "{\"a\":1}")}}}]}}`;
        assert.ok(deep.length < MAX_BODY_BYTES, `${deep.length}`);
        const r = await post(deep);
        assert.ok(r.status === 400 && /^M_(NOT|BAD)_JSON$/.test(r.json?.errcode), `depth ${depth} ${open}: ${r.status} ${r.text.slice(0, 300)}`);
      }
    });

    test("nesting just within the limit, in content and default_payload: 200, delivered or rejected, never 5xx", async () => {
      let value = { leaf: "x" };
      for (let i = 0; i < 100; i += 1) value = { a: value };
      const body = base(devices());
      body.notification.content = { msgtype: "m.text", body: "deep", nested: value };
      for (const d of body.notification.devices) d.data.default_payload = { deep: value };
      const r = await post(body);
      assert.equal(r.status, 200, r.text.slice(0, 500));
    });
  });

  describe("duplicate keys: whichever value wins, never a 5xx", () => {
    const valid = () => JSON.stringify(base(devices())).slice(1, -1);
    const cases = {
      "notification twice, the bad one last": () => `{${valid()}, "notification": 5}`,
      "notification twice, the good one last": () => `{"notification": 5, ${valid()}}`,
      "devices twice": () => `{"notification": {"devices": [], "devices": [{"app_id": "nobody", "pushkey": "x"}], "devices": "no"}}`,
      "pushkey twice": () => `{"notification": {"devices": [{"app_id": "nobody", "pushkey": "a", "pushkey": 7}]}}`,
      "counts twice": () => `{"notification": {"counts": {"unread": 1}, "counts": {"unread": -1}, "devices": [{"app_id": "nobody", "pushkey": "x"}]}}`,
    };
    for (const [name, make] of Object.entries(cases)) {
      test(name, async () => {
        const r = await post(make());
        assert.ok(r.status === 200 || (r.status >= 400 && r.status < 500 && /^M_/.test(r.json?.errcode)), `${name}: ${r.status} ${r.text.slice(0, 300)}`);
      });
    }
  });

  describe("size", () => {
    test("a 1 MiB body: 413 M_TOO_LARGE, with and without a content-length", async () => {
      const body = JSON.stringify(withField(base(devices()), "notification.content.body", "x".repeat(1024 * 1024)));
      assertMatrixError(await rawPost(body), 413, "M_TOO_LARGE", "1 MiB, content-length");
      assertMatrixError(await rawPost(body, { chunked: true }), 413, "M_TOO_LARGE", "1 MiB, chunked");
    });

    test("1 MiB of whitespace or of nested arrays: 413 before any parsing", async () => {
      assertMatrixError(await rawPost(" ".repeat(1024 * 1024), { chunked: true }), 413, "M_TOO_LARGE", "whitespace");
      assertMatrixError(await rawPost(nested(512 * 1024), { chunked: true }), 413, "M_TOO_LARGE", "nesting");
    });

    test(`thousands of devices: 413 M_TOO_LARGE, nothing sent`, async () => {
      const sentBefore = apns.requests.length + fcm.requests.length + up.requests.length;
      for (const count of [MAX_DEVICES + 1, 1000, 2000, 10_000]) {
        const many = Array.from({ length: count }, (_, i) => ({ app_id: "hostile.ios", pushkey: `k${i}` }));
        assertMatrixError(await post({ notification: { devices: many } }), 413, "M_TOO_LARGE", `${count} devices`);
      }
      assert.equal(apns.requests.length + fcm.requests.length + up.requests.length, sentBefore);
    });

    test("huge strings in every text field, just under MAX_BODY_BYTES: delivered within every provider's limit", async () => {
      const body = base(devices());
      const room = "🏠".repeat(1500);
      const n = body.notification;
      n.sender_display_name = "M".repeat(4000);
      n.room_name = room;
      // Ids stay within the spec's 255 bytes (longer ones are 400 M_BAD_JSON, below).
      n.room_alias = `#${"a".repeat(240)}:example.org`;
      n.content = { msgtype: "m.text", body: "é".repeat(8000), formatted_body: "<b>x</b>".repeat(1000) };
      for (const d of n.devices) d.data.default_payload = { note: "n".repeat(2000) };
      const r = await post(body);
      assert.ok(JSON.stringify(body).length < MAX_BODY_BYTES);
      assert.equal(r.status, 200, r.text.slice(0, 500));
      assert.deepEqual(apns.violations, []);
      assert.deepEqual(fcm.violations, []);
      assert.deepEqual(up.violations, []);
      assert.deepEqual(push.violations, []);
    });
  });

  describe("ids over the spec's 255 bytes", () => {
    for (const field of ["event_id", "room_id", "sender", "type", "room_alias"]) {
      test(`${field} of 256 bytes: 400 M_BAD_JSON naming it, nothing sent`, async () => {
        const body = base(devices());
        body.notification[field] = "x".repeat(256);
        const r = await post(body);
        assert.equal(r.status, 400, r.text.slice(0, 300));
        assert.equal(r.json.errcode, "M_BAD_JSON");
        assert.match(r.json.error, new RegExp(field));
      });
    }
  });

  describe("hostile device data: the device is rejected or delivered, never a 5xx", () => {
    const dataCases = {
      "format is a number": { format: 7 },
      "format is an unknown string": { format: "everything" },
      "default_payload is a string": { default_payload: "x" },
      "default_payload is an array": { default_payload: [1, 2] },
      "default_payload holds keys the providers reserve": { default_payload: { aps: "nope", from: "x", notification: 1, "google.x": "y", message_type: "z" } },
      "default_payload too big for any payload": { default_payload: Object.fromEntries(Array.from({ length: 50 }, (_, i) => [`k${i}`, "v".repeat(200)])) },
      "endpoint and auth of the wrong types": { endpoint: 5, auth: [] },
      "endpoint somewhere not allowed": { endpoint: "https://169.254.169.254/latest/meta-data", auth: "AAAA" },
    };
    for (const [name, data] of Object.entries(dataCases)) {
      test(name, async () => {
        const ds = devices().map((d) => ({ ...d, data: { ...d.data, ...data } }));
        const r = await post(base(ds));
        assert.equal(r.status, 200, `${name}: ${r.status} ${r.text.slice(0, 500)}`);
        assert.deepEqual(apns.violations, [], name);
        assert.deepEqual(fcm.violations, [], name);
      });
    }

    test("a default_payload too big for any payload rejects the devices that carry it", async () => {
      const ds = devices().map((d) => ({ ...d, data: { ...d.data, ...dataCases["default_payload too big for any payload"] } }));
      const r = await post(base(ds));
      assert.equal(r.status, 200, r.text.slice(0, 500));
      // UnifiedPush forwards no device data, so its push goes through.
      const [ios, android, , web] = ds.map((d) => d.pushkey);
      assert.deepEqual([...r.json.rejected].sort(), [ios, android, web].sort());
    });

    // Real events whose text sits deeper in `content` (an edit's
    // m.new_content, a poll's answers): UnifiedPush and WebPush must cut it
    // there, or the device ends Failed (502) and Synapse stalls the pusher.
    const long = "word ".repeat(900);
    const nestedText = {
      "an edit of a long message (m.new_content)": {
        content: {
          msgtype: "m.text", body: `* ${long}`, "m.new_content": { msgtype: "m.text", body: long },
          "m.relates_to": { rel_type: "m.replace", event_id: "$original:example.org" },
        },
        check(content) {
          const text = content["m.new_content"].body;
          assert.ok(text.startsWith("word word") && text.endsWith("…"), text.slice(-20));
          assert.equal(content["m.relates_to"].event_id, "$original:example.org");
        },
      },
      "a poll with many long answers": {
        content: {
          body: "Which?",
          "org.matrix.msc3381.poll.start": {
            question: { body: "Which?" },
            answers: Array.from({ length: 20 }, (_, i) => ({ id: `a${i}`, "org.matrix.msc1767.text": "answer ".repeat(40) })),
          },
        },
        check(content) {
          const answers = content["org.matrix.msc3381.poll.start"].answers;
          assert.deepEqual(answers.map((a) => a.id), Array.from({ length: 20 }, (_, i) => `a${i}`));
          assert.ok(answers.every((a) => a["org.matrix.msc1767.text"].startsWith("answer")));
        },
      },
    };
    for (const [name, { content, check }] of Object.entries(nestedText)) {
      test(`${name}: delivered to every provider within its limit`, async () => {
        const ds = devices();
        const body = base(ds);
        body.notification.content = content;
        const r = await post(body);
        assert.equal(r.status, 200, r.text.slice(0, 300));
        assert.deepEqual(r.json.rejected, []);
        const [, , upDevice, webDevice] = ds;
        const upSent = up.delivered.find((d) => upDevice.pushkey.includes(`/up${d.id}?`));
        const webSent = push.delivered.find((d) => webDevice.data.endpoint.endsWith(`/push/${d.id}`));
        assert.ok(upSent && webSent, "UnifiedPush and WebPush both delivered");
        assert.ok(upSent.bodyLength <= 4096 && webSent.bodyLength <= 4096, `${upSent.bodyLength} ${webSent.bodyLength}`);
        check(upSent.json.notification.content);
        check(webSent.payload.content);
      });
    }

    test("pushkeys that are not what the provider expects", async () => {
      const odd = ["", " ", "not base64!", "%00", "\u0000", "a".repeat(4096), "../../etc/passwd", "🙂"];
      const ds = odd.flatMap((k) => [
        { app_id: "hostile.ios", pushkey: k },
        { app_id: "hostile.android", pushkey: k },
        { app_id: "hostile.up", pushkey: k },
        { app_id: "hostile.web", pushkey: k, data: { endpoint: `${push.origin}/push/nope`, auth: "AAAA" } },
      ]);
      for (let i = 0; i < ds.length; i += MAX_DEVICES) {
        const r = await post(base(ds.slice(i, i + MAX_DEVICES)));
        assert.ok(r.status === 200, `${r.status} ${r.text.slice(0, 500)}`);
      }
    });

    test("app ids that are not what the config expects", async () => {
      const ids = ["", "*", "hostile.*", "HOSTILE.IOS", "hostile.ios ", "\u0000", "a".repeat(10_000)];
      const r = await post(base(ids.map((app_id) => ({ app_id, pushkey: "AAAA" }))));
      assert.equal(r.status, 200, r.text.slice(0, 300));
      assert.equal(r.json.rejected.length, ids.length);
    });
  });

  test("odd requests: wrong content-type, query strings, methods", async () => {
    const body = JSON.stringify(base(devices()));
    const asText = await post(body, { "content-type": "text/plain" });
    assert.ok(asText.status === 200 || (asText.status >= 400 && asText.status < 500), `${asText.status}`);
    for (const method of ["PUT", "DELETE", "PATCH"]) {
      const r = await worker.request("/_matrix/push/v1/notify", { method, body });
      assertMatrixError(r, 405, "M_UNRECOGNIZED", method);
    }
    for (const path of ["/_matrix/push/v1/notify/..", "/_matrix/push/v1/notify%00", "/%2e%2e/health", `/${"a".repeat(8000)}`]) {
      const r = await worker.request(path, { method: "POST", body });
      assert.ok(r.status >= 400 && r.status < 500 && /^M_/.test(r.json?.errcode ?? ""), `${path.slice(0, 40)}: ${r.status} ${r.text.slice(0, 200)}`);
    }
  });

  test("the log holds no key, token or whole pushkey, and no 5xx was logged", async () => {
    assert.ok(await worker.waitForNotifyLogs(), "every notify's log line arrived before the scan");
    const leaks = findLeaks(worker.logs, {
      secrets: [apnsKey.p8, account.keyFile(fcm.tokenUri), vapid.raw],
      tokens: [...apns.tokensSeen.map((t) => t.jwt), ...fcm.delivered.map((d) => d.accessToken)],
      pushkeys: [...pushkeys],
    });
    assert.deepEqual(leaks, []);
    const serverErrors = worker.logs
      .map((l) => { try { return JSON.parse(l.message); } catch { return undefined; } })
      .filter((line) => line?.msg === "notify" && line.status >= 500);
    assert.deepEqual(serverErrors.map((l) => l.error), []);
  });
});
