//! ORCA reports on the wire (Envoy's test vectors and a grpc-go capture), the typed errors of
//! bad input, round trips (proptest), and what a server reports.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::{ProptestConfig, prop, prop_assert, prop_assert_eq, proptest};

use super::header::{bin_value, from_headers, header_value, parse, parse_bin, to_text};
use super::*;

/// Envoy's example report (`test/common/orca/orca_parser_test.cc`).
fn example() -> OrcaLoadReport {
    OrcaLoadReport {
        cpu_utilization: 0.7,
        application_utilization: 0.8,
        mem_utilization: 0.9,
        eps: 2.0,
        rps_fractional: 1000.0,
        named_metrics: HashMap::from([("foo".into(), 123.0), ("bar".into(), 0.2)]),
        utilization: HashMap::from([("total".into(), 0.5)]),
        ..OrcaLoadReport::default()
    }
}

fn err(value: &str) -> ReportError {
    parse(value.as_bytes()).expect_err(value)
}

#[test]
fn the_three_forms_of_envoys_header_parse() {
    let text = "TEXT cpu_utilization=0.7,application_utilization=0.8,mem_utilization=0.9,rps_fractional=1000,eps=2,named_metrics.foo=123,named_metrics.bar=0.2,utilization.total=0.5";
    assert_eq!(parse(text.as_bytes()), Ok(example()));
    // `:` separates as well as `=`; spaces around entries are fine.
    let colon = "TEXT cpu_utilization:0.7, application_utilization:0.8, mem_utilization:0.9, rps_fractional:1000, eps:2, named_metrics.foo:123, named_metrics.bar:0.2, utilization.total:0.5";
    assert_eq!(parse(colon.as_bytes()), Ok(example()));
    let json = r#"JSON {"cpu_utilization": 0.7, "application_utilization": 0.8, "mem_utilization": 0.9, "rps_fractional": 1000, "eps": 2, "named_metrics": {"foo": 123, "bar": 0.2}, "utilization": {"total": 0.5}}"#;
    assert_eq!(parse(json.as_bytes()), Ok(example()));
    // proto3 JSON: the lowerCamelCase names, numbers as strings.
    let camel = r#"JSON {"cpuUtilization": "0.7", "applicationUtilization": 0.8, "memUtilization": 0.9, "rpsFractional": "1000", "eps": 2, "namedMetrics": {"foo": "123", "bar": 0.2}, "utilization": {"total": 0.5}}"#;
    assert_eq!(parse(camel.as_bytes()), Ok(example()));
    let bin = bin_value(&example());
    let padded = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        prost::Message::encode_to_vec(&example()),
    );
    assert!(padded.ends_with('='), "the example's base64 has padding");
    for b64 in [bin.to_str().expect("ascii").to_owned(), padded] {
        assert_eq!(parse(format!("BIN {b64}").as_bytes()), Ok(example()));
        assert_eq!(parse_bin(b64.as_bytes()), Ok(example()));
    }
    assert_eq!(parse(b"TEXT "), Ok(OrcaLoadReport::default()));
    assert_eq!(parse(b"TEXT"), Ok(OrcaLoadReport::default()));
}

#[test]
fn a_grpc_go_trailer_decodes_with_the_protos_field_numbers() {
    // Captured from a grpc-go backend (Envoy's LegacyBinaryHeaderFromGrpcGo): unpadded base64.
    let want = OrcaLoadReport {
        cpu_utilization: 0.5,
        rps_fractional: 100.0,
        eps: 2.0,
        named_metrics: HashMap::from([("rif".into(), 4.0)]),
        ..OrcaLoadReport::default()
    };
    for v in [
        "CQAAAAAAAOA/MQAAAAAAAFlAOQAAAAAAAABAQg4KA3JpZhEAAAAAAAAQQA",
        "CQAAAAAAAOA/MQAAAAAAAFlAOQAAAAAAAABAQg4KA3JpZhEAAAAAAAAQQA==",
    ] {
        assert_eq!(parse_bin(v.as_bytes()), Ok(want.clone()));
    }
    let load = crate::balance::ReportedLoad::from(&want);
    assert_eq!(
        (load.qps, load.eps, load.cpu_utilization),
        (100.0, 2.0, 0.5)
    );
}

#[test]
fn the_bin_trailer_is_read_before_the_text_header() {
    let mut headers = http::HeaderMap::new();
    assert!(from_headers(&headers).is_none());
    headers.insert(header::HEADER, http::HeaderValue::from_static("TEXT eps=1"));
    assert_eq!(
        from_headers(&headers).and_then(Result::ok).map(|r| r.eps),
        Some(1.0)
    );
    headers.insert(header::BIN_HEADER, bin_value(&example()));
    assert_eq!(from_headers(&headers), Some(Ok(example())));
}

