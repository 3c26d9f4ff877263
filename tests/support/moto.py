"""moto in server mode (S3, KMS, Secrets Manager over HTTP) as a child process, and the AWS environment of the tests."""

from __future__ import annotations

import atexit
import os
import sys
import threading
import urllib.request

from .processes import LOCAL, free_port, start_child, stop_process


class MotoServer:
    """`python -m moto.server` on 127.0.0.1 as a child process (dies with us)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{LOCAL}:{self.port}"
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        self.proc = start_child([sys.executable, "-m", "moto.server", "-p", str(self.port), "-H", LOCAL],
                                ready, "moto server", env=env)

    def stop(self) -> None:
        stop_process(self.proc)


_moto: MotoServer | None = None
_moto_lock = threading.Lock()


def moto_server() -> MotoServer:
    """One moto server for the whole test run."""
    global _moto
    with _moto_lock:
        if _moto is None:
            _moto = MotoServer()
            atexit.register(_moto.stop)
        return _moto


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never reach for 169.254.169.254
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
             "AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ROLE_ARN",
             "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
             "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CA_BUNDLE", "HTTPS_PROXY", "HTTP_PROXY",
             "https_proxy", "http_proxy")
