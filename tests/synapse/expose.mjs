// Puts a harness worker on a real port: Synapse's pusher must reach the
// gateway over HTTP, and the harness talks to workerd through Miniflare's
// dispatchFetch. Every request is relayed as is (method, path, headers, body)
// and the worker's answer relayed back.

import http from "node:http";

/**
 * @param {{ mf: import("miniflare").Miniflare }} worker from startWorker
 * @returns {Promise<{ origin: string, notifyUrl: string, requests: Array<{method: string, path: string, status: number, body: string, answer: string}>, close(): Promise<void> }>}
 */
export async function exposeWorker(worker) {
  /** What the homeserver sent and got back, for the test's assertions. */
  const requests = [];
  const sockets = new Set();
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks);
    const headers = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (name !== "host" && name !== "connection" && typeof value === "string") headers[name] = value;
    }
    try {
      const hasBody = req.method !== "GET" && req.method !== "HEAD";
      const response = await worker.mf.dispatchFetch(`http://edgepush.test${req.url}`, {
        method: req.method,
        headers,
        body: hasBody ? body : undefined,
      });
      const answer = Buffer.from(await response.arrayBuffer());
      requests.push({ method: req.method ?? "", path: req.url ?? "", status: response.status, body: body.toString("utf8"), answer: answer.toString("utf8") });
      res.writeHead(response.status, { "content-type": response.headers.get("content-type") ?? "application/json" });
      res.end(answer);
    } catch (err) {
      requests.push({ method: req.method ?? "", path: req.url ?? "", status: 599, body: body.toString("utf8"), answer: String(err) });
      res.writeHead(599);
      res.end();
    }
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(undefined));
  });
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("relay has no port");
  const origin = `http://127.0.0.1:${address.port}`;
  return {
    origin,
    notifyUrl: `${origin}/_matrix/push/v1/notify`,
    requests,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(() => resolve(undefined)));
    },
  };
}
