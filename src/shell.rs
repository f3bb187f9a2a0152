//! The worker entry: routing, the request body, env and bindings. All
//! decisions are made by the core modules; this file only wires them to
//! workerd.

use std::cell::OnceCell;
use std::rc::Rc;

use worker::js_sys::{self, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys;
use worker::{
    console_error, console_log, console_warn, event, AnalyticsEngineDataPointBuilder, Context, Env, MessageBatch,
    MessageExt, QueueRetryOptionsBuilder, Result,
};

use crate::apps::Apps;
use crate::config::{DeferredSettings, Settings};
use crate::consumer::{self, Action, Fate};
use crate::dispatch::{self, Dispatcher};
use crate::error::{ApiError, Reply};
use crate::http::{self, WorkerTransport};
use crate::js::describe;
use crate::notify::parse_notify;
use crate::routes::{self, NotifyLog, Route};
use crate::tokens::TokenCache;
use crate::transport::Transport;

/// What an isolate parses once and keeps: `APPS` with its keys, the knobs,
/// and the token memory.
struct Isolate {
    apps: Apps,
    settings: Settings,
    deferred: DeferredSettings,
    tokens: TokenCache,
}

thread_local! {
    static ISOLATE: OnceCell<Rc<Isolate>> = const { OnceCell::new() };
}

fn isolate(env: &Env) -> Rc<Isolate> {
    ISOLATE.with(|cell| cell.get_or_init(|| Rc::new(load(env))).clone())
}

fn load(env: &Env) -> Isolate {
    let var = |name: &str| env.var(name).ok().map(|v| v.to_string());
    let (settings, mut warnings) = Settings::from_vars(var);
    let (deferred, deferred_warnings) = DeferredSettings::from_vars(var);
    warnings.extend(deferred_warnings);
    for warning in warnings {
        console_error!("{}", serde_json::json!({ "msg": "config warning", "warning": warning }));
    }
    let secret = |name: &str| env.secret(name).ok().map(|v| v.to_string());
    // A [vars] table arrives as an object; .dev.vars and secrets as a string,
    // which `object_var` refuses.
    let apps_value = env
        .object_var::<serde_json::Value>("APPS")
        .ok()
        .or_else(|| env.var("APPS").ok().map(|v| serde_json::Value::String(v.to_string())));
    let apps = Apps::load(apps_value.as_ref(), &secret);
    if let Some(error) = &apps.global_error {
        console_error!("{}", serde_json::json!({ "msg": "APPS is broken", "error": error }));
    }
    for entry in &apps.entries {
        if let Err(error) = &entry.app {
            console_error!("{}", serde_json::json!({ "msg": "app misconfigured", "app": entry.pattern, "error": error }));
        }
    }
    for overlap in &apps.overlaps {
        console_error!("{}", serde_json::json!({ "msg": "globs overlap", "apps": [overlap.first, overlap.second], "error": overlap.to_string() }));
    }
    let tokens = TokenCache::new(settings.send_timeout_ms);
    Isolate { apps, settings, deferred, tokens }
}

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// Takes and returns the raw `web_sys` types: `worker::Request::from` reads
/// the request's `cf` object, which costs CPU on every request and is never used.
#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, _ctx: Context) -> Result<web_sys::Response> {
    let method = req.method();
    let url = req.url();
    let reply = match routes::route(&method, routes::path_of_url(&url)) {
        Ok(Route::Notify) => notify(req, &env).await,
        Ok(Route::Discovery) => routes::discovery(),
        Ok(Route::Health) => routes::health(&isolate(&env).apps, env.kv("TOKENS").is_ok(), js_sys::Date::now() as u64),
        Err(e) => e.to_reply(),
    };
    into_response(&reply)
}

