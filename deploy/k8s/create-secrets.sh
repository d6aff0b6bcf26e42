#!/usr/bin/env bash
# Creates the stack's Secrets from the files deploy/make_secrets.py writes (the same files as
# for compose; docs/kubernetes.md):
#
#   python3 deploy/make_secrets.py                    # once: ./secrets/, prints the admin token
#   kubectl apply -f deploy/k8s/namespace.yaml
#   deploy/k8s/create-secrets.sh secrets [NAMESPACE]  # NAMESPACE: txn unless given
#
# - txn-secrets: one key per file (but postgres_password: CloudNativePG keeps its superuser to
#   itself), which each pod mounts at /run/secrets/<name> as compose does. The DSNs name compose's
#   server, postgres:5432; here they name the read-write service of the CloudNativePG cluster
#   holding the database: txn-log-rw for txn_log_dsn, participants-db-rw for the others.
# - <db>-owner (kubernetes.io/basic-auth), one per database: username <db>_owner, password the
#   file <db>_db_password without its final newline; the operator creates the role with it.
#
# Like make_secrets.py, it overwrites nothing: kubectl refuses a Secret that exists. The copies it
# rewrites are in a private temporary folder, removed on exit; no value is put on a command line.
set -euo pipefail

folder=${1:?usage: create-secrets.sh FOLDER [NAMESPACE]}
namespace=${2:-txn}
databases=(txn_log ledger1 ledger2 ledger3 orders inventory payments shipping)

for db in "${databases[@]}"; do
    for file in "${db}_db_password" "${db}_dsn"; do
        if [ ! -f "$folder/$file" ]; then
            echo "create-secrets.sh: $folder/$file is missing (run deploy/make_secrets.py)" >&2
            exit 1
        fi
    done
done

umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/files" "$work/owners"

for path in "$folder"/*; do
    name=$(basename "$path")
    case $name in
        postgres_password) continue ;;
        txn_log_dsn) host=txn-log-rw ;;
        *_dsn) host=participants-db-rw ;;
        *) cp "$path" "$work/files/$name"; continue ;;
    esac
    sed "s#@postgres:5432/#@$host:5432/#" "$path" > "$work/files/$name"
    if ! grep -q "@$host:5432/" "$work/files/$name"; then
        echo "create-secrets.sh: $path does not name postgres:5432" >&2
        exit 1
    fi
done

for db in "${databases[@]}"; do
    password=$(cat "$folder/${db}_db_password") # $(...) drops the final newline
    printf '%s' "$password" > "$work/owners/$db"
    kubectl --namespace "$namespace" create secret generic "${db//_/-}-owner" \
        --type=kubernetes.io/basic-auth \
        --from-literal=username="${db}_owner" \
        --from-file=password="$work/owners/$db"
done
kubectl --namespace "$namespace" create secret generic txn-secrets --from-file="$work/files"
