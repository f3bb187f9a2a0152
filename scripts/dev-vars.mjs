// Writes a .dev.vars from .dev.vars.example, filling in freshly generated
// sample keys (no key is ever committed) and pointing the apps at the fake
// provider's origin.
//
//   node scripts/dev-vars.mjs <example> <out> [fake-provider-origin]

import crypto from "node:crypto";
import fs from "node:fs";

const [example, out, origin = "http://127.0.0.1:8788"] = process.argv.slice(2);
if (!example || !out) {
  console.error("usage: node scripts/dev-vars.mjs <example> <out> [fake-provider-origin]");
  process.exit(2);
}

const apnsKey = crypto.generateKeyPairSync("ec", { namedCurve: "prime256v1" });
const apnsP8 = apnsKey.privateKey.export({ type: "pkcs8", format: "pem" }).trim();
const fcmKey = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });
const serviceAccount = {
  type: "service_account",
  project_id: "edgepush-local",
  private_key_id: crypto.randomBytes(20).toString("hex"),
  private_key: fcmKey.privateKey.export({ type: "pkcs8", format: "pem" }),
  client_email: "edgepush-local@edgepush-local.iam.gserviceaccount.com",
  token_uri: `${origin}/token`,
};

const text = fs
  .readFileSync(example, "utf8")
  .replaceAll("http://127.0.0.1:8788", origin)
  // dotenv turns \n inside double quotes into newlines: the PEM stays one line.
  .replace("__GENERATED_APNS_P8__", apnsP8.replaceAll("\n", "\\n"))
  .replace("__GENERATED_FCM_SERVICE_ACCOUNT__", JSON.stringify(serviceAccount))
  .replace("__GENERATED_HMS_APP_SECRET__", crypto.randomBytes(32).toString("hex"));
fs.writeFileSync(out, text, { mode: 0o600 });
