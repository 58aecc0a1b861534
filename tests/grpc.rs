//! gRPC end to end through cohort: a real tonic client and real tonic servers (one per
//! variant), unary and server-streaming calls, over h2c and over TLS on both hops. The
//! `grpc-status` trailer (and trailing metadata) must survive the proxy, for OK and
//! non-OK statuses alike. Protobuf types are written by hand with `prost::Message`, so
//! no protoc is needed.
mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::convert::Infallible;
use std::net::SocketAddr;

use http::uri::PathAndQuery;
use support::{key_in, Config, Route, TestCohort, UpstreamTls};
use tls_support::{server_config, Pki, TlsFront};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::codec::ProstCodec;
use tonic::codegen::{BoxFuture, BoxStream, Context, Poll, Service};
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request, Response, Status};

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Messages in a streamed answer.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// A non-zero gRPC status code to fail with (after the messages, when streaming).
    #[prost(int32, tag = "3")]
    pub fail_with: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub served_by: String,
    /// The `te` header the server saw, so the test can check `te: trailers` arrived.
    #[prost(string, tag = "3")]
    pub te: String,
}

const UNARY: &str = "/cohort.test.Echo/Unary";
const STREAM: &str = "/cohort.test.Echo/Stream";

/// The echo service, as tonic-build would generate it.
#[derive(Clone)]
struct Echo {
    name: &'static str,
}

impl NamedService for Echo {
    const NAME: &'static str = "cohort.test.Echo";
}

fn failure(req: &EchoRequest, name: &str) -> Status {
    let mut status = Status::new(Code::from(req.fail_with), format!("{name} says no"));
    status
        .metadata_mut()
        .insert("x-served-by", name.parse().expect("metadata"));
    status
}

struct UnaryCall(&'static str);

impl UnaryService<EchoRequest> for UnaryCall {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let name = self.0;
        Box::pin(async move {
            let te = te_of(&request);
            let req = request.into_inner();
            if req.fail_with != 0 {
                return Err(failure(&req, name));
            }
            Ok(Response::new(EchoReply {
                message: req.message,
                served_by: name.to_owned(),
                te,
            }))
        })
    }
}

fn te_of<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get("te")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

struct StreamCall(&'static str);

// tonic's `Status` is large; generated tonic code allows this lint too.
#[allow(clippy::result_large_err)]
impl ServerStreamingService<EchoRequest> for StreamCall {
    type Response = EchoReply;
    type ResponseStream = BoxStream<EchoReply>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let name = self.0;
        Box::pin(async move {
            let te = te_of(&request);
            let req = request.into_inner();
            let mut items: Vec<Result<EchoReply, Status>> = (0..req.count)
                .map(|i| {
                    Ok(EchoReply {
                        message: format!("{} #{i}", req.message),
                        served_by: name.to_owned(),
                        te: te.clone(),
                    })
                })
                .collect();
            if req.fail_with != 0 {
                items.push(Err(failure(&req, name)));
            }
            let stream: Self::ResponseStream = Box::pin(tokio_stream::iter(items));
            Ok(Response::new(stream))
        })
    }
}

