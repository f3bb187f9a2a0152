// A CPU profile of the worker (not part of `npm run bench`): V8's sampling
// profiler on the worker's isolate, through workerd's inspector; prints self
// time per function, per notify. The profiler slows everything about 2.5x:
// read the shares, not the microseconds, and confirm a finding with ab.mjs.
//
//   node bench/profile.mjs <builddir|floor> [apns|fcm] [count]
//   PROF_COLD=notify|/health ...   only the first request of a fresh isolate
//   PROF_INCL='edgepush|__wbg' ... also inclusive time of matching functions
//   PROF_TOP=60                    rows of self time to print
//
// Build with `strip = false` in Cargo.toml's release profile so the wasm
// keeps its function names.

import crypto from "node:crypto";
import path from "node:path";
import { Miniflare } from "miniflare";
import { COMPATIBILITY_DATE, NOTIFY, synapseFixture } from "../tests/integration/harness.mjs";
import { startFakeProviders } from "./fake-providers.mjs";

const [dirArg, which = "apns", countArg = "3000"] = process.argv.slice(2);
const dir = path.resolve(dirArg);
const COUNT = Number(countArg);
const fake = await startFakeProviders();
const origin = fake.origin;
const APNS_P8 = crypto.generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey.export({ type: "pkcs8", format: "pem" });
const RSA_PEM = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs8", format: "pem" });
const IOS = "org.example.bench.ios";
const ANDROID = "org.example.bench.android";
const apps = {
  [IOS]: { type: "apns", topic: "org.example.bench", team_id: "BENCHTEAM0", key_id: "BENCHKEY00", key_secret: "APNS_KEY", url: origin },
  [ANDROID]: { type: "fcm", project_id: "edgepush-bench", service_account_secret: "FCM_SA", url: origin },
};
const secrets = {
  APNS_KEY: APNS_P8,
  FCM_SA: JSON.stringify({
    type: "service_account", project_id: "edgepush-bench", private_key_id: "0".repeat(40), private_key: RSA_PEM,
    client_email: "bench@edgepush-bench.iam.gserviceaccount.com", token_uri: `${origin}/token`,
  }),
};
const MESSAGE = synapseFixture("message-ios").notification;
const device = (app_id, pushkey) => ({ app_id, pushkey, pushkey_ts: 1795564953, data: {} });
const body = JSON.stringify({
  notification: {
    ...MESSAGE,
    devices: [which === "fcm" ? device(ANDROID, `bench-fcm-${"x".repeat(80)}`) : device(IOS, crypto.randomBytes(32).toString("base64"))],
  },
});

const inspectorPort = 9230 + Math.floor(Math.random() * 500);
const mf = new Miniflare({
  modules: true,
  compatibilityDate: COMPATIBILITY_DATE,
  handleStructuredLogs: () => {},
  inspectorPort,
  ...(dirArg === "floor"
    ? { scriptPath: "bench/floor.mjs", kvNamespaces: ["TOKENS"], bindings: { UPSTREAM: `${origin}/3/device/prof` } }
    : {
        scriptPath: path.join(dir, "index.js"),
        modulesRoot: dir,
        modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
        kvNamespaces: ["TOKENS"],
        bindings: { ...secrets, APPS: JSON.stringify(apps) },
      }),
});
await mf.ready;
const post = async () => {
  const r = await mf.dispatchFetch(`http://edgepush.prof${dirArg === "floor" ? "/" : NOTIFY}`, { method: "POST", headers: { "content-type": "application/json" }, body });
  const t = await r.text();
  if (r.status !== 200 && dirArg !== "floor") throw new Error(`${r.status} ${t}`);
};
const COLD = process.env.PROF_COLD; // a path: profile only the first request of the fresh isolate
if (!COLD) for (let i = 0; i < 500; i++) await post();

const targets = await (await fetch(`http://127.0.0.1:${inspectorPort}/json/list`)).json();
const target = targets.find((t) => !t.title?.includes("miniflare") && !t.url?.includes("miniflare")) ?? targets[0];
const ws = new WebSocket(target.webSocketDebuggerUrl);
await new Promise((resolve, reject) => {
  ws.onopen = resolve;
  ws.onerror = reject;
});
let nextId = 1;
const pending = new Map();
ws.onmessage = (event) => {
  const message = JSON.parse(event.data);
  if (message.id && pending.has(message.id)) {
    pending.get(message.id)(message);
    pending.delete(message.id);
  }
};
const send = (method, params = {}) =>
  new Promise((resolve) => {
    const id = nextId++;
    pending.set(id, resolve);
    ws.send(JSON.stringify({ id, method, params }));
  });
await send("Profiler.enable");
await send("Profiler.setSamplingInterval", { interval: COLD ? 20 : 50 });
await send("Profiler.start");
if (COLD === "notify") await post();
else if (COLD) await (await mf.dispatchFetch(`http://edgepush.prof${COLD}`)).text();
else for (let i = 0; i < COUNT; i++) await post();
const { result } = await send("Profiler.stop");
ws.close();
await mf.dispose();
await fake.close();

const profile = result.profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const selfUs = new Map();
const deltas = profile.timeDeltas;
profile.samples.forEach((id, i) => {
  const n = byId.get(id);
  const key = `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url ? path.basename(n.callFrame.url) : ""}`.trim();
  selfUs.set(key, (selfUs.get(key) ?? 0) + (deltas[i] ?? 0));
});
const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
const idle = selfUs.get("(idle)") ?? 0;
console.log(`${target.title} ${target.url}; ${COUNT} notifies; sampled ${(total / 1000).toFixed(0)} ms, idle ${(idle / 1000).toFixed(0)} ms, busy per notify ${((total - idle) / COUNT).toFixed(1)} us`);
const rows = [...selfUs.entries()].filter(([k]) => k !== "(idle)").sort((a, b) => b[1] - a[1]);
for (const [name, us] of rows.slice(0, Number(process.env.PROF_TOP ?? 60))) {
  console.log(`${(us / COUNT).toFixed(2).padStart(8)} us  ${((100 * us) / (total - idle)).toFixed(1).padStart(5)}%  ${name.slice(0, 140)}`);
}

// Inclusive time of the functions whose name matches PROF_INCL (a regex).
if (process.env.PROF_INCL) {
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const pattern = new RegExp(process.env.PROF_INCL);
  const inclusive = new Map();
  profile.samples.forEach((id, i) => {
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      const name = byId.get(cur).callFrame.functionName;
      if (pattern.test(name) && !seen.has(name)) {
        seen.add(name);
        inclusive.set(name, (inclusive.get(name) ?? 0) + (deltas[i] ?? 0));
      }
    }
  });
  console.log("\ninclusive:");
  for (const [name, us] of [...inclusive.entries()].sort((a, b) => b[1] - a[1]).slice(0, 80)) {
    console.log(`${(us / COUNT).toFixed(2).padStart(8)} us  ${((100 * us) / (total - idle)).toFixed(1).padStart(5)}%  ${name.slice(0, 150)}`);
  }
}
