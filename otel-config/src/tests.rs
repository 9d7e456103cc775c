use super::*;

fn vars(list: &[(&str, &str)]) -> BTreeMap<String, String> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(yaml: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_parts(Path::new("sightline.yaml"), yaml, &vars(env))
}

#[test]
fn nothing_set_means_no_export_and_safe_defaults() {
    let c = load(None, &[]).unwrap();
    assert_eq!(c.traces, None);
    assert_eq!(c.metrics, None);
    assert_eq!(c.capture_bytes, 4096);
    assert_eq!(
        c.redaction.headers,
        vec!["authorization", "cookie", "set-cookie"]
    );
    assert!(c.redaction.query_values);
    assert_eq!(c.batch.max_queue_size, 2048);
    assert_eq!(c.metric_export_interval, Duration::from_secs(60));
    assert!(c.write_process_memory);
}

#[test]
fn the_prometheus_endpoint_takes_a_port_or_an_address() {
    assert_eq!(load(None, &[]).unwrap().prometheus, None);
    let c = load(Some("prometheus: \":9464\"\n"), &[]).unwrap();
    assert_eq!(c.prometheus, Some("0.0.0.0:9464".parse().unwrap()));
    let c = load(Some("prometheus: 127.0.0.1:9500\n"), &[]).unwrap();
    assert_eq!(c.prometheus, Some("127.0.0.1:9500".parse().unwrap()));
    let e = load(Some("prometheus: nine\n"), &[]).unwrap_err();
    assert!(e.to_string().starts_with("sightline.yaml:1:"), "{e}");
    assert!(e.to_string().contains(":9464"), "{e}");
}

#[test]
fn network_signals_are_on_unless_turned_off() {
    assert!(load(None, &[]).unwrap().network_signals);
    let c = load(Some("capture:\n  network: false\n"), &[]).unwrap();
    assert!(!c.network_signals);
    let e = load(Some("capture:\n  network: nope\n"), &[]).unwrap_err();
    assert!(e.to_string().starts_with("sightline.yaml:2:"), "{e}");
}

#[test]
fn writing_into_process_memory_can_be_turned_off() {
    let c = load(Some("propagation:\n  process_memory: false\n"), &[]).unwrap();
    assert!(!c.write_process_memory);
    assert!(c.inject_at_socket);
    let c = load(Some("propagation:\n  socket: false\n"), &[]).unwrap();
    assert!(!c.inject_at_socket);
    assert!(c.write_process_memory);
    let e = load(Some("propagation:\n  memory: false\n"), &[]).unwrap_err();
    assert!(e.to_string().starts_with("sightline.yaml:2:3"), "{e}");
}

#[test]
fn general_http_endpoint_gets_signal_paths() {
    let c = load(
        None,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.traces.unwrap().endpoint,
        "http://collector:4318/v1/traces"
    );
    assert_eq!(
        c.metrics.unwrap().endpoint,
        "http://collector:4318/v1/metrics"
    );
}

#[test]
fn per_signal_variables_win_and_are_used_verbatim() {
    let c = load(
        Some("otlp:\n  endpoint: http://file:4317\n  protocol: grpc\n"),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/custom"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=x%20y"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "a=2"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip"),
        ],
    )
    .unwrap();
    let t = c.traces.unwrap();
    assert_eq!(t.endpoint, "http://t:9/custom");
    assert_eq!(t.protocol, Protocol::HttpProtobuf);
    assert_eq!(t.timeout, Duration::from_millis(2500));
    assert_eq!(t.compression, Compression::None);
    let m = c.metrics.unwrap();
    assert_eq!(m.endpoint, "http://general:4317");
    assert_eq!(m.protocol, Protocol::Grpc);
    assert_eq!(
        m.headers,
        vec![("b".into(), "x y".into()), ("a".into(), "2".into())]
    );
    assert_eq!(m.compression, Compression::Gzip);
}

