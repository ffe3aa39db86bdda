//! The Envoy bootstrap that hands Envoy's listeners and clusters to this server.

use std::net::SocketAddr;

use serde_json::json;

/// Name of the bootstrap's static cluster that reaches the xDS server. Dynamic clusters are
/// all named `route_…`, so no route can collide with it.
const XDS_CLUSTER: &str = "sigma_xds";

/// A minimal Envoy bootstrap (JSON, which Envoy also reads as YAML): node identity, listeners
/// and clusters from ADS (state of the world, v3) over gRPC to `xds_addr` on an HTTP/2 static
/// cluster, and the admin interface on `admin_addr`.
///
/// Envoy retries the ADS stream from 250 ms up to 5 s apart, so that it finds a restarted
/// agent quickly; until then it keeps serving the config it has.
pub fn bootstrap(
    xds_addr: SocketAddr,
    node_id: &str,
    cluster: &str,
    admin_addr: SocketAddr,
) -> String {
    let socket = |a: SocketAddr| json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}});
    let ads_source = json!({"ads": {}, "resource_api_version": "V3"});
    let doc = json!({
        "node": {"id": node_id, "cluster": cluster},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{
                    "envoy_grpc": {
                        "cluster_name": XDS_CLUSTER,
                        "retry_policy": {
                            "retry_back_off": {"base_interval": "0.25s", "max_interval": "5s"}
                        }
                    }
                }]
            },
            "cds_config": ads_source,
            "lds_config": ads_source
        },
        "static_resources": {
            "clusters": [{
                "name": XDS_CLUSTER,
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {
                            "http2_protocol_options": {
                                // Finds a hung agent; a dead one is seen at once on loopback.
                                "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                            }
                        }
                    }
                },
                "load_assignment": {
                    "cluster_name": XDS_CLUSTER,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(xds_addr)}}]}]
                }
            }]
        },
        "admin": {"address": socket(admin_addr)}
    });
    serde_json::to_string_pretty(&doc).expect("a JSON value always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_ads_at_the_server_over_http2() {
        let b = bootstrap(
            "127.0.0.1:18000".parse().unwrap(),
            "vps-1",
            "sigma",
            "[::1]:9901".parse().unwrap(),
        );
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["node"]["id"], "vps-1");
        assert_eq!(v["node"]["cluster"], "sigma");
        let ads = &v["dynamic_resources"]["ads_config"];
        assert_eq!(ads["api_type"], "GRPC");
        assert_eq!(
            ads["grpc_services"][0]["envoy_grpc"]["cluster_name"],
            XDS_CLUSTER
        );
        assert!(v["dynamic_resources"]["cds_config"]["ads"].is_object());
        assert!(v["dynamic_resources"]["lds_config"]["ads"].is_object());
        let c = &v["static_resources"]["clusters"][0];
        assert_eq!(c["name"], XDS_CLUSTER);
        assert!(
            c["typed_extension_protocol_options"]
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
                ["http2_protocol_options"]
                .is_object()
        );
        let ep = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
        assert_eq!(ep["address"], "127.0.0.1");
        assert_eq!(ep["port_value"], 18000);
        assert_eq!(v["admin"]["address"]["socket_address"]["address"], "::1");
        assert_eq!(v["admin"]["address"]["socket_address"]["port_value"], 9901);
    }
}
