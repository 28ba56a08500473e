//! A router builder that also records each (method, path) it serves, so tests and the OpenAPI
//! check can enumerate the real routes rather than a hand-kept list.

use axum::{
    Router,
    handler::Handler,
    routing::{self, MethodRouter},
};

/// One route the web layer serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteInfo {
    /// `GET`, `POST`, `PUT` or `DELETE`
    pub method: &'static str,
    /// axum/OpenAPI path syntax: `/api/v1/jobs/{id}`
    pub path: &'static str,
}

pub(crate) struct Routes<S> {
    pub(crate) router: Router<S>,
    pub(crate) table: Vec<RouteInfo>,
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub(crate) fn new() -> Self {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    fn add(mut self, method: &'static str, path: &'static str, mr: MethodRouter<S>) -> Self {
        self.router = self.router.route(path, mr);
        self.table.push(RouteInfo { method, path });
        self
    }

    pub(crate) fn get<H: Handler<T, S>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add("GET", path, routing::get(h))
    }

    pub(crate) fn post<H: Handler<T, S>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add("POST", path, routing::post(h))
    }

    pub(crate) fn put<H: Handler<T, S>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add("PUT", path, routing::put(h))
    }

    pub(crate) fn delete<H: Handler<T, S>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add("DELETE", path, routing::delete(h))
    }

    pub(crate) fn merge(mut self, other: Routes<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }
}
