// A/B of worker builds (not part of `npm run bench`): workerd CPU per warm
// notify and per first request of a fresh isolate, for two or more builds
// side by side, interleaved so that the machine's load falls on all alike.
//
//   node bench/ab.mjs [--warm|--cold] name=dir [name=dir ...]
//
// Each dir holds a worker-build output (index.js + index_bg.wasm), e.g. a
// copy of build/ made after building a variant in a copy of the repository
// (see bench/README.md). A name starting with `floor` runs bench/floor.mjs
// (or the .mjs file given as its dir, or the Rust floor when its dir is a
// build of bench/floor-rs); `floorkv` requests `/?kv`, `floorlog1` `/?log=1`,
// `floorrs?timeout` `/?timeout` (the Rust floor's options, bench/floor-rs/lib.rs).
// AB_ROUNDS (default 5) rounds; AB_N (default 400) requests per sample;
// AB_POINTS (default apns:1,apns:16,fcm:1,fcm:16) the warm points;
// AB_FRESH (default 4) fresh processes per cold point; AB_CL=1 posts over
// plain HTTP with a content-length (as a homeserver does) instead of
// Miniflare's dispatchFetch, which sends the body chunked.
// CPU is the sum of /proc/<pid>/task/*/schedstat (ns) over the sample.

import fs from "node:fs";
import path from "node:path";
import { Miniflare, convertV4MiniflareOptions } from "miniflare";
import { COMPATIBILITY_DATE, NOTIFY } from "../tests/integration/harness.mjs";
import {
  ANDROID, IOS, apnsPushkey, benchApps, benchKeys, buildOptions, device, fcmPushkey, floorOptions, median, notifyBody, rustFloorOptions,
  schedCpuMs, workerdChildren,
} from "./common.mjs";
import { startFakeProviders } from "./fake-providers.mjs";

const ROUNDS = Number(process.env.AB_ROUNDS ?? 5);
const load1 = () => Number(fs.readFileSync("/proc/loadavg", "utf8").split(" ")[0]);
const N = Number(process.env.AB_N ?? 400);
const FRESH = Number(process.env.AB_FRESH ?? 4);
const args = process.argv.slice(2);
const doCold = !args.includes("--warm") || args.includes("--cold");
const doWarm = !args.includes("--cold") || args.includes("--warm");
const builds = args.filter((a) => !a.startsWith("--")).map((a) => {
  const [name, dir] = a.includes("=") ? a.split("=") : [path.basename(a), a];
  return { name, dir: path.resolve(dir) };
});
if (builds.length === 0) throw new Error("usage: node bench/ab.mjs [--cold|--warm] name=builddir ...");

const fake = await startFakeProviders();
const origin = fake.origin;
const { apps, secrets } = benchApps(origin, benchKeys());
const apnsBody = notifyBody([device(IOS, apnsPushkey())]);
const fcmBody = notifyBody([device(ANDROID, fcmPushkey())]);

/** `floor?x&y` requests `/?x&y`, `floorkv` `/?kv`, `floorlog2` `/?log=2`, any other floor `/`. */
const floorPath = (name) =>
  name.includes("?")
    ? `/?${name.split("?")[1]}`
    : name.endsWith("kv") ? "/?kv" : /log(\d+)$/.test(name) ? `/?log=${name.match(/log(\d+)$/)[1]}` : "/";

async function start(build) {
  const before = new Set(workerdChildren());
  const options =
    !build.name.startsWith("floor")
      ? buildOptions(build.dir, apps, secrets)
      : fs.existsSync(path.join(build.dir, "index_bg.wasm"))
        ? rustFloorOptions(`${origin}/3/device/ab`, build.dir)
        : floorOptions(`${origin}/3/device/ab`, build.dir.endsWith(".mjs") ? build.dir : undefined);
  const mf = new Miniflare(convertV4MiniflareOptions({
    modules: true,
    compatibilityDate: COMPATIBILITY_DATE,
    handleStructuredLogs: () => {},
    ...options,
  }));
  const url = (await mf.ready).origin;
  const pids = workerdChildren().filter((p) => !before.has(p));
  if (pids.length !== 1) throw new Error(`expected one new workerd, found ${pids.length}`);
  return { mf, url, pid: pids[0], name: build.name, floor: build.name.startsWith("floor"), floorPath: floorPath(build.name) };
}

async function request(instance, urlPath, body) {
  const init = body === undefined ? undefined : { method: "POST", headers: { "content-type": "application/json" }, body };
  // AB_CL=1: plain HTTP to workerd's socket, with a content-length (what a
  // homeserver sends); else Miniflare's dispatchFetch, which sends the body chunked.
  const url = `${process.env.AB_CL ? instance.url : "http://edgepush.ab"}${instance.floor ? instance.floorPath : urlPath}`;
  const response = await (process.env.AB_CL ? fetch(url, init) : instance.mf.dispatchFetch(url, init));
  const text = await response.text();
  return { status: response.status, text };
}

