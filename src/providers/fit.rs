//! Fitting a payload into a provider's byte limit, and the one way a text
//! is cut (docs/design.md §13.2 "Fitting a payload").
//!
//! [`Fit`] fits the JSON payloads of APNs (§7.3), WebPush (§9.3) and
//! UnifiedPush (§10), whose text may sit at any depth of `content` (an
//! edit's `m.new_content.body`, a poll's answers), so every string below a
//! trimmable place counts: all texts are capped at one level, the longest
//! shrinking first, and droppable entries go only when every text is down
//! to "…". FCM's and HMS's `data` (§8.2, §16.2) is a flat map of fields
//! ranked by what gives way first, measured by each provider's own count;
//! it fits by a rule of its own (one field at a time, the largest of the
//! lowest rank cut by the whole excess or dropped) in `fcm.rs`, with the
//! cut and the drop of [`shortened`].

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::Verdict;

/// Marks a text that was cut.
pub const ELLIPSIS: &str = "…";

/// The shortest a cut text gets: the ellipsis alone.
const MIN_CAP: usize = ELLIPSIS.len();

/// A byte limit and what of a payload may give way to meet it.
#[derive(Debug, Clone, Copy)]
pub struct Fit<'a> {
    pub max_bytes: usize,
    /// JSON pointers (RFC 6901): every string at or below each is a text
    /// that may be cut. Pointers that lead nowhere are ignored.
    pub texts: &'a [&'a str],
    /// JSON pointers to objects or arrays whose entries may be dropped,
    /// largest first, when cutting every text is not enough (e.g. a
    /// `content` holding hundreds of numbers or long keys). None may lie
    /// inside another.
    pub droppable: &'a [&'a str],
}

impl Fit<'_> {
    /// `value` serialized in at most `max_bytes`: every text is capped at the
    /// largest byte length that fits, so the longest shrink first and short
    /// ones stay whole; each cut ends on a character boundary with "…". If
    /// even "…" everywhere is too much, droppable entries go, largest first,
    /// and the texts are fitted again. `None` when nothing more can give way.
    pub fn apply(&self, mut value: Value) -> Option<Vec<u8>> {
        loop {
            let bytes = serde_json::to_vec(&value).ok()?;
            if bytes.len() <= self.max_bytes {
                return Some(bytes);
            }
            let floor = match self.cap_texts(&value) {
                Ok(bytes) => return Some(bytes),
                Err(floor) => floor,
            };
            if !self.drop_largest_entries(&mut value, &floor) {
                return None;
            }
        }
    }

    /// The texts capped at the largest cap that fits (binary search: a
    /// lower cap never makes the payload longer), or, when even the
    /// smallest cap does not fit, the value with that cap.
    fn cap_texts(&self, value: &Value) -> Result<Vec<u8>, Value> {
        let longest = self.texts.iter().filter_map(|p| value.pointer(p)).map(longest_string).max().unwrap_or(0);
        let floor = self.capped(value, MIN_CAP);
        let mut best = match serde_json::to_vec(&floor) {
            Ok(bytes) if bytes.len() <= self.max_bytes => bytes,
            _ => return Err(floor),
        };
        // Invariant: `low` fits (as `best`), `high` does not (it cuts nothing).
        let (mut low, mut high) = (MIN_CAP, longest);
        while high > low.saturating_add(1) {
            let mid = low + (high - low) / 2;
            match serde_json::to_vec(&self.capped(value, mid)) {
                Ok(bytes) if bytes.len() <= self.max_bytes => (low, best) = (mid, bytes),
                _ => high = mid,
            }
        }
        Ok(best)
    }

    /// `value` with every text longer than `cap` bytes cut to at most `cap`
    /// bytes, ellipsis included.
    fn capped(&self, value: &Value, cap: usize) -> Value {
        let mut capped = value.clone();
        for pointer in self.texts {
            if let Some(place) = capped.pointer_mut(pointer) {
                for_each_string(place, &mut |text| {
                    if text.len() > cap {
                        *text = truncate_utf8(text, cap);
                    }
                });
            }
        }
        capped
    }

    /// Drop the largest droppable entries, sized in `floor` (`value` with
    /// every text cut to "…"), until their sizes add up to the excess.
    /// `false` when there is nothing left to drop.
    fn drop_largest_entries(&self, value: &mut Value, floor: &Value) -> bool {
        let excess = json_len(&floor).saturating_sub(self.max_bytes);
        // (bytes, which droppable place, key or index)
        let mut entries: Vec<(usize, usize, Entry)> = Vec::new();
        for (place, pointer) in self.droppable.iter().enumerate() {
            match floor.pointer(pointer) {
                // An object entry takes its key, a colon, its value and a comma.
                Some(Value::Object(map)) => entries.extend(map.iter().map(|(k, v)| {
                    (json_len(k).saturating_add(json_len(v)).saturating_add(2), place, Entry::Key(k.clone()))
                })),
                Some(Value::Array(items)) => entries
                    .extend(items.iter().enumerate().map(|(i, v)| (json_len(v).saturating_add(1), place, Entry::Index(i)))),
                _ => {}
            }
        }
        entries.sort_by_key(|&(size, _, _)| std::cmp::Reverse(size));
        let mut freed = 0usize;
        let mut chosen = Vec::new();
        for (size, place, entry) in entries {
            if freed >= excess && !chosen.is_empty() {
                break;
            }
            freed = freed.saturating_add(size);
            chosen.push((place, entry));
        }
        for (place, pointer) in self.droppable.iter().enumerate() {
            let mine = chosen.iter().filter(|(p, _)| *p == place).map(|(_, entry)| entry);
            match value.pointer_mut(pointer) {
                Some(Value::Object(map)) => {
                    for entry in mine {
                        if let Entry::Key(key) = entry {
                            map.remove(key);
                        }
                    }
                }
                Some(Value::Array(items)) => {
                    let gone: BTreeSet<usize> =
                        mine.filter_map(|entry| if let Entry::Index(i) = entry { Some(*i) } else { None }).collect();
                    let mut index = 0;
                    items.retain(|_| {
                        let keep = !gone.contains(&index);
                        index += 1;
                        keep
                    });
                }
                _ => {}
            }
        }
        !chosen.is_empty()
    }
}

