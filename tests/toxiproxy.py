"""The tests' TCP proxy lives in printctl (printctl/faults/proxy.py), where `printctl cluster up
--db-proxy` and `printctl failover-test` use it too."""

from printctl.faults.proxy import TcpProxy

__all__ = ["TcpProxy"]
