// What bench.mjs, ab.mjs and profile.mjs share: reading a workerd process's
// CPU from /proc, the bench's keys, apps and secrets, and notify bodies.

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { ROOT, synapseFixture } from "../tests/integration/harness.mjs";

// ---------------------------------------------------------------- CPU

const TICK_MS = 1000 / 100; // USER_HZ; `getconf CLK_TCK` is 100 on Linux x86_64

/** Pids of the workerd processes this node process spawned. */
export function workerdChildren() {
  const pids = [];
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let stat;
    try {
      stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
    } catch {
      continue;
    }
    const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    if (ppid === process.pid && comm.startsWith("workerd")) pids.push(Number(entry));
  }
  return pids;
}

/** utime + stime of the whole process, in ms (10 ms resolution). */
export function statCpuMs(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) * TICK_MS;
}

/** On-CPU time of the process's live threads, in ms (ns resolution). */
export function schedCpuMs(pid) {
  let ns = 0;
  for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${task}/schedstat`, "utf8").split(" ")[0]);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return ns / 1e6;
}

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// ---------------------------------------------------------------- keys, apps, secrets

export const IOS = "org.example.bench.ios";
export const ANDROID = "org.example.bench.android";

/** A fresh APNs .p8 (ES256) and an RSA 2048 key for FCM service accounts, as PKCS#8 PEM. */
export function benchKeys() {
  const pem = (pair) => pair.privateKey.export({ type: "pkcs8", format: "pem" });
  return {
    apnsP8: pem(crypto.generateKeyPairSync("ec", { namedCurve: "prime256v1" })),
    rsaPem: pem(crypto.generateKeyPairSync("rsa", { modulusLength: 2048 })),
  };
}

/** An APNs app signing with the `APNS_KEY` secret; a new `keyId` is a new token to mint. */
export const apnsApp = (origin, keyId = "BENCHKEY00") => ({
  type: "apns", topic: "org.example.bench", team_id: "BENCHTEAM0", key_id: keyId, key_secret: "APNS_KEY", url: origin,
});

export const fcmApp = (origin, secret = "FCM_SERVICE_ACCOUNT") => ({
  type: "fcm", project_id: "edgepush-bench", service_account_secret: secret, url: origin,
});

/** A service account whose token_uri is the fake's; edgepush caches FCM tokens per client_email, so a new `name` is a new token to mint. */
export const serviceAccount = (origin, keys, name = "edgepush-bench") =>
  JSON.stringify({
    type: "service_account",
    project_id: "edgepush-bench",
    private_key_id: crypto.randomBytes(20).toString("hex"),
    private_key: keys.rsaPem,
    client_email: `${name}@edgepush-bench.iam.gserviceaccount.com`,
    token_uri: `${origin}/token`,
  });

/** The APPS (one APNs app `IOS`, one FCM app `ANDROID`) and the secrets they name. */
export function benchApps(origin, keys, { keyId } = {}) {
  return {
    apps: { [IOS]: apnsApp(origin, keyId), [ANDROID]: fcmApp(origin) },
    secrets: { APNS_KEY: keys.apnsP8, FCM_SERVICE_ACCOUNT: serviceAccount(origin, keys) },
  };
}

/** Miniflare options for a worker build (index.js + index_bg.wasm in `dir`); `modulesRoot` names its modules. */
export function buildOptions(dir, apps, secrets, { modulesRoot = dir } = {}) {
  return {
    modules: [
      { type: "ESModule", path: path.join(dir, "index.js") },
      { type: "CompiledWasm", path: path.join(dir, "index_bg.wasm") },
    ],
    modulesRoot,
    kvNamespaces: ["TOKENS"],
    bindings: { ...secrets, APPS: JSON.stringify(apps) },
  };
}

/** Miniflare options for the floor worker (bench/floor.mjs), which relays to `upstream`. */
export const floorOptions = (upstream, scriptPath = path.join(ROOT, "bench/floor.mjs")) => ({
  scriptPath,
  kvNamespaces: ["TOKENS"],
  bindings: { UPSTREAM: upstream },
});

/** Where `bench/run` builds the Rust/wasm floor (bench/floor-rs). */
export const RUST_FLOOR_DIR = path.join(ROOT, "bench/floor-rs/build");

/** Miniflare options for the Rust/wasm floor (a build of bench/floor-rs), which relays to `upstream`. */
export const rustFloorOptions = (upstream, dir = RUST_FLOOR_DIR) => ({
  ...buildOptions(dir, {}, {}),
  bindings: { UPSTREAM: upstream },
});

// ---------------------------------------------------------------- notifies

export const apnsPushkey = () => crypto.randomBytes(32).toString("base64");
export const fcmPushkey = () => `bench-fcm-${crypto.randomBytes(60).toString("base64url")}`;

/** A real Synapse message notify, with `devices` in place of its own. */
const MESSAGE = synapseFixture("message-ios").notification;
export const notifyBody = (devices) => JSON.stringify({ notification: { ...MESSAGE, devices } });
export const device = (app_id, pushkey) => ({ app_id, pushkey, pushkey_ts: 1795564953, data: {} });
