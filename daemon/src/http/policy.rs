//! Who may call which route.

use axum::http::Method;

use crate::core::model::Role;

/// Whether `role` may call a route with `method`. Reading is open to
/// viewers; changing anything needs an operator. The storefront and
/// machine roles are reserved and may call nothing yet; a slicer may call
/// only the OctoPrint routes, which `http::octoprint` guards itself.
pub fn allowed(role: Role, method: &Method) -> bool {
    match role {
        Role::Operator => true,
        Role::Viewer => method == Method::GET || method == Method::HEAD,
        Role::Storefront | Role::Machine | Role::Slicer => false,
    }
}
