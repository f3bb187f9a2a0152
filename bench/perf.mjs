// Where the whole workerd process spends its CPU per notify (not part of
// `npm run bench`): Linux `perf` samples it on a timer (cpu-clock, so it
// works without hardware counters, e.g. in a VM) while the worker serves
// `count` notifies at `c` in flight; V8 writes its JIT symbols
// (--perf-basic-prof), so JS and wasm functions are named. Unlike the V8
// profiler (profile.mjs), it sees workerd's own C++ (HTTP, fetch, streams,
// the event loop), the garbage collector and the kernel, and slows nothing.
//
//   node bench/perf.mjs <builddir|floor> [apns|fcm] [count] [c]
//   (a builddir named floor* is a build of the Rust floor, bench/floor-rs)
//   PERF_TOP=40   rows per table
//   PERF_KIND=wasm  only the rows of the kinds matching this pattern
//
// Profile a build made by `worker-build --release` alone: it keeps the wasm's
// function names, which scripts/build then strips with wasm-opt. Needs
// `perf` and root (or a low kernel.perf_event_paranoid).

import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { Miniflare, convertV4MiniflareOptions } from "miniflare";
import { COMPATIBILITY_DATE, NOTIFY } from "../tests/integration/harness.mjs";
import {
  ANDROID, IOS, apnsPushkey, benchApps, benchKeys, buildOptions, device, floorOptions, notifyBody, rustFloorOptions, workerdChildren,
} from "./common.mjs";
import { startFakeProviders } from "./fake-providers.mjs";

const [dirArg, which = "apns", countArg = "4000", cArg = "16"] = process.argv.slice(2);
const COUNT = Number(countArg);
const C = Number(cArg);
const TOP = Number(process.env.PERF_TOP ?? 40);
const dir = path.resolve(dirArg);
const isFloor = dirArg === "floor" || path.basename(dir).startsWith("floor");

const fake = await startFakeProviders();
const { apps, secrets } = benchApps(fake.origin, benchKeys());
const upstream = `${fake.origin}/3/device/perf`;
process.env.MINIFLARE_WORKERD_V8_FLAGS = `${process.env.MINIFLARE_WORKERD_V8_FLAGS ?? ""} --perf-basic-prof`.trim();
const before = new Set(workerdChildren());
const mf = new Miniflare(convertV4MiniflareOptions({
  modules: true,
  compatibilityDate: COMPATIBILITY_DATE,
  handleStructuredLogs: () => {},
  ...(dirArg === "floor" ? floorOptions(upstream) : isFloor ? rustFloorOptions(upstream, dir) : buildOptions(dir, apps, secrets)),
}));
await mf.ready;
const [pid] = workerdChildren().filter((p) => !before.has(p));
const body = notifyBody([which === "fcm" ? device(ANDROID, `bench-fcm-${"x".repeat(80)}`) : device(IOS, apnsPushkey())]);
const post = async () => {
  const r = await mf.dispatchFetch(`http://edgepush.perf${isFloor ? "/" : NOTIFY}`, { method: "POST", headers: { "content-type": "application/json" }, body });
  const t = await r.text();
  if (r.status !== 200) throw new Error(`${r.status} ${t}`);
};
async function load(n) {
  let left = n;
  await Promise.all(Array.from({ length: C }, async () => {
    while (left-- > 0) await post();
  }));
}
await load(1000);
/** The workerd process's resident memory, in KiB. */
const rssKiB = () => Number(fs.readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1]);
const rssBefore = rssKiB();

