//! Session windows as mergeable fragments (gaps and islands).
//!
//! A trigger sees only its own events, so it cannot know a session's bounds.
//! It stores, per key and `session_bucket`, each *fragment*: a maximal run of
//! its events less than `gap` apart, as `window_start` (its first event),
//! `window_end` (its last event plus the gap: when it would close) and the
//! partial states of its aggregates. Readers join fragments into sessions:
//! sorted by start, a fragment opens a new session unless it starts at or
//! before the latest `window_end` of those before it. That gives the
//! sessions of all events at once, whatever the triggers' split: a fragment
//! that opens a session starts more than a gap after every earlier event (so
//! a true session starts there), and one that joins starts within a gap of
//! an earlier event or inside an earlier fragment, whose consecutive events
//! are less than a gap apart. A late event that bridges two sessions is a
//! fragment that joins them both. Folding (upkeep) joins fragments of closed
//! sessions the same way and keeps their states.
//!
//! `session_bucket` caps a session: its start aligned to `max_length`,
//! which divides a day, so no session spans UTC midnight and a day's
//! fragments come from that day's events alone (reprocessing a date range
//! replaces exactly its sessions).

use super::quote;

/// The column of a fragment's bucket: its first event's time aligned to the
/// session cap.
pub const SESSION_BUCKET: &str = "session_bucket";

/// Per fragment of `source`, 1 where it opens a session and the session's
/// running number, within each of `partition` (the bucket and the keys).
fn sessions(source: &str, partition: &str) -> String {
    let (ws, we) = (quote(super::WINDOW_START), quote(super::WINDOW_END));
    format!(
        "SELECT *, sum(__opens) OVER (PARTITION BY {partition} ORDER BY {ws}, __opens DESC \
         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __session FROM \
         (SELECT *, CASE WHEN {ws} <= max({we}) OVER (PARTITION BY {partition} ORDER BY {ws}, {we} \
         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) THEN 0 ELSE 1 END AS __opens \
         FROM {source}) AS marked"
    )
}

/// One trigger's fragments: DataFusion SQL over `batch`. `partition` is the
/// quoted bucket and keys, `keys_list` the keys (each after a comma),
/// `computed_keys` expression keys to add to each event, `filter` a WHERE
/// clause (or nothing), `computed` the aggregates' states as `__s<i>` and
/// `projected` those under their columns' names.
pub(super) struct Fragments<'a> {
    pub time: &'a str,
    pub gap_ms: u128,
    pub max_ms: u128,
    pub partition: &'a str,
    pub keys_list: &'a str,
    pub computed_keys: &'a str,
    pub filter: &'a str,
    pub computed: &'a str,
    pub projected: &'a str,
}

impl Fragments<'_> {
    pub fn sql(&self) -> String {
        let Fragments {
            time,
            gap_ms,
            max_ms,
            partition,
            keys_list,
            computed_keys,
            filter,
            computed,
            projected,
        } = self;
        let (ws, we, bucket) = (
            quote(super::WINDOW_START),
            quote(super::WINDOW_END),
            quote(SESSION_BUCKET),
        );
        let binned = format!(
            "SELECT *, date_bin(INTERVAL '{max_ms} milliseconds', {time}) AS {bucket}{computed_keys} \
             FROM batch{filter}"
        );
        // Ties sort the event that opens a fragment first, so every tied
        // event gets its number.
        let marked = format!(
            "SELECT *, CASE WHEN {time} <= lag({time}) OVER (PARTITION BY {partition} ORDER BY {time}) \
             + INTERVAL '{gap_ms} milliseconds' THEN 0 ELSE 1 END AS __opens FROM ({binned}) AS binned"
        );
        let numbered = format!(
            "SELECT *, sum(__opens) OVER (PARTITION BY {partition} ORDER BY {time}, __opens DESC \
             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __fragment FROM ({marked}) AS marked"
        );
        format!(
            "SELECT {ws}, {we}, {bucket}{keys_list}, {projected}, {date} FROM \
             (SELECT min({time}) AS {ws}, max({time}) + INTERVAL '{gap_ms} milliseconds' AS {we}, \
             {bucket}{keys_list}, {computed} FROM ({numbered}) AS numbered \
             GROUP BY {partition}, __fragment) AS aggregated",
            date = super::window_date(),
        )
    }
}

/// The sessions of the fragments in `table`, one row each: `merged` are the
/// aggregates' merge expressions (any dialect: only window functions every
/// engine has).
pub(super) fn merge_sql(table: &str, partition: &str, keys_list: &str, merged: &str) -> String {
    let (ws, we) = (quote(super::WINDOW_START), quote(super::WINDOW_END));
    format!(
        "SELECT min({ws}) AS {ws}, max({we}) AS {we}{keys_list}, {merged} FROM ({}) AS sessions \
         GROUP BY {partition}, __session",
        sessions(table, partition)
    )
}

/// The fragments of `table` matching `filter` joined per session, their
/// states kept: what upkeep writes back for closed sessions.
pub(super) fn fold_sql(
    table: &str,
    filter: &str,
    partition: &str,
    keys_list: &str,
    folded: &str,
) -> String {
    let (ws, we, bucket) = (
        quote(super::WINDOW_START),
        quote(super::WINDOW_END),
        quote(SESSION_BUCKET),
    );
    let source = format!("(SELECT * FROM {table} WHERE {filter}) AS fragments");
    format!(
        "SELECT *, {date} FROM (SELECT min({ws}) AS {ws}, max({we}) AS {we}, {bucket}{keys_list}, \
         {folded} FROM ({}) AS sessions GROUP BY {partition}, __session) AS folded",
        sessions(&source, partition),
        date = super::window_date(),
    )
}
