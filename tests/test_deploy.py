"""Checks of the deployment files in deploy/ that need no Docker engine, database or Django.

No Docker engine runs on the development machines or in CI, so the image, the compose
stack and the manifests are never run here. Instead these tests run the deploy/bin
scripts against stub commands, and check the Dockerfile, compose file, Kubernetes
manifests, systemd units and .env.example against the files in the repository and
against each other.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
BIN = DEPLOY / "bin"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"

PRODUCTION_SETTINGS = "project.settings.production"
PROCESSES = ("web", "worker", "beat", "recorder", "migrate")
LONG_RUNNING = tuple(process for process in PROCESSES if process != "migrate")  # run until stopped
BIN_SCRIPTS = ("web", "worker", "beat", "recorder", "migrate", "worker-healthcheck", "collectstatic")
# Seconds each deployment lets these processes finish after SIGTERM: a worker's running
# tasks (warm shutdown), the recorder's batch at hand.
STOP_GRACE = {"worker": 60, "recorder": 30}
# Processes that share a lease in Redis: one leads, the others stand by.
LEASED = ("beat", "recorder")
README = DEPLOY / "README.md"

# The environment variables of the deployment contract. .env.example must name every one.
# Any other name in .env.example must be read by project/ or deploy/bin/; these are
# exempt from that, since the Python side may not read all of them yet (SECRET_KEY_FILE
# is read through env.secret(), WEB_CONCURRENCY and WORKER_CONCURRENCY by deploy/bin).
CONTRACT_ENV = (
    "DJANGO_SETTINGS_MODULE",
    "SECRET_KEY",
    "SECRET_KEY_FILE",
    "DATABASE_URL",
    "REDIS_URL",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "TIME_ZONE",
    "LOG_LEVEL",
    "SECURE_SSL_REDIRECT",
    "TRUST_X_FORWARDED_PROTO",
    "WEB_CONCURRENCY",
    "WORKER_CONCURRENCY",
    "RUN_RETENTION_HOURS",
    "TEMP_CLEANUP_DIRS",
    "HEALTH_MEMORY_WARN_PERCENT",
    "HEALTH_DISK_WARN_PERCENT",
    "HEALTH_CPU_WARN_PERCENT",
    "HEALTH_QUEUE_WARN_DEPTH",
    "CELERY_VISIBILITY_TIMEOUT",
)


# --- helpers ----------------------------------------------------------------------------


def _logical_lines(text: str) -> list[str]:
    """Non-blank, non-comment lines with backslash continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    if pending:
        lines.append(pending.strip())
    return lines


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # a mapping at the top
    return compose


def _kubernetes_documents() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return documents


def _kubernetes(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in _kubernetes_documents() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (doc["metadata"]["name"], doc["spec"]["template"]["spec"])
        for doc in _kubernetes_documents()
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    ]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers", [])) + list(pod["containers"])


def _env_example() -> dict[str, str | None]:
    """Every name in .env.example: NAME=value, or None for a commented-out #NAME=value."""
    names: dict[str, str | None] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            names[match[2]] = None if match[1] else match[3]
    return names


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction of deploy/Dockerfile."""
    instructions = []
    for line in _logical_lines(DOCKERFILE.read_text(encoding="utf-8")):
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values]}} (keys such as Environment= repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in _logical_lines(path.read_text(encoding="utf-8")):
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not Key=value"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(duration: str | int) -> float:
    """A compose duration (e.g. 60s, 1m30s) in seconds."""
    if isinstance(duration, int):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


STUB = r"""#!/usr/bin/env bash
# Stands in for a real command: records how it was called, for tests/test_deploy.py.
{
  printf 'call\n'
  printf 'name=%s\n' "$(basename "$0")"
  for arg in "$@"; do printf 'arg=%s\n' "$arg"; done
  printf 'dsm=%s\n' "${DJANGO_SETTINGS_MODULE-<unset>}"
  printf 'cwd=%s\n' "$(pwd -P)"
  printf 'ppid=%s\n' "$PPID"
} >> "$STUB_LOG"
if [[ -n "${STUB_FAIL_ON:-}" && " $* " == *" $STUB_FAIL_ON "* ]]; then
  exit 3