const data = `/tmp/edgepush-perf-${pid}.data`;
const recorder = spawn("perf", ["record", "-e", "cpu-clock", "-F", "4000", "-p", String(pid), "-o", data], { stdio: "ignore" });
await new Promise((resolve) => setTimeout(resolve, 500));
await load(COUNT);
const rssAfter = rssKiB();
recorder.kill("SIGINT");
await new Promise((resolve) => recorder.on("exit", resolve));
const report = execFileSync("perf", ["report", "-i", data, "--stdio", "--no-children", "--sort", "dso,sym", "-F", "overhead,sample,dso,sym", "-t", "\t"], {
  encoding: "utf8",
  maxBuffer: 1 << 28,
  stdio: ["ignore", "pipe", "ignore"],
});
await mf.dispose();
await fake.close();
if (process.env.PERF_KEEP) console.error(`perf data kept: ${data}`);
else fs.rmSync(data, { force: true });

// Rows, tab-separated: "12.34%", samples, dso, "[.] symbol" ([k] in the kernel).
const rows = [];
for (const line of report.split("\n")) {
  const [share, samples, dso, sym] = line.split("\t").map((f) => f.trim());
  const m = sym?.match(/^\[(.)\]\s+(.*)$/);
  if (m && /%$/.test(share)) rows.push({ share: parseFloat(share), samples: Number(samples), dso, kind: m[1], sym: m[2] });
}
rows.sort((a, b) => b.samples - a.samples);
const total = rows.reduce((s, r) => s + r.samples, 0);
const usPer = (samples) => ((samples / 4000) * 1e6) / COUNT; // 4000 Hz: 250 us a sample
/** Where a sample belongs. */
function category(r) {
  if (r.kind === "k") return "kernel";
  if (/^\[JIT\]|perf-\d+\.map/.test(r.dso)) {
    // V8 names wasm code `name-<index>-<tier>`, JS code `name file:line:col`.
    if (/-\d+-(liftoff|turbofan)$/.test(r.sym)) return `wasm ${r.sym.match(/(liftoff|turbofan)$/)[1]}`;
    if (/entry\.worker\.js:/.test(r.sym)) return "JS (Miniflare's entry)";
    if (/\.(m?js):\d+/.test(r.sym)) return "JS (the worker)";
    return "JIT other";
  }
  if (/workerd/.test(r.dso)) {
    if (/Heap|GC|Scavenge|Mark|Sweep|Compact|Evacuat|cppgc/i.test(r.sym)) return "V8 GC";
    if (/^v8::|^v8_|Builtins?_/.test(r.sym)) return "V8 runtime";
    return "workerd native";
  }
  if (/libc|ld-linux|libm|libstdc/.test(r.dso)) return "libc";
  return r.dso;
}
const byCategory = new Map();
for (const r of rows) byCategory.set(category(r), (byCategory.get(category(r)) ?? 0) + r.samples);
console.log(`${dirArg} ${which}: ${COUNT} notifies at c=${C}; ${total} samples at 4000 Hz = ${usPer(total).toFixed(0)} us per notify`);
console.log(`workerd resident memory: ${rssBefore} KiB after the warm-up, ${rssAfter} KiB after (${(((rssAfter - rssBefore) * 1000) / COUNT).toFixed(0)} KiB per 1000 notifies)`);
console.log("\nby kind (us per notify, share):");
for (const [k, n] of [...byCategory.entries()].sort((a, b) => b[1] - a[1])) {
  console.log(`${usPer(n).toFixed(1).padStart(8)}  ${((100 * n) / total).toFixed(1).padStart(5)}%  ${k}`);
}
console.log(`\ntop ${TOP} symbols:`);
if (process.env.PERF_DSOS) console.log([...new Set(rows.map((r) => r.dso))].join(" "));
// PERF_KIND=wasm (a pattern) keeps the rows of the matching kinds.
const kind = process.env.PERF_KIND ? new RegExp(process.env.PERF_KIND) : null;
for (const r of rows.filter((r) => !kind || kind.test(category(r))).slice(0, TOP)) {
  console.log(`${usPer(r.samples).toFixed(1).padStart(8)}  ${r.share.toFixed(1).padStart(5)}%  ${category(r).padEnd(15)} ${r.sym.slice(0, 110)}`);
}
