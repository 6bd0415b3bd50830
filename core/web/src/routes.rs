//! The route table: every route of the portal with its method, kind and access rule. The router is
//! built from this list ([`crate::app`]) and nothing else, so the authorization matrix test
//! (`tests/authz_matrix.rs`) can check that every route has rows — a route added here without matrix
//! rows fails that test, and a route registered any other way does not exist.

use crate::gate::{Route, route as r};
use crate::views::account as auth_routes;
use crate::views::admin as admin_pages;
use crate::views::classes::{self, hours, pages as class_pages};
use crate::views::connect;
use crate::views::portal::{api, pages};

pub use crate::auth::access::{Access, HttpMethod, RouteKind, RouteSpec};

/// The table: every route with its method, path, kind, access rule and handler, in registration order.
pub(crate) fn table() -> Vec<Route> {
    use Access::*;
    use HttpMethod::*;
    use RouteKind::*;
    let mut login = r(Post, "/login", Json, Public, auth_routes::login);
    login.spec.body_limit = Some(crate::auth::AUTH_BODY_LIMIT);
    let mut register = r(Post, "/register", Json, Public, auth_routes::register);
    register.spec.body_limit = Some(crate::auth::AUTH_BODY_LIMIT);
    vec![
        // Operations.
        r(Get, "/health", Json, Public, api::health),
        r(Get, "/metrics", Text, Admin, api::metrics),
        r(Get, "/api/events", Sse, Authenticated, api::events),
        // Sign-in and the caller's own account.
        login,
        register,
        r(Post, "/logout", Json, Authenticated, auth_routes::logout),
        r(Get, "/api/me", Json, Authenticated, auth_routes::me),
        // Sync and inventory (DESIGN §7b).
        r(Get, "/api/sync/status", Json, Admin, api::sync_status),
        r(Post, "/api/sync/trigger", Json, Admin, api::sync_trigger),
        r(
            Get,
            "/api/sync/inventory/summary",
            Json,
            Admin,
            api::inventory_summary,
        ),
        r(Get, "/api/vms", Json, Authenticated, api::list_vms),
        r(Get, "/api/clusters", Json, Authenticated, api::list_clusters),
        r(
            Post,
            "/api/clusters/switch",
            Json,
            Authenticated,
            auth_routes::switch_cluster,
        ),
        // One VM (object access decided per VM by authz::decide).
        r(Get, "/api/vm/{vmid}/status", Json, Authenticated, api::vm_status),
        r(Get, "/api/vm/{vmid}/ip", Json, Authenticated, api::vm_ip),
        r(
            Get,
            "/api/vm/{vmid}/connect",
            Json,
            Authenticated,
            connect::api::connect_info,
        ),
        r(
            Post,
            "/api/vm/{vmid}/connect-token",
            Json,
            Authenticated,
            auth_routes::connect_token,
        ),
        r(
            Post,
            "/api/vm/{vmid}/{action}",
            Json,
            Authenticated,
            api::vm_power,
        ),
        // Direct assignments and VM-to-class mappings.
        r(
            Get,
            "/api/user-vm-assignments",
            Json,
            Authenticated,
            auth_routes::list_assignments,
        ),
        r(
            Post,
            "/api/user-vm-assignments",
            Json,
            Admin,
            auth_routes::create_assignment,
        ),
        r(
            Delete,
            "/api/user-vm-assignments/{id}",
            Json,
            Admin,
            auth_routes::delete_assignment,
        ),
        r(
            Get,
            "/api/vm-class-mappings",
            Json,
            Admin,
            auth_routes::list_mappings,
        ),
        r(
            Post,
            "/api/vm-class-mappings",
            Json,
            Admin,
            auth_routes::create_mapping,
        ),
        // Classes, templates, invites and deployment jobs (issue 5; per-class access decided in the
        // handlers by authz::decide).
        r(Get, "/api/classes", Json, Authenticated, classes::list_classes),
        r(Post, "/api/classes", Json, Authenticated, classes::create_class),
        r(Get, "/api/classes/{id}", Json, Authenticated, classes::get_class),
        r(
            Get,
            "/api/classes/{id}/hours",
            Json,
            Authenticated,
            hours::get_hours,
        ),
        r(
            Put,
            "/api/classes/{id}/hours",
            Json,
            Authenticated,
            hours::put_hours,
        ),
        r(
            Get,
            "/api/classes/{id}/usage",
            Json,
            Authenticated,
            hours::class_usage,
        ),
        r(Get, "/api/me/usage", Json, Authenticated, hours::my_usage),
        r(
            Put,
            "/api/classes/{id}",
            Json,
            Authenticated,
            classes::update_class,
        ),
        r(
            Delete,
            "/api/classes/{id}",
            Json,
            Authenticated,
            classes::delete_class,
        ),
        r(
            Get,
            "/api/classes/{id}/events",
            Sse,
            Authenticated,
            classes::class_events,
        ),
        r(
            Post,
            "/api/classes/{id}/invite",
            Json,
            Authenticated,
            classes::create_invite,
        ),
        r(
            Get,
            "/api/classes/{id}/invites",
            Json,
            Authenticated,
            classes::list_invites,
        ),
        r(
            Delete,
            "/api/classes/{id}/invites/{invite}",
            Json,
            Authenticated,
            classes::revoke_invite,
        ),
        // The join page only shows the class and a "Join" button; the form's POST (CSRF-checked) joins.
        r(Get, "/join/{token}", Html, Authenticated, class_pages::join_page),
        r(Post, "/join/{token}", Html, Authenticated, classes::join),
        r(
            Post,
            "/api/class/{id}/assign",
            Json,
            Authenticated,
            classes::assign,
        ),
        r(
            Delete,
            "/api/class/{id}/assign/{user}",
            Json,
            Authenticated,
            classes::unassign,
        ),
        r(
            Get,
            "/api/classes/{id}/co-owners",
            Json,
            Authenticated,
            classes::list_co_owners,
        ),
        r(
            Post,
            "/api/classes/{id}/co-owners",
            Json,
            Authenticated,
            classes::add_co_owner,
        ),
        r(
            Delete,
            "/api/classes/{id}/co-owners/{user}",
            Json,
            Authenticated,
            classes::remove_co_owner,
        ),
        r(
            Post,
            "/api/classes/{id}/teacher/{action}",
            Json,
            Authenticated,
            classes::teacher_power,
        ),
        r(
            Post,
            "/api/classes/{id}/vms",
            Json,
            Authenticated,
            classes::add_vms,
        ),
        r(
            Post,
            "/api/classes/{id}/retry",
            Json,
            Authenticated,
            classes::retry,
        ),
        r(
            Post,
            "/api/classes/{id}/publish-template",
            Json,
            Authenticated,
            classes::publish,
        ),
        r(
            Get,
            "/api/templates",
            Json,
            Authenticated,
            classes::list_templates,
        ),
        r(Post, "/api/templates", Json, Admin, classes::register_template),
        r(
            Get,
            "/api/templates/by-name/{name}",
            Json,
            Authenticated,
            classes::template_by_name,
        ),
        r(
            Get,
            "/api/templates/stats",
            Json,
            Authenticated,
            classes::template_stats,
        ),
        r(Post, "/api/templates/sync", Json, Admin, classes::sync_templates),
        r(
            Put,
            "/api/teachers/{name}/limits",
            Json,
            Admin,
            classes::set_teacher_limits,
        ),
        r(
            Put,
            "/api/templates/{cluster}/{vmid}",
            Json,
            Admin,
            classes::update_template,
        ),
        r(
            Delete,
            "/api/templates/{cluster}/{vmid}",
            Json,
            Admin,
            classes::unregister_template,
        ),
        r(Get, "/api/jobs/{id}", Json, Authenticated, classes::get_job),
        r(
            Get,
            "/api/jobs/{id}/events",
            Sse,
            Authenticated,
            classes::job_events,
        ),
        // The teacher's class pages (issue 5 item 4; per-class access decided in the handler).
        r(Get, "/classes", Html, Authenticated, class_pages::classes_page),
        r(Get, "/classes/{id}", Html, Authenticated, class_pages::class_page),
        // Pages (themes) and reload status.
        // Sign-in page and the student portal (issue 4).
        r(Get, "/login", Html, Public, pages::login_page),
        r(Get, "/portal", Html, Authenticated, pages::portal),
        // Admin pages and the JSON they use (issue 4 item 5).
        r(Get, "/admin/users", Html, Admin, admin_pages::users_page),
        r(Get, "/admin/clusters", Html, Admin, admin_pages::clusters_page),
        r(
            Get,
            "/admin/assignments",
            Html,
            Admin,
            admin_pages::assignments_page,
        ),
        r(Get, "/admin/audit", Html, Admin, admin_pages::audit_page),
        r(Get, "/api/users", Json, Admin, admin_pages::list_users),
        r(Post, "/api/users", Json, Admin, admin_pages::create_user),
        r(Put, "/api/users/{name}", Json, Admin, admin_pages::update_user),
        r(
            Post,
            "/api/users/{name}/password",
            Json,
            Admin,
            admin_pages::reset_password,
        ),
        r(Post, "/api/clusters/test", Json, Admin, admin_pages::test_cluster),
        // `/` is everyone's home address: admins get the overview, others are sent to /portal.
        r(Get, "/", Html, Authenticated, pages::index),
        r(Get, "/vms", Html, Admin, pages::vms),
        r(Get, "/admin/reload", Html, Admin, pages::admin_reload),
        r(Get, "/api/reload/status", Json, Admin, pages::reload_status),
        r(Get, "/api/reload/events", Sse, Admin, pages::reload_events),
        r(
            Get,
            "/static/{version}/{*path}",
            Static,
            Public,
            pages::static_file,
        ),
        // Connecting to a VM (issue 6): .rdp file, terminal and console pages, their WebSockets (Origin +
        // one-time connect token checked in the handlers), and the vendored npm files.
        r(Get, "/rdp/{file}", Text, Authenticated, connect::rdp::rdp_file),
        r(
            Get,
            "/ssh/{vmid}",
            Html,
            Authenticated,
            connect::ssh::terminal_page,
        ),
        r(
            Get,
            "/console/{vmid}",
            Html,
            Authenticated,
            connect::console::console_page,
        ),
        r(
            Get,
            "/ws/terminal/{vmid}",
            Ws,
            Authenticated,
            connect::ssh::terminal_ws,
        ),
        r(
            Get,
            "/ws/console/{vmid}",
            Ws,
            Authenticated,
            connect::console::console_ws,
        ),
        r(
            Get,
            "/static/vendor/{*path}",
            Static,
            Public,
            connect::vendor::vendor_file,
        ),
    ]
}

/// Every route of the portal, in registration order.
pub fn routes() -> Vec<RouteSpec> {
    table().into_iter().map(|r| r.spec).collect()
}