/// An entry of a droppable object or array.
#[derive(Debug)]
enum Entry {
    Key(String),
    Index(usize),
}

/// The serialized length, counted without building the bytes.
fn json_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(bytes.len());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_or(usize::MAX, |()| count.0)
}

fn longest_string(value: &Value) -> usize {
    match value {
        Value::String(text) => text.len(),
        Value::Array(items) => items.iter().map(longest_string).max().unwrap_or(0),
        Value::Object(map) => map.values().map(longest_string).max().unwrap_or(0),
        _ => 0,
    }
}

fn for_each_string(value: &mut Value, visit: &mut impl FnMut(&mut String)) {
    match value {
        Value::String(text) => visit(text),
        Value::Array(items) => items.iter_mut().for_each(|v| for_each_string(v, visit)),
        Value::Object(map) => map.values_mut().for_each(|v| for_each_string(v, visit)),
        _ => {}
    }
}

/// The longest start of `text` in at most `max_bytes` that ends on a
/// character boundary: the one place a string is cut.
pub fn cut_utf8(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    text.get(..end).unwrap_or_default()
}

/// `text` in at most `max_bytes`, cut on a character boundary and ending
/// "…" when cut.
pub fn truncate_utf8(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    format!("{}{ELLIPSIS}", cut_utf8(text, max_bytes.saturating_sub(ELLIPSIS.len())))
}

/// docs/design.md §4 "Outcomes and the rule for rejection": `Rejected` is
/// for the device's own data being unusable, e.g. "a `default_payload` that
/// is not an object or is too big to ever fit". A payload that cannot
/// fit is the device's doing when the notification fits without the
/// device's `default_payload`: no push to that device can ever carry it.
/// Otherwise the notification itself is too big for us to send: `Failed`.
///
/// The test is made with this notification, not with a fixed worst case as
/// FCM's `data` is (where the operator's `fcm_options.data` shares the
/// room): the APNs and WebPush payloads built around a `default_payload`
/// hold nothing of the operator's, only the notification, whose parts that
/// cannot be cut (ids, counts) are bounded. A `default_payload` this
/// notification cannot carry cannot carry the worst case either, so a
/// worst-case test would reach the same verdict whenever the notification
/// fits alone; and when it does not (a huge `sound` tweak), `Failed` is
/// the safe answer.
///
/// `fit_with` builds and fits the payload around a `default_payload`.
pub fn fit_blaming_default_payload(
    default_payload: Option<&Map<String, Value>>,
    fit_with: impl Fn(Option<&Map<String, Value>>) -> Option<Vec<u8>>,
    what: &str,
) -> Result<Vec<u8>, Verdict> {
    if let Some(bytes) = fit_with(default_payload) {
        return Ok(bytes);
    }
    if default_payload.is_some() && fit_with(None).is_some() {
        Err(Verdict::rejected(format!("data.default_payload is too big for {what}")))
    } else {
        Err(Verdict::failed(format!("{what} does not fit even with its texts cut")))
    }
}

