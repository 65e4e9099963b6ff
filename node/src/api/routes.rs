//! `routemq.v1.Routes`: the routes table in the Raft config. Writes go through the leader
//! (NotLeader otherwise) and may be compare-and-set on the route's version; reads are
//! linearizable by default or local on request. Changing routes never needs a restart: every
//! node's dispatcher and ingress follow the applied config.

use std::sync::Arc;

use routemq_proto::v1 as pb;
use routemq_proto::v1::routes_server::Routes;
use tonic::{Request, Response, Status};

use super::ApiError;
use crate::config::state::{Command, StoredRoute};
use crate::config::ConfigService;
use crate::routes::{HandlerSpec, RouteMode, RouteSpec};

/// Implementation of `routemq.v1.Routes`.
pub struct RoutesApi {
    config: Arc<ConfigService>,
}

impl RoutesApi {
    /// Serves the routes of `config`.
    pub fn new(config: Arc<ConfigService>) -> Self {
        Self { config }
    }

    async fn view(&self, consistency: i32) -> Result<crate::config::ConfigView, ApiError> {
        match pb::ReadConsistency::try_from(consistency) {
            Ok(pb::ReadConsistency::Linearizable) => Ok(self.config.linearizable_view().await?),
            Ok(pb::ReadConsistency::Local) => Ok(self.config.local_view()),
            Err(_) => Err(ApiError::InvalidArgument(format!(
                "unknown read consistency {consistency}"
            ))),
        }
    }
}

/// Converts a wire route to a route definition (validation happens when the config applies it).
pub fn spec_from_pb(route: pb::Route) -> Result<RouteSpec, ApiError> {
    let qos = u8::try_from(route.qos)
        .map_err(|_| ApiError::InvalidArgument(format!("qos {} is not 0, 1 or 2", route.qos)))?;
    let mode = match pb::RouteMode::try_from(route.mode) {
        Ok(pb::RouteMode::Ordered) => RouteMode::Ordered,
        Ok(pb::RouteMode::Shared) => RouteMode::Shared {
            worker_count: route.worker_count.max(1),
        },
        Err(_) => {
            return Err(ApiError::InvalidArgument(format!(
                "unknown route mode {}",
                route.mode
            )))
        }
    };
    let handler = match route.handler.and_then(|h| h.kind) {
        None | Some(pb::handler::Kind::Log(_)) => HandlerSpec::Log,
        Some(pb::handler::Kind::Journal(_)) => HandlerSpec::Journal,
        Some(pb::handler::Kind::Republish(r)) => HandlerSpec::Republish {
            topic_template: r.topic,
            qos: u8::try_from(r.qos)
                .map_err(|_| ApiError::InvalidArgument(format!("republish qos {} is not 0 or 1", r.qos)))?,
        },
        Some(pb::handler::Kind::Custom(name)) => HandlerSpec::Custom { name },
    };
    Ok(RouteSpec {
        name: route.name,
        pattern: route.pattern,
        group: route.group,
        key_param: (!route.key_param.is_empty()).then_some(route.key_param),
        qos,
        mode,
        handler,
        priority: route.priority,
        message_id_field: (!route.message_id_field.is_empty()).then_some(route.message_id_field),
    })
}

/// Converts a stored route to its wire form.
pub fn route_to_pb(stored: &StoredRoute) -> pb::Route {
    let spec = &stored.spec;
    let (mode, worker_count) = match spec.mode {
        RouteMode::Ordered => (pb::RouteMode::Ordered, 0),
        RouteMode::Shared { worker_count } => (pb::RouteMode::Shared, worker_count),
    };
    let kind = match &spec.handler {
        HandlerSpec::Log => pb::handler::Kind::Log(pb::LogHandler {}),
        HandlerSpec::Journal => pb::handler::Kind::Journal(pb::JournalHandler {}),
        HandlerSpec::Republish { topic_template, qos } => {
            pb::handler::Kind::Republish(pb::RepublishHandler {
                topic: topic_template.clone(),
                qos: u32::from(*qos),
            })
        }
        HandlerSpec::Custom { name } => pb::handler::Kind::Custom(name.clone()),
    };
    pb::Route {
        name: spec.name.clone(),
        pattern: spec.pattern.clone(),
        key_param: spec.key_param.clone().unwrap_or_default(),
        qos: u32::from(spec.qos),
        mode: mode as i32,
        worker_count,
        handler: Some(pb::Handler { kind: Some(kind) }),
        group: spec.group.clone(),
        version: stored.version,
        priority: spec.priority,
        message_id_field: spec.message_id_field.clone().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Routes for RoutesApi {
    async fn put_route(
        &self,
        request: Request<pb::PutRouteRequest>,
    ) -> Result<Response<pb::PutRouteResponse>, Status> {
        let request = request.into_inner();
        let route = request
            .route
            .ok_or_else(|| ApiError::InvalidArgument("route is required".into()))?;
        let spec = spec_from_pb(route)?;
        let name = spec.name.clone();
        let applied = self
            .config
            .propose(Command::PutRoute {
                spec: spec.clone(),
                expected_version: request.expected_version,
            })
            .await
            .map_err(ApiError::from)?;
        let stored = StoredRoute {
            spec,
            version: applied.route_version.unwrap_or(0),
        };
        tracing::info!(route = %name, version = stored.version, "route written");
        Ok(Response::new(pb::PutRouteResponse {
            route: Some(route_to_pb(&stored)),
            epoch: applied.epoch,
        }))
    }

    async fn get_route(
        &self,
        request: Request<pb::GetRouteRequest>,
    ) -> Result<Response<pb::GetRouteResponse>, Status> {
        let request = request.into_inner();
        let view = self.view(request.consistency).await?;
        Ok(Response::new(pb::GetRouteResponse {
            route: view.state.config.routes.get(&request.name).map(route_to_pb),
        }))
    }

    async fn list_routes(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let view = self.view(request.into_inner().consistency).await?;
        let config = &view.state.config;
        let routes = view
            .routes
            .routes()
            .iter()
            .filter_map(|r| config.routes.get(r.name()))
            .map(route_to_pb)
            .collect();
        Ok(Response::new(pb::ListRoutesResponse { routes }))
    }

    async fn delete_route(
        &self,
        request: Request<pb::DeleteRouteRequest>,
    ) -> Result<Response<pb::DeleteRouteResponse>, Status> {
        let request = request.into_inner();
        self.config
            .propose(Command::DeleteRoute {
                name: request.name,
                expected_version: request.expected_version,
            })
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DeleteRouteResponse { deleted: true }))
    }
}
