//! The tables over HTTP: which tables the running rules declare (topic,
//! key and time fields, keys held), and one key's row with its versions,
//! so that an analyst sees what an event of a given time was compared
//! with.

use super::*;

/// A declared table.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TableSummary {
    /// Its name.
    pub name: String,
    /// The compacted topic its rows come from.
    pub topic: String,
    /// The field of a row that is its key.
    pub key: String,
    /// The field of a row that says from when it applies (none: every row
    /// applies from the beginning of time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Keys with a row (in any version) on this instance.
    pub keys: usize,
}

/// The tables the running rules declare.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TablesPage {
    /// Sorted by name.
    pub tables: Vec<TableSummary>,
}

/// One version of a row.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RowVersionView {
    /// The event time (epoch ms) it applies from (none: from the
    /// beginning of time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// The row's fields that are strings, numbers or booleans, by path
    /// (`a.b` for field `b` of object `a`); none: the key's row was deleted
    /// from then.
    #[schema(value_type = Option<Object>)]
    pub row: Option<serde_json::Value>,
}

/// One key's row in a table.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TableRowView {
    /// The table.
    pub table: String,
    /// The key.
    pub key: String,
    /// The row events of now see (none: no row).
    #[schema(value_type = Option<Object>)]
    pub current: Option<serde_json::Value>,
    /// Every version held, in time order.
    pub versions: Vec<RowVersionView>,
}

fn tables(s: &ApiState) -> Option<&Arc<crate::tables::Tables>> {
    s.0.tables.get()
}

#[utoipa::path(get, path = "/v1/tables",
    responses((status = 200, body = TablesPage), (status = 401, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub(super) async fn list_tables(State(s): State<ApiState>) -> Json<TablesPage> {
    let rules = s.0.rules.current();
    let mut out: Vec<TableSummary> = rules
        .def()
        .tables
        .iter()
        .map(|d| TableSummary {
            name: d.spec.name.clone(),
            topic: d.topic.clone(),
            key: d.spec.key.to_string(),
            time: d.spec.time.as_ref().map(|t| t.to_string()),
            keys: tables(&s).map_or(0, |t| t.len(&d.spec.name)),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Json(TablesPage { tables: out })
}

#[utoipa::path(get, path = "/v1/tables/{name}/rows/{key}",
    params(("name" = String, Path, description = "table name"),
           ("key" = String, Path, description = "the row's key, as text (numbers in their shortest form)")),
    responses((status = 200, body = TableRowView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub(super) async fn table_row(
    State(s): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<TableRowView>, ApiError> {
    let Path((name, key)) = path?;
    if !valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "`{name}` is not a table name (letters, digits, `_` and `-`, at most 128)"
        )));
    }
    let rules = s.0.rules.current();
    if !rules.def().tables.iter().any(|d| d.spec.name == name) {
        return Err(ApiError::not_found(format!(
            "no table `{name}`: the running rules declare none of that name"
        )));
    }
    let versions = tables(&s)
        .map(|t| t.versions(&name, &key))
        .unwrap_or_default();
    if versions.is_empty() {
        return Err(ApiError::not_found(format!(
            "table `{name}` has no row for `{key}`"
        )));
    }
    let now = crate::telemetry::now_ms();
    let row = |r: &Option<crate::tables::HeldRow>| r.as_ref().map(|r| r.to_json());
    let current = versions
        .iter()
        .rev()
        .find(|(at, _)| *at <= now)
        .and_then(|(_, r)| row(r));
    Ok(Json(TableRowView {
        table: name,
        key,
        current,
        versions: versions
            .iter()
            .map(|(at, r)| RowVersionView {
                from: (*at != i64::MIN).then_some(*at),
                row: row(r),
            })
            .collect(),
    }))
}
