// The suite-wide log scan run by scripts/test after the integration suite:
// every line any test worker logged (EDGEPUSH_WORKER_LOG_FILE, written by
// tests/integration/harness.mjs) against every key, token and pushkey the
// fakes and key generators handed out (EDGEPUSH_FORBIDDEN_FILE, written by
// forbidInLogs in tests/fakes/common.mjs). None may appear; shortened
// pushkeys may.

import fs from "node:fs";
import { findLeaks } from "./integration/leaks.mjs";

const readLines = (file) =>
  fs.existsSync(file) ? fs.readFileSync(file, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l)) : [];

const logFile = process.env.EDGEPUSH_WORKER_LOG_FILE;
const forbiddenFile = process.env.EDGEPUSH_FORBIDDEN_FILE;
if (!logFile || !forbiddenFile) {
  console.error("scan-all-logs: set EDGEPUSH_WORKER_LOG_FILE and EDGEPUSH_FORBIDDEN_FILE (scripts/test does)");
  process.exit(2);
}
const logs = readLines(logFile);
const forbidden = { secrets: [], tokens: [], pushkeys: [] };
for (const { kind, value } of readLines(forbiddenFile)) forbidden[kind].push(value);

// An empty log or an empty list would make the scan pass for nothing.
if (logs.length === 0 || Object.values(forbidden).some((values) => values.length === 0)) {
  console.error(`scan-all-logs: nothing to scan (${logs.length} log lines, ${JSON.stringify(Object.fromEntries(Object.entries(forbidden).map(([k, v]) => [k, v.length])))})`);
  process.exit(1);
}
const leaks = findLeaks(logs, forbidden);
const counts = Object.entries(forbidden).map(([kind, values]) => `${new Set(values).size} ${kind}`).join(", ");
if (leaks.length > 0) {
  console.error(`scan-all-logs: ${leaks.length} leak(s) in ${logs.length} log lines:\n${leaks.join("\n")}`);
  process.exit(1);
}
console.log(`scan-all-logs: ${logs.length} log lines, checked against ${counts}: no leak`);
