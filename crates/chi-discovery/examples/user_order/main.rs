//! The service-author story end to end: `user-service` in two versions and two regions, and an
//! `order-service` that calls it by name, routed by `X-Service-Version` and `X-Client-Region`.
//!
//! Run (embedded registry): `cargo run -p chi-discovery --features axum --example user_order`
//! Against a real registry: `... --example user_order -- --registry consul://127.0.0.1:8500`
//! (or `etcd://127.0.0.1:2379`, `nacos://127.0.0.1:8848`; the full feature set then:
//! `--features full`).
//!
//! The scenario lives in `scenario.rs`, which the integration tests run against every registry;
//! this prints who answered each request.

mod scenario;

#[tokio::main]
async fn main() -> scenario::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = match args.iter().position(|a| a == "--registry") {
        Some(i) => args.get(i + 1).cloned().ok_or("--registry needs a URL")?,
        None => "memory".to_owned(),
    };
    println!("registry: {url}");
    for answer in scenario::run(&url).await? {
        println!(
            "order-service -> user-service  version={:<4} region={:<13} answered by: {}  ({})",
            answer.version.unwrap_or("-"),
            answer.region.unwrap_or("-"),
            answer.answered_by.join(", "),
            answer.rules
        );
    }
    println!("every service deregistered and drained");
    Ok(())
}
