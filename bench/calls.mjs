// How many times a worker build's wasm calls into JS per warm notify (not
// part of `npm run bench`): every import of the wasm-bindgen shim is wrapped
// in a counter, in a patched copy of the build, and the calls of N notifies
// are divided by N. The calls themselves are cheap; what they stand for is
// not (a JS object, a string copied across, a promise and its closures).
//
//   node bench/calls.mjs <builddir|floor-rs builddir> [apns|fcm] [N]
//
// A builddir whose name starts with `floor` is a build of bench/floor-rs.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Miniflare, convertV4MiniflareOptions } from "miniflare";
import { COMPATIBILITY_DATE, NOTIFY } from "../tests/integration/harness.mjs";
import { ANDROID, IOS, apnsPushkey, benchApps, benchKeys, buildOptions, device, fcmPushkey, notifyBody, rustFloorOptions } from "./common.mjs";
import { startFakeProviders } from "./fake-providers.mjs";

const [dirArg, which = "apns", countArg = "200"] = process.argv.slice(2);
const N = Number(countArg);
const source = path.resolve(dirArg);
const isFloor = path.basename(source).startsWith("floor");

// The patched copy: the shim's import object goes through `__countImports`,
// and `GET /__calls` answers the counts (`?reset` clears them).
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "edgepush-calls-"));
fs.copyFileSync(path.join(source, "index_bg.wasm"), path.join(dir, "index_bg.wasm"));
let js = fs.readFileSync(path.join(source, "index.js"), "utf8");
const instantiate = /new WebAssembly\.Instance\((\w+),(\w+)\(\)\)/g;
const entry = /(\w+)\.prototype\.fetch=function\((\w+)\)\{/;
if (!instantiate.test(js) || !entry.test(js)) throw new Error("the shim's layout is not the one this script patches");
js = js.replace(instantiate, "new WebAssembly.Instance($1,__countImports($2()))");
js = js.replace(entry, (m, cls, req) =>
  `${m}if(new URL(${req}.url).pathname==="/__calls"){if(new URL(${req}.url).searchParams.has("reset"))__calls.clear();return Response.json(Object.fromEntries(__calls))}`);
js = `const __calls = new Map();
function __countImports(imports) {
  const counted = {};
  for (const [key, module] of Object.entries(imports)) {
    counted[key] = {};
    for (const [name, f] of Object.entries(module)) {
      const short = name.replace(/^__wbg_/, "").replace(/_[0-9a-f]{16}$/, "");
      counted[key][name] = typeof f !== "function" ? f : function (...args) {
        __calls.set(short, (__calls.get(short) ?? 0) + 1);
        return f.apply(this, args);
      };
    }
  }
  return counted;
}
${js}`;
fs.writeFileSync(path.join(dir, "index.js"), js);

const fake = await startFakeProviders();
const { apps, secrets } = benchApps(fake.origin, benchKeys());
const options = isFloor ? { ...rustFloorOptions(`${fake.origin}/3/device/calls`, dir) } : buildOptions(dir, apps, secrets);
const mf = new Miniflare(convertV4MiniflareOptions({ modules: true, compatibilityDate: COMPATIBILITY_DATE, ...options }));
const body = () => notifyBody([which === "fcm" ? device(ANDROID, fcmPushkey()) : device(IOS, apnsPushkey())]);
const post = async () => {
  const r = await mf.dispatchFetch(`http://edgepush.calls${isFloor ? "/" : NOTIFY}`, { method: "POST", headers: { "content-type": "application/json" }, body: body() });
  if (r.status !== 200) throw new Error(`notify answered ${r.status}: ${await r.text()}`);
  await r.text();
};
for (let i = 0; i < 20; i++) await post();
await (await mf.dispatchFetch("http://edgepush.calls/__calls?reset")).text();
for (let i = 0; i < N; i++) await post();
const counts = await (await mf.dispatchFetch("http://edgepush.calls/__calls")).json();
await mf.dispose();
await fake.close();
fs.rmSync(dir, { recursive: true, force: true });

const rows = Object.entries(counts).map(([name, n]) => [name, n / N]).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
const total = rows.reduce((s, [, n]) => s + n, 0);
console.log(`${dirArg} ${isFloor ? "" : which}: ${total.toFixed(1)} calls from wasm to JS per notify (${N} notifies)`);
for (const [name, n] of rows) console.log(`${n.toFixed(2).padStart(8)}  ${name}`);
