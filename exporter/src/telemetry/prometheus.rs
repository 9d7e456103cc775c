//! The metrics in Prometheus text format (0.0.4), from the same readers as the OTLP export.
//! Names and labels follow the OpenTelemetry-to-Prometheus translation the collector's
//! `prometheus` exporter applies (unit and `_total` suffixes, `.` → `_`), with every resource
//! attribute but `telemetry.sdk.*` as a label, so one dashboard works on either path.

use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use std::collections::BTreeMap;
use std::fmt::Write;

/// One metric family: its samples from every resource, under one `# HELP` and `# TYPE`.
#[derive(Default)]
struct Family {
    help: String,
    kind: &'static str,
    lines: Vec<String>,
}

/// Every resource's metrics as one exposition.
pub fn render(all: &[ResourceMetrics]) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for rm in all {
        let resource: Vec<(String, String)> = rm
            .resource()
            .iter()
            .filter(|(k, _)| !k.as_str().starts_with("telemetry.sdk."))
            .map(|(k, v)| (label_name(k.as_str()), v.to_string()))
            .collect();
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                add(&mut families, &resource, m);
            }
        }
    }
    let mut out = String::new();
    for (name, f) in families {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.help));
        let _ = writeln!(out, "# TYPE {name} {}", f.kind);
        for l in f.lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

fn add(families: &mut BTreeMap<String, Family>, resource: &[(String, String)], m: &Metric) {
    match m.data() {
        AggregatedMetrics::F64(d) => add_data(families, resource, m, d, |v| v),
        AggregatedMetrics::U64(d) => add_data(families, resource, m, d, |v| v as f64),
        AggregatedMetrics::I64(d) => add_data(families, resource, m, d, |v| v as f64),
    }
}

fn add_data<T: Copy>(
    families: &mut BTreeMap<String, Family>,
    resource: &[(String, String)],
    m: &Metric,
    data: &MetricData<T>,
    f: impl Fn(T) -> f64,
) {
    let labels = |attrs: &mut dyn Iterator<Item = &KeyValue>, extra: Option<(&str, String)>| {
        let mut l: Vec<(String, String)> = resource.to_vec();
        for kv in attrs {
            l.push((label_name(kv.key.as_str()), value_text(&kv.value)));
        }
        if let Some((k, v)) = extra {
            l.push((k.to_string(), v));
        }
        format_labels(&l)
    };
    match data {
        MetricData::Sum(s) if s.is_monotonic() => {
            let name = format!("{}_total", base_name(m.name(), m.unit(), false));
            let fam = family(families, &name, m, "counter");
            for p in s.data_points() {
                let l = labels(&mut p.attributes(), None);
                fam.lines
                    .push(format!("{name}{l} {}", number(f(p.value()))));
            }
        }
        MetricData::Sum(s) => {
            let name = base_name(m.name(), m.unit(), true);
            let fam = family(families, &name, m, "gauge");
            for p in s.data_points() {
                let l = labels(&mut p.attributes(), None);
                fam.lines
                    .push(format!("{name}{l} {}", number(f(p.value()))));
            }
        }
        MetricData::Gauge(g) => {
            let name = base_name(m.name(), m.unit(), true);
            let fam = family(families, &name, m, "gauge");
            for p in g.data_points() {
                let l = labels(&mut p.attributes(), None);
                fam.lines
                    .push(format!("{name}{l} {}", number(f(p.value()))));
            }
        }
        MetricData::Histogram(h) => {
            let name = base_name(m.name(), m.unit(), false);
            let fam = family(families, &name, m, "histogram");
            for p in h.data_points() {
                let mut cumulative = 0u64;
                for (bound, count) in p.bounds().zip(p.bucket_counts()) {
                    cumulative += count;
                    let l = labels(&mut p.attributes(), Some(("le", number(bound))));
                    fam.lines.push(format!("{name}_bucket{l} {cumulative}"));
                }
                let l = labels(&mut p.attributes(), Some(("le", "+Inf".into())));
                fam.lines.push(format!("{name}_bucket{l} {}", p.count()));
                let l = labels(&mut p.attributes(), None);
                fam.lines
                    .push(format!("{name}_sum{l} {}", number(f(p.sum()))));
                fam.lines.push(format!("{name}_count{l} {}", p.count()));
            }
        }
        // sightline records none; the collector would drop them too.
        MetricData::ExponentialHistogram(_) => {}
    }
}

fn family<'a>(
    families: &'a mut BTreeMap<String, Family>,
    name: &str,
    m: &Metric,
    kind: &'static str,
) -> &'a mut Family {
    families.entry(name.to_string()).or_insert_with(|| Family {
        help: m.description().to_string(),
        kind,
        lines: Vec::new(),
    })
}

/// The metric's name with its unit's suffix (`s` → `_seconds`, `By` → `_bytes`; annotations
/// such as `{connection}` add none), unless the name already ends with it.
fn base_name(name: &str, unit: &str, gauge: bool) -> String {
    let mut n = label_name(name);
    let suffix = match unit {
        "s" => Some("seconds"),
        "ms" => Some("milliseconds"),
        "By" => Some("bytes"),
        "1" if gauge => Some("ratio"),
        _ => None,
    };
    if let Some(s) = suffix {
        if !n.ends_with(&format!("_{s}")) && n != s {
            n.push('_');
            n.push_str(s);
        }
    }
    n
}

/// A Prometheus name: letters, digits and `_`, not starting with a digit.
fn label_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn value_text(v: &Value) -> String {
    v.as_str().into_owned()
}

fn format_labels(l: &[(String, String)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_value(v)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_collectors_translation() {
        assert_eq!(
            base_name("http.server.request.duration", "s", false),
            "http_server_request_duration_seconds"
        );
        assert_eq!(
            base_name("sightline.tcp.bytes", "By", false),
            "sightline_tcp_bytes"
        );
        assert_eq!(
            base_name("sightline.tcp.connections", "{connection}", false),
            "sightline_tcp_connections"
        );
        assert_eq!(
            base_name("sightline.table.fill", "", true),
            "sightline_table_fill"
        );
        assert_eq!(label_name("k8s.pod.name"), "k8s_pod_name");
        assert_eq!(label_name("0day"), "_0day");
        assert_eq!(escape_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
