//! The static assets, compiled into the binary: one stylesheet, one script, one icon. Nothing is
//! loaded from elsewhere (the CSP allows only this origin).

use crate::{AppState, backend::Backend, routes::Routes};
use axum::{
    http::header,
    response::{IntoResponse, Response},
};

const APP_CSS: &str = include_str!("../static/app.css");
const APP_JS: &str = include_str!("../static/app.js");
const ICON_SVG: &str = include_str!("../static/icon.svg");

pub(crate) fn routes<B: Backend>() -> Routes<AppState<B>> {
    Routes::new()
        .get("/static/app.css", css)
        .get("/static/app.js", js)
        .get("/static/icon.svg", icon)
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn icon() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], ICON_SVG).into_response()
}
