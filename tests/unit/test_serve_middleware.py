"""``lmforge serve``'s Host/Origin policy: which header values pass, and which option values are refused.

The middleware itself is tested against a real server process in tests/integration/test_serve.py
(Host, Origin) and test_serve_errors.py (request ids, opaque 500s).
"""

from __future__ import annotations

import pytest

from lmforge.errors import ConfigError
from lmforge.serve.middleware import AccessPolicy, normalize_origin


def test_loopback_bind_accepts_loopback_names_with_any_port_and_the_allowed_hosts():
    policy = AccessPolicy.build("127.0.0.1", True, ["box.lan", "gate:9000", "fe80::1"], [])
    for host in ["localhost", "LOCALHOST.:1", "127.0.0.1:8000", "[::1]", "[::1]:8000", "box.lan:5", "gate:9000"]:
        assert policy.host_problem(host) is None, host
    for host in ["evil.example", "box.lan.evil.example", "gate:9001", "gate", "127.0.0.1@evil", "", "localhost:x"]:
        assert policy.host_problem(host) is not None, host
    assert policy.host_problem("[fe80::1]:8000") is None


def test_beyond_loopback_any_host_unless_hosts_are_listed():
    assert AccessPolicy.build("0.0.0.0", False, [], []).host_problem("anything.example") is None
    listed = AccessPolicy.build("192.168.1.5", False, ["box.lan"], [])
    assert listed.host_problem("192.168.1.5:8000") is None and listed.host_problem("box.lan") is None
    assert listed.host_problem("evil.example") is not None
    assert AccessPolicy.build("127.0.0.1", True, ["*"], []).host_problem("evil.example") is None


def test_origins_own_or_allowed_only_not_other_loopback_ports():
    policy = AccessPolicy.build("127.0.0.1", True, [], ["https://app.example:443/", "http://tool.lan:8080"])
    assert (
        policy.origin_problem("https://app.example") is None and policy.origin_problem("http://tool.lan:8080") is None
    )
    for origin in ["http://localhost:3000", "https://127.0.0.1", "http://[::1]:5173"]:
        assert policy.origin_problem(origin) is not None, origin  # another local port: another site
    assert policy.origin_problem("http://127.0.0.1:8000", "127.0.0.1:8000") is None  # its own page
    assert policy.origin_problem("http://[::1]:8000", "[::1]:8000") is None
    assert policy.origin_problem("http://localhost", "localhost:80") is None  # default ports are equal
    assert policy.origin_problem("http://127.0.0.1:8001", "127.0.0.1:8000") is not None
    for origin in ["null", "https://evil.example", "http://localhost.evil.example", "http://tool.lan", "file://"]:
        assert policy.origin_problem(origin, "127.0.0.1:8000") is not None, origin
    assert AccessPolicy.build("127.0.0.1", True, [], ["*"]).origin_problem("https://evil.example") is None


def test_normalize_origin():
    assert normalize_origin("HTTPS://App.Example:443/") == "https://app.example"
    assert normalize_origin("http://a.b:80") == "http://a.b"
    assert normalize_origin("http://a.b:8080") == "http://a.b:8080"
    assert normalize_origin("null") == "null"
    assert normalize_origin("app.example") is None and normalize_origin("https://a.b/path") is None


def test_bad_option_values_are_all_listed():
    with pytest.raises(ConfigError) as error:
        AccessPolicy.build("127.0.0.1", True, ["bad/host", "a b"], ["app.example", "ftp://x"])
    message = str(error.value)
    assert "4 problems" in message
    assert "'bad/host' is not host[:port]" in message and "'ftp://x' is not an origin" in message
