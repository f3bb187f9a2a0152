// What an APNs provider token mint costs in workerd, now that it is signed
// in the worker's wasm (ECDSA per RFC 6979 with RustCrypto's p256, so every
// isolate mints the same token) rather than by WebCrypto. Not a test.
//
//   scripts/build && node bench/mint.mjs
//
// - warm isolate: a notify to an app whose token is new (a key id of its
//   own: the mint reads KV (a miss), signs and writes KV) minus a notify with
//   the token in memory, CPU from schedstat, median of REPS repetitions;
// - fresh isolates: the first APNs notify after `GET /health` (APPS loaded),
//   which also pays for compiling the curve arithmetic, and the next new
//   app's notify in the same isolate.
//
// A mint happens once per key per 30-minute window in each isolate.

import path from "node:path";
import { Miniflare, convertV4MiniflareOptions } from "miniflare";
import { COMPATIBILITY_DATE, NOTIFY, ROOT } from "../tests/integration/harness.mjs";
import { apnsApp, apnsPushkey, benchKeys, buildOptions, device, median, notifyBody, schedCpuMs, workerdChildren } from "./common.mjs";
import { startFakeProviders } from "./fake-providers.mjs";

const REPS = 5;
const MINTS_PER_REP = 10;
const WARM_PER_REP = 20;
const FRESH = 3;

const keys = benchKeys();
const fake = await startFakeProviders();
const appId = (i) => `org.example.mint${i}.ios`;
const apps = Object.fromEntries(
  Array.from({ length: REPS * MINTS_PER_REP + 2 * FRESH + 1 }, (_, i) => [appId(i), apnsApp(fake.origin, `MINTKEY${String(i).padStart(3, "0")}`)]),
);

async function start() {
  const before = new Set(workerdChildren());
  const mf = new Miniflare(convertV4MiniflareOptions({
    modules: true,
    compatibilityDate: COMPATIBILITY_DATE,
    handleStructuredLogs: () => {},
    ...buildOptions(path.join(ROOT, "build"), apps, { APNS_KEY: keys.apnsP8 }, { modulesRoot: ROOT }),
  }));
  await mf.ready;
  const [pid] = workerdChildren().filter((p) => !before.has(p));
  return { mf, pid };
}

async function cpuOf(instance, requests) {
  const before = schedCpuMs(instance.pid);
  for (const [urlPath, body] of requests) {
    const init = body === undefined ? {} : { method: "POST", headers: { "content-type": "application/json" }, body };
    const r = await instance.mf.dispatchFetch(`http://edgepush.bench${urlPath}`, init);
    await r.arrayBuffer();
    if (r.status !== 200) throw new Error(`${urlPath}: ${r.status}`);
  }
  return (schedCpuMs(instance.pid) - before) / requests.length;
}

const notifyTo = (i) => [NOTIFY, notifyBody([device(appId(i), apnsPushkey())])];

// Warm isolate.
const warm = await start();
let next = 0;
const warmApp = next++;
await cpuOf(warm, Array.from({ length: 20 }, () => notifyTo(warmApp)));
await cpuOf(warm, [notifyTo(next++)]);
const minted = [];
const reused = [];
for (let rep = 0; rep < REPS; rep++) {
  reused.push(await cpuOf(warm, Array.from({ length: WARM_PER_REP }, () => notifyTo(warmApp))));
  minted.push(await cpuOf(warm, Array.from({ length: MINTS_PER_REP }, () => notifyTo(next++))));
}
const tokensBefore = fake.counts.apns;
await warm.mf.dispose();

// Fresh isolates.
const fresh = [];
for (let i = 0; i < FRESH; i++) {
  const instance = await start();
  await cpuOf(instance, [["/health", undefined]]);
  const first = await cpuOf(instance, [notifyTo(next++)]);
  const second = await cpuOf(instance, [notifyTo(next++)]);
  fresh.push({ first, second });
  await instance.mf.dispose();
}
await fake.close();

const ms = (x) => `${x.toFixed(2)} ms`;
const perRep = minted.map((m, i) => m - reused[i]);
console.log(`APNs provider token mint (in-process ES256, RFC 6979), CPU per notify from schedstat; ${tokensBefore} APNs sends`);
console.log(`  warm isolate: notify with the token in memory  ${ms(median(reused))} (median of ${REPS} x ${WARM_PER_REP})`);
console.log(`  warm isolate: notify that mints a new key's token ${ms(median(minted))} (median of ${REPS} x ${MINTS_PER_REP})`);
console.log(`  => one mint (the KV read and write, one signature): ${ms(median(perRep))} (per repetition: ${perRep.map((x) => x.toFixed(2)).join(", ")})`);
console.log(`  fresh isolate: first APNs notify after GET /health ${fresh.map((f) => ms(f.first)).join(", ")}`);
console.log(`  fresh isolate: the next new key's notify           ${fresh.map((f) => ms(f.second)).join(", ")}`);