fi
"""


def _run_with_stubs(
    script: str, tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Runs deploy/bin/<script> with stub gunicorn, celery and python first on PATH."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in ("gunicorn", "celery", "python"):
        (stubs / name).write_text(STUB, encoding="utf-8")
        (stubs / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    run_env = {"PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(log)}
    run_env.update(env or {})
    # From another directory: the script must find the repository root itself.
    result = subprocess.run([str(BIN / script)], cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=60)
    calls: list[dict[str, Any]] = []
    for line in log.read_text(encoding="utf-8").splitlines():
        if line == "call":
            calls.append({"argv": []})
            continue
        key, _, value = line.partition("=")
        if key in ("name", "arg"):
            calls[-1]["argv"].append(value)
        else:
            calls[-1][key] = value
    return result, calls


# --- deploy/bin -------------------------------------------------------------------------


def test_it_has_the_contracted_bin_scripts() -> None:
    assert sorted(path.name for path in BIN.iterdir()) == sorted(BIN_SCRIPTS)


@pytest.mark.parametrize("name", BIN_SCRIPTS)
def test_it_writes_each_bin_script_as_strict_bash_ending_in_exec(name: str) -> None:
    script = BIN / name
    text = script.read_text(encoding="utf-8")
    assert os.access(script, os.X_OK), f"{name} is not executable (chmod 755)"
    assert text.splitlines()[0] == "#!/usr/bin/env bash"
    lines = _logical_lines(text)
    # Strict mode before anything else runs.
    assert lines[0] == "set -euo pipefail", f"{name}: first command is {lines[0]!r}"
    assert lines[-1].startswith("exec "), f"{name}: last command {lines[-1]!r} is not exec"
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr


HOST = socket.gethostname()


@pytest.mark.parametrize(
    ("script", "env", "command"),
    [
        (
            "web",
            {},
            "gunicorn project.wsgi:application --bind 0.0.0.0:8000 --workers 2 --access-logfile - "
            "--forwarded-allow-ips 127.0.0.1",
        ),
        (
            "web",
            {"WEB_BIND": "127.0.0.1:9000", "WEB_CONCURRENCY": "5", "FORWARDED_ALLOW_IPS": "*"},
            "gunicorn project.wsgi:application --bind 127.0.0.1:9000 --workers 5 --access-logfile - "
            "--forwarded-allow-ips *",
        ),
        ("worker", {}, "celery -A project worker --loglevel INFO --concurrency 2 --hostname worker@%h"),
        (
            "worker",
            {"LOG_LEVEL": "DEBUG", "WORKER_CONCURRENCY": "8"},
            "celery -A project worker --loglevel DEBUG --concurrency 8 --hostname worker@%h",
        ),
        ("beat", {}, "celery -A project beat --loglevel INFO --pidfile="),
        ("recorder", {}, "python manage.py record_runs"),
        (
            "worker-healthcheck",
            {"HOSTNAME": "beatkeeper-worker-7d9f-abcde"},
            "celery -A project inspect ping --destination worker@beatkeeper-worker-7d9f-abcde --timeout 10",
        ),
        # Without HOSTNAME in the environment (a Kubernetes exec probe may not carry it):
        # the host name Celery's %h expands to.
        (
            "worker-healthcheck",
            {},
            f"celery -A project inspect ping --destination worker@{HOST} --timeout 10",
        ),
        ("collectstatic", {}, "python manage.py collectstatic --noinput"),
    ],
    ids=[
        "web",
        "web-env",
        "worker",
        "worker-env",
        "beat",
        "recorder",
        "worker-healthcheck",
        "worker-healthcheck-no-env",
        "collectstatic",
    ],
)
def test_it_execs_the_contracted_command_from_the_repository_root(
    script: str, env: dict[str, str], command: str, tmp_path: Path
) -> None:
    result, calls = _run_with_stubs(script, tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert [call["argv"] for call in calls] == [command.split(" ")]
    assert calls[0]["cwd"] == str(REPO.resolve())
    assert calls[0]["dsm"] == PRODUCTION_SETTINGS
    # Replaced the script's process (exec): its parent is this test, so signals sent to
    # the container's or unit's main process reach gunicorn/Celery directly.
    assert calls[0]["ppid"] == str(os.getpid())


@pytest.mark.parametrize("script", LONG_RUNNING)
def test_it_keeps_a_django_settings_module_already_set(script: str, tmp_path: Path) -> None:
    result, calls = _run_with_stubs(script, tmp_path, {"DJANGO_SETTINGS_MODULE": "project.settings.local"})
    assert result.returncode == 0, result.stderr
    assert calls[0]["dsm"] == "project.settings.local"


def test_it_migrates_then_execs_the_seeding(tmp_path: Path) -> None:
    result, calls = _run_with_stubs("migrate", tmp_path)
    assert result.returncode == 0, result.stderr
    assert [call["argv"] for call in calls] == [
        ["python", "manage.py", "migrate", "--noinput"],
        ["python", "manage.py", "seed_default_tasks"],
    ]
    assert {call["cwd"] for call in calls} == {str(REPO.resolve())}
    assert {call["dsm"] for call in calls} == {PRODUCTION_SETTINGS}
    assert calls[0]["ppid"] != str(os.getpid())  # a child of the script
    assert calls[1]["ppid"] == str(os.getpid())  # the script itself, exec'd


def test_it_stops_migrate_when_the_migration_fails(tmp_path: Path) -> None:
    result, calls = _run_with_stubs("migrate", tmp_path, {"STUB_FAIL_ON": "migrate"})
    assert result.returncode == 3
    assert [call["argv"] for call in calls] == [["python", "manage.py", "migrate", "--noinput"]]


# --- YAML -------------------------------------------------------------------------------


def test_it_parses_every_yaml_file() -> None:
    paths = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert COMPOSE in paths and len(paths) >= 8
    for path in paths:
        documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
        assert documents, f"{path} holds no document"
        assert all(isinstance(doc, dict) for doc in documents), path


# --- docker compose ---------------------------------------------------------------------


def test_it_runs_the_deploy_scripts_from_the_image_in_compose() -> None:
    services = _compose()["services"]
    for name in PROCESSES:
        service = services[name]
        assert service["command"] == [f"deploy/bin/{name}"], name
        assert (REPO / service["command"][0]).is_file()
        # Built from the repository root with deploy/Dockerfile; env from deploy/.env.
        assert (COMPOSE.parent / service["build"]["context"]).resolve() == REPO.resolve()
        dockerfile = COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]
        assert dockerfile.resolve() == DOCKERFILE.resolve()
        assert (COMPOSE.parent / service["env_file"]).resolve() == (DEPLOY / ".env").resolve()


@pytest.mark.parametrize(("process", "grace"), STOP_GRACE.items())
def test_it_gives_compose_services_their_stop_grace_period(process: str, grace: int) -> None:
    service = _compose()["services"][process]
    assert _seconds(service["stop_grace_period"]) >= grace
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_it_starts_compose_services_in_order() -> None:
    services = _compose()["services"]
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
        assert services["migrate"]["depends_on"][name] == {"condition": "service_healthy"}
    assert services["migrate"]["restart"] == "no"
    for name in LONG_RUNNING:
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["web"]["ports"] == ["8000:8000"]
    assert "--appendonly" in services["redis"]["command"]
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"


def test_it_replaces_the_image_web_healthcheck_in_other_compose_services() -> None:
    # The image's HEALTHCHECK polls the web port; other processes must not inherit it.
    services = _compose()["services"]
    assert "healthcheck" not in services["web"]
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "deploy/bin/worker-healthcheck"]
    assert services["beat"]["healthcheck"] == {"disable": True}
    assert services["recorder"]["healthcheck"] == {"disable": True}  # no port: the process is its liveness
    assert services["migrate"]["healthcheck"] == {"disable": True}


def test_it_points_the_example_urls_at_the_compose_services() -> None:
    env = _env_example()
    postgres = _compose()["services"]["postgres"]["environment"]
    database = urlsplit(env["DATABASE_URL"] or "")
    assert database.scheme in ("postgres", "postgresql")
    assert (database.hostname, database.port) == ("postgres", 5432)
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path == "/" + postgres["POSTGRES_DB"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"


# --- Kubernetes -------------------------------------------------------------------------


@pytest.mark.parametrize("process", LEASED)
def test_it_runs_two_leased_replicas_for_failover_and_rolls_them_one_at_a_time(process: str) -> None:
    deployment = _kubernetes("Deployment", f"beatkeeper-{process}")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= STOP_GRACE.get(process, 0)
    (container,) = pod["containers"]
    assert container["command"] == [f"deploy/bin/{process}"]
    # No port to probe: if the process dies the container exits and is restarted.
    assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(container)
    # No other workload runs it.
    runs_it = [
        name for name, pod in _pod_specs() for c in pod["containers"] if c.get("command") == [f"deploy/bin/{process}"]
    ]
    assert runs_it == [f"beatkeeper-{process}"]


def test_it_gives_kubernetes_workers_a_warm_shutdown_and_a_ping_probe() -> None:
    worker = _kubernetes("Deployment", "beatkeeper-worker")
    pod = worker["spec"]["template"]["spec"]
    assert worker["spec"]["replicas"] == 2
    assert pod["terminationGracePeriodSeconds"] >= STOP_GRACE["worker"]
    (container,) = pod["containers"]
    assert container["command"] == ["deploy/bin/worker"]
    assert container["livenessProbe"]["exec"]["command"] == ["deploy/bin/worker-healthcheck"]
    # The ping itself waits 10 s; the probe must allow for that plus Python's start-up.
    assert container["livenessProbe"]["timeoutSeconds"] > 10


def test_it_runs_every_kubernetes_container_as_non_root() -> None:
    pods = _pod_specs()
    assert sorted(name for name, _ in pods) == sorted(f"beatkeeper-{process}" for process in PROCESSES)
    for name, pod in pods:
        for container in _containers(pod):
            context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            where = f"{name}/{container['name']}"
            assert context.get("runAsNonRoot") is True, where
            assert context.get("runAsUser", 0) != 0, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert container["resources"]["requests"] and container["resources"]["limits"], where


def test_it_keeps_the_static_files_visible_and_tmp_writable_in_kubernetes() -> None:
    for name, pod in _pod_specs():
        for container in _containers(pod):
            mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
            # STATIC_ROOT is /app/var/static, collected into the image: a volume on
            # /app/var or /app/var/static would hide it.
            assert not mounts & {"/app", "/app/var", "/app/var/static"}, name
            assert {"/tmp", "/app/var/tmp"} <= mounts, name


def test_it_starts_kubernetes_containers_with_deploy_scripts() -> None:
    for name, pod in _pod_specs():
        for container in _containers(pod):
            commands = [container["command"]]
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if "exec" in container.get(probe, {}):
                    commands.append(container[probe]["exec"]["command"])
            for command in commands:
                script = REPO / command[0]
                assert command[0].startswith("deploy/bin/") and os.access(script, os.X_OK), (name, command)
            assert container["image"] == "beatkeeper:latest", name


def test_it_configures_kubernetes_pods_from_the_configmap_and_secret() -> None:
    config = _kubernetes("ConfigMap", "beatkeeper-config")["data"]
    secret = _kubernetes("Secret", "beatkeeper-secrets")["stringData"]
    documented = set(_env_example())
    # Kubernetes rejects non-string ConfigMap values (an unquoted true or 2).
    assert all(isinstance(value, str) for value in config.values()), config
    assert set(config) <= documented and set(secret) <= documented
    assert set(secret) == {"SECRET_KEY", "DATABASE_URL", "REDIS_URL"}
    assert not set(config) & set(secret)
    assert config["DJANGO_SETTINGS_MODULE"] == PRODUCTION_SETTINGS
    assert config["SECURE_SSL_REDIRECT"] == "true"
    for name, pod in _pod_specs():
        for container in _containers(pod):
            sources = container["envFrom"]
            assert {"configMapRef": {"name": "beatkeeper-config"}} in sources, name
            assert {"secretRef": {"name": "beatkeeper-secrets"}} in sources, name


def test_it_probes_kubernetes_web_health_on_healthz() -> None:
    web = _kubernetes("Deployment", "beatkeeper-web")
    (container,) = web["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["deploy/bin/web"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000}
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz" and get["port"] in ("http", 8000), probe
    service = _kubernetes("Service", "beatkeeper-web")
    assert service["spec"]["selector"] == web["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["ports"][0]["targetPort"] in ("http", 8000)


# --- Dockerfile -------------------------------------------------------------------------


def test_it_builds_a_non_root_image_with_a_healthcheck() -> None:
    instructions = _dockerfile()
    bases = [args.split()[0] for keyword, args in instructions if keyword == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases), bases
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "no USER"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and group not in ("root", "0"), users[-1]
    assert user in ("beatkeeper", "10001")
    (healthcheck,) = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    assert "http://127.0.0.1:8000/healthz" in healthcheck and "urllib" in healthcheck
    assert "curl" not in healthcheck
    assert instructions[-1] == ("CMD", '["deploy/bin/web"]')
    envs = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert f"DJANGO_SETTINGS_MODULE={PRODUCTION_SETTINGS}" in envs


def test_it_keeps_build_only_secrets_out_of_the_image() -> None:
    instructions = _dockerfile()
    required = ("SECRET_KEY", "DATABASE_URL", "REDIS_URL")
    for keyword, args in instructions:
        if keyword in ("ENV", "ARG"):
            assert not any(name in args for name in required), args
    (collect,) = [args for keyword, args in instructions if keyword == "RUN" and "collectstatic" in args]
    assert "DATABASE_URL=sqlite:////tmp/build.sqlite3" in collect
    assert "REDIS_URL=redis://localhost:6379/0" in collect
    assert re.search(r"(^|\s)SECRET_KEY=\S+", collect)
    assert "--no-cache-dir" in " ".join(args for keyword, args in instructions if keyword == "RUN")


def _dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("!"):
            continue
        for candidate in candidates:
            if fnmatch.fnmatch(candidate, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatch(Path(candidate).name, pattern[3:]):
                return True
    return False


def test_it_copies_and_runs_only_paths_in_the_build_context() -> None:
    patterns = _dockerignore_patterns()
    assert {".venv", "var", ".git"} <= set(patterns)
    copied: list[str] = []  # by the current stage
    referenced: list[str] = []
    for keyword, args in _dockerfile():
        if keyword == "FROM":
            copied = []
        if keyword in ("COPY", "ADD"):
            words = json.loads(args) if args.startswith("[") else args.split()
            flags = [word for word in words if word.startswith("--")]
            paths = [word for word in words if not word.startswith("--")]
            if any(flag.startswith("--from") for flag in flags):
                continue
            for source in paths[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert not _ignored(source, patterns), f"COPY {source}: excluded by {DOCKERIGNORE.name}"
                copied.append(source.rstrip("/"))
        if keyword in ("RUN", "CMD", "ENTRYPOINT", "HEALTHCHECK"):
            pattern = r"(?<![\w./-])((?:deploy|project|scheduler_app|maintenance)/[\w./-]*\w|manage\.py)"
            for path in re.findall(pattern, args):
                assert (REPO / path).exists(), f"{keyword} uses {path}: not in the repository"
                assert any(path == c or path.startswith(c + "/") for c in copied), (
                    f"{keyword} uses {path}, which no earlier COPY puts in the image"
                )
                referenced.append(path)
    assert "deploy/bin/web" in referenced and "deploy/bin/collectstatic" in referenced
    # The final stage (the image) holds the whole application.
    for package in ("manage.py", "project", "scheduler_app", "maintenance", "deploy/bin"):
        assert package in copied, f"the image lacks {package}"


# --- .env.example -----------------------------------------------------------------------


def test_it_documents_every_contracted_variable_in_the_env_example() -> None:
    names = _env_example()
    missing = [name for name in CONTRACT_ENV if name not in names]
    assert not missing, f"deploy/.env.example lacks {missing}"
    assert names["DJANGO_SETTINGS_MODULE"] == PRODUCTION_SETTINGS
    assert names["SECURE_SSL_REDIRECT"] == "false"  # compose serves plain HTTP locally
    # No usable key ships: production refuses to start until one is generated.
    assert names["SECRET_KEY"] == ""
    assert "python -c 'import secrets; print(secrets.token_urlsafe(64))'" in ENV_EXAMPLE.read_text(encoding="utf-8")


def test_it_lists_only_variables_that_something_reads() -> None:
    sources = [path.read_text(encoding="utf-8") for path in sorted((REPO / "project").rglob("*.py"))]
    scripts = [path.read_text(encoding="utf-8") for path in sorted(BIN.iterdir())]
    unread = []
    for name in _env_example():
        if name in CONTRACT_ENV or name in _settings_env():
            continue  # explicitly expected, or read by the settings (NAME_FILE through env.secret())
        in_python = any(re.search(rf"""["']{name}["']""", text) for text in sources)
        in_scripts = any(re.search(rf"\${{?{name}\b", text) for text in scripts)
        if not (in_python or in_scripts):
            unread.append(name)
    assert not unread, f"deploy/.env.example names variables nothing reads: {unread}"


# The settings modules a deployment loads (production imports base); local.py and test.py
# are for `make run` and the tests only.
DEPLOYED_SETTINGS = (REPO / "project" / "settings" / "base.py", REPO / "project" / "settings" / "production.py")


def _settings_env() -> set[str]:
    """Every variable the deployed settings read, from their code: each call
    `env.<reader>("NAME", ...)`, where a reader is a function of project/env.py whose first
    parameter is `name`; `env.secret("NAME")` reads NAME_FILE too."""
    module = ast.parse((REPO / "project" / "env.py").read_text(encoding="utf-8"))
    readers = {
        node.name
        for node in module.body
        if isinstance(node, ast.FunctionDef) and node.args.args and node.args.args[0].arg == "name"
    }
    names: set[str] = set()
    for path in DEPLOYED_SETTINGS:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "env"):
                continue
            if node.func.attr in readers and node.args and isinstance(node.args[0], ast.Constant):
                name = str(node.args[0].value)
                names |= {name, f"{name}_FILE"} if node.func.attr == "secret" else {name}
    return names


