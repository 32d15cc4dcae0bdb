"""An S3 server for the s3:// tests: moto's, in a process of its own on a free loopback
port, with authentication on, so that a request signed wrongly (or not at all) is refused
as S3 refuses it.

moto checks a SigV4 signature by signing the request again with botocore's S3SigV4Auth
under the secret of an access key that its IAM holds, and then the key's policies.  So
the set-up makes, while authentication is still off, an IAM user with a policy that
allows s3:* (and sts:AssumeRole, for session_credentials' role) and its access key; then
it turns authentication on (POST /moto-api/reset-auth with 0: moto's documented switch
for server mode, the same as INITIAL_NO_AUTH_ACTION_COUNT=0 at start).  From then on every request is
checked, boto3's own included.

    with S3Server() as s3:
        s3.create_bucket("models")
        s3.put("models", "a/m.safetensors", data)
        s3.env()  # AWS_* for a client: endpoint, key, secret, region
"""
import contextlib
import json
import os
import subprocess
import sys
import urllib.request

import pytest

import netservers

START_TIMEOUT = 30.0
REGION = "us-east-1"
POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["s3:*", "sts:AssumeRole"], "Resource": "*"}],
})
TRUST = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
})


def moto_available():
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


class S3Server:
    """moto's server with one IAM user (key, secret) allowed everything on S3."""

    def __init__(self, logdir=None):
        self.port = netservers.free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.logdir = logdir
        self.proc = None
        self.key = self.secret = None
        self._log = None

    def start(self):
        env = dict(os.environ)
        for name in [n for n in env if n.startswith("AWS_")]:
            del env[name]  # the server must not pick up a developer's profile
        env["MOTO_PORT"] = str(self.port)
        out = subprocess.DEVNULL
        if self.logdir:
            self._log = open(os.path.join(self.logdir, f"moto-{self.port}.log"), "wb")
            out = self._log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=out, stderr=subprocess.STDOUT)
        netservers.wait_until(self._up, START_TIMEOUT, f"moto's server on port {self.port}", step=0.1)
        self._make_user()
        self._set_auth(0)
        return self

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"moto's server exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                return True
        except OSError:
            return False

    def _set_auth(self, count):
        """Authentication on after `count` more requests (0: now).  Not a form: moto reads
        the raw body, which Flask empties for a form's content type."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=str(count).encode(),
                                     method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def _make_user(self):
        iam = self.client("iam", key="any", secret="any")
        iam.create_user(UserName="stfs")
        iam.put_user_policy(UserName="stfs", PolicyName="s3", PolicyDocument=POLICY)
        k = iam.create_access_key(UserName="stfs")["AccessKey"]
        self.key, self.secret = k["AccessKeyId"], k["SecretAccessKey"]
        self.role = iam.create_role(RoleName="stfs-reader", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
        iam.put_role_policy(RoleName="stfs-reader", PolicyName="s3", PolicyDocument=POLICY)

    def client(self, service="s3", key=None, secret=None, token=None):
        import boto3
        from botocore.config import Config
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=key or self.key,
                            aws_secret_access_key=secret or self.secret,
                            aws_session_token=token,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def session_credentials(self):
        """(key, secret, token) from STS's AssumeRole: temporary credentials as an instance
        role or SSO hands them out (moto checks the token; GetSessionToken's it does not)."""
        c = self.client("sts").assume_role(RoleArn=self.role, RoleSessionName="stfs-test")["Credentials"]
        return c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]

    def create_bucket(self, bucket):
        self.client().create_bucket(Bucket=bucket)

    def put(self, bucket, key, data):
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def env(self, **extra):
        """AWS_* variables that point a client (the daemon, the AWS CLI) at this server."""
        e = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key,
             "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_REGION": REGION}
        e.update(extra)
        return e

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


@contextlib.contextmanager
def s3_server(logdir=None):
    if not moto_available():
        netservers.skip_or_fail("moto[server] and boto3 are not installed: make venv installs them")
    with S3Server(logdir) as s3:
        yield s3


@pytest.fixture
def s3(tmp_path):
    """A fresh moto S3 server with authentication on, stopped at teardown."""
    with s3_server(tmp_path) as server:
        yield server