fn into_response(reply: &Reply) -> Result<web_sys::Response> {
    let body = serde_json::to_string(&reply.body)?;
    // M_LIMIT_EXCEEDED carries `retry_after_ms`; HTTP clients read the header.
    let retry_after = reply.retry_after_ms().map_or(-1.0, |ms| ms.div_ceil(1000) as f64);
    Ok(http::respond(reply.status, &body, retry_after)?)
}

async fn notify(req: web_sys::Request, env: &Env) -> Reply {
    let state = isolate(env);
    let transport = WorkerTransport::new(env, state.settings.send_timeout_ms).with_deferral(&state.deferred);
    let started = transport.now_ms();
    let request_id = req
        .headers()
        .get("cf-ray")
        .ok()
        .flatten()
        .unwrap_or_else(|| format!("{:016x}", (js_sys::Math::random() * (u64::MAX as f64)) as u64));

    let parsed = read_body(req, state.settings.max_body_bytes)
        .await
        .and_then(|body| parse_notify(&body, state.settings.max_devices));
    let (reply, reports) = match parsed {
        Err(e) => (e.to_reply(), Vec::new()),
        Ok(n) => {
            let dispatcher =
                Dispatcher::new(&transport, &state.apps, &state.settings, &state.tokens);
            let results = dispatcher.dispatch(&n).await;
            let reply = dispatch::reply(&results);
            (reply, results.into_iter().map(|(_, report)| report).collect())
        }
    };
    let log = NotifyLog {
        msg: "notify",
        request_id: &request_id,
        status: reply.status,
        ms: transport.now_ms().saturating_sub(started),
        devices: &reports,
        error: reply.error.as_ref().map(ToString::to_string),
    };
    let notify_point = crate::metrics::notify_point(reply.status, reply.errcode(), reports.len(), log.ms);
    write_metrics(env, std::iter::once(notify_point).chain(reports.iter().map(|r| crate::metrics::data_point(r, reply.status))));
    if log.is_wanted(state.settings.log_notifies) {
        match serde_json::to_string(&log) {
            Ok(line) if reply.status >= 500 => console_error!("{line}"),
            Ok(line) => console_log!("{line}"),
            Err(_) => {}
        }
    }
    reply
}

