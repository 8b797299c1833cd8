#!/usr/bin/env bash
# Prints the plain-YAML install (namespace, CRD, RBAC, operator) rendered from the chart, for
# `kubectl apply` users. Usage: hack/render-install.sh path/to/helm
set -euo pipefail
helm="${1:?path to helm}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cat <<YAML
# msa-operator install, rendered from charts/msa-operator by \`make manifests\`; do not edit.
#   kubectl apply --server-side -f manifests/install.yaml
apiVersion: v1
kind: Namespace
metadata:
  name: msa-system
  labels:
    app.kubernetes.io/part-of: msa-operator
---
YAML
"$helm" template msa-operator "$root/charts/msa-operator" --namespace msa-system --include-crds --kube-version 1.36.0 --skip-tests \
  | sed -e '/^# Source: /d'