def test_it_lists_every_variable_the_settings_read_in_the_env_example() -> None:
    """README: "`deploy/.env.example` lists them all with comments". The list comes from the
    settings' code, so a variable added to the settings without a line here fails."""
    read = _settings_env()
    # A sample of what the settings read, so a parser that finds nothing cannot pass.
    assert {"SECRET_KEY", "SECRET_KEY_FILE", "REDIS_URL", "SECURE_HSTS_SECONDS", "METRICS_TOKEN_FILE"} <= read
    missing = sorted(read - set(_env_example()))
    assert not missing, f"deploy/.env.example lacks {missing}, which the settings read"


# --- systemd ----------------------------------------------------------------------------

UNITS = {process: SYSTEMD / f"beatkeeper-{process}.service" for process in PROCESSES}


def test_it_configures_the_systemd_units() -> None:
    assert sorted(SYSTEMD.iterdir()) == sorted(UNITS.values())
    for process, path in UNITS.items():
        unit = _unit(path)
        service = unit["Service"]
        assert service["User"] == ["beatkeeper"], path.name
        assert service["WorkingDirectory"] == ["/opt/beatkeeper"], path.name
        assert service["EnvironmentFile"] == ["/etc/beatkeeper/env"], path.name
        assert service["ExecStart"] == [f"/opt/beatkeeper/deploy/bin/{process}"], path.name
        for command in service["ExecStart"] + service.get("ExecStartPre", []):
            assert os.access(REPO / command.removeprefix("/opt/beatkeeper/"), os.X_OK), command
        environment = dict(value.split("=", 1) for value in service["Environment"])
        assert environment["PATH"].split(":")[0] == "/opt/beatkeeper/.venv/bin", path.name
        assert environment["DJANGO_SETTINGS_MODULE"] == PRODUCTION_SETTINGS, path.name
        assert service["NoNewPrivileges"] == ["yes"], path.name
        assert service["ProtectSystem"] == ["strict"], path.name
        assert service["ReadWritePaths"] == ["/opt/beatkeeper/var"], path.name
        assert service["PrivateTmp"] == ["yes"], path.name
        assert unit["Install"]["WantedBy"] == ["multi-user.target"], path.name
        if process == "migrate":
            assert service["Type"] == ["oneshot"]
            assert service["ExecStartPre"] == ["/opt/beatkeeper/deploy/bin/collectstatic"]
        else:
            assert service["Restart"] == ["on-failure"], path.name
            assert service["KillMode"] == ["mixed"], path.name
            # Only after migrations succeeded.
            assert "beatkeeper-migrate.service" in " ".join(unit["Unit"]["Requires"]).split(), path.name
            assert "beatkeeper-migrate.service" in " ".join(unit["Unit"]["After"]).split(), path.name
    for process, grace in STOP_GRACE.items():
        service = _unit(UNITS[process])["Service"]
        assert service["KillSignal"] == ["SIGTERM"], process
        assert int(service["TimeoutStopSec"][0]) >= grace, process