#[test]
fn bad_input_is_a_typed_error_naming_what_is_wrong() {
    assert_eq!(
        err("BAD random-value"),
        ReportError::Format {
            prefix: "BAD".into()
        }
    );
    assert_eq!(
        err("BADBAD random-value"),
        ReportError::Format {
            prefix: "BADBA".into()
        }
    );
    assert_eq!(
        err(""),
        ReportError::Format {
            prefix: String::new()
        }
    );
    assert_eq!(parse(&[0xff, 0xfe]), Err(ReportError::NotText));
    let text = |value: &str, reason: &str| match err(value) {
        ReportError::Text { reason: r, .. } => assert!(r.contains(reason), "{value}: {r}"),
        other => panic!("{value}: {other}"),
    };
    text("TEXT cpu_utilization=0.7,cpu_utilization=0.8", "twice");
    text(
        "TEXT cpu_utilization=0.7,unsupported_metric=0.8",
        "unknown metric",
    );
    text("TEXT named_metrics.=123", "name is empty");
    text("TEXT utilization.=0.9", "name is empty");
    text("TEXT not-a-list-of-key-value-pairs", "expected name=value");
    text("TEXT cpu_utilization=", "value is empty");
    text("TEXT =1", "name is empty");
    text("TEXT cpu_utilization=\"0.7\"", "not a number");
    let value = |v: &str, field: &str| match err(v) {
        ReportError::Value { field: f, .. } => assert_eq!(f, field, "{v}"),
        other => panic!("{v}: {other}"),
    };
    value("TEXT cpu_utilization=NaN", "cpu_utilization");
    value("TEXT cpu_utilization=inf", "cpu_utilization");
    value("TEXT eps=-1", "eps");
    value("TEXT utilization.disk=-0.5", "utilization.disk");
    value("TEXT named_metrics.q=infinity", "named_metrics.q");
    value(
        r#"JSON {"cpu_utilization": "-Infinity"}"#,
        "cpu_utilization",
    );
    // Named metrics may be negative.
    assert!(parse(b"TEXT named_metrics.delta=-3").is_ok());
    for json in [
        r#"JSON {"cpu_utilization": 0.7, "unknown_field": 2}"#,
        r#"JSON {"cpu_utilization": "0x7"}"#,
        r#"JSON {"cpu_utilization": true}"#,
        r#"JSON {"rps": -1}"#,
        r#"JSON {"named_metrics": {"a": 1, "a": 2}}"#,
        "JSON not-a-valid-json-string",
    ] {
        assert!(matches!(err(json), ReportError::Json(_)), "{json}");
    }
    assert!(matches!(err("BIN !!!"), ReportError::Base64(_)));
    // An empty message is a report of nothing (what an unset gRPC report encodes to).
    assert_eq!(parse(b"BIN "), Ok(OrcaLoadReport::default()));
    // A truncated message: base64 of half the bytes.
    let bytes = prost::Message::encode_to_vec(&example());
    let half = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &bytes[..bytes.len() / 2],
    );
    assert!(matches!(
        parse_bin(half.as_bytes()),
        Err(ReportError::Proto(_))
    ));
    // Every error says what it is about.
    assert!(
        err("BAD x")
            .to_string()
            .contains("expected a value starting with `TEXT `")
    );
}

#[test]
fn reports_are_written_as_text_when_their_names_allow_it() {
    let text = to_text(&example()).expect("plain names");
    assert!(
        text.starts_with("TEXT cpu_utilization=0.7,mem_utilization=0.9,"),
        "{text}"
    );
    assert_eq!(parse(header_value(&example()).as_bytes()), Ok(example()));
    let mut odd = example();
    odd.named_metrics.insert("a,b=c".into(), 1.0);
    assert_eq!(to_text(&odd), None);
    let value = header_value(&odd);
    assert!(value.as_bytes().starts_with(b"BIN "));
    assert_eq!(parse(value.as_bytes()), Ok(odd));
}

