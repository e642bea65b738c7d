"""The Dockerfile and configs/k8s manifests: their shape and their agreement with backfill."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from backfill.errors import ConfigError
from backfill.planner import parse_time
from backfill.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "configs" / "k8s"

STATE_DIR = "/var/lib/backfill"
CONFIG_KEY = "backfill.toml"
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|API_KEY|CLIENT_ID")
# Exits that a new pod resumes from: failing the Job or the index on them would lose work.
RETRYABLE = (74, 75, 129, 130, 143)
NOT_RETRYABLE = (1, 2, 3)

# ---------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    image: str
    name: str | None
    index: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.index} has no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions by stage; `\\` continuations joined, comment lines dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments and blank lines are dropped even inside a continuation
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, len(stages)))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, args))
    return stages


def key_values(args: str) -> dict[str, str]:
    """``ENV``/``LABEL``/``ARG`` arguments: ``K=V K2="V 2"``, or the legacy ``K V``."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.partition("=")[::2] for word in words)


def exec_form(instruction: Instruction) -> list[str]:
    assert instruction.args.startswith("["), f"{instruction.keyword} is not in exec form"
    value = json.loads(instruction.args)
    assert isinstance(value, list)
    assert all(isinstance(v, str) for v in value)
    return [str(v) for v in value]


