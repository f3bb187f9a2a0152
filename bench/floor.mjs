// The runtime's floor: read the request, make one fetch to the fake provider,
// answer. Any worker that relays a push pays at least this, so edgepush's
// CPU per notify is reported as a multiple of it.
// `?fetches=2` and `?kv` (a KV read that misses, then a write) price the
// extra subrequests of a mint, so the bench can tell signing from I/O.
export default {
  async fetch(request, env) {
    const body = await request.arrayBuffer();
    const query = new URL(request.url).searchParams;
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