/// A value cut shorter than this says nothing: [`shortened`] drops it
/// instead (FCM's and HMS's `data` and FCM's `notification`, docs/design.md
/// §8.2 "Message").
pub const MIN_SHORTENED_BYTES: usize = 16;

/// `text` cut ([`truncate_utf8`]) to at least `excess` bytes fewer, or
/// `None` when fewer than [`MIN_SHORTENED_BYTES`] bytes would remain and the
/// value is to be dropped instead.
pub fn shortened(text: &str, excess: usize) -> Option<String> {
    let target = text.len().saturating_sub(excess);
    (target >= MIN_SHORTENED_BYTES).then(|| truncate_utf8(text, target))
}

/// Contents of real events whose text is nested, for the providers' tests.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
pub(crate) mod samples {
    use serde_json::{json, Map, Value};

    /// 10 KB of two-byte characters: a cut in the wrong place splits one.
    pub fn long_text() -> String {
        "é".repeat(5000)
    }

    /// An edit of a long message: Synapse forwards the new text in
    /// `m.new_content`, and the fallback `body` beside it.
    pub fn long_edit() -> Map<String, Value> {
        let long = long_text();
        object(json!({
            "msgtype": "m.text", "body": format!("* {long}"),
            "m.new_content": {"msgtype": "m.text", "body": long, "format": "org.matrix.custom.html", "formatted_body": format!("<b>{long}</b>")},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$original:example.org"},
        }))
    }

    /// A poll with 20 answers of 700 bytes each.
    pub fn long_poll() -> Map<String, Value> {
        let answers: Vec<Value> =
            (0..20).map(|i| json!({"id": format!("a{i}"), "org.matrix.msc1767.text": "answer ".repeat(100)})).collect();
        object(json!({
            "body": "Which?",
            "org.matrix.msc3381.poll.start": {"question": {"body": "Which?"}, "kind": "org.matrix.msc3381.poll.disclosed", "answers": answers},
        }))
    }

