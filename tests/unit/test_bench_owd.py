"""bench.owd: a probe's one-way delay is the receiving kernel's stamp minus the send time in its payload."""

from __future__ import annotations

import socket

import pytest

from bench import owd


def _stamp(ns: int) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, owd.SO_TIMESTAMPNS, owd.TIMESPEC.pack(ns // 1_000_000_000, ns % 1_000_000_000))]


def test_delay_is_kernel_stamp_minus_send_time() -> None:
    sent = 1_764_000_000_123_456_789
    assert owd.delay_us(owd.encode(2, 7, sent), _stamp(sent + 42_500)) == (2, 7, pytest.approx(42.5))


def test_sequence_numbers_wrap_at_32_bits() -> None:
    assert owd.delay_us(owd.encode(0, 2**32 + 3, 10**18), _stamp(10**18 + 1000)) == (0, 3, pytest.approx(1.0))


@pytest.mark.parametrize("data, anc", [
    (b"short", None),  # not a probe: too short for the header
    (owd.encode(0, 1, 10**18), []),  # no timestamp (the socket option was not set)
    (owd.encode(0, 1, 10**18), [(socket.SOL_SOCKET, owd.SO_TIMESTAMPNS + 1, b"\0" * 16)]),  # another message
    (owd.encode(0, 1, 10**18), [(socket.SOL_SOCKET, owd.SO_TIMESTAMPNS, b"\0" * 8)]),  # truncated timespec
])
def test_what_is_not_a_stamped_probe_gives_none(data: bytes, anc: list[tuple[int, int, bytes]] | None) -> None:
    assert owd.delay_us(data, _stamp(10**18) if anc is None else anc) is None


def test_phases_parse_or_name_what_is_wrong() -> None:
    assert owd.Phase.parse("1:200:0.01") == owd.Phase(1, 200, 0.01)
    assert owd.Phase.parse("any:3:0.05") == owd.Phase(None, 3, 0.05)
    for bad in ("1:200", "x:1:1", "0:0:1", "0:1:0", "-1:1:1", "0:1:nan"):
        with pytest.raises(ValueError, match=f"--phase '{bad}'"):
            owd.Phase.parse(bad)


def test_cli_rejects_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["send", "--to", "198.18.0.1", "--port", "0", "--phase", "0:1:1"],
                 ["send", "--to", "198.18.0.1", "--port", "9", "--phase", "0:0:1"]):
        with pytest.raises(SystemExit) as exc:
            owd.main(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--port 0: expected 1..65535" in err and "--phase '0:0:1': expected" in err
