// The runtime's floor: read the request, make one fetch to the fake provider,
// answer. Any worker that relays a push pays at least this, so edgepush's
// CPU per notify is reported as a multiple of it.
export default {
  async fetch(request, env) {
    const body = await request.arrayBuffer();
    const upstream = await fetch(env.UPSTREAM, { method: "POST", headers: { "content-type": "application/json" }, body });
    await upstream.arrayBuffer();
    return Response.json({ rejected: [] }, { status: upstream.ok ? 200 : 502 });
  },
};
