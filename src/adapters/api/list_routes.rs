//! The lists over HTTP: what each list holds now and each entry's history,
//! adding and removing entries one at a time or from a CSV, and an export
//! that `replay --list` reads. Every change is recorded with its author,
//! comment and the time it was made, and applies to events from its `from`
//! time (default: now); a change reaches every instance through the lists
//! topic (see [`ListWriter`]).

use super::*;
use crate::lists::{ListChange, ListEntry, ListOp};

/// Writes list changes where every instance reads them.
pub trait ListWriter: Send + Sync {
    /// Records each entry (its whole new history) and makes it visible to
    /// this instance's engines; `Err` says why it could not.
    fn write(&self, entries: Vec<ListEntry>) -> BoxFuture<'static, Result<(), ListWriteError>>;
}

/// A list change that could not be recorded (the API answers 503 and logs
/// this; the entries before it in the same request are recorded).
#[derive(Debug, thiserror::Error)]
pub enum ListWriteError {
    /// The entry could not be encoded.
    #[error("encoding a list entry: {0}")]
    Encode(#[from] serde_json::Error),
    /// The topic refused it or did not answer.
    #[error("writing to the lists topic `{topic}`: {source}")]
    Topic {
        /// The lists topic.
        topic: String,
        /// What its producer said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The lists an API serves and how it changes them.
pub(super) struct ListAccess {
    pub(super) lists: Arc<crate::lists::Lists>,
    pub(super) writer: Arc<dyn ListWriter>,
}

/// One change to an entry, as recorded.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ListChangeView {
    /// `add` or `remove`.
    pub op: String,
    /// The event time (epoch ms) it applies from.
    pub from: i64,
    /// For an add: the event time (epoch ms) the entry expires at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// Who made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When it was made (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<i64>,
}

/// One value of a list and its history.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ListEntryView {
    /// The value.
    pub value: String,
    /// On the list for events of now.
    pub on: bool,
    /// Its changes, in the order they were made.
    pub changes: Vec<ListChangeView>,
}

/// A list.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ListView {
    /// Its name.
    pub name: String,
    /// The running rules declare it.
    pub declared: bool,
    /// Values on it for events of now.
    pub size: usize,
    /// Every value with a history, sorted.
    pub entries: Vec<ListEntryView>,
}

/// A list in the overview.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ListSummary {
    /// Its name.
    pub name: String,
    /// The running rules declare it.
    pub declared: bool,
    /// Values on it for events of now.
    pub size: usize,
    /// Values with a history (on it or not).
    pub entries: usize,
}

/// Every list the rules declare or that has entries.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ListsPage {
    /// Sorted by name.
    pub lists: Vec<ListSummary>,
}

/// A value to put on a list.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddEntry {
    /// The value (numbers in their shortest form: `42`, not `42.0`).
    pub value: String,
    /// The event time (epoch ms) it applies from; default: now.
    #[serde(default)]
    pub from: Option<i64>,
    /// The event time (epoch ms) it expires at; default: never.
    #[serde(default)]
    pub until: Option<i64>,
    /// Who adds it.
    #[serde(default)]
    pub author: Option<String>,
    /// Why.
    #[serde(default)]
    pub comment: Option<String>,
}

/// Who removes an entry, and why.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveEntry {
    /// Who removes it.
    pub author: Option<String>,
    /// Why.
    pub comment: Option<String>,
}

/// What a bulk load changed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BulkResult {
    /// Entries written.
    pub changed: usize,
}

/// The longest value, author or comment accepted.
const MAX_TEXT: usize = 1024;

fn view(e: &ListEntry, now: i64) -> ListEntryView {
    ListEntryView {
        value: e.value.clone(),
        on: e.contains_at(now),
        changes: e
            .changes
            .iter()
            .map(|c| ListChangeView {
                op: match c.op {
                    ListOp::Add => "add",
                    ListOp::Remove => "remove",
                }
                .into(),
                from: c.at,
                until: c.until,
                author: c.author.clone(),
                comment: c.comment.clone(),
                recorded: c.recorded,
            })
            .collect(),
    }
}

