// The runtime's floor: read the request, make one fetch to the fake provider,
// answer. Any worker that relays a push pays at least this, so edgepush's
// CPU per notify is reported as a multiple of it.
// `?fetches=2` and `?kv` (a KV read that misses, then a write) price the
// extra subrequests of a mint, so the bench can tell signing from I/O;
// `?log=N` writes N lines like edgepush's per-notify line, pricing the log.
// `?gateway` asks of the runtime what any gateway that keeps edgepush's
// contract must (the Rust floor's `?gateway`, bench/floor-rs/lib.rs): the send
// bounded by a timer and an AbortController, an APNs request's headers, the
// answer read through a stream reader, the clock read, one log line.
const LINE = JSON.stringify({
  msg: "notify",
  request_id: "0123456789abcdef",
  status: 200,
  ms: 1,
  devices: [{ app_id: "org.example.bench.ios", pushkey: "abcdef…", provider: "apns", outcome: "delivered", status: 200, tries: 1, token: "memory", ms: 1 }],
});

export default {
  async fetch(request, env) {
    const body = await request.arrayBuffer();
    const query = new URL(request.url).searchParams;
    for (let i = 0; i < Number(query.get("log") ?? 0); i++) console.log(LINE);
    if (query.has("kv")) {
      const key = `bench:${crypto.randomUUID()}`;
      await env.TOKENS.get(key);
      await env.TOKENS.put(key, "x".repeat(500), { expirationTtl: 3600 });
    }
    if (query.has("gateway")) return gateway(body, env);
    for (let i = 0; i < Number(query.get("fetches") ?? 1); i++) {
      const upstream = await fetch(env.UPSTREAM, { method: "POST", headers: { "content-type": "application/json" }, body });
      await upstream.arrayBuffer();
      if (!upstream.ok) return Response.json({ upstream: upstream.status }, { status: 502 });
    }
    return Response.json({ rejected: [] });
  },
};

const APNS_HEADERS = {
  "content-type": "application/json",
  "apns-topic": "org.example.bench",
  "apns-push-type": "alert",
  "apns-priority": "10",
  authorization: `bearer ${"x".repeat(180)}`,
};

// As bench/floor-rs's `?gateway` does through edgepush's src/glue.js: the
// clock ten times, the answer capped at 8 KiB, `Retry-After` read on an error.
async function gateway(body, env) {
  for (let i = 0; i < 10; i++) Date.now();
  const controller = new AbortController();
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(resolve, 10_000, null);
  });
  const exchange = (async () => {
    const upstream = await fetch(env.UPSTREAM, { method: "POST", headers: APNS_HEADERS, body, redirect: "manual", signal: controller.signal });
    if (!upstream.ok) upstream.headers.get("retry-after");
    const reader = upstream.body.getReader();
    let length = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      length += value.byteLength;
      if (length > 8192) {
        reader.cancel().catch(() => {});
        break;
      }
    }
    return upstream.ok;
  })();
  const ok = await Promise.race([exchange, timeout]);
  if (ok === null) controller.abort();
  else clearTimeout(timer);
  console.log(LINE);
  return ok ? Response.json({ rejected: [] }) : Response.json({ upstream: "failed" }, { status: 502 });
}