impl Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let name = self.name;
        Box::pin(async move {
            let mut grpc = Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            Ok(match req.uri().path() {
                UNARY => grpc.unary(UnaryCall(name), req).await,
                STREAM => grpc.server_streaming(StreamCall(name), req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A tonic server speaking h2c on 127.0.0.1.
async fn start_server(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind grpc");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(Echo { name })
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("grpc server");
    });
    addr
}

struct Scenario {
    cohort: TestCohort,
    channel: Channel,
    _pki: Pki,
    _fronts: Vec<TlsFront>,
}

const SALT: &str = "grpc-salt";

/// cohort in front of two tonic servers (stable, canary), 50 % canary; the client and
/// upstream hops each over TLS or h2c.
async fn scenario(downstream_tls: bool, upstream_tls: bool) -> Scenario {
    let pki = Pki::new("grpc");
    let stable = start_server("stable").await;
    let canary = start_server("canary").await;
    let mut fronts = Vec::new();
    let (urls, protocol, tls) = if upstream_tls {
        let leaf = pki.server_leaf("upstream", &["localhost"]);
        let config = server_config(&leaf, &[b"h2"], None);
        for addr in [stable, canary] {
            fronts.push(TlsFront::start(addr, config.clone()).await);
        }
        (
            fronts
                .iter()
                .map(|f| f.https_url("localhost"))
                .collect::<Vec<_>>(),
            "h2",
            Some(UpstreamTls::new().ca(&pki.ca_path())),
        )
    } else {
        (
            vec![format!("http://{stable}"), format!("http://{canary}")],
            "h2c",
            None,
        )
    };
    let mut route = Route::new("grpc")
        .salt(SALT)
        .sticky(&["header:x-user-id"])
        .canary_percent(50)
        .stable_urls(&urls[..1])
        .stable_protocol(protocol)
        .canary_urls(&urls[1..])
        .canary_protocol(protocol);
    if let Some(tls) = tls {
        route = route.stable_tls(tls.clone()).canary_tls(tls);
    }
    let mut config = Config::new().route(route);
    if downstream_tls {
        let leaf = pki.server_leaf("edge", &["localhost"]);
        config = config.tls(&leaf.cert, &leaf.key);
    }
    let cohort = TestCohort::start(config).await;
    let channel = if downstream_tls {
        let ca = std::fs::read(pki.ca_path()).expect("ca");
        Channel::from_shared(format!("https://localhost:{}", cohort.proxy.port()))
            .expect("uri")
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .domain_name("localhost"),
            )
            .expect("tls config")
            .connect()
            .await
            .expect("connect over TLS")
    } else {
        Channel::from_shared(format!("http://{}", cohort.proxy))
            .expect("uri")
            .connect()
            .await
            .expect("connect over h2c")
    };
    Scenario {
        cohort,
        channel,
        _pki: pki,
        _fronts: fronts,
    }
}

fn request(message: &str, user: &str, count: u32, fail_with: Code) -> Request<EchoRequest> {
    let mut req = Request::new(EchoRequest {
        message: message.to_owned(),
        count,
        fail_with: fail_with as i32,
    });
    req.metadata_mut()
        .insert("x-user-id", user.parse().expect("metadata"));
    req
}

async fn run_calls(s: Scenario) {
    let mut client = tonic::client::Grpc::new(s.channel.clone());
    for variant in ["stable", "canary"] {
        let user = key_in(variant, SALT, 50.0, "grpc-user");

        // Unary, OK.
        client.ready().await.expect("ready");
        let resp: Response<EchoReply> = client
            .unary(
                request("hello", &user, 0, Code::Ok),
                PathAndQuery::from_static(UNARY),
                ProstCodec::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("unary call to {variant}: {e:?}"));
        assert_eq!(
            resp.metadata()
                .get("x-cohort-variant")
                .and_then(|v| v.to_str().ok()),
            Some(variant)
        );
        let reply = resp.into_inner();
        assert_eq!(reply.message, "hello");
        assert_eq!(reply.served_by, variant);
        assert_eq!(reply.te, "trailers", "te: trailers reaches the upstream");

        // Unary, failing: the status and its metadata come back intact.
        client.ready().await.expect("ready");
        let status = client
            .unary::<_, EchoReply, _>(
                request("x", &user, 0, Code::NotFound),
                PathAndQuery::from_static(UNARY),
                ProstCodec::default(),
            )
            .await
            .expect_err("a NOT_FOUND status");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(status.message(), format!("{variant} says no"));
        assert_eq!(
            status
                .metadata()
                .get("x-served-by")
                .and_then(|v| v.to_str().ok()),
            Some(variant)
        );

        // Server streaming, OK: every message, then the grpc-status trailer.
        client.ready().await.expect("ready");
        let resp = client
            .server_streaming::<_, EchoReply, _>(
                request("tick", &user, 5, Code::Ok),
                PathAndQuery::from_static(STREAM),
                ProstCodec::default(),
            )
            .await
            .expect("streaming call");
        let mut stream = resp.into_inner();
        let mut got = Vec::new();
        while let Some(msg) = stream.message().await.expect("stream message") {
            assert_eq!(msg.served_by, variant);
            got.push(msg.message);
        }
        assert_eq!(
            got,
            (0..5).map(|i| format!("tick #{i}")).collect::<Vec<_>>()
        );
        // `message()` returning None means the trailers said grpc-status 0; a stream cut
        // without trailers is an error in tonic.
        let trailers = stream.trailers().await.expect("trailers");
        assert!(trailers.is_some(), "the grpc-status trailer arrived");

        // Server streaming that fails after its messages: the status is in the trailers.
        client.ready().await.expect("ready");
        let resp = client
            .server_streaming::<_, EchoReply, _>(
                request("tock", &user, 3, Code::ResourceExhausted),
                PathAndQuery::from_static(STREAM),
                ProstCodec::default(),
            )
            .await
            .expect("streaming call");
        let mut stream = resp.into_inner();
        let mut n = 0;
        let status = loop {
            match stream.message().await {
                Ok(Some(_)) => n += 1,
                Ok(None) => panic!("the failing stream ended OK"),
                Err(status) => break status,
            }
        };
        assert_eq!(n, 3);
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(
            status
                .metadata()
                .get("x-served-by")
                .and_then(|v| v.to_str().ok()),
            Some(variant)
        );
    }
    // Every call counted once, with the HTTP status gRPC uses (200).
    for variant in ["stable", "canary"] {
        let labels = [("route", "grpc"), ("variant", variant), ("status", "200")];
        assert_eq!(
            s.cohort
                .series_eventually("cohort_requests_total", &labels, 4.0)
                .await,
            4.0
        );
    }
    s.cohort.shutdown().await;
}

#[tokio::test]
async fn grpc_over_h2c_on_both_hops() {
    run_calls(scenario(false, false).await).await;
}

#[tokio::test]
async fn grpc_over_tls_on_both_hops() {
    run_calls(scenario(true, true).await).await;
}

#[tokio::test]
async fn grpc_from_tls_clients_to_h2c_upstreams() {
    run_calls(scenario(true, false).await).await;
}

#[tokio::test]
async fn grpc_from_h2c_clients_to_tls_upstreams() {
    run_calls(scenario(false, true).await).await;
}
