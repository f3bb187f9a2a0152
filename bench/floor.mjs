// The runtime's floor: read the request, make one fetch to the fake provider,
// answer. Any worker that relays a push pays at least this, so edgepush's
// CPU per notify is reported as a multiple of it.
// `?fetches=2` and `?kv` (a KV read that misses, then a write) price the
// extra subrequests of a mint, so the bench can tell signing from I/O;
// `?log=N` writes N lines like edgepush's per-notify line, pricing the log.
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
    for (let i = 0; i < Number(query.get("fetches") ?? 1); i++) {
      const upstream = await fetch(env.UPSTREAM, { method: "POST", headers: { "content-type": "application/json" }, body });
      await upstream.arrayBuffer();
      if (!upstream.ok) return Response.json({ upstream: upstream.status }, { status: 502 });
    }
    return Response.json({ rejected: [] });
  },
};