# The keys these units may use, for machines without systemd-analyze.
KNOWN_UNIT_KEYS = {
    "Unit": {"Description", "Documentation", "Requires", "Wants", "After", "Before", "PartOf"},
    "Service": {
        "Type",
        "RemainAfterExit",
        "User",
        "Group",
        "WorkingDirectory",
        "Environment",
        "EnvironmentFile",
        "ExecStartPre",
        "ExecStart",
        "Restart",
        "RestartSec",
        "KillSignal",
        "KillMode",
        "TimeoutStartSec",
        "TimeoutStopSec",
        "NoNewPrivileges",
        "ProtectSystem",
        "ReadWritePaths",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictSUIDSGID",
        "LockPersonality",
    },
    "Install": {"WantedBy"},
}


def test_it_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # Not a skip: the checks verify would make that need no systemd.
        for path in UNITS.values():
            for section, keys in _unit(path).items():
                unknown = set(keys) - KNOWN_UNIT_KEYS.get(section, set())
                assert not unknown, f"{path.name} [{section}]: unknown keys {unknown}"
        return
    # Point the commands at this checkout's scripts, so verify also checks that they exist
    # and are executable, and must then have nothing at all to say.
    units = [str(path) for path in UNITS.values()]
    tolerated = None
    if re.fullmatch(r"[\w/.-]+", str(BIN)):
        units = []
        for path in UNITS.values():
            copy = tmp_path / path.name
            text = path.read_text(encoding="utf-8").replace("/opt/beatkeeper/deploy/bin/", f"{BIN}/")
            copy.write_text(text, encoding="utf-8")
            units.append(str(copy))
    else:
        # A checkout path systemd would need quoted: verify the units as they are,
        # tolerating only the complaint that /opt/beatkeeper is not installed here.
        tolerated = re.compile(
            r"beatkeeper-[\w-]+\.service: Command /opt/beatkeeper/deploy/bin/[\w-]+ is not "
            r"executable: No such file or directory"
        )
    result = subprocess.run([analyze, "verify", "--man=no", *units], capture_output=True, text=True, timeout=120)
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not (tolerated and tolerated.fullmatch(line))
    ]
    assert not complaints, "\n".join(complaints)
    if tolerated is None:
        assert result.returncode == 0


# --- README -----------------------------------------------------------------------------


def test_it_names_every_script_unit_and_manifest_in_the_readme() -> None:
    readme = README.read_text(encoding="utf-8")
    missing = [f"bin/{name}" for name in BIN_SCRIPTS if f"`bin/{name}`" not in readme]
    missing += [path.stem for path in UNITS.values() if path.stem not in readme]
    missing += [path.name for path in sorted(KUBERNETES.glob("*.yaml")) if path.name not in readme]
    assert not missing, f"deploy/README.md does not name {missing}"
    # Every long-running Deployment is in the README's kubectl apply.
    applied = re.findall(r"-f deploy/kubernetes/([\w.-]+\.yaml)", readme)
    for process in LONG_RUNNING:
        assert f"{process}-deployment.yaml" in applied, process