/** CPU per request and each request's latency (ms) over `N` requests at `concurrency`. */
async function sample(instance, body, concurrency) {
  let left = N;
  const latencies = [];
  const before = schedCpuMs(instance.pid);
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (left-- > 0) {
        const sent = performance.now();
        const { status, text } = await request(instance, NOTIFY, body);
        latencies.push(performance.now() - sent);
        if (status !== 200) throw new Error(`${instance.name}: ${status} ${text.slice(0, 200)}`);
      }
    }),
  );
  return { cpu: (schedCpuMs(instance.pid) - before) / N, latencies };
}

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
const cell = (xs) => `${Math.min(...xs).toFixed(3)} / ${median(xs).toFixed(3)}`;
const table = (title, points, results, format = cell) => {
  console.log(`\n${title}`);
  console.log(["build".padEnd(14), ...points.map((p) => p.padStart(22))].join(""));
  for (const b of builds) console.log([b.name.padEnd(14), ...points.map((p) => format(results[b.name][p], b, p).padStart(22))].join(""));
};

if (doWarm) {
  // AB_POINTS: which warm points, as provider:concurrency.
  const points = (process.env.AB_POINTS ?? "apns:1,apns:16,fcm:1,fcm:16").split(",").map((p) => p.replace(":", " c="));
  const bodies = { apns: apnsBody, fcm: fcmBody };
  const results = {};
  const instances = [];
  for (const b of builds) {
    const instance = await start(b);
    instances.push(instance);
    results[b.name] = Object.fromEntries(points.map((p) => [p, []]));
    for (let i = 0; i < 200; i++) {
      await request(instance, NOTIFY, apnsBody);
      await request(instance, NOTIFY, fcmBody);
    }
  }
  const loads = [];
  for (let round = 0; round < ROUNDS; round++) {
    loads.push(load1());
    process.stderr.write(`ab: warm round ${round + 1}/${ROUNDS} (load ${loads.at(-1)})\n`);
    for (const point of points) {
      const [provider, c] = point.split(" c=");
      for (let k = 0; k < builds.length; k++) {
        const i = (k + round) % builds.length;
        results[builds[i].name][point].push(await sample(instances[i], bodies[provider], Number(c)));
      }
    }
  }
  for (const instance of instances) await instance.mf.dispose();
  const cpu = (rs) => cell(rs.map((r) => r.cpu));
  table(`warm notify, ${ROUNDS} rounds of ${N}: ms CPU per request, min / median (1-min load ${Math.min(...loads)}-${Math.max(...loads)})`, points, results, cpu);
  const first = builds[0].name;
  // Each round's ratio to the first build's sample of the same round and point.
  const ratio = (rs, b, p) => cell(rs.map((r, i) => r.cpu / results[first][p][i].cpu));
  if (builds.length > 1) table(`CPU / ${first}'s in the same round, min / median`, points, results, ratio);
  // ... and in ms, each round's difference: what a variant adds or saves.
  const delta = (rs, b, p) => {
    const ds = rs.map((r, i) => r.cpu - results[first][p][i].cpu);
    return `${median(ds).toFixed(3)} (${Math.min(...ds).toFixed(3)}..${Math.max(...ds).toFixed(3)})`;
  };
  if (builds.length > 1) table(`CPU - ${first}'s in the same round, ms: median (min..max)`, points, results, delta);
  const pooled = (rs) => rs.flatMap((r) => r.latencies).sort((a, b) => a - b);
  const lat = (rs) => { const s = pooled(rs); return `${percentile(s, 0.5).toFixed(2)} / ${percentile(s, 0.99).toFixed(2)}`; };
  table("latency ms, p50 / p99 over all rounds", points, results, lat);
  if (builds.length > 1) {
    const p99Ratio = (rs, b, p) => (percentile(pooled(rs), 0.99) / percentile(pooled(results[first][p]), 0.99)).toFixed(2);
    table(`p99 / ${first}'s p99`, points, results, p99Ratio);
  }
}

if (doCold) {
  const points = ["GET /nope", "GET /health", "APNs notify", "then FCM"];
  const results = Object.fromEntries(builds.map((b) => [b.name, Object.fromEntries(points.map((p) => [p, []]))]));
  for (let round = 0; round < FRESH; round++) {
    process.stderr.write(`ab: cold round ${round + 1}/${FRESH}\n`);
    for (const b of builds) {
      const r = results[b.name];
      for (const [point, urlPath] of [["GET /nope", "/nope"], ["GET /health", "/health"]]) {
        const instance = await start(b);
        const before = schedCpuMs(instance.pid);
        await request(instance, urlPath);
        r[point].push(schedCpuMs(instance.pid) - before);
        await instance.mf.dispose();
      }
      const instance = await start(b);
      let before = schedCpuMs(instance.pid);
      await request(instance, NOTIFY, apnsBody);
      r["APNs notify"].push(schedCpuMs(instance.pid) - before);
      before = schedCpuMs(instance.pid);
      await request(instance, NOTIFY, fcmBody);
      r["then FCM"].push(schedCpuMs(instance.pid) - before);
      await instance.mf.dispose();
    }
  }
  table(`fresh isolate, first requests, ${FRESH} processes each (ms CPU, min / median)`, points, results);
}
await fake.close();