#[test]
fn unknown_key_reports_line_and_column() {
    let err = load(Some("capture:\n  max_bytes: 512\n  maxbytes: 3\n"), &[]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("sightline.yaml:3:3: "), "{msg}");
    assert!(msg.contains("unknown field `maxbytes`"), "{msg}");
}

#[test]
fn bad_value_reports_position_and_advice() {
    let err = load(Some("capture:\n  max_bytes: 99999\n"), &[]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("sightline.yaml:2:"), "{msg}");
    assert!(msg.contains("between 64 and 8192"), "{msg}");

    let err = load(Some("output: fancy\n"), &[]).unwrap_err();
    assert!(err.to_string().starts_with("sightline.yaml:1:9: "), "{err}");
}

#[test]
fn bad_environment_names_the_variable() {
    let err = load(None, &[("OTEL_BSP_MAX_QUEUE_SIZE", "lots")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "OTEL_BSP_MAX_QUEUE_SIZE=\"lots\": expected a whole number"
    );
    let err = load(
        None,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:1"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
    )
    .unwrap_err();
    assert!(err.to_string().contains("http/json is not supported"));
    let err = load(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]).unwrap_err();
    assert!(err.to_string().contains("must start with http://"));
}

#[test]
fn environment_overrides_file_and_merges_resource_attributes() {
    let c = load(
        Some(
            "batch:\n  max_queue_size: 100\n  max_export_batch_size: 10\nresource:\n  attributes:\n    env: file\n    team: a\nsdk_disabled: true\n",
        ),
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "50"),
            ("OTEL_RESOURCE_ATTRIBUTES", "env=prod,region=eu"),
            ("OTEL_SDK_DISABLED", "false"),
        ],
    )
    .unwrap();
    assert_eq!(c.batch.max_queue_size, 50);
    assert_eq!(c.batch.max_export_batch_size, 10);
    assert!(!c.sdk_disabled);
    assert_eq!(
        c.resource_attributes,
        vec![
            ("team".into(), "a".into()),
            ("env".into(), "prod".into()),
            ("region".into(), "eu".into())
        ]
    );
}

#[test]
fn traces_exporter_none_disables_the_signal() {
    let c = load(
        None,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ],
    )
    .unwrap();
    assert!(c.traces.is_none());
    assert!(c.metrics.is_some());
}

#[test]
fn redaction_and_selection_from_file() {
    let c = load(
        Some("redaction:\n  headers: [X-Api-Key]\n  query_values: false\nselect:\n  executables: [nginx]\n  pids: [42]\n"),
        &[],
    )
    .unwrap();
    assert_eq!(
        c.redaction.headers,
        vec!["authorization", "cookie", "set-cookie", "x-api-key"]
    );
    assert!(!c.redaction.query_values);
    assert!(c.selection.matches(42, "python3"));
    assert!(c.selection.matches(7, "nginx"));
    assert!(!c.selection.matches(7, "curl"));
}

#[test]
fn client_key_without_certificate_is_refused() {
    let err = load(
        None,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://x:4317"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem"),
        ],
    )
    .unwrap_err();
    assert!(err.to_string().contains("go together"));
}

#[test]
fn unknown_otlp_key_is_an_error() {
    let err = load(Some("otlp:\n  endpont: http://x:4318\n"), &[]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("sightline.yaml:2:3: otlp: unknown field `endpont`"),
        "{err}"
    );
}

#[test]
fn the_annotated_example_file_is_valid() {
    let text = include_str!("../../examples/sightline.yaml");
    let c = load(Some(text), &[]).unwrap();
    assert!(c.write_process_memory);
    assert_eq!(c.redaction.headers.len(), 4);
}

#[test]
fn malformed_headers_never_show_their_value() {
    let e = load(
        None,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization Bearer s3cr3t-token",
            ),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{e}");
    assert!(!e.contains("s3cr3t"), "{e}");
    let e = load(
        None,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x=%ff%fe-s3cr3t"),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(!e.contains("s3cr3t"), "{e}");
}