/// The deferred-delivery queue's consumer: every message is tried once, then
/// acknowledged, put back with a delay, or dead-lettered (`DEFERRED_DLQ`).
/// Never returns an error: a failing handler would make Queues retry the
/// whole batch.
#[event(queue)]
async fn queue(batch: MessageBatch<JsValue>, env: Env, _ctx: Context) -> Result<()> {
    let state = isolate(&env);
    let transport = WorkerTransport::new(&env, state.settings.send_timeout_ms).with_deferral(&state.deferred);
    let messages: Vec<_> = batch.raw_iter().collect();
    // Text, as edgepush sends; a JSON body (another producer) as its text.
    let texts: Vec<Option<String>> = messages
        .iter()
        .map(|m| {
            let body = m.body();
            body.as_string().or_else(|| js_sys::JSON::stringify(&body).ok().and_then(|s| s.as_string()))
        })
        .collect();
    // Never dead-lettered again: a worker consuming its own dead-letter queue would loop.
    let from_dead_letter = batch.queue() == state.deferred.dead_letter_queue;
    let mut handled =
        consumer::consume(&transport, &state.apps, &state.settings, &state.deferred, &state.tokens, &texts, from_dead_letter).await;

    // Each message is acknowledged only once its copy is on the queue it
    // goes to; the others stay with Queues, which delivers them again.
    let mut placed = vec![false; handled.len()];
    let (mut requeue, mut dead) = (Vec::new(), Vec::new());
    let mut errors = Vec::new();
    for (i, h) in handled.iter().enumerate() {
        match &h.action {
            Action::Requeue(e) => match e.push.to_text() {
                Ok(text) => requeue.push((i, (text, e.delay_secs))),
                Err(error) => errors.push(error),
            },
            Action::DeadLetter(text) => dead.push((i, (text.clone(), 0))),
            Action::Ack => {}
        }
    }
    if !requeue.is_empty() {
        let sent = match transport.queue() {
            Some(queue) => send(queue, &requeue, &mut errors).await,
            None => {
                errors.push(format!("{} is not bound", http::DEFERRED_QUEUE));
                0
            }
        };
        for (i, _) in requeue.iter().take(sent) {
            if let Some(p) = placed.get_mut(*i) {
                *p = true;
            }
        }
    }
    let dlq = env.queue(DEFERRED_DLQ).ok();
    if !dead.is_empty() {
        // Without a dead-letter queue, a message given up is dropped.
        let sent = match &dlq {
            Some(queue) => send(queue, &dead, &mut errors).await,
            None => dead.len(),
        };
        for (i, _) in dead.iter().take(sent) {
            if let Some(p) = placed.get_mut(*i) {
                *p = true;
            }
        }
    }
    for error in errors {
        let error: String = error.chars().take(300).collect();
        console_error!("{}", serde_json::json!({ "msg": "deferred queue send failed", "error": error }));
    }

    for ((message, h), placed) in messages.iter().zip(handled.iter_mut()).zip(placed) {
        match &h.action {
            // The copy is not on the queue: Queues keeps this one instead.
            Action::Requeue(e) if !placed => {
                let delay = u32::try_from(e.delay_secs).unwrap_or(u32::MAX);
                message.retry_with_options(&QueueRetryOptionsBuilder::new().with_delay_seconds(delay).build());
            }
            Action::DeadLetter(_) if !placed => message.retry(),
            _ => message.ack(),
        }
        if matches!(h.action, Action::DeadLetter(_)) {
            h.log.dead_letter = Some(placed && dlq.is_some());
        }
        let line = serde_json::to_string(&h.log).unwrap_or_default();
        match h.log.result {
            _ if h.log.is_error() => console_error!("{line}"),
            Fate::Rejected | Fate::GivenUp => console_warn!("{line}"),
            _ => console_log!("{line}"),
        }
    }
    write_metrics(&env, handled.iter().map(|h| crate::metrics::deferred_point(&h.log)));
    Ok(())
}

/// Sends `(message index, (text, delay))` in order; how many of the first
/// were sent. An error is kept for the log.
async fn send(queue: &worker::Queue, messages: &[(usize, (String, u64))], errors: &mut Vec<String>) -> usize {
    let texts: Vec<(String, u64)> = messages.iter().map(|(_, m)| m.clone()).collect();
    match http::send_texts(queue, &texts).await {
        Ok(()) => texts.len(),
        Err((sent, error)) => {
            errors.push(error);
            sent
        }
    }
}

/// The optional dead-letter queue of pushes given up.
const DEFERRED_DLQ: &str = "DEFERRED_DLQ";

fn write_metrics(env: &Env, points: impl Iterator<Item = crate::metrics::DataPoint>) {
    let Ok(dataset) = env.analytics_engine("METRICS") else { return };
    for point in points {
        let written = AnalyticsEngineDataPointBuilder::new()
            .indexes([point.index])
            .blobs(point.blobs)
            .doubles(point.doubles)
            .write_to(&dataset);
        if let Err(e) = written {
            console_error!("{}", serde_json::json!({ "msg": "METRICS write failed", "error": e.to_string() }));
            return;
        }
    }
}

/// The body, read no further than `max` bytes (`src/glue.js` counts them
/// even under a `content-length`, and cancels a body refused as too large).
async fn read_body(req: web_sys::Request, max: usize) -> std::result::Result<Vec<u8>, ApiError> {
    let body = JsFuture::from(http::read_body(&req, max as f64))
        .await
        .map_err(|e| ApiError::BadJson(format!("could not read the body: {}", describe(e))))?;
    match body.dyn_into::<Uint8Array>() {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(_) => Err(ApiError::TooLarge(format!("the body is over {max} bytes"))),
    }
}
