// The bench behind `npm run bench` (see bench/README.md): edgepush's release
// build and two floor workers (JS, and Rust/wasm built like edgepush), each
// in its own workerd (Miniflare), against fake providers in this process:
// instant ones, then ones that answer after ROUND_TRIP_MS. Prints the tables.
//
// CPU is the workerd process's: the fakes and the load generator run in this
// node process and are not counted. It is the sum of
// /proc/<pid>/task/*/schedstat (nanoseconds) over the process's threads;
// /proc/<pid>/stat (utime + stime, in 10 ms ticks, every thread ever run)
// checks it over all the warm batches, so a thread that ended would show.

import { execFileSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import zlib from "node:zlib";
import { Miniflare, convertV4MiniflareOptions } from "miniflare";
import { COMPATIBILITY_DATE, NOTIFY, ROOT } from "../tests/integration/harness.mjs";
import {
  ANDROID, IOS, apnsApp, apnsPushkey, benchApps, benchKeys, buildOptions, device, fcmApp, fcmPushkey, floorOptions,
  median, notifyBody, RUST_FLOOR_DIR, rustFloorOptions, schedCpuMs, serviceAccount, statCpuMs, workerdChildren,
} from "./common.mjs";
import { startFakeProviders } from "./fake-providers.mjs";

/** Each warm and round-trip point is RUNS short batches, interleaved with the other workloads' at the same c. */
const SECONDS = Number(process.env.BENCH_SECONDS ?? 0.5);
const RUNS = Number(process.env.BENCH_RUNS ?? 8);
/** Repetitions of the cold points. */
const REPS = 3;
const CONCURRENCIES = [1, 16, 64];
/** The providers' answer time in the round-trip points, and their concurrencies. */
const ROUND_TRIP_MS = 50;
const ROUND_TRIP_CONCURRENCIES = [16, 256];
/** Notifies sent at once to a fresh isolate, all needing the same new token. */
const BURST = 32;
/** New apps (new keys) per repetition of the mint points. */
const MINTS_PER_REP = 40;
/** Notifies per repetition of the warm reference next to the mint points. */
const WARM_PER_REP = 80;
const FRESH_PROCESSES = REPS;
const OK_BODY = '{"rejected":[]}';

const progress = (message) => process.stderr.write(`bench: ${message}\n`);

// ---------------------------------------------------------------- CPU

const cpu = (pid) => ({ stat: statCpuMs(pid), sched: schedCpuMs(pid) });
const load1 = () => Number(fs.readFileSync("/proc/loadavg", "utf8").split(" ")[0]);

// ---------------------------------------------------------------- workers

/** Start a worker in its own workerd; returns it with the workerd's pid. */
async function startInstance(options) {
  const before = new Set(workerdChildren());
  const started = performance.now();
  const mf = new Miniflare(convertV4MiniflareOptions({
    modules: true,
    compatibilityDate: COMPATIBILITY_DATE,
    // One JSON line per notify is part of what edgepush costs: workerd writes it;
    // Miniflare parses it in this process, and the handler drops it.
    handleStructuredLogs: () => {},
    ...options,
  }));
  await mf.ready;
  const readyMs = performance.now() - started;
  const pids = workerdChildren().filter((pid) => !before.has(pid));
  if (pids.length !== 1) throw new Error(`expected one new workerd process, found ${pids.length}`);
  return { mf, pid: pids[0], started, readyMs };
}

const edgepushOptions = (apps, secrets) => buildOptions(path.join(ROOT, "build"), apps, secrets, { modulesRoot: ROOT });

const keys = benchKeys();

// ---------------------------------------------------------------- load

async function post(mf, body, path = NOTIFY) {
  const response = await mf.dispatchFetch(`http://edgepush.bench${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  });
  const text = await response.text();
  if (response.status !== 200 || text !== OK_BODY) throw new Error(`unexpected answer ${response.status} ${text.slice(0, 300)}`);
}

/** Called around each batch (the round-trip points read the fake's in-flight count). */
const batchHooks = { before: undefined, after: undefined };

/** `concurrency` clients each posting `body` in a loop for `seconds`. */
async function batch(instance, body, concurrency, seconds) {
  const latencies = [];
  const load = load1();
  batchHooks.before?.();
  const before = cpu(instance.pid);
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        const sent = performance.now();
        await post(instance.mf, body, instance.path);
        latencies.push(performance.now() - sent);
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  const after = cpu(instance.pid);
  latencies.sort((a, b) => a - b);
  const n = latencies.length;
  const result = {
    n,
    latencies,
    rps: n / elapsed,
    p50: latencies[Math.floor(n * 0.5)],
    p99: latencies[Math.min(n - 1, Math.floor(n * 0.99))],
    cpuMs: (after.sched - before.sched) / n,
    statMs: after.stat - before.stat,
    schedMs: after.sched - before.sched,
    load,
  };
  batchHooks.after?.(result);
  return result;
}

/** Post each body once, one after the other; CPU (schedstat) per request. */
async function sequential(instance, bodies, path = NOTIFY) {
  const before = schedCpuMs(instance.pid);
  for (const body of bodies) await post(instance.mf, body, path);
  return (schedCpuMs(instance.pid) - before) / bodies.length;
}

// ---------------------------------------------------------------- figures

const min = (xs) => Math.min(...xs);
const max = (xs) => Math.max(...xs);
const fmt = (x, digits) => (Number.isFinite(x) ? x.toFixed(digits) : "-");
/** "min / median" of a figure over the repetitions. */
const minMed = (xs, digits) => `${fmt(min(xs), digits)} / ${fmt(median(xs), digits)}`;
/** "median / max" for throughput, where more is better. */
const medMax = (xs, digits) => `${fmt(median(xs), digits)} / ${fmt(max(xs), digits)}`;
const loadRange = (xs) => `${fmt(min(xs), 2)}-${fmt(max(xs), 2)}`;
const kib = (bytes) => `${(bytes / 1024).toFixed(1)} KiB`;

function pad(cells, widths) {
  return cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join("  ");
}

// ---------------------------------------------------------------- main

const fake = await startFakeProviders();
const origin = fake.origin;
const out = [];
const say = (line = "") => out.push(line);

/** The revision measured: EDGEPUSH_BENCH_REVISION names a tree that is not a git checkout (a `git archive`). */
function revision() {
  if (process.env.EDGEPUSH_BENCH_REVISION) return process.env.EDGEPUSH_BENCH_REVISION;
  try {
    const commit = execFileSync("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
    const dirty = execFileSync("git", ["-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"], { encoding: "utf8" });
    return dirty.trim() ? `${commit} + uncommitted changes in src/` : commit;
  } catch {
    return "unknown (not a git checkout)";
  }
}

function describeMachine() {
  const cpuModel = os.cpus()[0]?.model ?? "unknown CPU";
  const commit = revision();
  const workerd = execFileSync(path.join(ROOT, "node_modules/@cloudflare/workerd-linux-64/bin/workerd"), ["--version"], { encoding: "utf8" }).trim();
  say(`edgepush bench, ${new Date().toISOString()}, commit ${commit}`);
  say(`machine: ${os.cpus().length} x ${cpuModel}, ${Math.round(os.totalmem() / 2 ** 30)} GiB; node ${process.version}; ${workerd}`);
  say(`loadavg at start: ${fs.readFileSync("/proc/loadavg", "utf8").trim()}`);
}

describeMachine();
const benchStarted = performance.now();

// Bundle.
const wasm = fs.readFileSync(path.join(ROOT, "build/index_bg.wasm"));
const js = fs.readFileSync(path.join(ROOT, "build/index.js"));
const gzip = (buf) => zlib.gzipSync(buf).length; // as wrangler reports it (default level)

// Fresh processes: start to first response, and what a cold isolate costs.
const fresh = { readyMs: [], firstMs: [], readyCpu: [], healthCpu: [], apnsCpu: [], fcmCpu: [], floorCpu: [], floorRsCpu: [] };
const { apps: warmApps, secrets: warmSecrets } = benchApps(origin, keys);
for (let i = 0; i < FRESH_PROCESSES; i++) {
  progress(`fresh process ${i + 1}/${FRESH_PROCESSES}`);
  const instance = await startInstance(edgepushOptions(warmApps, warmSecrets));
  const readyCpu = schedCpuMs(instance.pid);
  const tokensBefore = fake.counts.token;
  const apnsCpu = await sequential(instance, [notifyBody([device(IOS, apnsPushkey())])]);
  fresh.firstMs.push(performance.now() - instance.started);
  const fcmCpu = await sequential(instance, [notifyBody([device(ANDROID, fcmPushkey())])]);
  if (fake.counts.token !== tokensBefore + 1) throw new Error("the first FCM notify did not mint");
  fresh.readyMs.push(instance.readyMs);
  fresh.readyCpu.push(readyCpu);
  fresh.apnsCpu.push(apnsCpu);
  fresh.fcmCpu.push(fcmCpu);
  await instance.mf.dispose();
}
const floorUpstream = `${origin}/3/device/${crypto.randomBytes(32).toString("hex")}`;
// The same without a notify first: what the first request costs before any
// mint; and the floor's first request, which is the runtime's part of it.
for (let i = 0; i < FRESH_PROCESSES; i++) {
  const floorInstance = await startInstance(floorOptions(floorUpstream));
  fresh.floorCpu.push(await sequential(floorInstance, [notifyBody([device(IOS, apnsPushkey())])], "/"));
  await floorInstance.mf.dispose();
  const floorRsInstance = await startInstance(rustFloorOptions(floorUpstream));
  fresh.floorRsCpu.push(await sequential(floorRsInstance, [notifyBody([device(IOS, apnsPushkey())])], "/"));
  await floorRsInstance.mf.dispose();

  const instance = await startInstance(edgepushOptions(warmApps, warmSecrets));
  const before = schedCpuMs(instance.pid);
  const response = await instance.mf.dispatchFetch("http://edgepush.bench/health");
  await response.text();
  fresh.healthCpu.push(schedCpuMs(instance.pid) - before);
  await instance.mf.dispose();
}

// Warm points: the two floors and edgepush, each point's workloads run one
// after the other (in an order that turns each repetition) so the machine's
// load weighs on them alike.
progress("starting the floors and edgepush");
const floor = await startInstance(floorOptions(floorUpstream));
const floorRs = await startInstance(rustFloorOptions(floorUpstream));
const edgepush = await startInstance(edgepushOptions(warmApps, warmSecrets));
const quietOptions = edgepushOptions(warmApps, warmSecrets);
const quiet = await startInstance({ ...quietOptions, bindings: { ...quietOptions.bindings, LOG_NOTIFIES: "problems" } });

const mixed = [];
for (let i = 0; i < 5; i++) mixed.push(device(IOS, apnsPushkey()), device(ANDROID, fcmPushkey()));
const floorBody = notifyBody([device(IOS, apnsPushkey())]);
const apnsBody = notifyBody([device(IOS, apnsPushkey())]);
const fcmBody = notifyBody([device(ANDROID, fcmPushkey())]);
// The gateway floors: the same workers asking also what any gateway keeping
// edgepush's contract asks of the runtime (a send bounded by a timer, an
// APNs request's headers, the answer read through a reader, one log line);
// the Rust one through edgepush's own src/glue.js, as edgepush's shell does.
const gateway = (instance, query) => ({ ...instance, path: `${NOTIFY}?${query}` });
const workloads = [
  { name: "JS floor: read, 1 fetch, answer", instance: floor, body: floorBody },
  { name: "Rust/wasm floor: the same in wasm", instance: floorRs, body: floorBody },
  { name: "JS gateway floor: + timeout, log...", instance: gateway(floor, "gateway"), body: floorBody },
  { name: "Rust gateway floor: the same", instance: gateway(floorRs, "gateway"), body: floorBody },
  { name: "notify, 1 APNs device", instance: edgepush, body: apnsBody },
  { name: "notify, 1 FCM device", instance: edgepush, body: fcmBody },
  { name: "  the same, LOG_NOTIFIES=problems", instance: quiet, body: fcmBody },
  { name: "notify, 10 devices (5 APNs + 5 FCM)", instance: edgepush, body: notifyBody(mixed) },
];
const [jsFloor, rustFloor, jsGateway, rustGateway] = workloads;

/** Run `points` (workload, concurrency) RUNS times, each round in a turned order; the token mints meanwhile. */
async function measure(label, points, seconds, provider) {
  for (const w of new Set(points.map((p) => p.w))) {
    progress(`warming up: ${w.name}`);
    await batch(w.instance, w.body, 16, Math.min(1, seconds));
  }
  const tokensBefore = provider.counts.token;
  for (let rep = 0; rep < RUNS; rep++) {
    progress(`${label}: round ${rep + 1}/${RUNS}`);
    for (let k = 0; k < points.length; k++) {
      const p = points[(k + rep * 3) % points.length];
      p.w.results[p.c].push(await batch(p.w.instance, p.w.body, p.c, seconds));
    }
  }
  return provider.counts.token - tokensBefore;
}

/** Each concurrency's workloads next to each other. */
const grid = (ws, cs) => cs.flatMap((c) => ws.map((w) => ({ w, c })));
for (const w of workloads) w.results = Object.fromEntries(CONCURRENCIES.map((c) => [c, []]));
const warmMints = await measure("warm", grid(workloads, CONCURRENCIES), SECONDS, fake);

// A realistic round trip: the providers answer after ROUND_TRIP_MS.
progress("round trip points");
const slow = await startFakeProviders({ delayMs: ROUND_TRIP_MS });
const slowFloorUpstream = `${slow.origin}/3/device/${crypto.randomBytes(32).toString("hex")}`;
const { apps: slowApps, secrets: slowSecrets } = benchApps(slow.origin, keys);
const slowFloor = await startInstance(floorOptions(slowFloorUpstream));
const slowFloorRs = await startInstance(rustFloorOptions(slowFloorUpstream));
const slowEdgepush = await startInstance(edgepushOptions(slowApps, slowSecrets));
const roundTrip = [
  { name: "JS floor", instance: slowFloor, body: floorBody },
  { name: "Rust/wasm floor", instance: slowFloorRs, body: floorBody },
  { name: "notify, 1 APNs device", instance: slowEdgepush, body: apnsBody },
  { name: "notify, 1 FCM device", instance: slowEdgepush, body: fcmBody },
];
for (const w of roundTrip) w.results = Object.fromEntries(ROUND_TRIP_CONCURRENCIES.map((c) => [c, []]));
batchHooks.before = () => slow.inFlight.reset();
batchHooks.after = (r) => Object.assign(r, { inFlightMean: slow.inFlight.mean(), inFlightMax: slow.inFlight.max });
const roundTripMints = await measure("round trip", grid(roundTrip, ROUND_TRIP_CONCURRENCIES), SECONDS, slow);
batchHooks.before = batchHooks.after = undefined;

// A fresh isolate's first notifies all at once, with the token endpoint as
// slow as the round trip: one mint, the others wait for it.
progress("burst in a fresh isolate");
const burst = { cold: [], warm: [], coldMax: [], warmMax: [], mints: [] };
for (let rep = 0; rep < REPS; rep++) {
  const instance = await startInstance(edgepushOptions(slowApps, slowSecrets));
  await (await instance.mf.dispatchFetch("http://edgepush.bench/health")).text();
  const tokensBefore = slow.counts.token;
  const bodies = Array.from({ length: BURST }, () => notifyBody([device(ANDROID, fcmPushkey())]));
  for (const [key, maxKey] of [["cold", "coldMax"], ["warm", "warmMax"]]) {
    const before = schedCpuMs(instance.pid);
    const latencies = await Promise.all(bodies.map(async (body) => {
      const sent = performance.now();
      await post(instance.mf, body);
      return performance.now() - sent;
    }));
    burst[key].push((schedCpuMs(instance.pid) - before) / BURST);
    burst[maxKey].push(Math.max(...latencies));
    if (key === "cold") burst.mints.push(slow.counts.token - tokensBefore);
  }
  await instance.mf.dispose();
}

// Mints in a warm isolate: the first notify to an app with a key of its own,
// against a notify to a warm app in the same isolate.
progress("mint points");
const { apps: mintApps, secrets: mintSecrets } = benchApps(origin, keys);
const mintCount = MINTS_PER_REP * REPS + 1;
const newApns = [];
const newFcm = [];
for (let i = 0; i < mintCount; i++) {
  const apnsId = `org.example.bench.ios.k${i}`;
  mintApps[apnsId] = apnsApp(origin, `BENCHK${String(i).padStart(4, "0")}`);
  newApns.push(apnsId);
  const fcmId = `org.example.bench.android.k${i}`;
  mintSecrets[`FCM_SA_${i}`] = serviceAccount(origin, keys, `bench-${i}`);
  mintApps[fcmId] = fcmApp(origin, `FCM_SA_${i}`);
  newFcm.push(fcmId);
}
const minter = await startInstance(edgepushOptions(mintApps, mintSecrets));
const warmApnsBody = notifyBody([device(IOS, apnsPushkey())]);
const warmFcmBody = notifyBody([device(ANDROID, fcmPushkey())]);
// Parse APPS, warm the code paths, and mint once on each path before measuring.
await batch(minter, warmApnsBody, 4, 0.5);
await batch(minter, warmFcmBody, 4, 0.5);
await sequential(minter, [notifyBody([device(newApns.pop(), apnsPushkey())]), notifyBody([device(newFcm.pop(), fcmPushkey())])]);
const mint = { apnsWarm: [], apnsMint: [], fcmWarm: [], fcmMint: [] };
for (let rep = 0; rep < REPS; rep++) {
  const apnsBodies = newApns.splice(0, MINTS_PER_REP).map((app) => notifyBody([device(app, apnsPushkey())]));
  const fcmBodies = newFcm.splice(0, MINTS_PER_REP).map((app) => notifyBody([device(app, fcmPushkey())]));
  mint.apnsWarm.push(await sequential(minter, Array(WARM_PER_REP).fill(warmApnsBody)));
  mint.apnsMint.push(await sequential(minter, apnsBodies));
  mint.fcmWarm.push(await sequential(minter, Array(WARM_PER_REP).fill(warmFcmBody)));
  const tokensBefore = fake.counts.token;
  mint.fcmMint.push(await sequential(minter, fcmBodies));
  if (fake.counts.token - tokensBefore !== MINTS_PER_REP) throw new Error("the FCM mint batch did not mint once per app");
}
// What a mint's I/O costs on the floor: a KV miss and write, one more fetch.
const floorIo = { one: [], kv: [], two: [] };
for (let rep = 0; rep < REPS; rep++) {
  floorIo.one.push(await sequential(floor, Array(WARM_PER_REP).fill(floorBody), "/"));
  floorIo.kv.push(await sequential(floor, Array(WARM_PER_REP).fill(floorBody), "/?kv"));
  floorIo.two.push(await sequential(floor, Array(WARM_PER_REP).fill(floorBody), "/?fetches=2"));
}
const kvCost = median(floorIo.kv) - median(floorIo.one);
const fetchCost = median(floorIo.two) - median(floorIo.one);
const apnsMintDelta = mint.apnsMint.map((m, i) => m - mint.apnsWarm[i]);
const fcmMintDelta = mint.fcmMint.map((m, i) => m - mint.fcmWarm[i]);

const totals = workloads.flatMap((w) => CONCURRENCIES.flatMap((c) => w.results[c]));
const statTotal = totals.reduce((s, r) => s + r.statMs, 0);
const schedTotal = totals.reduce((s, r) => s + r.schedMs, 0);

for (const instance of [floor, floorRs, edgepush, quiet, slowFloor, slowFloorRs, slowEdgepush, minter]) await instance.mf.dispose();
await fake.close();
await slow.close();

// ---------------------------------------------------------------- tables

/** Latencies of all the runs of a point, sorted. */
const pooled = (rs) => rs.flatMap((r) => r.latencies).sort((a, b) => a - b);
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
/** Each run's figure over the same run's figure of `ref` (run i of a point is next to run i of its reference). */
const perRun = (rs, refs, f) => rs.map((r, i) => f(r) / f(refs[i]));

say(`each point: ${RUNS} runs of ${SECONDS} s (closed loop, c clients), the workloads of one c run in turn, round by round;`);
say(`req/s is "median / max" over the runs; p50 and p99 are of all the runs' requests together; CPU = the workerd`);
say(`process's on-CPU time (schedstat) per request, "min / median" over the runs; "x floor" divides each run by the floor's run`);
say(`next to it ("min / median"); "p99 x floor" is the median of each run's p99 over the JS floor's run next to it;`);
say(`"p99/50" is the tail's shape (pooled); load = 1-min loadavg over the runs`);
say();
const widths = [35, 4, 11, 8, 8, 7, 11, 14, 13, 13, 13, 13, 10];
const header = (title, extra = "x JS floor", gateways = ["x JS gw", "x Rust gw"]) =>
  [pad([title, "c", "req/s", "p50 ms", "p99 ms", "p99/50", "p99 x floor", "CPU ms/req", extra, "x Rust floor", ...gateways, "load"], widths.filter((_, i) => gateways.length > 0 || (i !== 10 && i !== 11))),
    "-".repeat(widths.reduce((x, y) => x + y + 2, -2) - (gateways.length > 0 ? 0 : 30))];
/** Each run's CPU over `ref`'s run next to it, "min / median"; "" for the floors themselves. */
const cpuOver = (w, c, ref, floors) => (floors.includes(w) ? (w === ref ? "1" : "") : minMed(perRun(w.results[c], ref.results[c], (r) => r.cpuMs), 2));
function rows(ws, cs, refJs, refRs, extra, gateways = []) {
  for (const w of ws) {
    for (const c of cs) {
      const rs = w.results[c];
      const lat = pooled(rs);
      // Each run's p99 over the JS floor's run next to it: a stall of the
      // machine lands in one run, where the pooled p99 would take it whole.
      const p99Ratio = median(perRun(rs, refJs.results[c], (r) => r.p99));
      const cpuJs = w === refJs ? "1" : minMed(perRun(rs, refJs.results[c], (r) => r.cpuMs), 2);
      const cpuRs = w === refJs ? "" : w === refRs ? "1" : minMed(perRun(rs, refRs.results[c], (r) => r.cpuMs), 2);
      say(pad([c === cs[0] ? w.name : "", c, medMax(rs.map((r) => r.rps), 0), fmt(pct(lat, 0.5), 2), fmt(pct(lat, 0.99), 2),
        fmt(pct(lat, 0.99) / pct(lat, 0.5), 1), w === refJs ? "1" : fmt(p99Ratio, 2), minMed(rs.map((r) => r.cpuMs), 3), extra ? extra(w, c) : cpuJs, cpuRs,
        ...gateways.map((g) => cpuOver(w, c, g, [refJs, refRs, ...gateways])), loadRange(rs.map((r) => r.load))],
        widths.filter((_, i) => gateways.length > 0 || (i !== 10 && i !== 11))));
    }
  }
}
for (const line of header("warm (tokens cached), instant fakes")) say(line);
rows(workloads, CONCURRENCIES, jsFloor, rustFloor, undefined, [jsGateway, rustGateway]);
say(`(x JS gw / x Rust gw: CPU over the gateway floors', which ask of the runtime what any gateway keeping edgepush's contract`);
say(` must: a send bounded by a timer, an APNs request's headers, the answer read through a reader, one log line per notify;`);
say(` the Rust one makes these calls through edgepush's src/glue.js. What edgepush costs over it is its own code.`);
say(` The 10-device notify makes 10 fetches to the floors' 1. Token mints during the warm runs: ${warmMints}.`);
say(` stat vs schedstat CPU over all warm runs: ${(statTotal / 1000).toFixed(2)} s vs ${(schedTotal / 1000).toFixed(2)} s)`);
say();
say(`round trip: the fake providers answer after ${ROUND_TRIP_MS} ms; "in flight" is how many requests the isolate had open at`);
say(`the provider at once (time-weighted mean / most), i.e. the notifies it carried`);
say();
const inFlight = (w, c) => `${fmt(median(w.results[c].map((r) => r.inFlightMean)), 1)} / ${Math.max(...w.results[c].map((r) => r.inFlightMax))}`;
for (const line of header(`round trip ${ROUND_TRIP_MS} ms`, "in flight", [])) say(line);
rows(roundTrip, ROUND_TRIP_CONCURRENCIES, roundTrip[0], roundTrip[1], inFlight);
say(`(x Rust floor is CPU per request over the Rust floor's, as above. Token mints during the runs: ${roundTripMints}.`);
say(` One isolate's ceiling on this machine is 1 / its CPU per request (at c=${ROUND_TRIP_CONCURRENCIES.at(-1)}); at ${ROUND_TRIP_MS} ms per answer it then`);
say(` carries that rate x ${ROUND_TRIP_MS / 1000} s in flight:`);
const ceiling = (w) => {
  const cpu = median(w.results[ROUND_TRIP_CONCURRENCIES.at(-1)].map((r) => r.cpuMs));
  return `${w.name}: ${fmt(1000 / cpu, 0)}/s, ${fmt((1000 / cpu) * (ROUND_TRIP_MS / 1000), 0)} in flight`;
};
say(`  ${roundTrip.map(ceiling).join("; ")})`);
say();
const w2 = [60, 19];
say(pad(["cold paths (CPU from schedstat, ms)", "min / median"], w2));
say("-".repeat(w2[0] + w2[1] + 2));
say(pad(["ES256 mint (in wasm, RFC 6979): new APNs key - warm notify", minMed(apnsMintDelta, 3)], w2));
say(pad(["RS256 mint (WebCrypto) + OAuth exchange: the same for FCM", minMed(fcmMintDelta, 3)], w2));
say(pad(["  floor's KV miss + KV write (floor ?kv - floor)", fmt(kvCost, 3)], w2));
say(pad(["  floor's one more fetch (floor ?fetches=2 - floor)", fmt(fetchCost, 3)], w2));
say(pad(["ES256 signing alone ~ ES256 mint - KV", minMed(apnsMintDelta.map((d) => d - kvCost), 3)], w2));
say(pad(["RS256 signing alone ~ RS256 mint - KV - 1 fetch", minMed(fcmMintDelta.map((d) => d - kvCost - fetchCost), 3)], w2));
say(pad(["APNs notify that must mint (warm isolate)", minMed(mint.apnsMint, 3)], w2));
say(pad(["FCM notify that must mint (warm isolate)", minMed(mint.fcmMint, 3)], w2));
say(pad(["  warm APNs / FCM notify in the same isolate", `${fmt(median(mint.apnsWarm), 3)} / ${fmt(median(mint.fcmWarm), 3)}`], w2));
say(pad(["fresh isolate: first request of the JS / Rust floor", `${fmt(median(fresh.floorCpu), 3)} / ${fmt(median(fresh.floorRsCpu), 3)}`], w2));
say(pad(["fresh isolate: first request, GET /health (loads APPS)", minMed(fresh.healthCpu, 3)], w2));
say(pad(["fresh isolate: first request, APNs notify (loads, mints)", minMed(fresh.apnsCpu, 3)], w2));
say(pad(["fresh isolate: second request, FCM notify (mints)", minMed(fresh.fcmCpu, 3)], w2));
say(pad(["fresh workerd: CPU from spawn to ready", minMed(fresh.readyCpu, 1)], w2));
say(pad([`fresh isolate: ${BURST} FCM notifies at once, 1 mint (per notify)`, minMed(burst.cold, 3)], w2));
say(pad([`  the same ${BURST} again, token in memory (per notify)`, minMed(burst.warm, 3)], w2));
say(pad([`  slowest of the ${BURST}, ms: first burst / second`, `${fmt(median(burst.coldMax), 0)} / ${fmt(median(burst.warmMax), 0)}`], w2));
say(`(a mint's figure includes its KV read (a miss) and KV write, and for FCM the fetch to the token endpoint;`);
say(` ${MINTS_PER_REP} new apps per run, one key each. The burst's token endpoint answers after ${ROUND_TRIP_MS} ms; token`);
say(` requests per burst: ${burst.mints.join(", ")})`);
say();
say(pad(["start and bundle", ""], w2));
say("-".repeat(w2[0] + w2[1] + 2));
say(pad(["start to first response, ms (spawn workerd, APNs notify)", minMed(fresh.firstMs, 0)], w2));
say(pad(["  of which spawn to ready, ms", minMed(fresh.readyMs, 0)], w2));
say(pad(["index_bg.wasm raw / gzip", `${kib(wasm.length)} / ${kib(gzip(wasm))}`], w2));
say(pad(["index.js raw / gzip", `${kib(js.length)} / ${kib(gzip(js))}`], w2));
say();
say(`loadavg at end: ${fs.readFileSync("/proc/loadavg", "utf8").trim()}; bench took ${((performance.now() - benchStarted) / 1000).toFixed(0)} s`);

process.stdout.write(`${out.join("\n")}\n`);
