#!/usr/bin/env python3
"""Validates Kubernetes manifests against the Kubernetes schemas, strictly (unknown fields are errors).

Built-in kinds: the JSON schemas that the PyPI package `kubernetes-validate` ships, for every Kubernetes
version in VERSIONS. Prometheus Operator kinds (ServiceMonitor, PrometheusRule, monitoring.coreos.com/v1):
the schema of the operator's CRD as generated into the PyPI package `cloudcoil-models-prometheus-operator`
(pydantic models of the CRD's openAPIV3Schema), made strict here (additionalProperties: false). Any other
kind is an error: nothing is waved through unvalidated.

    python3 deploy/check_manifests.py                  # every deploy/k8s/*.yaml but kustomization.yaml
    python3 deploy/check_manifests.py --json FILE...   # also print the parsed documents as JSON
    python3 deploy/check_manifests.py --write-prometheusrule   # regenerate k8s/prometheusrule.yaml

Exit status 0 when every document validates; 1 otherwise (each problem printed on stderr). Used by
tests/deploy.rs; scripts/test.sh installs the two packages.
"""

import argparse
import glob
import json
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

# The oldest Kubernetes we claim to support and the newest the validator knows.
VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]


def strict(node):
    """additionalProperties: false on every object schema that lists its properties."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
    return node


def operator_schemas():
    from cloudcoil.models.prometheus_operator import v1

    out = {}
    for kind in ("ServiceMonitor", "PrometheusRule"):
        model = getattr(v1, kind)
        out[("monitoring.coreos.com/v1", kind)] = strict(
            model.model_json_schema(by_alias=True, mode="validation")
        )
    return out


def validate_doc(doc, schemas):
    """Problems with one document (empty when it validates)."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in schemas:
        v = jsonschema.Draft202012Validator(schemas[key])
        return [
            f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in v.iter_errors(doc)
        ]
    problems = []
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.utils.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "<root>"
            problems.append(f"Kubernetes {version}: {path}: {e.message}")
        except kubernetes_validate.utils.SchemaNotFoundError as e:
            problems.append(f"Kubernetes {version}: no schema: {e.message}")
    return problems


HERE = os.path.dirname(os.path.abspath(__file__))
RULE_FILES = ["prometheus/slate-recording.yml", "prometheus/slate-alerts.yml"]
RULE_HEADER = """\
# The rules of deploy/prometheus/*.yml for the Prometheus Operator: the same groups in the same order
# (tests/deploy.rs checks they stay identical). Generated; after editing those files, run
#   python3 deploy/check_manifests.py --write-prometheusrule
"""


def write_prometheusrule():
    groups = []
    for f in RULE_FILES:
        with open(os.path.join(HERE, f)) as fh:
            groups += yaml.safe_load(fh)["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "slate", "labels": {"app.kubernetes.io/name": "slate", "release": "prometheus"}},
        "spec": {"groups": groups},
    }

    class Dumper(yaml.SafeDumper):
        pass

    def text(d, data):
        return d.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)

    Dumper.add_representer(str, text)
    with open(os.path.join(HERE, "k8s", "prometheusrule.yaml"), "w") as fh:
        fh.write(RULE_HEADER)
        fh.write(yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=200, allow_unicode=True))


def rules_match_files(doc):
    """The PrometheusRule must carry exactly the groups of deploy/prometheus/*.yml."""
    groups = []
    for f in RULE_FILES:
        with open(os.path.join(HERE, f)) as fh:
            groups += yaml.safe_load(fh)["groups"]
    if (doc.get("spec") or {}).get("groups") != groups:
        return [f"spec.groups differ from {', '.join(RULE_FILES)}: run with --write-prometheusrule"]
    return []


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the parsed documents as JSON on stdout")
    ap.add_argument("--write-prometheusrule", action="store_true", help="regenerate k8s/prometheusrule.yaml")
    ap.add_argument("files", nargs="*")
    args = ap.parse_args()
    if args.write_prometheusrule:
        write_prometheusrule()
        return 0
    files = args.files or sorted(
        f
        for f in glob.glob(os.path.join(HERE, "k8s", "*.yaml"))
        if os.path.basename(f) != "kustomization.yaml"
    )
    schemas = operator_schemas()
    failed = False
    out = []
    for f in files:
        with open(f) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d]
        if not docs:
            print(f"{f}: no documents", file=sys.stderr)
            failed = True
        for d in docs:
            name = f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
            problems = validate_doc(d, schemas)
            if d.get("kind") == "PrometheusRule":
                problems += rules_match_files(d)
            for p in problems:
                print(f"{f}: {name}: {p}", file=sys.stderr)
            failed |= bool(problems)
            out.append({"file": os.path.basename(f), "doc": d})
    if args.json:
        json.dump(out, sys.stdout)
    print(
        f"{len(out)} documents in {len(files)} files: {'FAILED' if failed else 'ok'} "
        f"(Kubernetes {', '.join(VERSIONS)}; monitoring.coreos.com/v1 from the operator's CRD schema)",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
