//! Every Tollgate filter in one module, `tollgate.wasm`. A filter of the listener picks its filter
//! by its `root_id` (`tollgate.key_auth`, `tollgate.jwt_auth`, `tollgate.rate_limit`,
//! `tollgate.request_signing`, `tollgate.transform`, `tollgate.cache`; or `tollgate.pipeline`, several of them as
//! stages of one filter: see [`pipeline`]), and keeps its own configuration, stats,
//! shared-data keys and caches. Filters that load this module with the same `vm_id` share one
//! VM per worker (Envoy keys a VM by its id and its code) instead of one VM per filter; the
//! single-filter modules stay for those who want only one filter.
//!
//! Each root context learns its `root_id` when it is configured (the `plugin_root_id`
//! property), and from then on is the generic root of that filter (`tollgate_host::Root`).

/// The filters of the bundle, by the `root_id` that picks each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    KeyAuth,
    JwtAuth,
    RateLimit,
    RequestSigning,
    Transform,
    Cache,
    /// Several of the filters as stages of one ([`pipeline`]).
    Pipeline,
}

/// The root ids the bundle answers to, in [`Pick`]'s order.
pub const ROOT_IDS: [(&str, Pick); 7] = [
    ("tollgate.key_auth", Pick::KeyAuth),
    ("tollgate.jwt_auth", Pick::JwtAuth),
    ("tollgate.rate_limit", Pick::RateLimit),
    ("tollgate.request_signing", Pick::RequestSigning),
    ("tollgate.transform", Pick::Transform),
    ("tollgate.cache", Pick::Cache),
    ("tollgate.pipeline", Pick::Pipeline),
];

impl Pick {
    /// The filter `root_id` names, if any.
    pub fn of(root_id: &str) -> Option<Pick> {
        ROOT_IDS.iter().find(|(id, _)| *id == root_id).map(|(_, pick)| *pick)
    }
}

/// What is logged when a plugin's `root_id` names no filter of the bundle.
pub fn unknown_root_id(root_id: &str) -> String {
    let known: Vec<&str> = ROOT_IDS.iter().map(|(id, _)| *id).collect();
    format!("tollgate: root_id `{root_id}` names no filter of this module; use one of: {}", known.join(", "))
}

pub mod pipeline;
pub mod stage_host;

#[cfg(target_arch = "wasm32")]
mod module {
    use std::rc::Rc;

    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::ContextType;
    use tollgate_host::{EnvoyHost, Filter, Host, LogLevel, Root};

    use super::{Pick, unknown_root_id};

    /// The property Envoy answers a plugin's `root_id` at.
    const PLUGIN_ROOT_ID: &[&str] = &["plugin_root_id"];

    /// A root context of the bundle: nothing until configured, then one filter's root.
    struct BundleRoot {
        context_id: u32,
        filter: Option<Box<dyn RootContext>>,
    }

    fn root_of<F: Filter>(context_id: u32) -> Box<dyn RootContext> {
        Box::new(Root::<F, EnvoyHost>::new(Rc::new(EnvoyHost), context_id))
    }

    impl BundleRoot {
        fn root_for(&self, pick: Pick) -> Box<dyn RootContext> {
            let id = self.context_id;
            match pick {
                Pick::KeyAuth => root_of::<tollgate_key_auth::KeyAuth>(id),
                Pick::JwtAuth => root_of::<tollgate_jwt_auth::JwtAuth>(id),
                Pick::RateLimit => root_of::<tollgate_rate_limit::RateLimit>(id),
                Pick::RequestSigning => root_of::<tollgate_request_signing::RequestSigning>(id),
                Pick::Transform => root_of::<tollgate_transform::Transform>(id),
                Pick::Cache => root_of::<tollgate_cache::Cache>(id),
                Pick::Pipeline => Box::new(crate::pipeline::PipelineRoot::new(Rc::new(EnvoyHost), id)),
            }
        }
    }

    impl Context for BundleRoot {
        fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
            if let Some(filter) = &mut self.filter {
                filter.on_grpc_call_response(token_id, status_code, response_size);
            }
        }

        fn on_http_call_response(
            &mut self,
            token_id: u32,
            num_headers: usize,
            body_size: usize,
            trailers: usize,
        ) {
            if let Some(filter) = &mut self.filter {
                filter.on_http_call_response(token_id, num_headers, body_size, trailers);
            }
        }
    }

    impl RootContext for BundleRoot {
        fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
            let host = EnvoyHost;
            let root_id = host
                .property(PLUGIN_ROOT_ID)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            // A configuration pushed again to the same root context keeps its filter.
            if self.filter.is_none() {
                self.filter = Pick::of(&root_id).map(|pick| self.root_for(pick));
            }
            match &mut self.filter {
                Some(filter) => filter.on_configure(plugin_configuration_size),
                None => {
                    host.log(LogLevel::Critical, &unknown_root_id(&root_id));
                    false
                }
            }
        }

        fn on_tick(&mut self) {
            if let Some(filter) = &mut self.filter {
                filter.on_tick();
            }
        }

        fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
            self.filter.as_ref()?.create_http_context(context_id)
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    proxy_wasm::main! {{
        tollgate_host::install_panic_hook();
        proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
            Box::new(BundleRoot { context_id, filter: None })
        });
    }}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_filter_has_its_root_id_and_nothing_else_picks_one() {
        assert_eq!(Pick::of("tollgate.key_auth"), Some(Pick::KeyAuth));
        assert_eq!(Pick::of("tollgate.transform"), Some(Pick::Transform));
        for near_miss in ["tollgate.key-auth", "key_auth", "", "tollgate.key_auth ", "TOLLGATE.KEY_AUTH"] {
            assert_eq!(Pick::of(near_miss), None, "{near_miss:?}");
        }
        let picks: Vec<Pick> = ROOT_IDS.iter().map(|(_, p)| *p).collect();
        assert_eq!(picks.len(), 7);
        assert!(picks.iter().all(|p| picks.iter().filter(|q| *q == p).count() == 1));
    }

    #[test]
    fn an_unknown_root_id_is_named_with_the_ids_it_could_be() {
        let message = unknown_root_id("tollgate.key-auth");
        assert!(message.contains("`tollgate.key-auth`"));
        assert!(ROOT_IDS.iter().all(|(id, _)| message.contains(id)));
    }
}
