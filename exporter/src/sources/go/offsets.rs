//! The symbolizer's answers as the Go probes' offsets table, one per traced process.

use sightline_common::{go_window, GoOffsets, GO_NO_OFFSET, GO_REQ_WINDOW, GO_URL_WINDOW};
use sightline_symbolizer::go::GoInfo;

/// The symbolizer's answers as the probes' offsets table. The goroutine id and the request's
/// method and URL are required: without them no call can be told apart or named. Any other
/// unknown field is simply not read.
pub fn go_offsets(go: &GoInfo) -> Result<GoOffsets, String> {
    let get = |ty: &str, f: &str| {
        go.field(ty, f)
            .and_then(|x| x.offset)
            .and_then(|o| u32::try_from(o).ok())
            .unwrap_or(GO_NO_OFFSET)
    };
    let mut o = GoOffsets {
        g_goid: get("runtime.g", "goid"),
        req_method: get("net/http.Request", "Method"),
        req_url: get("net/http.Request", "URL"),
        req_proto_major: get("net/http.Request", "ProtoMajor"),
        req_proto_minor: get("net/http.Request", "ProtoMinor"),
        req_header: get("net/http.Request", "Header"),
        req_host: get("net/http.Request", "Host"),
        req_remote_addr: get("net/http.Request", "RemoteAddr"),
        req_tls: get("net/http.Request", "TLS"),
        req_pattern: get("net/http.Request", "Pattern"),
        url_scheme: get("net/url.URL", "Scheme"),
        url_host: get("net/url.URL", "Host"),
        url_path: get("net/url.URL", "Path"),
        url_raw_query: get("net/url.URL", "RawQuery"),
        resp_status_code: get("net/http.Response", "StatusCode"),
        response_conn: get("net/http.response", "conn"),
        response_status: get("net/http.response", "status"),
        conn_rwc: get("net/http.conn", "rwc"),
        tls_conn_conn: get("crypto/tls.Conn", "conn"),
        net_conn_fd: get("net.conn", "fd"),
        netfd_pfd: get("net.netFD", "pfd"),
        fd_sysfd: get("internal/poll.FD", "Sysfd"),
        hmap_count: get("runtime.hmap", "count"),
        hmap_b: get("runtime.hmap", "B"),
        hmap_buckets: get("runtime.hmap", "buckets"),
        pconn_conn: get("net/http.persistConn", "conn"),
        pconn_tls_state: get("net/http.persistConn", "tlsState"),
        h2rw_rws: get("net/http.http2responseWriter", "rws"),
        h2rws_status: get("net/http.http2responseWriterState", "status"),
        h2cc_tconn: get("net/http.http2ClientConn", "tconn"),
        xh2rw_rws: get("golang.org/x/net/http2.responseWriter", "rws"),
        xh2rws_status: get("golang.org/x/net/http2.responseWriterState", "status"),
        g_parent_goid: get("runtime.g", "parentGoid"),
        pconn_bw: get("net/http.persistConn", "bw"),
        h2cc_bw: get("net/http.http2ClientConn", "bw"),
        bufio_buf: get("bufio.Writer", "buf"),
        bufio_n: get("bufio.Writer", "n"),
        req_window: 0,
        url_window: 0,
    };
    let (word, string) = (8, 16);
    o.req_window = go_window(
        &[
            (o.req_method, string),
            (o.req_url, word),
            (o.req_proto_major, word),
            (o.req_proto_minor, word),
            (o.req_header, word),
            (o.req_host, string),
            (o.req_remote_addr, string),
            (o.req_tls, word),
            (o.req_pattern, string),
        ],
        GO_REQ_WINDOW - 8,
    );
    o.url_window = go_window(
        &[
            (o.url_scheme, string),
            (o.url_host, string),
            (o.url_path, string),
            (o.url_raw_query, string),
        ],
        GO_URL_WINDOW - 8,
    );
    for (ty, f, v) in [
        ("runtime.g", "goid", o.g_goid),
        ("net/http.Request", "Method", o.req_method),
        ("net/http.Request", "URL", o.req_url),
        ("net/url.URL", "Path", o.url_path),
    ] {
        if v == GO_NO_OFFSET {
            let why = go
                .field(ty, f)
                .map_or("not reported".to_string(), |x| x.detail.clone());
            return Err(format!("offset of {ty}.{f} unknown ({why})"));
        }
    }
    Ok(o)
}
