// A CPU profile of the worker (not part of `npm run bench`): V8's sampling
// profiler on the worker's isolate, through workerd's inspector; prints self
// time per function, per notify. The profiler slows everything about 2.5x:
// read the shares, not the microseconds, and confirm a finding with ab.mjs.
//
//   node bench/profile.mjs <builddir|floor> [apns|fcm] [count]
//   (a builddir named floor* is a build of the Rust floor, bench/floor-rs)
//   PROF_COLD=notify|/health ...   only the first request of a fresh isolate
//   PROF_INCL='edgepush|__wbg' ... also inclusive time of matching functions
//   PROF_TOP=60                    rows of self time to print
//   PROF_C=16                      notifies in flight at once (default 1)
//
// Besides the functions, it prints the garbage collector's share and its
// longest run of samples (a GC pause), and the longest stretches the isolate
// stayed busy without a break: what a request that arrives meanwhile waits.
//
// Profile a build made by `worker-build --release` alone: it keeps the wasm's
// function names, which scripts/build then strips with wasm-opt.

import path from "node:path";
import { Miniflare, convertV4MiniflareOptions } from "miniflare";
import { COMPATIBILITY_DATE, NOTIFY } from "../tests/integration/harness.mjs";
import { ANDROID, IOS, apnsPushkey, benchApps, benchKeys, buildOptions, device, floorOptions, notifyBody, rustFloorOptions } from "./common.mjs";
import { startFakeProviders } from "./fake-providers.mjs";

const [dirArg, which = "apns", countArg = "3000"] = process.argv.slice(2);
const dir = path.resolve(dirArg);
const COUNT = Number(countArg);
const fake = await startFakeProviders();
const origin = fake.origin;
const { apps, secrets } = benchApps(origin, benchKeys());
const body = notifyBody([which === "fcm" ? device(ANDROID, `bench-fcm-${"x".repeat(80)}`) : device(IOS, apnsPushkey())]);

/** A build whose directory's name starts with `floor` is a build of the Rust floor (bench/floor-rs). */
const isFloor = dirArg === "floor" || path.basename(dir).startsWith("floor");
const inspectorPort = 9230 + Math.floor(Math.random() * 500);
const mf = new Miniflare(convertV4MiniflareOptions({
  modules: true,
  compatibilityDate: COMPATIBILITY_DATE,
  handleStructuredLogs: () => {},
  inspectorPort,
  ...(dirArg === "floor"
    ? floorOptions(`${origin}/3/device/prof`)
    : isFloor
      ? rustFloorOptions(`${origin}/3/device/prof`, dir)
      : buildOptions(dir, apps, secrets)),
}));
await mf.ready;
const post = async () => {
  const r = await mf.dispatchFetch(`http://edgepush.prof${isFloor ? "/" : NOTIFY}`, { method: "POST", headers: { "content-type": "application/json" }, body });
  const t = await r.text();
  if (r.status !== 200 && !isFloor) throw new Error(`${r.status} ${t}`);
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
else {
  let left = COUNT;
  const client = async () => {
    while (left-- > 0) await post();
  };
  await Promise.all(Array.from({ length: Number(process.env.PROF_C ?? 1) }, client));
}
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

// Runs of consecutive samples: of the garbage collector, and busy (not idle).
{
  const runs = { gc: [], busy: [] };
  let gcRun = 0;
  let busyRun = 0;
  profile.samples.forEach((id, i) => {
    const name = byId.get(id).callFrame.functionName;
    const dt = (deltas[i + 1] ?? deltas[i] ?? 0) / 1000;
    if (name === "(garbage collector)") gcRun += dt;
    else if (gcRun > 0) runs.gc.push(gcRun), (gcRun = 0);
    if (name !== "(idle)") busyRun += dt;
    else if (busyRun > 0) runs.busy.push(busyRun), (busyRun = 0);
  });
  const top = (xs) => [...xs].sort((a, b) => b - a).slice(0, 5).map((x) => x.toFixed(2)).join(", ");
  const sum = (xs) => xs.reduce((a, b) => a + b, 0);
  console.log(`\ngarbage collector: ${((1000 * sum(runs.gc)) / COUNT).toFixed(2)} us per notify, ${((100 * sum(runs.gc) * 1000) / (total - idle)).toFixed(1)}% of busy time; longest runs (ms): ${top(runs.gc)}`);
  const sorted = [...runs.busy].sort((a, b) => a - b);
  const q = (p) => (sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0).toFixed(2);
  console.log(`busy stretches: ${sorted.length}, median ${q(0.5)} ms, p99 ${q(0.99)} ms; longest (ms): ${top(runs.busy)}`);
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
