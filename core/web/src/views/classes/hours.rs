//! Class hours and usage-hour quotas over HTTP ([`hours::Hours`]): a class's settings for its teachers
//! and admins, the usage of its students, and a student's own remaining time.
//!
//! Bad settings answer 400 `{error: {code, field, message}}` naming the field (`timetable.weekly[1].end`,
//! `quota_hours`); nothing stored changes. Without the hours service these routes answer 503.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hours::{ClassHours, Hours, HoursError};
use serde_json::json;
use store::AssignmentRole;

use crate::auth::{Action, Decision, Principal, Target, decide};
use crate::error::AppError;
use crate::state::AppState;

type Res = Result<Response, Refused>;

/// An error answer (boxed: a response is large).
pub struct Refused(Box<Response>);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        *self.0
    }
}

fn refuse(r: impl IntoResponse) -> Refused {
    Refused(Box::new(r.into_response()))
}

fn service(st: &AppState) -> Result<&Hours, Refused> {
    st.hours.as_ref().ok_or_else(|| {
        refuse(AppError::Unavailable(
            "class hours are not available on this server".into(),
        ))
    })
}

fn field_error(field: &str, message: &str) -> Refused {
    refuse((
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"code": "bad_request", "field": field, "message": message}})),
    ))
}

fn internal(e: impl std::fmt::Display) -> Refused {
    refuse(AppError::Internal(e.to_string()))
}

/// The class's teachers and admins; the class must exist.
fn manage(st: &AppState, p: &Principal, id: &str) -> Result<(), Refused> {
    match decide(p, Action::ManageClass, &Target::Class(id), &st.auth.index()) {
        Decision::Allow => {}
        Decision::NotFound => return Err(refuse(AppError::NotFound(format!("no class {id}")))),
        Decision::Forbidden => {
            return Err(refuse(AppError::Forbidden(
                "only the class's teachers may do this".into(),
            )));
        }
    }
    match service(st)?.store().classes.get(id) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(refuse(AppError::NotFound(format!("no class {id}")))),
        Err(e) => Err(internal(e)),
    }
}

/// The settings of a PUT body, a decoding error naming the top-level field that is wrong.
fn decode(bytes: &Bytes) -> Result<Option<ClassHours>, Refused> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| field_error("body", &format!("not JSON: {e}")))?;
    if let Some(obj) = v.as_object() {
        for (key, part) in obj {
            let r = match key.as_str() {
                "timetable" => serde_json::from_value::<hours::Timetable>(part.clone()).map(|_| ()),
                "quota_hours" => serde_json::from_value::<Option<u32>>(part.clone()).map(|_| ()),
                "extra_minutes" => {
                    serde_json::from_value::<std::collections::BTreeMap<String, u32>>(part.clone())
                        .map(|_| ())
                }
                _ => {
                    return Err(field_error(
                        key,
                        "unknown field; the fields are timetable, quota_hours and extra_minutes",
                    ));
                }
            };
            if let Err(e) = r {
                return Err(field_error(key, &format!("{key}: {e}")));
            }
        }
    }
    serde_json::from_value(v).map_err(|e| field_error("body", &e.to_string()))
}

/// `GET /api/classes/{id}/hours`: `{hours: {timetable, quota_hours, extra_minutes} | null}`.
pub async fn get_hours(State(st): State<AppState>, p: Principal, Path(id): Path<String>) -> Res {
    manage(&st, &p, &id)?;
    let h = service(&st)?;
    let settings = h.settings(&id).map_err(internal)?;
    Ok(Json(json!({"hours": settings})).into_response())
}

/// `PUT /api/classes/{id}/hours` with the settings (or `null` to remove the class hours).
pub async fn put_hours(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Res {
    manage(&st, &p, &id)?;
    let h = service(&st)?;
    let settings = decode(&bytes)?;
    match h.set_settings(&id, settings.as_ref()).await {
        Ok(()) => {}
        Err(HoursError::Field(f)) => return Err(field_error(&f.field, &f.message)),
        Err(e) => return Err(internal(e)),
    }
    tracing::info!(class = %id, by = %p.name, "class hours changed");
    Ok(Json(json!({"hours": settings})).into_response())
}

/// `GET /api/classes/{id}/usage`: per student `{user, used_secs, used_text, quota_secs,
/// remaining_secs, remaining_text, running}`.
pub async fn class_usage(State(st): State<AppState>, p: Principal, Path(id): Path<String>) -> Res {
    manage(&st, &p, &id)?;
    let h = service(&st)?;
    let usage = h.class_usage(&id, h.now()).map_err(internal)?;
    Ok(Json(json!({"usage": usage})).into_response())
}

/// `GET /api/me/usage`: the caller's remaining time per class they have a student VM in, with the
/// VM (`cluster`, `vmid`) and whether a start would be refused now (`start_refused`).
pub async fn my_usage(State(st): State<AppState>, p: Principal) -> Res {
    let Some(h) = st.hours.as_ref() else {
        return Ok(Json(json!({"usage": []})).into_response());
    };
    let store = h.store();
    let now = h.now();
    let mut out = Vec::new();
    for item in store.assignments.iter() {
        let (_, a) = item.map_err(internal)?;
        let Some(class) = a.class_id.as_deref() else {
            continue;
        };
        if a.role != AssignmentRole::Student || a.user != p.name {
            continue;
        }
        if let Some(view) = h.usage(class, &p.name, now).map_err(internal)? {
            out.push(json!({
                "class": class,
                "cluster": a.cluster,
                "vmid": a.vmid,
                "usage": view,
                "start_refused": h.may_start(class, &p.name, now).err(),
            }));
        }
    }
    Ok(Json(json!({"usage": out})).into_response())
}
