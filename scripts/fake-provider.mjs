// A local stand-in for APNs, FCM and Huawei Push Kit (their OAuth token
// endpoints and messages:send) and UnifiedPush endpoints, for `scripts/dev`: it accepts everything and
// prints what it receives. The sample .dev.vars points every app here.
//
//   node scripts/fake-provider.mjs [port]     (default 8788, on 127.0.0.1)

import crypto from "node:crypto";
import http from "node:http";

const port = Number(process.argv[2] ?? process.env.FAKE_PROVIDER_PORT ?? 8788);

function decodeJwt(jwt) {
  const [header, claims] = jwt.split(".").slice(0, 2).map((part) => {
    try {
      return JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
    } catch {
      return "<undecodable>";
    }
  });
  return { header, claims };
}

function show(label, value) {
  const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  console.log(`  ${label}: ${text.replaceAll("\n", "\n  ")}`);
}

function answer(req, body) {
  const path = req.url ?? "";
  if (req.method === "POST" && path.startsWith("/3/device/")) {
    const auth = req.headers.authorization ?? "";
    console.log(`APNs push to device ${path.slice("/3/device/".length)}`);
    for (const h of ["apns-topic", "apns-push-type", "apns-priority", "apns-expiration"]) {
      if (req.headers[h] !== undefined) show(h, req.headers[h]);
    }
    if (auth.startsWith("bearer ")) show("provider token", decodeJwt(auth.slice(7)));
    show("payload", tryJson(body));
    return [200, { "apns-id": crypto.randomUUID().toUpperCase() }, ""];
  }
  if (req.method === "POST" && path === "/token") {
    const form = new URLSearchParams(body);
    console.log("FCM OAuth token request");
    show("grant_type", form.get("grant_type") ?? "");
    show("assertion", decodeJwt(form.get("assertion") ?? ""));
    return [200, { "content-type": "application/json" },
      JSON.stringify({ access_token: `fake-access-token-${Date.now()}`, expires_in: 3600, token_type: "Bearer" })];
  }
  const fcm = /^\/v1\/projects\/([^/]+)\/messages:send$/.exec(path);
  if (req.method === "POST" && fcm) {
    console.log(`FCM message for project ${fcm[1]}`);
    show("message", tryJson(body));
    return [200, { "content-type": "application/json" },
      JSON.stringify({ name: `projects/${fcm[1]}/messages/${Date.now()}` })];
  }
  if (req.method === "POST" && path === "/oauth2/v3/token") {
    const form = new URLSearchParams(body);
    console.log(`HMS OAuth token request for app ${form.get("client_id")} (${form.get("grant_type")})`);
    return [200, { "content-type": "application/json" },
      JSON.stringify({ access_token: `fake-hms-access-token-${Date.now()}`, expires_in: 3600, token_type: "Bearer" })];
  }
  const hms = /^\/v1\/([^/]+)\/messages:send$/.exec(path);
  if (req.method === "POST" && hms) {
    const message = tryJson(body)?.message ?? {};
    console.log(`HMS message for app ${hms[1]}`);
    show("android", message.android ?? {});
    show("token", message.token ?? []);
    show("data", tryJson(message.data ?? ""));
    return [200, { "content-type": "application/json" },
      JSON.stringify({ code: "80000000", msg: "Success", requestId: String(Date.now()) })];
  }
  if (req.method === "POST") {
    console.log(`POST ${path} (UnifiedPush / WebPush endpoint)`);
    show("body", tryJson(body));
    return [201, {}, ""];
  }
  console.log(`${req.method} ${path}: not a provider path`);
  return [404, {}, ""];
}

function tryJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text.length > 512 ? `${text.slice(0, 512)}… (${text.length} bytes)` : text;
  }
}

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const [status, headers, body] = answer(req, Buffer.concat(chunks).toString("utf8"));
  res.writeHead(status, headers);
  res.end(body);
});
server.listen(port, "127.0.0.1", () => {
  console.log(`fake provider listening on http://127.0.0.1:${port} (APNs /3/device/…, FCM /token and /v1/projects/…, HMS /oauth2/v3/token and /v1/<app id>/…, UnifiedPush)`);
});
const stop = () => server.close(() => process.exit(0));
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
