"""A redis-server that speaks only TLS and wants a password, with a throw-away CA and
server certificate made by the `openssl` command for it. Nothing here touches a Redis the
machine may already run."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from bo_queue.errors import ConfigurationError
from bo_queue.testing import RedisServer, redis_server_binary, wait_until


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA's certificate: what clients trust (ssl_ca_certs)
    cert: Path  # the server's certificate, for 127.0.0.1 and localhost
    key: Path  # the server's private key


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise ConfigurationError("the TLS tests need the `openssl` command")
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def make_certificates(directory: Path) -> Certificates:
    """A CA valid for a day, and a server certificate it signed for 127.0.0.1 and
    localhost (so clients keep checking the host name). EC keys: quick to make."""
    directory.mkdir(parents=True, exist_ok=True)
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=bo-queue test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    _openssl("req", *curve, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=directory)
    Path(directory, "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "server.ext",
        cwd=directory,
    )
    for private in ("ca.key", "server.key"):
        os.chmod(directory / private, 0o600)
    return Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")


class TlsRedisServer(RedisServer):
    """A throw-away redis-server on 127.0.0.1 with TLS on a free port (no plain-text port)
    and a random password. Clients are not asked for certificates of their own.

    The password and the certificate paths go to redis-server in a config file in the
    server's temp dir, not on its command line (where `ps` would show them)."""

    def __init__(self, port: int | None = None, password: str | None = None) -> None:
        super().__init__(port)
        # characters a URL must percent-encode: every client has to decode them alike
        self.password = password or f"{secrets.token_urlsafe(18)}@:/+"
        self.certs = make_certificates(Path(self.dir, "tls"))

    def url_with(self, scheme: str = "rediss", password: str | None = None,
                 ca: bool = True) -> str:
        """This server's URL; variations on it for the tests of bad connections."""
        secret = self.password if password is None else password
        query = f"?ssl_ca_certs={quote(str(self.certs.ca), safe='/')}" if ca else ""
        return f"{scheme}://:{quote(secret, safe='')}@127.0.0.1:{self.port}/0{query}"

    @property
    def url(self) -> str:
        """rediss:// with the password, trusting this server's CA (and only it)."""
        return self.url_with()

    def start(self) -> TlsRedisServer:
        config = Path(self.dir, "redis.conf")
        config.write_text("\n".join([
            "port 0",
            f"tls-port {self.port}",
            "bind 127.0.0.1",
            f"tls-cert-file {self.certs.cert}",
            f"tls-key-file {self.certs.key}",
            f"tls-ca-cert-file {self.certs.ca}",
            "tls-auth-clients no",
            f"requirepass {self.password}",
            f"dir {self.dir}",
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "appendfsync always",
            "daemonize no",
            f"logfile {Path(self.dir, 'redis.log')}",
        ]) + "\n")
        config.chmod(0o600)
        self.process = subprocess.Popen(
            [redis_server_binary(), str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server (TLS) exited: {self.log()[-2000:]}")
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            wait_until(up, 10, what=f"redis-server with TLS on port {self.port}")
        finally:
            client.close()
        return self

    def __enter__(self) -> TlsRedisServer:
        return self.start()
