// Puts a harness worker on a real port: Synapse's pusher must reach the
// gateway over HTTP, and the harness talks to workerd through Miniflare's
// dispatchFetch. Every request is relayed as is (method, path, headers, body)
// and the worker's answer relayed back.

import http from "node:http";
import { listenLocally, readBody } from "../fakes/common.mjs";

/**
 * @param {{ mf: import("miniflare").Miniflare }} worker from startWorker
 * @returns {Promise<{ origin: string, notifyUrl: string, requests: Array<{method: string, path: string, status: number, body: string, answer: string}>, close(): Promise<void> }>}
 */
export async function exposeWorker(worker) {
  /** What the homeserver sent and got back, for the test's assertions. */
  const requests = [];
  const server = http.createServer(async (req, res) => {
    const { body, text } = await readBody(req);
    const headers = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (name !== "host" && name !== "connection" && typeof value === "string") headers[name] = value;
    }
    try {
      const hasBody = req.method !== "GET" && req.method !== "HEAD";
      const response = await worker.dispatchFetch(req.url ?? "/", {
        method: req.method,
        headers,
        body: hasBody ? body : undefined,
      });
      const answer = Buffer.from(await response.arrayBuffer());
      requests.push({ method: req.method ?? "", path: req.url ?? "", status: response.status, body: text, answer: answer.toString("utf8") });
      res.writeHead(response.status, { "content-type": response.headers.get("content-type") ?? "application/json" });
      res.end(answer);
    } catch (err) {
      requests.push({ method: req.method ?? "", path: req.url ?? "", status: 599, body: text, answer: String(err) });
      res.writeHead(599);
      res.end();
    }
  });
  const { origin, close } = await listenLocally(server, "relay");
  return {
    origin,
    notifyUrl: `${origin}/_matrix/push/v1/notify`,
    requests,
    close,
  };
}
