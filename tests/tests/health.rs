//! Health and reflection: a controller answers `grpc.health.v1.Health/Check`
//! as SERVING for the whole server ("") and for each Baton service, and lists
//! its services through gRPC server reflection, so that load balancers,
//! Kubernetes probes and `grpcurl` work without configuration.

use std::time::Duration;

use baton_tests::Sandbox;
use tokio_stream::StreamExt;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn channel(sandbox: &Sandbox) -> tonic::transport::Channel {
    Endpoint::from_shared(sandbox.addr())
        .unwrap()
        .timeout(TIMEOUT)
        .connect()
        .await
        .expect("connect to the controller")
}

#[tokio::test]
async fn health_check_answers_serving_for_the_server_and_each_service() {
    let mut sandbox = Sandbox::new("health");
    let _controller = sandbox.start_controller(&[]).await;
    let mut health = HealthClient::new(channel(&sandbox).await);

    for service in [
        "",
        "baton.v1.RunService",
        "baton.v1.DagService",
        "baton.v1.WorkerService",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap_or_else(|status| panic!("Check({service:?}) failed: {status}"))
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "Check({service:?})"
        );
    }

    let unknown = health
        .check(HealthCheckRequest {
            service: "baton.v1.NoSuchService".to_string(),
        })
        .await
        .expect_err("an unknown service is not reported healthy");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown}");
}

/// Lists the services the controller describes through reflection.
async fn reflected_services(sandbox: &Sandbox) -> Vec<String> {
    let mut reflection = ServerReflectionClient::new(channel(sandbox).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("ServerReflectionInfo")
        .into_inner();
    let response = tokio::time::timeout(TIMEOUT, responses.next())
        .await
        .expect("reflection answered in time")
        .expect("one response")
        .expect("a successful response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    list.service
        .into_iter()
        .map(|service| service.name)
        .collect()
}

#[tokio::test]
async fn reflection_lists_the_baton_services() {
    let mut sandbox = Sandbox::new("reflection");
    let _controller = sandbox.start_controller(&[]).await;
    let names = reflected_services(&sandbox).await;
    for expected in [
        "baton.v1.DagService",
        "baton.v1.RunService",
        "baton.v1.WorkerService",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} missing from {names:?}"
        );
    }
}

/// The README's probe, `grpcurl -plaintext 127.0.0.1:7070
/// grpc.health.v1.Health/Check`, learns the health service's schema through
/// reflection: it only works when reflection describes that service too.
#[tokio::test]
async fn reflection_describes_the_health_service() {
    let mut sandbox = Sandbox::new("reflection-health");
    let _controller = sandbox.start_controller(&[]).await;
    let names = reflected_services(&sandbox).await;
    assert!(
        names.iter().any(|name| name == "grpc.health.v1.Health"),
        "grpc.health.v1.Health missing from the reflected services {names:?}"
    );
}
