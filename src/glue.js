// The few steps of a request that are loops and awaits over JS objects:
// reading a body, one exchange with a provider, building the answer. Done
// here, each is one call from the wasm and one promise, where written in
// Rust through web_sys it was 20 to 30 calls across the boundary, each
// awaited promise with two closures of its own (bench/README.md, "What was
// changed"). What to do stays in Rust: these functions only move bytes.

// Read `stream` to its end, or to `cap` bytes: the rest of a longer stream is
// cancelled unread. `null` when `refuse` and the stream is over `cap`.
async function readCapped(stream, cap, refuse) {
  const reader = stream.getReader();
  const chunks = [];
  let length = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (length + value.byteLength > cap) {
      reader.cancel().catch(() => {});
      if (refuse) return null;
      chunks.push(value.subarray(0, cap - length));
      length = cap;
      break;
    }
    chunks.push(value);
    length += value.byteLength;
  }
  if (chunks.length === 1) return chunks[0];
  const bytes = new Uint8Array(length);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.byteLength;
  }
  return bytes;
}

// A request's body, or `null` when it is over `max` bytes (by its
// `content-length` or by what arrives: workerd may pass a low
// `content-length` beside `transfer-encoding: chunked`). A body refused as
// too large is cancelled, so the runtime drops the rest of the upload.
export async function readBody(request, max) {
  const stream = request.body;
  if (stream === null) return new Uint8Array(0);
  const declared = Number(request.headers.get("content-length") ?? 0);
  if (declared > max) {
    stream.cancel().catch(() => {});
    return null;
  }
  return readCapped(stream, max, true);
}

// One POST to a provider, bounded as a whole by `timeoutMs` (headers and
// body: an endpoint that sends its headers and then stalls is as dead as a
// silent one). `headers` is `name\nvalue\n...` (the Rust side refuses a
// newline in either). Resolves to `[status, retryAfter, body]` (`retryAfter`
// is the header's text on an error status, else null; `body` at most `cap`
// bytes, or null when `cap` < 0: cancelled unread), to a string: the
// network error's words, or to null: no answer within `timeoutMs`.
export async function exchange(url, headers, body, timeoutMs, cap) {
  const controller = new AbortController();
  const init = { method: "POST", body: body.slice(), redirect: "manual", signal: controller.signal, headers: [] };
  const parts = headers.split("\n");
  for (let i = 0; i + 1 < parts.length; i += 2) init.headers.push([parts[i], parts[i + 1]]);
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(resolve, timeoutMs, null);
  });
  try {
    const result = await Promise.race([answer(url, init, cap), timeout]);
    if (result === null) controller.abort();
    return result;
  } finally {
    clearTimeout(timer);
  }
}

async function answer(url, init, cap) {
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    return String(e);
  }
  const status = response.status;
  const success = status >= 200 && status < 300;
  // `Retry-After` only matters on an error answer.
  const retryAfter = success ? null : response.headers.get("retry-after");
  const stream = response.body;
  if (stream === null) return [status, retryAfter, new Uint8Array(0)];
  if (cap < 0) {
    // Nothing waits for the endpoint to agree to the cancel.
    stream.cancel().catch(() => {});
    return [status, retryAfter, null];
  }
  try {
    return [status, retryAfter, await readCapped(stream, cap, false)];
  } catch (e) {
    // A success whose body was cut off is no success (a token endpoint's
    // answer without its token); an error status stands on its own.
    return success ? `the answer was cut off: ${e}` : [status, retryAfter, new Uint8Array(0)];
  }
}

// The answer to the homeserver: a JSON body, with `Retry-After` (seconds)
// when `retryAfter` is not negative.
export function respond(status, body, retryAfter) {
  const headers = { "content-type": "application/json" };
  if (retryAfter >= 0) headers["retry-after"] = String(retryAfter);
  return new Response(body, { status, headers });
}