def option(args: str, *names: str) -> str | None:
    """The value of ``--name VALUE``/``--name=VALUE``/``-n VALUE`` in a shell command."""
    words = shlex.split(args)
    for i, word in enumerate(words):
        for name in names:
            if word == name and i + 1 < len(words):
                return words[i + 1]
            if word.startswith(f"{name}="):
                return word.partition("=")[2]
    return None


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def image_env(runtime: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in runtime.all("ENV"):
        env.update(key_values(instruction.args))
    return env


def volumes(stage: Stage) -> list[str]:
    found: list[str] = []
    for instruction in stage.all("VOLUME"):
        if instruction.args.startswith("["):
            found.extend(exec_form(instruction))
        else:
            found.extend(instruction.args.split())
    return found


def uid(user: str) -> str:
    return user.partition(":")[0]


def test_parse_dockerfile_joins_continuations_and_skips_comments() -> None:
    text = (
        "# c\nFROM a AS b\nRUN one \\\n  # inside\n  two\nENV A=1 \\\n    B='x y'\nFROM c\nUSER 5\n"
    )
    first, second = parse_dockerfile(text)
    assert (first.image, first.name, second.image, second.name) == ("a", "b", "c", None)
    assert first.instructions == [Instruction("RUN", "one two"), Instruction("ENV", "A=1 B='x y'")]
    assert key_values(first.instructions[1].args) == {"A": "1", "B": "x y"}
    assert key_values("LEGACY some value") == {"LEGACY": "some value"}


def test_builder_and_runtime_are_slim_python_images(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    for stage in stages:
        assert re.fullmatch(r"python:3\.1\d-slim(@sha256:[0-9a-f]{64})?", stage.image), stage.image
    major_minor = {stage.image.split("@")[0] for stage in stages}
    assert len(major_minor) == 1, "the wheel is built with the Python it runs on"


def test_runtime_installs_the_wheel_the_builder_built(stages: list[Stage], runtime: Stage) -> None:
    builders = {}
    for stage in stages[:-1]:
        for run in stage.all("RUN"):
            if "pip wheel" in run.args or "-m build" in run.args:
                out = option(run.args, "-w", "--wheel-dir", "--outdir", "-o")
                assert out is not None, f"where does {run.args!r} put the wheel?"
                builders[stage.name or str(stage.index)] = out.rstrip("/")
    assert builders, "no stage builds a wheel"
    copied = []
    for copy in runtime.all("COPY"):
        words = copy.args.split()
        source = option(copy.args, "--from")
        if source in builders:
            sources, target = [w for w in words[:-1] if not w.startswith("--")], words[-1]
            assert all(s.rstrip("/").startswith(builders[source]) for s in sources), words
            copied.append(target.rstrip("/"))
    assert copied, "the runtime stage copies nothing --from the builder"
    installs = [r.args for r in runtime.all("RUN") if "pip install" in r.args]
    assert any(
        re.search(rf"{re.escape(target)}/\S*\.whl", run) for run in installs for target in copied
    ), installs
    assert all("--no-cache-dir" in run for run in installs), "pip's cache would stay in the image"


def test_runtime_user_is_a_fixed_non_root_uid(runtime: Stage) -> None:
    user = uid(runtime.last("USER").args)
    assert user not in ("root", "0")
    # Numeric: the kubelet can only verify runAsNonRoot against a numeric image user.
    assert user.isdigit()


def test_entrypoint_is_backfill_in_exec_form(runtime: Stage) -> None:
    # Exec form: backfill is PID 1 and gets SIGTERM itself (a shell would swallow it).
    assert exec_form(runtime.last("ENTRYPOINT")) == ["backfill"]
    assert exec_form(runtime.last("CMD"))


def test_state_directory_is_a_volume_created_before_it_is_declared(runtime: Stage) -> None:
    assert STATE_DIR in volumes(runtime)
    assert runtime.last("WORKDIR").args == STATE_DIR
    keywords = [(i.keyword, i.args) for i in runtime.instructions]
    volume_at = next(n for n, (k, a) in enumerate(keywords) if k == "VOLUME" and STATE_DIR in a)
    created_at = [n for n, (k, a) in enumerate(keywords) if k == "RUN" and STATE_DIR in a]
    # Changes to a volume's path after VOLUME are discarded: its owner must be set before.
    assert created_at
    assert max(created_at) < volume_at
    assert uid(runtime.last("USER").args) in keywords[max(created_at)][1]


def test_no_secret_is_baked_into_the_image(stages: list[Stage]) -> None:
    for stage in stages:
        for instruction in stage.instructions:
            if instruction.keyword in ("ENV", "ARG"):
                for key in key_values(instruction.args):
                    assert not SECRET_NAME.search(key.upper()), f"{instruction.keyword} {key}"


def test_image_environment(image_env: dict[str, str], runtime: Stage) -> None:
    assert image_env["PYTHONUNBUFFERED"] == "1"
    assert image_env["BACKFILL_LOG_FORMAT"] == "json"
    # The default checkpoint path is relative: the working directory must be the volume, and
    # no BACKFILL_CHECKPOINT may override a deployment's config file.
    assert "BACKFILL_CHECKPOINT" not in image_env
    workdir = PurePosixPath(runtime.all("WORKDIR")[-1].args.strip())
    assert any(workdir.is_relative_to(volume) for volume in volumes(runtime))
    assert not PurePosixPath(Settings.model_fields["checkpoint"].default).is_absolute()
    for name in image_env:
        if name.startswith("BACKFILL_"):
            assert settings_field(name) in Settings.model_fields, f"{name} is no option"


def test_image_version_label_matches_the_project(runtime: Stage) -> None:
    labels: dict[str, str] = {}
    for instruction in runtime.all("LABEL"):
        labels.update(key_values(instruction.args))
    version = project_version()
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.title"] == "backfill"
    assert labels["org.opencontainers.image.licenses"]


# ---------------------------------------------------------------- .dockerignore


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        patterns.append((negated, glob_regex(pattern)))
    return patterns


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore globs: ``**`` any number of folders, ``*``/``?`` within one."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str) -> bool:
    """Whether the build context leaves ``path`` out (the last matching pattern decides)."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negated, regex in dockerignore_patterns():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            verdict = not negated
    return verdict


def test_dockerignore_glob_semantics() -> None:
    assert glob_regex("**/__pycache__").fullmatch("backfill/emulator/__pycache__")
    assert glob_regex("**/__pycache__").fullmatch("__pycache__")
    assert not glob_regex("*.jsonl").fullmatch("demo-out/checkpoint.jsonl")


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "backfill/__pycache__/cli.cpython-312.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/CACHEDIR.TAG",
        ".hypothesis/examples/x",
        "demo-out/checkpoint.jsonl",
        "bench/results.json",
        "dist/backfill-0.1.0-py3-none-any.whl",
        "checkpoint.jsonl",
        ".env",
    ],
)
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    assert ignored(path)


def test_dockerignore_keeps_what_the_build_copies(stages: list[Stage]) -> None:
    sources: list[str] = []
    for stage in stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            if option(copy.args, "--from") is None:
                sources.extend(w for w in copy.args.split()[:-1] if not w.startswith("--"))
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source), f"COPY {source}: left out by .dockerignore"
        if (ROOT / source).is_dir():
            for path in (ROOT / source).rglob("*.py"):
                assert not ignored(path.relative_to(ROOT).as_posix()), path


# ---------------------------------------------------------------- Kubernetes manifests


def load_manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        with path.open(encoding="utf-8") as handle:
            for doc in yaml.safe_load_all(handle):
                if doc is None:
                    continue
                assert isinstance(doc, dict), path
                assert doc.get("apiVersion"), path
                assert doc.get("kind"), path
                key = (str(doc["kind"]), str(doc["metadata"]["name"]))
                assert key not in found, f"{key} defined twice"
                found[key] = doc
    return found


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    return load_manifests()


def one(manifests: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    docs = [doc for (k, _), doc in manifests.items() if k == kind]
    assert len(docs) == 1, f"expected one {kind}, found {len(docs)}"
    return docs[0]


def jobs(manifests: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for (kind, _), doc in manifests.items() if kind == "Job"]


def indexed_job(manifests: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    found = [job for job in jobs(manifests) if job["spec"].get("completionMode") == "Indexed"]
    assert len(found) == 1
    return found[0]


def workloads(manifests: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for (kind, _), doc in manifests.items() if kind in ("Job", "Pod")]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"] if doc["kind"] == "Job" else doc["spec"]
    return spec


def container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(doc)["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def env_values(doc: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(doc).get("env", []) if "value" in e}


def mount_of(doc: dict[str, Any], volume_kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (volume, mount) of the one volume of this kind: persistentVolumeClaim, secret..."""
    found = [v for v in pod_spec(doc)["volumes"] if volume_kind in v]
    assert len(found) == 1, f"{doc['metadata']['name']}: one {volume_kind} volume"
    mounts = [m for m in container(doc)["volumeMounts"] if m["name"] == found[0]["name"]]
    assert len(mounts) == 1
    return found[0], mounts[0]


def settings_field(env_name: str) -> str:
    return env_name.removeprefix("BACKFILL_").lower()


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def config_toml(manifests: dict[tuple[str, str], dict[str, Any]]) -> str:
    data: dict[str, str] = one(manifests, "ConfigMap")["data"]
    return data[CONFIG_KEY]


def secret_data(manifests: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    secret = one(manifests, "Secret")
    return {**secret.get("data", {}), **secret.get("stringData", {})}


def fails_on(rule: dict[str, Any], code: int) -> bool:
    if rule["action"] not in ("FailJob", "FailIndex") or "onExitCodes" not in rule:
        return False
    values: list[int] = rule["onExitCodes"]["values"]
    operator: str = rule["onExitCodes"]["operator"]
    return (code in values) == (operator == "In")


def clear_backfill_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os  # noqa: PLC0415 - only to list what to clear; monkeypatch restores it

    for name in list(os.environ):
        if name.upper().startswith("BACKFILL_") or name.upper() == "JOB_COMPLETION_INDEX":
            monkeypatch.delenv(name)


def test_every_manifest_has_one_kind_per_file() -> None:
    for path in sorted(K8S.glob("*.yaml")):
        with path.open(encoding="utf-8") as handle:
            kinds = {doc["kind"] for doc in yaml.safe_load_all(handle) if doc}
        assert len(kinds) == 1, f"{path.name}: {kinds}"


def test_the_expected_resources_exist(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    kinds = sorted(kind for kind, _ in manifests)
    for kind in ("ConfigMap", "PersistentVolumeClaim", "Secret"):
        assert kinds.count(kind) == 1, kind
    assert kinds.count("Job") == 2, "indexed-job.yaml and job.yaml"


def test_indexed_job_runs_one_shard_per_index(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    job = indexed_job(manifests)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    count = spec["completions"]
    assert isinstance(count, int)
    assert count > 1
    assert spec["parallelism"] == count
    assert int(env_values(job)["BACKFILL_SHARD_COUNT"]) == count
    # JOB_COMPLETION_INDEX comes from Kubernetes; setting it would give every pod one shard.
    assert "JOB_COMPLETION_INDEX" not in {e["name"] for e in container(job)["env"]}
    assert spec["backoffLimitPerIndex"] >= 1
    assert 0 <= spec.get("maxFailedIndexes", count) <= count


def test_single_job_is_not_sharded(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    single = [job for job in jobs(manifests) if job["spec"].get("completionMode") != "Indexed"]
    assert len(single) == 1
    assert single[0]["spec"].get("completions", 1) == 1
    assert single[0]["spec"].get("parallelism", 1) == 1
    assert single[0]["spec"]["backoffLimit"] >= 1
    assert "BACKFILL_SHARD_COUNT" not in env_values(single[0])


def test_pod_failure_policy_retries_only_what_resumes(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for job in jobs(manifests):
        spec = job["spec"]
        rules = spec["podFailurePolicy"]["rules"]
        action = "FailIndex" if spec.get("completionMode") == "Indexed" else "FailJob"
        name = container(job)["name"]
        for code in NOT_RETRYABLE:
            matching = [r for r in rules if fails_on(r, code)]
            assert matching, f"{job['metadata']['name']}: exit {code} would be retried"
            assert all(r["action"] == action for r in matching)
            assert all(r["onExitCodes"].get("containerName") == name for r in matching)
        for code in (0, *RETRYABLE):
            assert not any(fails_on(r, code) for r in rules), f"exit {code} must be retried"
        assert any(
            r["action"] == "Ignore"
            and any(c["type"] == "DisruptionTarget" for c in r.get("onPodConditions", []))
            for r in rules
        ), "an evicted or preempted pod must not use up the retries"
        assert spec.get("podReplacementPolicy", "Failed") == "Failed"
        assert pod_spec(job)["restartPolicy"] == "Never"  # required by podFailurePolicy


def test_termination_grace_outlasts_backfills_grace(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    default = Settings.model_fields["grace"].default
    for doc in workloads(manifests):
        grace = float(env_values(doc).get("BACKFILL_GRACE", default))
        assert pod_spec(doc)["terminationGracePeriodSeconds"] > grace


def test_jobs_run_with_the_mounted_config(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    configmap = one(manifests, "ConfigMap")
    assert CONFIG_KEY in configmap["data"]
    for job in jobs(manifests):
        args = container(job)["args"]
        assert args[0] == "run"
        config = args[args.index("--config") + 1]
        volume, mount = mount_of(job, "configMap")
        assert volume["configMap"]["name"] == configmap["metadata"]["name"]
        items = {i["key"]: i["path"] for i in volume["configMap"].get("items", [])}
        assert config == f"{mount['mountPath'].rstrip('/')}/{items.get(CONFIG_KEY, CONFIG_KEY)}"
        assert mount.get("readOnly") is True


def test_checkpoints_live_on_the_claim(
    manifests: dict[tuple[str, str], dict[str, Any]], runtime: Stage
) -> None:
    claim = one(manifests, "PersistentVolumeClaim")
    # All shards at once, on any node, plus a debug pod reading them: ReadWriteMany.
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    assert STATE_DIR in volumes(runtime)
    for doc in workloads(manifests):
        volume, mount = mount_of(doc, "persistentVolumeClaim")
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert mount["mountPath"] == STATE_DIR
        assert not mount.get("readOnly", False)


def test_secret_is_a_read_only_file_and_references_exist(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    secret = one(manifests, "Secret")
    keys = secret_data(manifests)
    configmap = one(manifests, "ConfigMap")
    for doc in workloads(manifests):
        volume, mount = mount_of(doc, "secret")
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert mount["readOnly"] is True
        # Files are root-owned, group fsGroup: the group must be able to read them.
        assert volume["secret"].get("defaultMode", 0o644) & 0o040
        secret_file = PurePosixPath(env_values(doc)["BACKFILL_CLIENT_SECRET_FILE"])
        assert secret_file.parent == PurePosixPath(mount["mountPath"])
        assert secret_file.name in keys
        for entry in container(doc)["env"]:
            ref = entry.get("valueFrom", {})
            if "secretKeyRef" in ref:
                assert ref["secretKeyRef"]["name"] == secret["metadata"]["name"]
                assert ref["secretKeyRef"]["key"] in keys
            if "configMapKeyRef" in ref:
                assert ref["configMapKeyRef"]["name"] == configmap["metadata"]["name"]
                assert ref["configMapKeyRef"]["key"] in configmap["data"]


def test_no_secret_value_in_the_environment(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    secrets = set(secret_data(manifests).values())
    for doc in workloads(manifests):
        for name, value in env_values(doc).items():
            assert value not in secrets, name
            assert not SECRET_NAME.search(name) or name.endswith("_FILE"), (
                f"{name} carries a literal value: take it from the Secret"
            )
        names = {e["name"] for e in container(doc)["env"]}
        assert "BACKFILL_CLIENT_SECRET" not in names, "the secret goes in as a file"
        assert "BACKFILL_ACCESS_TOKEN" not in names


def test_every_variable_is_an_option(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    # pydantic-settings ignores a BACKFILL_* variable it does not know: a typo is silent.
    for doc in workloads(manifests):
        for entry in container(doc).get("env", []):
            if entry["name"].startswith("BACKFILL_"):
                assert settings_field(entry["name"]) in Settings.model_fields, entry["name"]


def test_pods_are_locked_down(
    manifests: dict[tuple[str, str], dict[str, Any]], runtime: Stage
) -> None:
    for doc in workloads(manifests):
        pod = pod_spec(doc).get("securityContext", {})
        box = container(doc)["securityContext"]
        assert box.get("runAsNonRoot", pod.get("runAsNonRoot")) is True
        assert str(box.get("runAsUser", pod.get("runAsUser"))) == uid(runtime.last("USER").args)
        assert str(pod.get("fsGroup")) == uid(runtime.last("USER").args), "the claim is writable"
        assert box["readOnlyRootFilesystem"] is True
        assert box["allowPrivilegeEscalation"] is False
        assert box["capabilities"]["drop"] == ["ALL"]
        # Service links would inject BACKFILL_<SERVICE>_PORT=tcp://... into the options.
        assert pod_spec(doc).get("enableServiceLinks") is False
        assert pod_spec(doc).get("automountServiceAccountToken") is False


def mebibytes(quantity: str) -> float:
    units = {
        "Ki": 1 / 1024,
        "Mi": 1,
        "Gi": 1024,
        "k": 1e3 / 2**20,
        "M": 1e6 / 2**20,
        "G": 1e9 / 2**20,
    }
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", quantity)
    assert match is not None, quantity
    return float(match.group(1)) * units.get(match.group(2), 1 / 2**20)


def test_resources_fit_the_tool(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    for doc in workloads(manifests):
        resources = container(doc)["resources"]
        request = mebibytes(resources["requests"]["memory"])
        limit = mebibytes(resources["limits"]["memory"])
        assert 64 <= request <= limit <= 1024, "backfill uses about 60 MB"
        assert resources["requests"]["cpu"]


def test_images_and_metrics_ports(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    for doc in workloads(manifests):
        assert container(doc)["image"].endswith(f"/backfill:{project_version()}")
    for job in jobs(manifests):
        ports = {p["name"]: p["containerPort"] for p in container(job)["ports"]}
        assert ports["metrics"] == int(env_values(job)["BACKFILL_METRICS_PORT"])


def test_debug_pod_reads_every_shard_without_being_one(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    pods = [doc for (kind, _), doc in manifests.items() if kind == "Pod"]
    assert len(pods) == 1
    names = {e["name"] for e in container(pods[0]).get("env", [])}
    # `retry --checkpoint FILE` takes its shard from the file; a shard count would redirect it.
    assert not names & {"BACKFILL_SHARD_COUNT", "BACKFILL_SHARD", "JOB_COMPLETION_INDEX"}


# ---------------------------------------------------------------- the config, through backfill


def write_config(manifests: dict[tuple[str, str], dict[str, Any]], tmp_path: Path) -> Path:
    path = tmp_path / CONFIG_KEY
    path.write_text(config_toml(manifests), encoding="utf-8")
    return path


def after_the_end(settings: Settings) -> float:
    ends = [flow.end for flow in settings.flows if flow.end is not None]
    if settings.end is not None:
        ends.append(settings.end)
    assert ends, "the config names no end"
    return float(max(parse_time(end) for end in ends) + 86400)


def test_config_loads_through_backfills_settings(
    manifests: dict[tuple[str, str], dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tomllib.loads(config_toml(manifests))
    assert not {"access_token", "client_secret", "report"} & set(data)
    clear_backfill_env(monkeypatch)
    settings = load_settings({}, write_config(manifests, tmp_path))
    assert "{shard}" in settings.checkpoint
    assert PurePosixPath(settings.checkpoint).is_relative_to(STATE_DIR)
    assert settings.wait is True
    assert len(settings.flows) >= 2
    plan = settings.plan(now=after_the_end(settings))
    assert plan.flows


def test_each_shard_pod_gets_its_own_checkpoint_and_share(
    manifests: dict[tuple[str, str], dict[str, Any]],
    image_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pod's effective settings: image ENV, then the container's env, then the file."""
    config = write_config(manifests, tmp_path)
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(secret_data(manifests)["client-secret"] + "\n", encoding="utf-8")
    for job in jobs(manifests):
        count = int(job["spec"]["completions"])
        paths = set()
        for index in range(count):
            clear_backfill_env(monkeypatch)
            for name, value in {**image_env, **env_values(job)}.items():
                monkeypatch.setenv(name, value)
            monkeypatch.setenv("BACKFILL_CLIENT_SECRET_FILE", str(secret_file))
            if job["spec"].get("completionMode") == "Indexed":
                monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
            settings = load_settings({}, config)
            # Nothing in the image or the Job overrides the file's checkpoint.
            assert settings.checkpoint == tomllib.loads(config_toml(manifests))["checkpoint"]
            assert settings.client_secret is not None
            assert (
                settings.client_secret.get_secret_value() == secret_data(manifests)["client-secret"]
            )
            assert settings.shard_spec().count == count
            path = PurePosixPath(settings.checkpoint_path().as_posix())
            assert path.is_relative_to(mount_of(job, "persistentVolumeClaim")[1]["mountPath"])
            paths.add(path)
            assert settings.effective_rate().per_second * count == pytest.approx(
                settings.rate.per_second
            )
            settings.plan(now=after_the_end(settings))
        assert len(paths) == count, f"{job['metadata']['name']}: shards share a checkpoint"


def test_secret_template_placeholders_are_refused(
    manifests: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A forgotten template fails at once (exit 2) instead of calling Adobe with it.
    clear_backfill_env(monkeypatch)
    monkeypatch.setenv("BACKFILL_ORG_ID", secret_data(manifests)["org-id"])
    with pytest.raises(ConfigError, match="BACKFILL_ORG_ID"):
        load_settings({}, None)
