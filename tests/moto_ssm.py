"""moto's server (SSM, EC2, CloudFormation) in this process on 127.0.0.1, with what moto lacks.

Patched into moto's in-process SSM: describe_instance_information (PingStatus per instance
from ONLINE), invocations that start Pending (a real one waits for the agent), and
cancel_command (the fake agent kills the cancelled command; see fake_ssm_agent.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

REGION = "us-east-1"
ONLINE: dict[str, str] = {}
"""PingStatus per instance id, served by the describe_instance_information moto lacks."""


def _describe_instance_information(self):  # patched into moto's in-process SSM responses
    from moto.core.responses import ActionResult

    wanted = []
    for f in self._get_param("Filters") or []:
        if f["Key"] == "InstanceIds":
            wanted.extend(f["Values"])
    return ActionResult({"InstanceInformationList": [{"InstanceId": i, "PingStatus": ONLINE[i]} for i in wanted if i in ONLINE]})


def _pending_invocation(original):
    """moto makes every invocation Success at once; a real one starts Pending until the agent acts."""

    def invocation_response(self, instance_id, plugin_name):
        inv = original(self, instance_id, plugin_name)
        inv.update(Status="Pending", StatusDetails="Pending", ResponseCode=-1)
        return inv

    return invocation_response


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Start moto on a free port of 127.0.0.1 with the patches above; yields its URL."""
    from moto.server import ThreadedMotoServer
    from moto.ssm.models import Command
    from moto.ssm.responses import SimpleSystemManagerResponse

    from fake_ssm_agent import install_cancel_command

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    SimpleSystemManagerResponse.describe_instance_information = _describe_instance_information
    # moto resolves a command without Targets to every EC2 instance it knows (an empty tag filter
    # matches all), so a test that created instances made later commands run on them too. SSM
    # sends a command with InstanceIds only to those instances.
    original_targets = Command._get_instance_ids_from_targets
    Command._get_instance_ids_from_targets = lambda self: original_targets(self) if self.targets else []
    previous_cancel = install_cancel_command()
    original = Command.invocation_response
    Command.invocation_response = _pending_invocation(original)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        Command.invocation_response = original
        Command._get_instance_ids_from_targets = original_targets
        if previous_cancel is None:
            del SimpleSystemManagerResponse.cancel_command
        else:
            SimpleSystemManagerResponse.cancel_command = previous_cancel


def node_env(aws_env: dict[str, str]) -> dict[str, str]:
    """What a node's agent process has: instance credentials, S3 endpoint, no AWS CLI on PATH."""
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
            **{k: v for k, v in aws_env.items() if k != "AWS_ENDPOINT_URL"}, "AWS_ENDPOINT_URL": aws_env["AWS_ENDPOINT_URL_S3"]}


SSM_PORTS = ("unified_port", "producer_port", "consumer_port", "proxy_port", "producer_side_channel_port",
             "consumer_side_channel_port", "preflight_port")


def use_fake_ssm_nodes(proj, node_root: Path) -> None:
    """Point a project copy at SSM + S3 with both fake nodes on 127.0.0.1: free ports for every
    fixed node port (two tests at once never collide), node folders under node_root, one API
    attempt (a fault is seen at once), and the plan's venv_path on this interpreter's venv."""
    from ports import free_ports

    cfg_path = proj.root / "config/config.yaml"
    text = cfg_path.read_text().replace("executor: local\n", "executor: ssm\n").replace("storage: local\n", "storage: s3\n")
    text = text.replace("node_root: /opt/disagglab", f"node_root: {node_root}").replace("max_attempts: 8", "max_attempts: 1")
    for name, port in zip(SSM_PORTS, free_ports(len(SSM_PORTS)), strict=True):
        text = text.replace(f"    {name}: ", f"    {name}: {port} #", 1)
    cfg_path.write_text(text)
    plan = proj.plan("phase14")
    plan["infrastructure"]["venv_path"] = str(Path(sys.executable).parent.parent)
    proj.write_plan("phase14", plan)
