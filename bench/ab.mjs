// A/B of worker builds (not part of `npm run bench`): workerd CPU per warm
// notify and per first request of a fresh isolate, for two or more builds
// side by side, interleaved so that the machine's load falls on all alike.
//
//   node bench/ab.mjs [--warm|--cold] name=dir [name=dir ...]
//
// Each dir holds a worker-build output (index.js + index_bg.wasm), e.g. a
// copy of build/ made after building a variant in a copy of the repository
// (see bench/README.md). A name starting with `floor` runs bench/floor.mjs
// (or the .mjs file given as its dir); `floorkv` requests `/?kv`.
// AB_ROUNDS (default 5) rounds; AB_N (default 400) requests per sample;
// AB_FRESH (default 4) fresh processes per cold point; AB_CL=1 posts over
// plain HTTP with a content-length (as a homeserver does) instead of
// Miniflare's dispatchFetch, which sends the body chunked.
// CPU is the sum of /proc/<pid>/task/*/schedstat (ns) over the sample.

import path from "node:path";
import { Miniflare, convertV4MiniflareOptions } from "miniflare";
import { COMPATIBILITY_DATE, NOTIFY } from "../tests/integration/harness.mjs";
import {
  ANDROID, IOS, apnsPushkey, benchApps, benchKeys, buildOptions, device, fcmPushkey, floorOptions, median, notifyBody, schedCpuMs,
  workerdChildren,
} from "./common.mjs";
import { startFakeProviders } from "./fake-providers.mjs";

const ROUNDS = Number(process.env.AB_ROUNDS ?? 5);
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

async function start(build) {
  const before = new Set(workerdChildren());
  const options =
    build.name.startsWith("floor")
      ? floorOptions(`${origin}/3/device/ab`, build.dir.endsWith(".mjs") ? build.dir : undefined)
      : buildOptions(build.dir, apps, secrets);
  const mf = new Miniflare(convertV4MiniflareOptions({ modules: true, compatibilityDate: COMPATIBILITY_DATE, handleStructuredLogs: () => {}, ...options }));
  const url = (await mf.ready).origin;
  const pids = workerdChildren().filter((p) => !before.has(p));
  if (pids.length !== 1) throw new Error(`expected one new workerd, found ${pids.length}`);
  return { mf, url, pid: pids[0], name: build.name, floor: build.name.startsWith("floor"), floorPath: build.name.endsWith("kv") ? "/?kv" : "/" };
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

async function sample(instance, body, concurrency) {
  let left = N;
  const before = schedCpuMs(instance.pid);
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (left-- > 0) {
        const { status, text } = await request(instance, NOTIFY, body);
        if (status !== 200) throw new Error(`${instance.name}: ${status} ${text.slice(0, 200)}`);
      }
    }),
  );
  return (schedCpuMs(instance.pid) - before) / N;
}

const cell = (xs) => `${Math.min(...xs).toFixed(3)} / ${median(xs).toFixed(3)}`;
const table = (title, points, results) => {
  console.log(`\n${title} (ms CPU, min / median)`);
  console.log(["build".padEnd(14), ...points.map((p) => p.padStart(20))].join(""));
  for (const b of builds) console.log([b.name.padEnd(14), ...points.map((p) => cell(results[b.name][p]).padStart(20))].join(""));
};

if (doWarm) {
  const points = ["apns c=1", "apns c=16", "fcm c=1", "fcm c=16"];
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
  for (let round = 0; round < ROUNDS; round++) {
    process.stderr.write(`ab: warm round ${round + 1}/${ROUNDS}\n`);
    for (let k = 0; k < builds.length; k++) {
      const i = (k + round) % builds.length;
      const r = results[builds[i].name];
      r["apns c=1"].push(await sample(instances[i], apnsBody, 1));
      r["apns c=16"].push(await sample(instances[i], apnsBody, 16));
      r["fcm c=1"].push(await sample(instances[i], fcmBody, 1));
      r["fcm c=16"].push(await sample(instances[i], fcmBody, 16));
    }
  }
  for (const instance of instances) await instance.mf.dispose();
  table(`warm notify, ${ROUNDS} rounds of ${N}`, points, results);
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
  table(`fresh isolate, first requests, ${FRESH} processes each`, points, results);
}
await fake.close();