fn access(s: &ApiState) -> Result<&ListAccess, ApiError> {
    s.0.lists.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "lists are not served here",
        )
    })
}

fn list_name(name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = name?;
    if !valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "`{name}` is not a list name (letters, digits, `_` and `-`, at most 128)"
        )));
    }
    Ok(name)
}

fn checked_text(what: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(t) if t.len() > MAX_TEXT => Err(ApiError::bad_request(format!(
            "{what} is longer than {MAX_TEXT} bytes"
        ))),
        other => Ok(other.filter(|t| !t.is_empty())),
    }
}

async fn write(s: &ApiState, entries: Vec<ListEntry>) -> Result<(), ApiError> {
    access(s)?.writer.write(entries).await.map_err(|e| {
        ApiError::internal(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the change could not be recorded",
            e,
        )
    })
}

#[utoipa::path(get, path = "/v1/lists",
    responses((status = 200, body = ListsPage), (status = 401, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub(super) async fn lists(State(s): State<ApiState>) -> Json<ListsPage> {
    let declared = s.0.rules.current().def().lists.clone();
    let now = crate::telemetry::now_ms();
    let mut names: Vec<String> = declared.clone();
    if let Some(a) = s.0.lists.get() {
        names.extend(a.lists.names());
    }
    names.sort();
    names.dedup();
    let lists = names
        .into_iter()
        .map(|name| {
            let (size, entries) = s.0.lists.get().map_or((0, 0), |a| {
                (a.lists.size_at(&name, now), a.lists.len(&name))
            });
            ListSummary {
                declared: declared.contains(&name),
                name,
                size,
                entries,
            }
        })
        .collect();
    Json(ListsPage { lists })
}

#[utoipa::path(get, path = "/v1/lists/{name}",
    params(("name" = String, Path, description = "list name")),
    responses((status = 200, body = ListView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub(super) async fn list(
    State(s): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ListView>, ApiError> {
    let name = list_name(name)?;
    let declared = s.0.rules.current().def().lists.contains(&name);
    let entries =
        s.0.lists
            .get()
            .map(|a| a.lists.entries(&name))
            .unwrap_or_default();
    if !declared && entries.is_empty() {
        return Err(ApiError::not_found(format!(
            "no list `{name}`: the rules declare none of that name and it has no entries"
        )));
    }
    let now = crate::telemetry::now_ms();
    let entries: Vec<ListEntryView> = entries.iter().map(|e| view(e, now)).collect();
    Ok(Json(ListView {
        name,
        declared,
        size: entries.iter().filter(|e| e.on).count(),
        entries,
    }))
}

/// Puts a value on a list from `from` (default: now) until `until`
/// (default: never). The running rules need not declare the list yet.
#[utoipa::path(post, path = "/v1/lists/{name}/entries",
    params(("name" = String, Path, description = "list name")),
    request_body = AddEntry,
    responses((status = 200, body = ListEntryView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn add_entry(
    State(s): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<String, StringRejection>,
) -> Result<Json<ListEntryView>, ApiError> {
    let name = list_name(name)?;
    let body = body?;
    let add: AddEntry = serde_json::from_str(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not an entry: {e}")))?;
    if add.value.is_empty() || add.value.len() > MAX_TEXT {
        return Err(ApiError::bad_request(format!(
            "the value must be 1 to {MAX_TEXT} bytes"
        )));
    }
    let now = crate::telemetry::now_ms();
    let from = add.from.unwrap_or(now);
    if add.until.is_some_and(|u| u <= from) {
        return Err(ApiError::bad_request("`until` must come after `from`"));
    }
    let change = ListChange {
        op: ListOp::Add,
        at: from,
        until: add.until,
        author: checked_text("author", add.author)?,
        comment: checked_text("comment", add.comment)?,
        recorded: Some(now),
    };
    let entry = with_change(access(&s)?, &name, &add.value, change);
    write(&s, vec![entry.clone()]).await?;
    Ok(Json(view(&entry, now)))
}

/// Takes a value off a list for events from now on (its history stays).
#[utoipa::path(delete, path = "/v1/lists/{name}/entries/{value}",
    params(("name" = String, Path, description = "list name"),
           ("value" = String, Path, description = "the value"), RemoveEntry),
    responses((status = 200, body = ListEntryView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn remove_entry(
    State(s): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<RemoveEntry>, QueryRejection>,
) -> Result<Json<ListEntryView>, ApiError> {
    let Path((name, value)) = path?;
    let name = list_name(Ok(Path(name)))?;
    let Query(q) = query?;
    let now = crate::telemetry::now_ms();
    let a = access(&s)?;
    if !a
        .lists
        .entry(&name, &value)
        .is_some_and(|e| e.contains_at(now))
    {
        return Err(ApiError::not_found(format!(
            "`{value}` is not on list `{name}`"
        )));
    }
    let change = ListChange {
        op: ListOp::Remove,
        at: now,
        until: None,
        author: checked_text("author", q.author)?,
        comment: checked_text("comment", q.comment)?,
        recorded: Some(now),
    };
    let entry = with_change(a, &name, &value, change);
    write(&s, vec![entry.clone()]).await?;
    Ok(Json(view(&entry, now)))
}

/// Loads changes from a CSV body: a header naming `value` and optionally
/// `from`, `until`, `op`, `author`, `comment` (rows without `from` apply
/// from now). All rows or none: a bad row refuses the whole body.
#[utoipa::path(post, path = "/v1/lists/{name}/entries:bulk",
    params(("name" = String, Path, description = "list name")),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = BulkResult), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn bulk_load(
    State(s): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<String, StringRejection>,
) -> Result<Json<BulkResult>, ApiError> {
    let name = list_name(name)?;
    let body = body?;
    let now = crate::telemetry::now_ms();
    let defaults = crate::list_files::CsvDefaults {
        author: None,
        from: now,
        recorded: Some(now),
    };
    let rows = crate::list_files::parse_list_csv(&name, &body, &defaults)
        .map_err(|e| ApiError::bad_request(format!("the CSV body: {e}")))?;
    let a = access(&s)?;
    let entries: Vec<ListEntry> = rows
        .into_iter()
        .map(|row| {
            let mut e = current(a, &name, &row.value);
            e.changes.extend(row.changes);
            e
        })
        .collect();
    let changed = entries.len();
    write(&s, entries).await?;
    Ok(Json(BulkResult { changed }))
}

/// Every entry with its history, one JSON object per line: what
/// `tripline replay --list NAME=FILE.jsonl` reads.
#[utoipa::path(get, path = "/v1/lists/{name}/export",
    params(("name" = String, Path, description = "list name")),
    responses((status = 200, content_type = "application/x-ndjson", body = String),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub(super) async fn export(
    State(s): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = list_name(name)?;
    let mut out = String::new();
    for e in
        s.0.lists
            .get()
            .map(|a| a.lists.entries(&name))
            .unwrap_or_default()
    {
        out.push_str(&serde_json::to_string(&e).unwrap_or_default());
        out.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}

/// The entry for `value` on `name` as it is (without history if new).
fn current(a: &ListAccess, name: &str, value: &str) -> ListEntry {
    a.lists.entry(name, value).unwrap_or(ListEntry {
        list: name.to_string(),
        value: value.to_string(),
        changes: Vec::new(),
    })
}

/// The entry for `value` on `name` with `change` appended (not yet
/// written).
fn with_change(a: &ListAccess, name: &str, value: &str, change: ListChange) -> ListEntry {
    let mut e = current(a, name, value);
    e.changes.push(change);
    e
}
