// Smoke test of the README's run path: `wrangler dev` with a .dev.vars made
// from .dev.vars.example, next to the fake provider; GET /health, POST a
// notify to the APNs and the HMS sample apps, check the fake received them,
// then stop everything.
// Run by scripts/test after scripts/build (wrangler's [build] then has nothing to do).

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "edgepush-smoke-"));
const STARTUP_TIMEOUT_MS = 120_000;

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = /** @type {net.AddressInfo} */ (server.address());
      server.close(() => resolve(port));
    });
  });
}

/** Start a process in its own process group, output to a log file. */
function start(name, command, args) {
  const log = path.join(tmp, `${name}.log`);
  const out = fs.openSync(log, "w");
  const child = spawn(command, args, { cwd: root, detached: true, stdio: ["ignore", out, out] });
  return { name, child, log, read: () => fs.readFileSync(log, "utf8") };
}

function stop(proc) {
  if (proc.child.exitCode !== null || proc.child.pid === undefined) return;
  try {
    // The whole group: wrangler leaves workerd behind when only it is killed.
    process.kill(-proc.child.pid, "SIGTERM");
  } catch {
    // already gone
  }
}

/** Polls `condition` until it holds or `timeoutMs` passes; its last value. */
async function eventually(condition, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  return condition();
}

const results = [];
function check(name, ok, detail = "") {
  results.push(ok);
  console.log(`${ok ? "ok" : "FAIL"} - ${name}${ok || !detail ? "" : `\n  ${detail}`}`);
}

const fakePort = await freePort();
const devPort = await freePort();
const inspectorPort = await freePort();
const devVars = path.join(tmp, "dev.vars");
const generate = spawn(process.execPath, ["scripts/dev-vars.mjs", ".dev.vars.example", devVars, `http://127.0.0.1:${fakePort}`], { cwd: root, stdio: "inherit" });
await new Promise((resolve) => generate.on("exit", resolve));

const fake = start("fake-provider", process.execPath, ["scripts/fake-provider.mjs", String(fakePort)]);
const wrangler = start("wrangler", path.join(root, "node_modules/.bin/wrangler"), [
  "dev", "--ip", "127.0.0.1", "--port", String(devPort), "--inspector-port", String(inspectorPort),
  "--env-file", devVars, "--persist-to", path.join(tmp, "state"), "--show-interactive-dev-session=false",
  "--log-level", "log",
]);
const base = `http://127.0.0.1:${devPort}`;

try {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  let health;
  while (Date.now() < deadline && wrangler.child.exitCode === null) {
    if (/Running custom build .* failed/.test(wrangler.read())) throw new Error("the build failed under wrangler dev");
    try {
      health = await fetch(`${base}/health`);
      break;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
  if (!health) throw new Error(`wrangler dev did not answer on ${base} within ${STARTUP_TIMEOUT_MS / 1000} s`);
  const healthText = await health.text();
  check("GET /health answers 200 with the sample .dev.vars", health.status === 200, `${health.status} ${healthText}`);

  const pushkey = "q83vEjRWeJA="; // hex abcdef1234567890
  const notify = await fetch(`${base}/_matrix/push/v1/notify`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      notification: {
        event_id: "$smoke", room_id: "!room:example.org", type: "m.room.message", sender: "@a:example.org",
        content: { msgtype: "m.text", body: "smoke test" }, counts: { unread: 1 },
        devices: [{ app_id: "com.example.app.ios", pushkey, data: {} }],
      },
    }),
  });
  const notifyText = await notify.text();
  check("POST notify answers 200 {\"rejected\":[]}", notify.status === 200 && notifyText.replace(/\s/g, "") === '{"rejected":[]}', `${notify.status} ${notifyText}`);
  const apnsSeen = await eventually(() => fake.read().includes("APNs push to device abcdef1234567890"));
  check("the fake provider received the APNs push", apnsSeen, fake.read());

  const hms = await fetch(`${base}/_matrix/push/v1/notify`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      notification: {
        event_id: "$smoke-hms", room_id: "!room:example.org", counts: { unread: 1 },
        devices: [{ app_id: "com.example.app.huawei", pushkey: "IQAAAACy0smoke", data: {} }],
      },
    }),
  });
  const hmsText = await hms.text();
  check("POST notify to the sample HMS app answers 200", hms.status === 200 && hmsText.replace(/\s/g, "") === '{"rejected":[]}', `${hms.status} ${hmsText}`);
  const hmsSeen = await eventually(() => /HMS OAuth token request for app 104123456[\s\S]*HMS message for app 104123456/.test(fake.read()));
  check("the fake provider received the HMS token request and message", hmsSeen, fake.read());
} catch (err) {
  check("wrangler dev smoke test", false, String(err));
} finally {
  stop(wrangler);
  stop(fake);
  await new Promise((resolve) => setTimeout(resolve, 500));
  for (const proc of [wrangler, fake]) {
    if (proc.child.exitCode === null && proc.child.signalCode === null) {
      try {
        process.kill(-(/** @type {number} */ (proc.child.pid)), "SIGKILL");
      } catch {
        // gone
      }
    }
  }
}

const failed = results.filter((ok) => !ok).length;
if (failed > 0) {
  console.log(`--- wrangler dev log (${wrangler.log}) ---\n${wrangler.read().slice(-4000)}`);
}
console.log(`smoke: ${results.length - failed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
