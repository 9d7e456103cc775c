use super::*;
use crate::capture::sockets::{NoLookup, Sockets};
use crate::metadata::Processes;

fn rec(event: u32, sk: u64, tgid: u32, ports: (u16, u16), figures: (u64, u64, u32)) -> TcpRecord {
    TcpRecord {
        kind: kind::TCP,
        event,
        tgid,
        family: libc::AF_INET as u16,
        lport: ports.0,
        rport: ports.1,
        sk,
        ts_ns: 5_000,
        start_ns: 1_000,
        laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        raddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        bytes_acked: figures.0,
        bytes_received: figures.1,
        total_retrans: figures.2,
        srtt_us: 120,
        ..TcpRecord::default()
    }
}

fn run(records: &[TcpRecord]) -> Vec<NetEvent> {
    let stats = Arc::new(Stats::default());
    let conv = Conventions {
        redact_query_values: true,
        mono_to_unix_ns: 0,
    };
    let mut t = Tcp::new(Selection::default(), conv, stats);
    let mut processes = Processes::default();
    for pid in [10, 20] {
        processes.insert(Arc::new(ProcessInfo::from_parts(
            pid,
            format!("/usr/bin/p{pid}"),
            format!("p{pid}"),
            b"",
        )));
    }
    let mut sockets = Sockets::new(Box::new(NoLookup), false);
    let mut cx = Context {
        processes: &mut processes,
        sockets: &mut sockets,
    };
    let mut made = Vec::new();
    for r in records {
        t.record(kind::TCP, &record::encode(r), &mut cx, &mut made)
            .unwrap();
    }
    made.into_iter()
        .map(|m| match m {
            Made::Net(e) => *e,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_connection_reports_deltas_and_names_its_local_peer() {
    let ev = run(&[
        rec(tcp_event::CONNECTED, 1, 10, (40000, 8080), (0, 0, 0)),
        rec(tcp_event::ACCEPTED, 2, 20, (8080, 40000), (0, 0, 0)),
        rec(tcp_event::SAMPLE, 1, 10, (0, 0), (100, 5000, 1)),
        rec(tcp_event::CLOSED, 1, 10, (40000, 8080), (300, 9000, 2)),
    ]);
    assert_eq!(ev.len(), 4);
    assert_eq!(ev[0].kind, NetKind::Connected);
    assert_eq!(ev[0].duration_ns, Some(4_000));
    assert_eq!(ev[0].peer.to_string(), "127.0.0.1:8080");
    assert_eq!(ev[1].role, Role::Server);
    assert_eq!(ev[1].peer_process.as_ref().unwrap().pid, 10);
    assert_eq!(ev[2].delta.bytes_received, 5000);
    assert_eq!(ev[2].srtt_us, Some(120));
    // The client's end learnt its peer when the server's end appeared.
    assert_eq!(ev[2].peer_process.as_ref().unwrap().pid, 20);
    assert_eq!(ev[3].kind, NetKind::Closed);
    // The SYN's acknowledged sequence number is not a byte sent.
    assert_eq!(ev[2].totals.bytes_sent, 99);
    assert_eq!(ev[3].delta.bytes_sent, 200);
    assert_eq!(ev[3].delta.bytes_received, 4000);
    assert_eq!(ev[3].delta.retransmits, 1);
    assert_eq!(ev[3].totals.bytes_received, 9000);
}

#[test]
fn failures_say_why_and_unknown_sockets_are_ignored() {
    let mut refused = rec(tcp_event::FAILED, 3, 10, (40001, 9), (0, 0, 0));
    refused.err = libc::ECONNREFUSED;
    let mut timeout = rec(tcp_event::FAILED, 4, 10, (40002, 9), (0, 0, 1));
    timeout.err = libc::ETIMEDOUT;
    let ev = run(&[
        refused,
        timeout,
        rec(tcp_event::RETRANSMIT, 99, 10, (0, 0), (0, 0, 1)),
        rec(tcp_event::ACCEPTED, 5, 0, (8080, 1), (0, 0, 0)),
    ]);
    let kinds: Vec<_> = ev.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            NetKind::Failed(FailReason::Refused),
            NetKind::Failed(FailReason::Timeout)
        ]
    );
    assert_eq!(ev[1].delta.retransmits, 1);
}
