use super::*;

#[test]
fn each_name_is_one_percent_encoded_segment() {
    let client = Client::new(&AgentConfig::new("127.0.0.1:9901")).expect("client");
    let url = client
        .url("svc?a=1#frag %", Some("ünï/x"), Some("keepalive"))
        .expect_err("a slash in an id is refused");
    assert!(url.to_string().contains("instance id"), "{url}");
    let url = client
        .url("svc?a=1#frag %", Some("a b;c"), Some("keepalive"))
        .expect("url");
    assert_eq!(
        url.as_str(),
        "http://127.0.0.1:9901/v1/services/svc%3Fa=1%23frag%20%25/instances/a%20b;c/keepalive"
    );
    let prefixed = Client::new(&AgentConfig::new("http://h:1/chi/")).expect("client");
    assert_eq!(
        prefixed.services_url().as_str(),
        "http://h:1/chi/v1/services"
    );
}

#[tokio::test]
async fn an_agent_nobody_runs_is_unavailable_naming_its_address() {
    let port = chi_test_support::free_port();
    let agent = Agent::new(AgentConfig::new(format!("127.0.0.1:{port}"))).expect("agent");
    let e = agent.instances("web").await.expect_err("nobody listens");
    assert!(
        matches!(&e, crate::Error::Unavailable { backend, .. } if backend == "chi"),
        "{e}"
    );
    assert!(
        e.to_string().contains(&format!("http://127.0.0.1:{port}")),
        "{e}"
    );
    assert!(agent.watch("web").await.is_err(), "a watch fails at once");
}