#[tokio::test(start_paused = true)]
async fn a_server_reports_what_it_was_told_and_the_rates_it_counted() {
    let metrics = ServerMetrics::new();
    metrics.set_application_utilization(0.4);
    metrics.set_named_metric("queue", 7.0);
    metrics.set_utilization("disk", 0.25);
    metrics.set_cpu_utilization(0.3);
    // 20 requests a second for 3 seconds, one error in each second.
    for _ in 0..3 {
        for i in 0..20 {
            metrics.request_finished(i == 0);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let r = metrics.report();
    assert_eq!((r.rps_fractional, r.eps), (20.0, 1.0));
    assert_eq!((r.cpu_utilization, r.application_utilization), (0.3, 0.4));
    assert_eq!(r.named_metrics["queue"], 7.0);
    assert_eq!(r.utilization["disk"], 0.25);
    // The window is the last 10 whole seconds: at second 11, seconds 1 and 2 are in it.
    tokio::time::advance(Duration::from_secs(8)).await;
    assert!((metrics.report().rps_fractional - 4.0).abs() < 1e-9);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(metrics.report().rps_fractional, 0.0);
    // Set rates win; values a report may not carry are left out.
    metrics.set_qps(55.0);
    metrics.set_application_utilization(f64::NAN);
    metrics.set_memory_utilization(-1.0);
    metrics.set_named_metric("bad", f64::INFINITY);
    metrics.remove_named_metric("queue");
    let r = metrics.report();
    assert_eq!(r.rps_fractional, 55.0);
    assert_eq!((r.application_utilization, r.mem_utilization), (0.0, 0.0));
    assert!(r.named_metrics.is_empty());
    assert_eq!(check(&r), Ok(()));
}

#[test]
fn a_calls_metrics_win_over_the_processes() {
    let server = ServerMetrics::new();
    server.set_named_metric("queue", 7.0);
    server.set_application_utilization(0.4);
    let call = CallMetrics::default();
    call.named_metric("queue", 9.0);
    call.request_cost("bytes", 512.0);
    call.utilization("gpu", 0.5);
    call.application_utilization(0.6);
    let r = call.report(&server);
    assert_eq!(r.named_metrics["queue"], 9.0);
    assert_eq!(r.request_cost["bytes"], 512.0);
    assert_eq!(r.utilization["gpu"], 0.5);
    assert_eq!(r.application_utilization, 0.6);
}

#[test]
fn cpu_time_is_read_from_a_proc_stat_line() {
    // The command may hold spaces and parentheses; utime 250 and stime 50 ticks are 3 s.
    let line = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 8 0 100 1000000 200 18446744073709551615";
    assert_eq!(cpu::parse_stat(line), Some(Duration::from_secs(3)));
    assert_eq!(cpu::parse_stat("4242 (x) S 1"), None);
    assert_eq!(cpu::parse_stat(""), None);
    #[cfg(target_os = "linux")]
    assert!(
        cpu::process_cpu_time().is_some(),
        "/proc/self/stat is readable here"
    );
}

fn finite() -> impl proptest::strategy::Strategy<Value = f64> {
    prop::num::f64::POSITIVE | prop::num::f64::ZERO
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_header_value_panics(bytes in prop::collection::vec(prop::num::u8::ANY, 0..200)) {
        let _ = parse(&bytes);
        let _ = parse_bin(&bytes);
        for prefix in ["TEXT ", "JSON ", "BIN "] {
            let mut v = prefix.as_bytes().to_vec();
            v.extend_from_slice(&bytes);
            let _ = parse(&v);
        }
    }

    #[test]
    fn written_reports_read_back_the_same(
        cpu in finite(), app in finite(), rps in finite(), eps in finite(),
        named in prop::collection::hash_map("[a-z_.]{1,12}", prop::num::f64::NORMAL, 0..5),
        odd in prop::collection::hash_map(".{1,8}", finite(), 0..3),
    ) {
        let report = OrcaLoadReport {
            cpu_utilization: cpu,
            application_utilization: app,
            rps_fractional: rps,
            eps,
            named_metrics: named,
            request_cost: odd,
            ..OrcaLoadReport::default()
        };
        prop_assert_eq!(parse(header_value(&report).as_bytes()), Ok(report.clone()));
        prop_assert_eq!(parse_bin(bin_value(&report).as_bytes()), Ok(report.clone()));
        let json = format!("JSON {{\"cpu_utilization\": {cpu:?}, \"eps\": \"{eps}\"}}");
        let back = parse(json.as_bytes());
        prop_assert!(back.as_ref().is_ok_and(|r| r.cpu_utilization == cpu && r.eps == eps), "{json}: {back:?}");
    }
}

#[cfg(feature = "tower")]
mod layers {
    use std::sync::Arc;

    use tower::{Layer, Service, ServiceExt};

    use super::*;
    use crate::balance::{LoadReports, OrcaConfig};

    /// A response body: one data frame, then `trailers` if any.
    struct Answer {
        data: Option<&'static str>,
        trailers: Option<http::HeaderMap>,
    }

    impl http_body::Body for Answer {
        type Data = std::io::Cursor<&'static [u8]>;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            let frame = match self.data.take() {
                Some(d) => Some(http_body::Frame::data(std::io::Cursor::new(d.as_bytes()))),
                None => self.trailers.take().map(http_body::Frame::trailers),
            };
            std::task::Poll::Ready(frame.map(Ok))
        }
    }

    /// Every frame of `body`, trailers last.
    async fn frames<B: http_body::Body + Unpin>(mut body: B) -> (usize, Option<http::HeaderMap>) {
        let mut data = 0;
        let mut trailers = None;
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            match frame.ok().map(|f| f.into_trailers()) {
                Some(Ok(t)) => trailers = Some(t),
                Some(Err(_)) => data += 1,
                None => {}
            }
        }
        (data, trailers)
    }

    fn status_service(
        status: u16,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<Answer>,
        Error = std::convert::Infallible,
        Future = std::future::Ready<Result<http::Response<Answer>, std::convert::Infallible>>,
    > + Clone {
        tower::service_fn(move |req: http::Request<()>| {
            let grpc = req
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "application/grpc");
            let mut response = http::Response::new(Answer {
                data: Some("hello"),
                trailers: grpc.then(|| {
                    let mut t = http::HeaderMap::new();
                    let code = if status == 200 { "0" } else { "13" };
                    t.insert("grpc-status", http::HeaderValue::from_static(code));
                    t
                }),
            });
            *response.status_mut() = http::StatusCode::from_u16(status).expect("status");
            if grpc {
                *response.status_mut() = http::StatusCode::OK;
                response.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/grpc"),
                );
            }
            std::future::ready(Ok(response))
        })
    }

    fn request(grpc: bool) -> http::Request<()> {
        let mut req = http::Request::new(());
        if grpc {
            req.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/grpc"),
            );
        }
        req
    }

    #[tokio::test(start_paused = true)]
    async fn http_answers_get_a_header_and_5xx_count_as_errors() {
        let metrics = Arc::new(ServerMetrics::new());
        metrics.set_cpu_utilization(0.5);
        let layer = ReportLayer::new(metrics.clone());
        let mut ok = layer.layer(status_service(200));
        let mut failing = layer.layer(status_service(503));
        for _ in 0..10 {
            ok.ready()
                .await
                .expect("ready")
                .call(request(false))
                .await
                .expect("answer");
        }
        for _ in 0..5 {
            failing
                .ready()
                .await
                .expect("ready")
                .call(request(false))
                .await
                .expect("answer");
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let response = ok
            .ready()
            .await
            .expect("ready")
            .call(request(false))
            .await
            .expect("answer");
        let report = header::from_headers(response.headers())
            .expect("a header")
            .expect("parses");
        assert_eq!((report.rps_fractional, report.eps), (15.0, 5.0));
        assert_eq!(report.cpu_utilization, 0.5);
        assert_eq!(
            frames(response.into_body()).await,
            (1, None),
            "the body is untouched"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_answers_get_the_report_in_their_trailers_and_feed_it() {
        let metrics = Arc::new(ServerMetrics::new());
        metrics.set_application_utilization(0.25);
        metrics.set_qps(50.0);
        let mut server = ReportLayer::new(metrics.clone()).layer(status_service(200));
        let reports = Arc::new(LoadReports::new(OrcaConfig {
            blackout_period: Duration::ZERO,
            ..OrcaConfig::default()
        }));
        // The client side reads the trailers as its body ends.
        let mut client = FeedLayer::new(reports.reporter("a")).layer(tower::service_fn(
            move |req: http::Request<()>| server.call(req),
        ));
        let response = client
            .ready()
            .await
            .expect("ready")
            .call(request(true))
            .await
            .expect("answer");
        assert!(!response.headers().contains_key(header::BIN_HEADER));
        assert_eq!(reports.weight("a"), None, "not before the trailers");
        let (data, trailers) = frames(response.into_body()).await;
        assert_eq!(data, 1);
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert!(trailers.contains_key(header::BIN_HEADER));
        assert_eq!(reports.weight("a"), Some(200.0), "50 qps at 0.25");
        // A failed call counts in eps.
        let mut failing = ReportLayer::new(metrics.clone()).layer(status_service(500));
        let response = failing
            .ready()
            .await
            .expect("ready")
            .call(request(true))
            .await
            .expect("answer");
        let _ = frames(response.into_body()).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(metrics.report().eps, 1.0);
    }
}
