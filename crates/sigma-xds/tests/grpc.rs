//! The ADS protocol over real gRPC with a scripted client, so that every ACK, NACK and stale
//! nonce is exact (and the server is covered where no Envoy is installed).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{Xds, eventually, route};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use sigma_xds::{CLUSTER_TYPE_URL, LISTENER_TYPE_URL};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const T: Duration = Duration::from_secs(5);

struct Client {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let rx = c
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Client { tx, rx }
    }

    async fn send(&self, type_url: &str, version: &str, nonce: &str, error: Option<&str>) {
        self.tx
            .send(DiscoveryRequest {
                node: Some(Node {
                    id: "scripted".into(),
                    ..Default::default()
                }),
                type_url: type_url.into(),
                version_info: version.into(),
                response_nonce: nonce.into(),
                error_detail: error.map(|m| Status {
                    code: 3,
                    message: m.into(),
                    details: Vec::new(),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(T, self.rx.message())
            .await
            .expect("a response in time")
            .unwrap()
            .expect("stream open")
    }

    async fn nothing_within(&mut self, d: Duration) {
        if let Ok(r) = tokio::time::timeout(d, self.rx.message()).await {
            panic!("unexpected response: {r:?}");
        }
    }

    /// The next CDS and LDS responses, checked to be of `version` and in that order.
    async fn both(&mut self, version: &str) -> (String, String) {
        let c = self.recv().await;
        let l = self.recv().await;
        assert_eq!(
            (c.type_url.as_str(), c.version_info.as_str()),
            (CLUSTER_TYPE_URL, version)
        );
        assert_eq!(
            (l.type_url.as_str(), l.version_info.as_str()),
            (LISTENER_TYPE_URL, version)
        );
        (c.nonce, l.nonce)
    }
}

fn local() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

fn backend() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 9).into()
}

#[tokio::test]
async fn ack_nack_and_stale_requests_over_grpc() {
    let xds = Xds::start(local()).await;
    let h = &xds.handle;
    let mut c = Client::connect(xds.addr).await;
    c.send(CLUSTER_TYPE_URL, "", "", None).await;
    c.send(LISTENER_TYPE_URL, "", "", None).await;
    eventually("client counted", T, || async {
        (h.clients() == 1).then_some(())
    })
    .await;
    // Nothing to serve before the first publish: the subscriptions wait.
    c.nothing_within(Duration::from_millis(300)).await;

    h.publish(
        1,
        vec![route("a", 1001, backend()), route("b", 1002, backend())],
    );
    let c1 = c.recv().await;
    assert_eq!(c1.type_url, CLUSTER_TYPE_URL);
    assert_eq!(c1.resources.len(), 2);
    let l1 = c.recv().await;
    assert_eq!(l1.type_url, LISTENER_TYPE_URL);
    assert_eq!(l1.resources.len(), 2);
    c.send(CLUSTER_TYPE_URL, "1", &c1.nonce, None).await;
    c.send(LISTENER_TYPE_URL, "1", &l1.nonce, None).await;
    eventually("v1 accepted", T, || async {
        (h.accepted_version() == Some(1)).then_some(())
    })
    .await;

    // v2: clusters rejected, listeners accepted.
    h.publish(2, vec![route("a", 1001, backend())]);
    let (c2, l2) = c.both("2").await;
    c.send(CLUSTER_TYPE_URL, "1", &c2, Some("no such thing"))
        .await;
    c.send(LISTENER_TYPE_URL, "2", &l2, None).await;
    let nack = eventually("NACK recorded", T, || async { h.last_nack() }).await;
    assert_eq!(nack.version, "2");
    assert_eq!(nack.type_url, CLUSTER_TYPE_URL);
    assert_eq!(nack.detail, "no such thing");
    eventually("LDS v2 ACKed", T, || async {
        (h.stats().acked_listener_version.as_deref() == Some("2")).then_some(())
    })
    .await;
    assert_eq!(h.accepted_version(), Some(1));
    // The rejected version is not pushed again.
    c.nothing_within(Duration::from_millis(200)).await;

    // A request answering an old response is ignored.
    c.send(CLUSTER_TYPE_URL, "1", &c1.nonce, None).await;
    eventually("stale counted", T, || async {
        (h.stats().stale == 1).then_some(())
    })
    .await;
    assert_eq!(h.stats().acks, 3);

    // Recovery.
    h.publish(3, vec![route("a", 1001, backend())]);
    let (c3, l3) = c.both("3").await;
    c.send(CLUSTER_TYPE_URL, "3", &c3, None).await;
    c.send(LISTENER_TYPE_URL, "3", &l3, None).await;
    eventually("v3 accepted", T, || async {
        (h.accepted_version() == Some(3)).then_some(())
    })
    .await;
    assert!(h.last_nack().is_none());
    let s = h.stats();
    assert_eq!((s.acks, s.nacks, s.pushes, s.publishes), (5, 1, 6, 3));
    assert_eq!(s.version_served, Some(3));

    drop(c);
    eventually("client gone", T, || async {
        (h.clients() == 0).then_some(())
    })
    .await;
    xds.stop().await;
}

#[tokio::test]
async fn every_client_gets_each_publish_and_late_ones_the_current_snapshot() {
    let xds = Xds::start(local()).await;
    let h = &xds.handle;
    h.publish(5, vec![route("a", 1001, backend())]);
    let mut first = Client::connect(xds.addr).await;
    first.send(CLUSTER_TYPE_URL, "", "", None).await;
    first.send(LISTENER_TYPE_URL, "", "", None).await;
    // Answered at once, each on its own type.
    assert_eq!(first.recv().await.type_url, CLUSTER_TYPE_URL);
    assert_eq!(first.recv().await.type_url, LISTENER_TYPE_URL);

    let mut second = Client::connect(xds.addr).await;
    // A reconnecting Envoy names the version it runs; it still gets the full state.
    second.send(CLUSTER_TYPE_URL, "4", "", None).await;
    let r = second.recv().await;
    assert_eq!(
        (r.type_url.as_str(), r.version_info.as_str()),
        (CLUSTER_TYPE_URL, "5")
    );
    second.send(LISTENER_TYPE_URL, "4", "", None).await;
    assert_eq!(second.recv().await.version_info, "5");

    h.publish(6, Vec::new());
    for c in [&mut first, &mut second] {
        c.both("6").await;
    }
    assert_eq!(h.clients(), 2);
    xds.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let xds = Xds::start(local()).await;
    xds.handle.publish(1, Vec::new());
    let mut c = Client::connect(xds.addr).await;
    c.send(CLUSTER_TYPE_URL, "", "", None).await;
    c.recv().await;
    let handle = xds.handle.clone();
    // Xds::stop fails the test if serve does not return within 10 s.
    xds.stop().await;
    let end = tokio::time::timeout(T, c.rx.message())
        .await
        .expect("stream ends");
    assert!(!matches!(end, Ok(Some(_))), "no more responses: {end:?}");
    assert_eq!(handle.clients(), 0);
}

#[tokio::test]
async fn delta_xds_is_refused_clearly() {
    let xds = Xds::start(local()).await;
    let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{}", xds.addr))
        .await
        .unwrap();
    let (_tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
    let e = c
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    xds.stop().await;
}
