// Fake APNs, Google OAuth and FCM v1 for the bench, on one HTTP/1.1 server on
// 127.0.0.1. Unlike tests/fakes/ they check nothing and keep nothing: every
// answer is immediate, so the bench measures the worker and not the fake.
// They only count requests per kind, so the bench can tell a warm token from
// a minted one (`counts.token`).
//
// With `delayMs`, every answer waits that long, as APNs and FCM do from most
// places; `inFlight` then tells how many requests the worker has open at
// the provider (now, the most seen, and its time-weighted mean).

import http from "node:http";
import { performance } from "node:perf_hooks";
import { listenLocally } from "../tests/fakes/common.mjs";

export async function startFakeProviders({ delayMs = 0 } = {}) {
  const counts = { apns: 0, token: 0, fcm: 0, other: 0 };
  let serial = 0;
  const inFlight = {
    now: 0,
    max: 0,
    area: 0,
    since: performance.now(),
    last: performance.now(),
    /** Start a new window: the mean and the most are of what follows. */
    reset() {
      this.max = this.now;
      this.area = 0;
      this.since = performance.now();
      this.last = this.since;
    },
    mean() {
      this.step(0);
      const span = this.last - this.since;
      return span > 0 ? this.area / span : 0;
    },
    step(delta) {
      const t = performance.now();
      this.area += this.now * (t - this.last);
      this.last = t;
      this.now += delta;
      this.max = Math.max(this.max, this.now);
    },
  };
  const server = http.createServer((req, res) => {
    inFlight.step(1);
    req.resume();
    req.on("end", () => (delayMs > 0 ? setTimeout(answer, delayMs) : answer()));
    const answer = () => {
      inFlight.step(-1);
      const path = req.url ?? "";
      if (path.startsWith("/3/device/")) {
        counts.apns += 1;
        res.writeHead(200, { "apns-id": "00000000-0000-0000-0000-000000000000" });
        res.end();
      } else if (path === "/token") {
        counts.token += 1;
        serial += 1;
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ access_token: `ya29.bench-${serial}`, expires_in: 3599, token_type: "Bearer" }));
      } else if (path.endsWith("/messages:send")) {
        counts.fcm += 1;
        serial += 1;
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ name: `projects/bench/messages/0:${serial}` }));
      } else {
        counts.other += 1;
        res.writeHead(404);
        res.end();
      }
    };
  });
  server.keepAliveTimeout = 60_000;
  const { origin, close } = await listenLocally(server, "fake providers");
  return { origin, counts, inFlight, close };
}
