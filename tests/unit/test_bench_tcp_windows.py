"""bench.tcp_windows: the senders' windows from real `ss -tin` output (captured on this machine under the
bufferbloat load: four BBR uploads to port 5201 and iperf3's control connection)."""

from __future__ import annotations

from bench.tcp_windows import parse_ss

SS = """State Recv-Q Send-Q  Local Address:Port  Peer Address:PortProcess
ESTAB 0      0         198.18.10.2:38140   198.19.0.2:5201
\t bbr wscale:10,10 rto:204 rtt:0.055/0.032 ato:40 mss:1448 pmtu:1500 rcvmss:536 advmss:1448 cwnd:13 bytes_sent:186 bytes_acked:187 segs_out:8 segs_in:7 data_segs_out:3 data_segs_in:4 app_limited
ESTAB 0      1000568   198.18.10.2:38146   198.19.0.2:5201
\t bbr wscale:10,10 rto:212 rtt:8.799/0.227 mss:1448 pmtu:1500 rcvmss:536 advmss:1448 cwnd:18 ssthresh:136 bytes_sent:8730029 segs_out:6032 data_segs_out:6030 bbr:(bw:26452904bps,mrtt:0.008,pacing_gain:1,cwnd_gain:2)
ESTAB 0      944096    198.18.10.2:38160   198.19.0.2:5201
\t bbr wscale:10,10 rto:212 rtt:9.199/0.524 mss:1448 pmtu:1500 rcvmss:536 advmss:1448 cwnd:20 ssthresh:136 data_segs_out:5682
ESTAB 0      944096    198.18.10.2:40000   198.19.0.2:5202
\t cubic wscale:10,10 rto:212 rtt:9.199/0.524 mss:1000 pmtu:1500 rcvmss:536 advmss:1448 cwnd:7 data_segs_out:5682
"""


def test_sums_the_loaded_flows_and_leaves_out_the_control_connection() -> None:
    got = parse_ss(SS, 5201)
    assert got == {"flows": 2, "cwnd_bytes": (18 + 20) * 1448, "cc": ["bbr"]}


def test_without_a_port_every_loaded_flow_counts() -> None:
    got = parse_ss(SS)
    assert got["flows"] == 3 and got["cwnd_bytes"] == (18 + 20) * 1448 + 7 * 1000 and got["cc"] == ["bbr", "cubic"]


def test_nothing_established_is_zero() -> None:
    assert parse_ss("State Recv-Q Send-Q Local Address:Port Peer Address:Port\n") == {"flows": 0, "cwnd_bytes": 0,
                                                                                      "cc": []}
