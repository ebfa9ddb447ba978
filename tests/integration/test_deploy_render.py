"""The rendered deployment checked by the real tools: `systemd-analyze verify` on the units and
`nginx -t` on the site (Debian's nginx, on a private prefix: never the system's nginx)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from printctl.clusterspec import load_cluster_file, parse_cluster
from printctl.deploy import render, write_nginx_prefix
from tests.tools import tool

ROOT = Path(__file__).resolve().parents[2]
#: ExecStart must exist for systemd-analyze: the printd of this venv
PRINTD = str(Path(os.path.abspath(sys.executable)).parent / "printd")


def verify_unit(tmp_path: Path, content: str, instance: str = "printd-1") -> subprocess.CompletedProcess[str]:
    """systemd-analyze verifies instances, not templates: save the template as one instance."""
    unit = tmp_path / f"printd@{instance}.service"
    unit.write_text(content)
    return subprocess.run(
        [tool("systemd-analyze"), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def nginx_test(prefix: Path, site: str) -> subprocess.CompletedProcess[str]:
    conf = write_nginx_prefix(prefix, site)
    return subprocess.run(
        [tool("nginx"), "-t", "-p", str(prefix), "-c", str(conf)], capture_output=True, text=True, timeout=30
    )


def test_the_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    rendering = render(
        load_cluster_file(ROOT / "config/cluster.toml"), source="config/cluster.toml", printd_bin=PRINTD
    )
    done = verify_unit(tmp_path, rendering.unit.content)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""  # not even a warning (an unknown key is only one)


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above means something: a missing executable or a bad value does not pass."""
    content = render(
        load_cluster_file(ROOT / "config/cluster.toml"), source="c", printd_bin=PRINTD
    ).unit.content
    missing = verify_unit(tmp_path, content.replace(PRINTD, "/nonexistent/printd"))
    assert missing.returncode != 0 and "/nonexistent/printd" in missing.stderr
    typo = verify_unit(tmp_path, content.replace("WatchdogSec=30", "WatchdogSec=soon"), "printd-2")
    assert "Failed to parse sec value, ignoring: soon" in typo.stderr


def test_the_rendered_site_passes_nginx_t(tmp_path: Path) -> None:
    rendering = render(load_cluster_file(ROOT / "config/cluster.toml"), source="c", printd_bin=PRINTD)
    done = nginx_test(tmp_path / "nginx", rendering.site.content)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr and "[warn]" not in done.stderr


def test_the_rendered_tls_site_passes_nginx_t(tmp_path: Path) -> None:
    cert, key = tmp_path / "printd.pem", tmp_path / "printd.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=printd.test"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    spec = parse_cluster(
        {
            "database": {"url": "postgresql://printd@db/printd"},
            "nginx": {
                "listen": "127.0.0.1:8443",
                "server_name": "printd.test",
                "tls_certificate": str(cert),
                "tls_certificate_key": str(key),
            },
            "instances": [{"id": "a", "port": 3011}, {"id": "b", "port": 3012}],
        }
    )
    site = render(spec, source="c", printd_bin=PRINTD).site.content
    assert "listen 127.0.0.1:8443 ssl;" in site
    done = nginx_test(tmp_path / "nginx", site)
    assert done.returncode == 0, done.stderr
    assert "[warn]" not in done.stderr


def test_nginx_t_catches_a_broken_site(tmp_path: Path) -> None:
    rendering = render(load_cluster_file(ROOT / "config/cluster.toml"), source="c", printd_bin=PRINTD)
    done = nginx_test(tmp_path / "nginx", rendering.site.content.replace("least_conn;", "least_conn"))
    assert done.returncode != 0 and "test failed" in done.stderr
