"""Serving: gunicorn on a unix socket, one worker process (so one event loop per host) with threads."""

from __future__ import annotations

import logging
import os
from typing import Any

from gunicorn.app.base import BaseApplication

from . import failpoints, logs, native_memory, pidfile
from .settings import Settings

log = logging.getLogger(__name__)


class AgentServer(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.agent: Any = None
        super().__init__()

    def load_config(self) -> None:
        os.makedirs(os.path.dirname(self.settings.socket) or ".", exist_ok=True)
        config = {
            "bind": [f"unix:{self.settings.socket}"],
            "workers": 1,
            "worker_class": "gthread",
            "threads": self.settings.workers_threads,
            # the worker's heartbeat to the master; a slow request is bounded by the store's own timeouts
            "timeout": 120,
            "graceful_timeout": 5,
            "umask": 0o077,
            "loglevel": self.settings.log_level,
            "accesslog": "-" if self.settings.log_level == "debug" else None,
            "post_worker_init": self._post_worker_init,
            # gunicorn ≥ 24's control socket lives at one path per user: several agents would collide
            "control_socket_disable": True,
            "worker_exit": self._worker_exit,
            "logconfig_dict": logs.gunicorn_config(self.settings.log_level, self.settings.log_format),
        }
        for key, value in config.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self):
        # Built in the worker, after the fork: netlink sockets and gRPC channels never cross a fork.
        from .agent import Agent
        from .agent_client import ROTATE_KEY_PATH
        from .app import create_app
        from .journal import RequestJournal
        from .status import agent_status

        logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its debug output is every netlink message
        self.agent = Agent(self.settings)
        journal = RequestJournal(os.path.join(self.settings.state_dir, "inflight"))
        return create_app(
            self.agent.network,
            self.agent.ipam,
            journal=journal,
            check_identity=self.agent.check_identity,
            private={ROTATE_KEY_PATH: lambda body: {"PublicKey": self.agent.rotate_key()}},
            metrics=self.agent.metrics,
            status=lambda: agent_status(self.agent),
        )

    def _post_worker_init(self, worker: Any) -> None:
        worker.app.agent.start()

    def _worker_exit(self, server: Any, worker: Any) -> None:
        if worker.app.agent is not None:
            worker.app.agent.stop()


def serve(settings: Settings) -> None:
    failpoints.configure()  # a test facility: nothing unless PYOVERLAY_FAILPOINTS names points
    pid_file = pidfile.claim(settings.state_dir)  # the master's pid: `pyoverlay stop` signals it
    native_memory.fix_mmap_threshold()  # before the fork: the worker inherits it
    try:
        AgentServer(settings).run()
    finally:
        pidfile.release(pid_file)  # the forked worker's exit comes through here too: release checks the pid
