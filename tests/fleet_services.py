"""A test's own PostgreSQL cluster and RabbitMQ node, from Debian's packages, on 127.0.0.1 with
their data in a temporary directory (no systemd here: started directly, ended by PID).

Both refuse root (PostgreSQL) or want their files owned by their account (RabbitMQ): the
directories are made for `postgres` / `rabbitmq`."""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgresql_available() -> bool:
    return (PG_BIN / "initdb").exists() and _account("postgres") is not None


def rabbitmq_available() -> bool:
    return shutil.which("rabbitmq-server") is not None and _account("rabbitmq") is not None


def _account(name: str):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _as(user: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    account = pwd.getpwnam(user)
    return subprocess.run(argv, user=account.pw_uid, group=account.pw_gid, check=True,
                          capture_output=True, text=True, **kwargs)


@dataclass
class PostgreSQL:
    directory: Path
    port: int
    user: str
    password: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        _as("postgres", [str(PG_BIN / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop"])


def start_postgresql(base: Path) -> PostgreSQL:
    account = pwd.getpwnam("postgres")
    base.mkdir(parents=True, exist_ok=True)
    os.chown(base, account.pw_uid, account.pw_gid)
    os.chmod(base, 0o700)
    user, password = "orchestrator", secrets.token_hex(12)
    pwfile = base / "pw"
    pwfile.write_text(password)
    os.chown(pwfile, account.pw_uid, account.pw_gid)
    data = base / "data"
    _as("postgres", [str(PG_BIN / "initdb"), "-D", str(data), "-A", "scram-sha-256", f"--pwfile={pwfile}",
                     "-U", user, "--locale=C.UTF-8"])
    pwfile.unlink()
    port = free_port()
    _as("postgres", [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                     f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off", "start"])
    return PostgreSQL(base, port, user, password)


RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


@dataclass
class RabbitMQ:
    directory: Path
    node: str
    port: int
    user: str
    password: str
    process: subprocess.Popen
    env: dict

    def url(self, vhost: str = "builds") -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/{vhost}"

    def ctl(self, *argv: str) -> str:
        return _as("rabbitmq", [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *argv], env=self.env).stdout

    def stop(self) -> None:
        try:
            self.ctl("stop")
        except subprocess.CalledProcessError:
            self.process.kill()
        self.process.wait(60)
        # epmd outlives the node: it is this node's own (its own port), so end it by its PID
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                    environ = (entry / "environ").read_bytes()
                except OSError:
                    continue
                if b"epmd" in cmdline and f"ERL_EPMD_PORT={self.env['ERL_EPMD_PORT']}".encode() in environ:
                    os.kill(int(entry.name), 9)


def start_rabbitmq(base: Path, consumer_timeout_ms: int | None = None) -> RabbitMQ:
    """A RabbitMQ node of the test's own on 127.0.0.1 (its Erlang distribution and epmd too),
    with a vhost `builds` and a user of its own (guest is not used)."""
    account = pwd.getpwnam("rabbitmq")
    base.mkdir(parents=True, exist_ok=True)
    for sub in ("", "mnesia", "log"):
        (base / sub).mkdir(exist_ok=True)
        os.chown(base / sub, account.pw_uid, account.pw_gid)
    port, dist, epmd = free_port(), free_port(), free_port()
    conf = [f"listeners.tcp.default = 127.0.0.1:{port}", "loopback_users.guest = true",
            "log.console = false", "log.file.level = warning"]
    if consumer_timeout_ms is not None:
        conf.append(f"consumer_timeout = {consumer_timeout_ms}")
    (base / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
    os.chown(base / "rabbitmq.conf", account.pw_uid, account.pw_gid)  # readable under any umask (CI's is 077)
    node = f"orch{port}@localhost"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base), "LANG": "C.UTF-8",
           "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"), "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
           "RABBITMQ_LOG_BASE": str(base / "log"), "RABBITMQ_NODENAME": node, "RABBITMQ_NODE_PORT": str(port),
           "RABBITMQ_DIST_PORT": str(dist), "ERL_EPMD_ADDRESS": "127.0.0.1", "ERL_EPMD_PORT": str(epmd),
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"), "RABBITMQ_PID_FILE": str(base / "pid"),
           "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}"}
    (base / "enabled_plugins").write_text("[].\n")
    os.chown(base / "enabled_plugins", account.pw_uid, account.pw_gid)
    process = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")], user=account.pw_uid, group=account.pw_gid,
                               env=env, stdout=open(base / "server.out", "wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    user, password = "orchestrator", secrets.token_hex(12)
    broker = RabbitMQ(base, node, port, user, password, process, env)
    # `wait` returns once the node has written its pid file and finished booting
    try:
        _as("rabbitmq", [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", node, "wait", str(base / "pid"), "--timeout", "120"],
            env=env)
    except subprocess.CalledProcessError as exc:
        process.kill()
        said = (base / "server.out").read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"RabbitMQ node {node} did not start (rabbitmqctl wait: exit {exc.returncode}); "
                           f"the end of {base / 'server.out'}:\n" + "\n".join(said)) from None
    broker.ctl("add_vhost", "builds")
    broker.ctl("add_user", user, password)
    broker.ctl("set_permissions", "-p", "builds", user, ".*", ".*", ".*")
    return broker