    /// A `default_payload` of 5 KB, which no payload of 4096 bytes can carry.
    pub fn huge_default_payload() -> Value {
        json!({"session": "s1", "blob": "x".repeat(5000)})
    }

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fit<'a>(texts: &'a [&'a str], droppable: &'a [&'a str], max_bytes: usize) -> Fit<'a> {
        Fit { max_bytes, texts, droppable }
    }

    fn applied(fit: Fit<'_>, value: Value) -> Option<Value> {
        fit.apply(value).map(|bytes| {
            assert!(bytes.len() <= fit.max_bytes, "{} bytes", bytes.len());
            serde_json::from_slice(&bytes).unwrap()
        })
    }

    #[test]
    fn a_value_that_fits_is_sent_as_is() {
        let value = json!({"content": {"body": "hi"}});
        assert_eq!(applied(fit(&["/content"], &["/content"], 100), value.clone()), Some(value));
    }

    #[test]
    fn nested_texts_are_cut_longest_first_on_a_character_boundary() {
        let value = json!({"keep": "k".repeat(50), "content": {"short": "s".repeat(20), "deep": [{"text": "€".repeat(300)}], "mid": "m".repeat(200)}});
        let out = applied(fit(&["/content"], &[], 400), value).unwrap();
        assert_eq!(out["keep"], json!("k".repeat(50)), "only what is listed is cut");
        assert_eq!(out["content"]["short"], json!("s".repeat(20)), "short texts stay whole");
        let deep = out["content"]["deep"][0]["text"].as_str().unwrap();
        let mid = out["content"]["mid"].as_str().unwrap();
        assert!(deep.ends_with(ELLIPSIS) && mid.ends_with(ELLIPSIS));
        assert!(deep.len().abs_diff(mid.len()) <= 3, "{} vs {}", deep.len(), mid.len());
        assert!(serde_json::to_vec(&out).unwrap().len() > 400 - 8, "cut no more than needed");
    }

    #[test]
    fn entries_are_dropped_largest_first_when_cutting_is_not_enough() {
        let value = json!({"content": {"body": "b".repeat(300), "numbers": vec![12345; 100], "few": [1, 2]}});
        let out = applied(fit(&["/content"], &["/content"], 200), value).unwrap();
        assert!(out["content"].get("numbers").is_none());
        assert_eq!(out["content"]["few"], json!([1, 2]));
        assert!(out["content"]["body"].as_str().unwrap().len() > 100, "the text grows back once room is made");
    }

    #[test]
    fn array_entries_are_dropped_without_shifting_the_others() {
        let value = json!({"list": [vec![1; 50], "a", vec![2; 50], "b", vec![3; 10]]});
        let out = applied(fit(&[], &["/list"], 60), value).unwrap();
        assert_eq!(out["list"], json!(["a", "b", vec![3; 10]]));
    }

    #[test]
    fn gives_up_when_nothing_listed_can_give_way() {
        let value = json!({"keep": "x".repeat(100), "trim": "y".repeat(100)});
        assert!(applied(fit(&["/trim", "/missing"], &["/missing"], 50), value.clone()).is_none());
        let out = applied(fit(&["/trim", "/missing"], &[], 150), value).unwrap();
        assert!(out["trim"].as_str().unwrap().ends_with("y…"));
    }

    #[test]
    fn truncate_cuts_on_a_character_boundary_with_an_ellipsis() {
        assert_eq!(truncate_utf8("short", 10), "short");
        assert_eq!(truncate_utf8("a€bcdef", 6), "a…");
        assert_eq!(truncate_utf8("a€bcdef", 7), "a€…");
        assert_eq!(truncate_utf8("😀😀", 5), "…");
        assert_eq!(truncate_utf8("abcdef", 2), "…", "never shorter than the ellipsis");
    }

    #[test]
    fn shortened_frees_the_excess_or_drops_what_would_say_nothing() {
        let text = "é".repeat(20);
        let cut = shortened(&text, 10).unwrap();
        assert!(cut.len() <= 30 && cut.len() >= 28 && cut.ends_with(ELLIPSIS), "{cut}");
        assert_eq!(shortened(&text, 24).unwrap().len(), 15, "16 bytes left: 6 characters and the ellipsis");
        assert_eq!(shortened(&text, 25), None, "15 bytes would be left");
        assert_eq!(shortened("short", 0), None, "a value already under the floor cannot be cut");
    }

    #[test]
    fn cut_keeps_the_longest_start_that_ends_on_a_character_boundary() {
        assert_eq!(cut_utf8("short", 10), "short");
        assert_eq!(cut_utf8("a€b", 3), "a");
        assert_eq!(cut_utf8("a€b", 4), "a€");
        assert_eq!(cut_utf8("😀", 3), "");
        assert_eq!(cut_utf8("abc", 0), "");
    }

    fn verdict_for(with: bool, without: bool) -> Result<Vec<u8>, Verdict> {
        let default_payload = json!({"k": "v"});
        fit_blaming_default_payload(
            default_payload.as_object(),
            |d| if d.is_some() { with.then(Vec::new) } else { without.then(Vec::new) },
            "a test payload",
        )
    }

    #[test]
    fn the_device_is_blamed_only_when_its_default_payload_is_the_excess() {
        assert!(verdict_for(true, true).is_ok());
        assert_eq!(verdict_for(false, true).unwrap_err().outcome, super::super::Outcome::Rejected);
        assert_eq!(verdict_for(false, false).unwrap_err().outcome, super::super::Outcome::Failed);
        let none = fit_blaming_default_payload(None, |_| None, "a test payload").unwrap_err();
        assert_eq!(none.outcome, super::super::Outcome::Failed);
    }
}
