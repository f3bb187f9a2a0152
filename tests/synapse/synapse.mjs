// A real Synapse for the end-to-end test: installed from PyPI into a cached
// virtualenv, started on 127.0.0.1 with SQLite and no federation, and driven
// through its client and admin APIs.
//
//   const install = await ensureSynapse();          // { python } or { skip: "why" }
//   const hs = await startSynapse(install.python);
//   const alice = await hs.register("alice");        // { userId, accessToken }
//   await hs.api(alice, "POST", "/_matrix/client/v3/createRoom", {...});
//   await hs.stop();                                 // kills its process group
//
// The virtualenv lives in ~/.cache/edgepush/synapse-venv-<version> (override
// with EDGEPUSH_SYNAPSE_VENV) and is reused while its `.installed` marker
// names the pinned version; CI runs on the same machine and so reuses it.

import { spawn, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

export const SYNAPSE_VERSION = "1.163.2";
/** Synapse refuses shorter Python; 3.11 is the one this machine has. */
const PYTHONS = ["python3.11", "python3.12", "python3.13", "python3"];
const INSTALL_TIMEOUT_MS = 15 * 60 * 1000;
const START_TIMEOUT_MS = 90 * 1000;
export const SERVER_NAME = "localhost";

const say = (message) => process.stderr.write(`synapse: ${message}\n`);

function venvDir() {
  return process.env.EDGEPUSH_SYNAPSE_VENV
    ?? path.join(os.homedir(), ".cache", "edgepush", `synapse-venv-${SYNAPSE_VERSION}`);
}

function run(command, args, timeoutMs) {
  const r = spawnSync(command, args, { encoding: "utf8", timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
  return { ok: r.status === 0, output: `${r.stdout ?? ""}${r.stderr ?? ""}${r.error ? String(r.error) : ""}` };
}

function findPython() {
  for (const candidate of PYTHONS) {
    const r = run(candidate, ["-c", "import sys, venv; assert sys.version_info >= (3, 10)"], 30_000);
    if (r.ok) return candidate;
  }
  return undefined;
}

/**
 * Whether pip can reach its package index at all: the only reason the test
 * may skip. Asks for the pinned package's versions, nothing more.
 */
function indexReachable(pip) {
  const r = run(pip, ["index", "versions", "matrix-synapse", "--disable-pip-version-check", "--timeout", "20", "--retries", "1"], 120_000);
  return r.ok;
}

/**
 * The cached virtualenv's python, installing Synapse first if needed.
 * `{ skip }` only when the package index cannot be reached; any other
 * failure throws, so a broken install fails the test instead of hiding it.
 * @returns {Promise<{ python: string } | { skip: string }>}
 */
export async function ensureSynapse() {
  const dir = venvDir();
  const python = path.join(dir, "bin", "python");
  const marker = path.join(dir, ".installed");
  const installed = () => fs.existsSync(marker) && fs.readFileSync(marker, "utf8").trim() === SYNAPSE_VERSION && fs.existsSync(python);
  if (installed()) return { python };
  // One installer at a time (test runs in other checkouts share the cache).
  const lock = `${dir}.lock`;
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  for (;;) {
    try {
      fs.mkdirSync(lock);
      break;
    } catch {
      const age = Date.now() - (fs.statSync(lock, { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
      if (age > INSTALL_TIMEOUT_MS) fs.rmSync(lock, { recursive: true, force: true });
      else await sleep(2000);
    }
  }
  try {
    if (installed()) return { python };
    return install(dir, python, marker);
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}

function install(dir, python, marker) {
  const systemPython = findPython();
  if (!systemPython) throw new Error(`no Python >= 3.10 with venv found (tried ${PYTHONS.join(", ")})`);
  say(`installing matrix-synapse ${SYNAPSE_VERSION} into ${dir} (once; cached afterwards)`);
  fs.rmSync(dir, { recursive: true, force: true });
  const venv = run(systemPython, ["-m", "venv", dir], 120_000);
  if (!venv.ok) throw new Error(`${systemPython} -m venv failed:\n${venv.output}`);
  const pip = path.join(dir, "bin", "pip");
  const started = Date.now();
  const install = run(pip, ["install", "--disable-pip-version-check", "--quiet", `matrix-synapse==${SYNAPSE_VERSION}`], INSTALL_TIMEOUT_MS);
  if (!install.ok) {
    const reachable = indexReachable(pip);
    fs.rmSync(dir, { recursive: true, force: true });
    if (!reachable) return { skip: `the Python package index is unreachable, so Synapse cannot be installed:\n${install.output.slice(-2000)}` };
    throw new Error(`pip install matrix-synapse==${SYNAPSE_VERSION} failed:\n${install.output.slice(-4000)}`);
  }
  fs.writeFileSync(marker, `${SYNAPSE_VERSION}\n`);
  say(`installed in ${Math.round((Date.now() - started) / 1000)} s`);
  return { python };
}

/** A port free on 127.0.0.1 right now. */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Rate limits high enough that a test never waits on them. */
const UNLIMITED = { per_second: 10_000, burst_count: 10_000 };

function homeserverConfig(dir, port, sharedSecret) {
  // JSON is YAML, so the config needs no YAML writer.
  return {
    server_name: SERVER_NAME,
    public_baseurl: `http://127.0.0.1:${port}/`,
    pid_file: path.join(dir, "homeserver.pid"),
    listeners: [{
      port, bind_addresses: ["127.0.0.1"], type: "http", tls: false, x_forwarded: false,
      resources: [{ names: ["client"], compress: false }],
    }],
    database: { name: "sqlite3", args: { database: path.join(dir, "homeserver.db") } },
    media_store_path: path.join(dir, "media"),
    signing_key_path: path.join(dir, "signing.key"),
    registration_shared_secret: sharedSecret,
    macaroon_secret_key: crypto.randomBytes(32).toString("hex"),
    form_secret: crypto.randomBytes(32).toString("hex"),
    report_stats: false,
    enable_registration: false,
    enable_metrics: false,
    url_preview_enabled: false,
    presence: { enabled: false },
    // No federation: no remote keys, no outbound federation at all.
    trusted_key_servers: [],
    suppress_key_server_warning: true,
    federation_domain_whitelist: [],
    // Outbound requests (the pusher's POST to the gateway) to loopback are
    // blocked by default; the gateway under test listens on 127.0.0.1.
    ip_range_whitelist: ["127.0.0.1"],
    push: { include_content: true },
    rc_message: UNLIMITED,
    rc_registration: UNLIMITED,
    rc_login: { address: UNLIMITED, account: UNLIMITED, failed_attempts: UNLIMITED },
    rc_joins: { local: UNLIMITED, remote: UNLIMITED },
    rc_joins_per_room: UNLIMITED,
    rc_invites: { per_room: UNLIMITED, per_user: UNLIMITED, per_issuer: UNLIMITED },
    rc_3pid_validation: UNLIMITED,
    rc_admin_redaction: UNLIMITED,
  };
}

function loggingConfig(logFile) {
  return {
    version: 1,
    formatters: { precise: { format: "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s" } },
    handlers: { file: { class: "logging.FileHandler", formatter: "precise", filename: logFile, encoding: "utf8" } },
    loggers: { "synapse.push": { level: "DEBUG" }, "synapse.storage.SQL": { level: "WARNING" } },
    root: { level: "INFO", handlers: ["file"] },
    disable_existing_loggers: false,
  };
}

/**
 * Start Synapse from `python` (a virtualenv's, from ensureSynapse) in a fresh
 * temporary directory; resolves once it answers /health.
 */
export async function startSynapse(python) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "edgepush-synapse-"));
  const port = await freePort();
  const sharedSecret = crypto.randomBytes(24).toString("hex");
  const logFile = path.join(dir, "homeserver.log");
  const configPath = path.join(dir, "homeserver.yaml");
  const config = homeserverConfig(dir, port, sharedSecret);
  config.log_config = path.join(dir, "log.yaml");
  fs.writeFileSync(config.log_config, JSON.stringify(loggingConfig(logFile)));
  fs.writeFileSync(configPath, JSON.stringify(config, null, 2));
  // A signing key in Synapse's own format, so no `--generate-keys` run is needed.
  const seed = crypto.randomBytes(32).toString("base64").replace(/=+$/, "");
  fs.writeFileSync(config.signing_key_path, `ed25519 a_test ${seed}\n`);

  const output = fs.openSync(path.join(dir, "stdout.log"), "a");
  const child = spawn(python, ["-m", "synapse.app.homeserver", "--config-path", configPath], {
    cwd: dir,
    detached: true, // its own process group, so stop() ends everything it started
    stdio: ["ignore", output, output],
  });
  fs.closeSync(output);
  let exited = null;
  child.on("exit", (code, signal) => {
    exited = { code, signal };
  });

  const baseUrl = `http://127.0.0.1:${port}`;
  const tail = () => {
    const read = (f) => (fs.existsSync(f) ? fs.readFileSync(f, "utf8").slice(-3000) : "");
    return `--- stdout/stderr ---\n${read(path.join(dir, "stdout.log"))}\n--- homeserver.log ---\n${read(logFile)}`;
  };

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (exited === null && child.pid !== undefined) {
      const waitExit = new Promise((resolve) => child.once("exit", resolve));
      try {
        process.kill(-child.pid, "SIGTERM");
      } catch {
        // already gone
      }
      const killed = await Promise.race([waitExit.then(() => true), sleep(10_000).then(() => false)]);
      if (!killed) {
        try {
          process.kill(-child.pid, "SIGKILL");
        } catch {
          // already gone
        }
        await Promise.race([waitExit, sleep(5_000)]);
      }
    }
    if (!process.env.EDGEPUSH_KEEP_SYNAPSE_DIR) fs.rmSync(dir, { recursive: true, force: true });
  };
  // A test run that dies must not leave Synapse running.
  const onExit = () => {
    if (!stopped && exited === null && child.pid !== undefined) {
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  };
  process.once("exit", onExit);

  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (exited !== null) {
      const why = tail();
      await stop();
      throw new Error(`Synapse exited while starting (${JSON.stringify(exited)}):\n${why}`);
    }
    try {
      const r = await fetch(`${baseUrl}/health`, { signal: AbortSignal.timeout(2000) });
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      const why = tail();
      await stop();
      throw new Error(`Synapse did not answer /health within ${START_TIMEOUT_MS / 1000} s:\n${why}`);
    }
    await sleep(250);
  }

  /**
   * A client-server API call; throws with Synapse's answer unless 2xx.
   * @param {{ accessToken: string } | null} who
   */
  const api = async (who, method, urlPath, body) => {
    const headers = { "content-type": "application/json" };
    if (who) headers.authorization = `Bearer ${who.accessToken}`;
    const r = await fetch(`${baseUrl}${urlPath}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(30_000),
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`${method} ${urlPath}: ${r.status} ${text}`);
    return text ? JSON.parse(text) : {};
  };

  /**
   * Register a user through the shared-secret admin API: the HMAC-SHA1 of
   * nonce, user, password and admin flag, NUL-separated.
   */
  const register = async (username, displayname = username) => {
    const { nonce } = await api(null, "GET", "/_synapse/admin/v1/register");
    const password = crypto.randomBytes(12).toString("hex");
    const mac = crypto.createHmac("sha1", sharedSecret)
      .update(`${nonce}\0${username}\0${password}\0notadmin`)
      .digest("hex");
    const r = await api(null, "POST", "/_synapse/admin/v1/register", {
      nonce, username, password, displayname, admin: false, mac,
    });
    return { userId: r.user_id, accessToken: r.access_token, deviceId: r.device_id };
  };

  return { baseUrl, dir, logFile, api, register, stop, tail };
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Poll `check` until it returns a truthy value, or throw `what` after `timeoutMs`. */
export async function eventually(what, check, timeoutMs = 30_000, everyMs = 200) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await sleep(everyMs);
  }
}
